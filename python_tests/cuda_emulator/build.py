"""Builds pyfastseq's CUDA sources (csrc/*/*.cu and the csrc/bindings/cuda_*.cpp bindings) as a CPU
module on top of emulator.h: the same ``_cuda`` functions, taking host pointers."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[1] / "csrc"

KERNEL_NAME = re.compile(r"[A-Za-z_]\w*(?:<[\w:, ]+>)?$")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _closing_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        depth += text[i] == "("
        depth -= text[i] == ")"
        if depth == 0:
            return i
    raise ValueError("unbalanced parentheses in a kernel launch")


def emulate_launches(source: str) -> str:
    """kernel<<<grid, block[, shared, stream]>>>(args);  ->  a synchronous emulated launch."""
    out, pos = [], 0
    while (start := source.find("<<<", pos)) >= 0:
        name = KERNEL_NAME.search(source, 0, start)
        config_end = source.index(">>>", start)
        grid, block = _split_top_level(source[start + 3:config_end])[:2]
        args_open = config_end + 3
        args_close = _closing_paren(source, args_open)
        out.append(source[pos:name.start()])
        out.append(f"cuda_emulator::launch({grid}, {block}, [&] {{ {name.group()}{source[args_open:args_close + 1]}; }})")
        pos = args_close + 1
    return "".join(out) + source[pos:]


def missing() -> str | None:
    """Why the emulated module cannot be built here, or None."""
    if not CSRC.is_dir():
        return f"no C++ sources at {CSRC}"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "no C++ compiler"
    if importlib.util.find_spec("pybind11") is None:
        return "pybind11 is not installed"
    return None


def build(out: Path, sanitize: bool = False) -> ModuleType:
    """Compiles the module into `out`, unless an earlier call did, and imports it (as ``_cuda``,
    apart from the package's)."""
    import pybind11

    library = out / f"_cuda{sysconfig.get_config_var('EXT_SUFFIX')}"
    if library.exists():
        return _load(library)

    sources = []
    for cu in sorted(CSRC.glob("*/*.cu")):
        text = emulate_launches(cu.read_text())
        emulated = out / f"{cu.parent.name}_{cu.stem}.cpp"
        emulated.write_text(f'#line 1 "{cu}"\n{text}')
        sources.append(emulated)
    sources += sorted(CSRC.glob("bindings/cuda_*.cpp"))
    flags = [
        "-std=c++17", "-O1", "-fPIC", "-pthread", f"-I{HERE}", f"-I{CSRC}", f"-I{pybind11.get_include()}",
        f"-I{sysconfig.get_paths()['include']}", '-DPYFASTSEQ_CUDA_ARCHITECTURES="emulated"',
    ]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    cxx = os.environ.get("CXX", "g++")

    def compile_one(source: Path) -> Path:
        obj = out / f"{source.stem}.o"
        run = subprocess.run([cxx, *flags, "-c", str(source), "-o", str(obj)], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"compiling {source} for the CUDA emulator failed:\n{run.stderr[-6000:]}")
        return obj

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        objects = list(pool.map(compile_one, sources))
    # Linked under another name and renamed: a library that exists is a whole one.
    partial = out / f"partial{library.suffix}"
    link = subprocess.run([cxx, *flags, "-shared", *map(str, objects), "-o", str(partial)], capture_output=True, text=True)
    if link.returncode:
        raise RuntimeError(f"linking the CUDA emulator failed:\n{link.stderr[-6000:]}")
    partial.rename(library)
    return _load(library)


def _load(library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_cuda", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":  # python python_tests/cuda_emulator/build.py DIR: build and list the module
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    print(sorted(name for name in dir(build(target)) if not name.startswith("_")))
