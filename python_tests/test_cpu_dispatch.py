"""The baseline and AVX2 builds of the kernels that also ship faster ones (the beam step's row
passes, its normaliser and top-k scan, the sampler's weights and the assignment solver's row scans
have AVX2 + FMA builds; all but the last also AVX-512 ones). A non-empty PYFASTSEQ_DISABLE_AVX2 keeps a process on the baseline builds,
PYFASTSEQ_DISABLE_AVX512 on the AVX2 ones; there, the kernels' own tests (against SciPy,
transformers and plain PyTorch) must pass as they do on the fastest builds."""

from pathlib import Path

import pytest

from conftest import run_python, run_python_args
from pyfastseq._config import config


@pytest.mark.parametrize("variable,off", [("PYFASTSEQ_DISABLE_AVX2", "avx2 avx512"),
                                          ("PYFASTSEQ_DISABLE_AVX512", "avx512")])
def test_disable_variables_reach_the_dispatch(variable, off):
    code = "from pyfastseq._config import config; c = config(); print(c['avx2'], c['avx512'])"
    out = run_python(code, **{variable: "1"})
    assert out.returncode == 0, out.stderr
    avx2, avx512 = out.stdout.split()
    assert avx512 == "False"
    assert avx2 == ("False" if "avx2" in off else str(config()["avx2"]))


@pytest.mark.parametrize("variable,runs", [
    pytest.param("PYFASTSEQ_DISABLE_AVX2", "baseline",
                 marks=pytest.mark.skipif(not config()["avx2"], reason="this CPU runs the baseline builds in every test")),
    pytest.param("PYFASTSEQ_DISABLE_AVX512", "AVX2",
                 marks=pytest.mark.skipif(not config()["avx512"], reason="this CPU runs the AVX2 builds in every test")),
])
def test_slower_builds_pass_the_kernel_tests(variable, runs):
    tests = Path(__file__).parent
    files = [str(tests / name) for name in ("test_assignment.py", "test_beam.py", "test_sampling.py")]
    # The emulated CUDA kernels in these files have no CPU-specific builds.
    args = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not emulated", *files]
    run = run_python_args(args, **{variable: "1"})
    assert run.returncode == 0, f"{runs} builds: " + run.stdout[-4000:] + run.stderr[-2000:]
