"""Leak check: repeated build / save / load / mask / step / assign / LCS / lookahead cycles, rejected
inputs included (a leak on an error path is still a leak).

    python fuzz/leak_check.py [--cycles N]

Two checks, chosen by how the interpreter runs:

* Under the ASan build with LeakSanitizer (LD_PRELOAD of libasan, ``ASAN_OPTIONS=detect_leaks=1``),
  the script re-runs itself with LSan's report sent to a file, then reads the report. CPython and
  torch leave many blocks unfreed at exit by design, so a suppressions file would have to hide every
  stack that passes through the interpreter, which is every stack. Instead a leak counts when its
  allocation stack runs through pyfastseq's modules and it was allocated at least once per cycle:
  one-time module set-up (type objects, the op registry) is not a leak, and a leak in the loop is.
  Stacks come from the fast (frame-pointer) unwinder, which sees the C++ core (built with frame
  pointers) but stops inside libpython and NumPy; a Python object leaked through a reference
  count in the bindings is therefore left to the second check.
* Otherwise (a release build), the resident set must not grow by more than ``--max-growth-mb``
  between cycle ``N/4`` and cycle ``N``.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import resource
import subprocess
import sys
import tempfile

import numpy as np
import torch

import pyfastseq as fs


def workload(tmp: str):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, 500, size=rng.integers(1, 10)).tolist() for _ in range(2000)]
    path, bad = os.path.join(tmp, "t.trie"), os.path.join(tmp, "bad.trie")
    logits = torch.randn(64, 501)
    cost = rng.random((40, 50))
    batch = rng.random((16, 12, 10))
    query = rng.integers(0, 500, size=80)
    candidates = rng.integers(0, 500, size=20_000).astype(np.int32)
    offsets = np.arange(0, 20_001, 10)

    def rejected(call):
        try:
            call()
        except (ValueError, TypeError):
            return
        raise AssertionError("expected a rejection")

    def cycle(i: int) -> None:
        trie = fs.Trie(seqs, eos_id=1)
        trie.save(path)
        loaded = fs.Trie.load(path, mmap=bool(i % 2))
        nodes = torch.tensor([loaded.walk(s[:1]) for s in seqs[:64]], dtype=torch.int32)
        loaded.mask_logits(logits.clone(), nodes)
        loaded.mask_logits(logits.clone().t().contiguous().t(), nodes)  # the strided-copy path
        loaded.step(nodes.numpy(), np.full(64, 3))
        fs.linear_sum_assignment(cost)
        fs.linear_sum_assignment(batch, row_lens=np.full(16, 7))
        fs.lcs_lengths(query, candidates, offsets)
        lookahead = fs.LCSLookahead(query, max_nodes=300)
        lookahead.deltas(loaded, nodes.numpy(), np.array([s[:1] for s in seqs[:64]], dtype=np.int32))
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[80] ^= 1
        with open(bad, "wb") as f:
            f.write(data)
        rejected(lambda: fs.Trie.load(bad))
        rejected(lambda: fs.Trie([[1, 2], [-1]]))
        rejected(lambda: fs.linear_sum_assignment(np.full((3, 3), np.nan)))
        rejected(lambda: fs.lcs_lengths([1, 2], candidates, offsets[::-1].copy()))

    return cycle


def run_cycles(cycles: int) -> list[int]:
    """Peak RSS (KiB) after each quarter of the cycles."""
    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        cycle = workload(tmp)
        for i in range(cycles):
            cycle(i)
            if (i + 1) % max(1, cycles // 4) == 0:
                marks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return marks


LEAK = re.compile(r"^(Direct|Indirect) leak of (\d+) byte\(s\) in (\d+) object\(s\) allocated from:$")


def ours(stack: list[str]) -> bool:
    return any("pyfastseq" in frame for frame in stack)


def lsan_check(cycles: int) -> int:
    """Re-run under LeakSanitizer with the report in a file; fail on per-cycle leaks in pyfastseq."""
    with tempfile.TemporaryDirectory() as tmp:
        options = os.environ.get("ASAN_OPTIONS", "")
        env = {**os.environ, "PYFASTSEQ_LEAK_CHILD": "1",
               "ASAN_OPTIONS": f"{options}:detect_leaks=1:log_path={tmp}/lsan:malloc_context_size=40",
               "LSAN_OPTIONS": "exitcode=0", "PYTHONMALLOC": "malloc"}  # every object a malloc LSan can see
        child = subprocess.run([sys.executable, __file__, "--cycles", str(cycles)], env=env)
        if child.returncode != 0:
            print(f"leak check: the cycles failed (exit {child.returncode})")
            return 1
        report = "".join(open(p).read() for p in glob.glob(f"{tmp}/lsan*"))
    blocks, current = [], None
    for line in report.splitlines():
        match = LEAK.match(line.strip())
        if match:
            current = (int(match.group(2)), int(match.group(3)), [])
            blocks.append(current)
        elif current is not None and line.strip().startswith("#"):
            current[2].append(line.strip())
    attributed = [b for b in blocks if ours(b[2])]
    per_cycle = [b for b in attributed if b[1] >= cycles]
    print(f"leak check (LeakSanitizer, {cycles} cycles): {len(blocks)} unfreed stacks at exit, "
          f"{sum(b[0] for b in blocks)} bytes; {len(attributed)} through pyfastseq "
          f"({sum(b[0] for b in attributed)} bytes), of which {len(per_cycle)} allocated every cycle")
    for size, count, stack in per_cycle:
        print(f"LEAK: {size} bytes in {count} objects\n  " + "\n  ".join(stack[:12]))
    return int(bool(per_cycle))


def rss_check(cycles: int, max_growth_mb: float) -> int:
    marks = run_cycles(cycles)
    growth_mb = (marks[-1] - marks[0]) / 1024
    print(f"leak check (resident set, {cycles} cycles): peak RSS by quarter {[m // 1024 for m in marks]} MiB, "
          f"growth after the first quarter {growth_mb:.1f} MiB (limit {max_growth_mb})")
    return int(growth_mb > max_growth_mb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--max-growth-mb", type=float, default=8.0)
    args = parser.parse_args()
    if os.environ.get("PYFASTSEQ_LEAK_CHILD"):
        run_cycles(args.cycles)
        return 0
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return lsan_check(args.cycles)
    return rss_check(args.cycles, args.max_growth_mb)


if __name__ == "__main__":
    sys.exit(main())
