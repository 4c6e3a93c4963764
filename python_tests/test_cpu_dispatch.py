"""The baseline builds of the kernels that also ship AVX2 + FMA builds (the beam step's row pass,
the sampler's weights, the assignment solver's row scans). A non-empty PYFASTSEQ_DISABLE_AVX2 keeps
a process on them; there, the kernels' own tests (against SciPy, transformers and plain PyTorch)
must pass as they do on the AVX2 builds."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyfastseq._config import config

BASELINE_ENV = {**os.environ, "PYFASTSEQ_DISABLE_AVX2": "1"}


def test_disable_avx2_reaches_the_dispatch():
    code = "from pyfastseq._config import config; print(config()['avx2'])"
    out = subprocess.run([sys.executable, "-c", code], env=BASELINE_ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not config()["avx2"], reason="this CPU runs the baseline builds in every test")
def test_baseline_builds_pass_the_kernel_tests():
    tests = Path(__file__).parent
    files = [str(tests / name) for name in ("test_assignment.py", "test_beam.py", "test_sampling.py")]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files],
        env=BASELINE_ENV, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
