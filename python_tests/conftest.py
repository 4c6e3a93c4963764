import os
import subprocess
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter that imports the same pyfastseq as these tests: it
    runs beside that package, so a source checkout in the working directory cannot shadow an
    installed wheel (or the other way round)."""
    import pyfastseq

    beside = os.path.dirname(os.path.dirname(os.path.abspath(pyfastseq.__file__)))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=beside, env={**os.environ, **env}, capture_output=True, text=True
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


def devices():
    """CPU always; CUDA as a marked parameter that skips without a GPU."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


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
