"""The baseline builds of the kernels that also ship AVX2 + FMA builds (the beam step's row pass,
the sampler's weights, the assignment solver's row scans). A non-empty PYFASTSEQ_DISABLE_AVX2 keeps
a process on them; there, the kernels' own tests (against SciPy, transformers and plain PyTorch)
must pass as they do on the AVX2 builds."""

from pathlib import Path

import pytest

from conftest import run_python, run_python_args
from pyfastseq._config import config


def test_disable_avx2_reaches_the_dispatch():
    out = run_python("from pyfastseq._config import config; print(config()['avx2'])", PYFASTSEQ_DISABLE_AVX2="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not config()["avx2"], reason="this CPU runs the baseline builds in every test")
def test_baseline_builds_pass_the_kernel_tests():
    tests = Path(__file__).parent
    files = [str(tests / name) for name in ("test_assignment.py", "test_beam.py", "test_sampling.py")]
    # The emulated CUDA kernels in these files have no AVX2 builds.
    args = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not emulated", *files]
    run = run_python_args(args, PYFASTSEQ_DISABLE_AVX2="1")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
