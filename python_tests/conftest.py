import contextlib
import os
import subprocess
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def run_python(code: str, *, timeout: float | None = None, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter that imports the same pyfastseq as these tests (see
    run_python_args)."""
    return run_python_args(["-c", code], timeout=timeout, **env)


def run_python_args(args: list[str], *, timeout: float | None = None, **env: str) -> subprocess.CompletedProcess:
    """``python *args`` in a fresh interpreter that imports the same pyfastseq as these tests: it
    runs beside that package, so a source checkout in the working directory cannot shadow an
    installed wheel (or the other way round). ``timeout`` (seconds) raises TimeoutExpired past it."""
    import pyfastseq

    beside = os.path.dirname(os.path.dirname(os.path.abspath(pyfastseq.__file__)))
    return subprocess.run(
        [sys.executable, *args], cwd=beside, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=timeout,
    )


def pytest_report_header(config):
    import pyfastseq

    # Shows whether the run tests an installed package or a source tree (CI checks it is installed).
    return f"pyfastseq {pyfastseq.__version__} from {os.path.dirname(pyfastseq.__file__)}"


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # The marker itself: keywords also hold path names, and a checkout may sit in a "cuda" folder.
        if item.get_closest_marker("cuda") is not None and not HAS_CUDA:
            item.add_marker(skip_cuda)


def devices(emulated: bool = False):
    """CPU always; CUDA as a marked parameter that skips without a GPU; with `emulated`, also the
    CUDA kernels on the CPU under the emulator (a test turns the name into a device with
    torch_device)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)] + (["emulated"] if emulated else [])


def torch_device(name: str, request) -> str:
    """The torch device for a devices() name: "emulated" routes pyfastseq's CUDA calls to the
    emulator for the rest of the test and keeps the tensors on the CPU."""
    if name == "emulated":
        request.getfixturevalue("on_cuda_emulator")
        return "cpu"
    return name


@pytest.fixture(scope="session")
def cuda_emulator(tmp_path_factory):
    """pyfastseq's CUDA sources built for the CPU emulator (cuda_emulator/): the ``_cuda`` functions
    on host pointers. Built with AddressSanitizer + UBSan when the tested package is, so that the
    kernels' memory accesses are checked as compute-sanitizer would. Skips where it cannot be built
    (no compiler, no pybind11, no C++ sources)."""
    import fcntl

    from cuda_emulator import build
    from pyfastseq._config import config

    why = build.missing()
    if why:
        pytest.skip(f"no CUDA emulator: {why}")
    # pytest-xdist's workers share one build (their base temp dirs have a common parent): the first
    # to take the lock compiles it on every core, the others wait for it and load it.
    root = tmp_path_factory.getbasetemp()
    out = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "cuda_emulator"
    out.mkdir(exist_ok=True)
    with open(out / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build.build(out, sanitize=bool(config()["sanitizers"]))


@pytest.fixture
def on_cuda_emulator(cuda_emulator, monkeypatch):
    """Sends pyfastseq's CUDA route to the emulator: every tensor counts as a GPU one, and the
    kernels read and write the CPU tensors' memory."""
    from pyfastseq import _backend

    monkeypatch.setattr(_backend, "on_gpu", lambda tensor: True)
    monkeypatch.setattr(_backend, "cuda", lambda: cuda_emulator)
    monkeypatch.setattr(_backend, "stream_of", lambda tensor: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    return cuda_emulator


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Keep hypothesis bounded in CI; PYFASTSEQ_HYPOTHESIS_PROFILE=thorough runs more examples by hand.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("thorough", max_examples=2000, deadline=None)
    settings.load_profile(os.environ.get("PYFASTSEQ_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover
    pass
