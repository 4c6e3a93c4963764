"""Coverage-guided fuzzing of pyfastseq's untrusted-input entry points with atheris (libFuzzer).

    python fuzz/fuzz.py TARGET [libFuzzer flags] [CORPUS_DIR ...]

TARGET names an entry of ``TARGETS`` in python_tests/test_fuzz.py: each is a hypothesis property,
and ``fuzz_one_input`` turns libFuzzer's bytes into its arguments, so the harness and the CI
property suite share one definition of valid input and of an acceptable rejection. A property
failure or a crash stops the run and leaves libFuzzer's crash-* reproducer. The package's Python is
instrumented for coverage; the native core runs uninstrumented (atheris needs a clang libFuzzer
build for that), so its memory errors are caught by running this harness on an ASan build.
With FUZZ_STATS=path, executions, calls reaching the entry point (inputs that hypothesis could
turn into arguments) and rejections by class are kept up to date there.
"""

import json
import os
import sys

import atheris
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python_tests"))
with atheris.instrument_imports(include=["pyfastseq"]):
    import pyfastseq  # noqa: F401
import test_fuzz  # noqa: E402

settings.register_profile("fuzz", deadline=None, database=None, suppress_health_check=list(HealthCheck))
settings.load_profile("fuzz")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in test_fuzz.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(test_fuzz.TARGETS)}}} [libFuzzer flags] [corpus dirs]")
    fuzz_one_input = test_fuzz.TARGETS[sys.argv.pop(1)].hypothesis.fuzz_one_input
    stats_path = os.environ.get("FUZZ_STATS")
    runs = 0

    def one_input(data: bytes) -> None:
        nonlocal runs
        fuzz_one_input(data)
        runs += 1
        if stats_path:  # libFuzzer ends the process without Python's exit handlers: write as we go
            with open(stats_path, "w") as f:
                json.dump({"runs": runs, "calls": test_fuzz.CALLS["calls"], "rejected": test_fuzz.REJECTED}, f)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
