"""Run every atheris target (or the named ones) for a fixed time and report what each did.

    python fuzz/run.py [--seconds S] [--json OUT] [TARGET ...]

Each target starts from its seed corpus in fuzz/corpus/<target>/ (kept in the repository, never
written to: new inputs go to a scratch directory) and runs for ``S`` seconds. The report gives
executions per target and the rejected inputs by class; the exit status is non-zero when any target
found a crash or a property failure (its reproducer is left in the scratch directory, named).
Extra environment (e.g. LD_PRELOAD of a sanitizer runtime) passes through to the targets.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["trie_build", "trie_load", "mask", "assignment", "lcs"]


def run_target(target: str, seconds: int, scratch: str) -> dict:
    work = os.path.join(scratch, target)
    os.makedirs(work)
    stats = os.path.join(scratch, f"{target}.json")
    command = [
        sys.executable, os.path.join(HERE, "fuzz.py"), target, f"-max_total_time={seconds}", "-timeout=60",
        # hypothesis draws several bytes per argument: long inputs from the start, or most are too short
        "-rss_limit_mb=4096", "-max_len=4096", "-len_control=0", f"-artifact_prefix={work}/", work,
        os.path.join(HERE, "corpus", target),
    ]
    proc = subprocess.run(command, env={**os.environ, "FUZZ_STATS": stats}, capture_output=True, text=True)
    done = re.search(r"Done (\d+) runs", proc.stderr)
    counts = json.load(open(stats)) if os.path.exists(stats) else {"calls": 0, "rejected": {}}
    result = {"target": target, "runs": int(done.group(1)) if done else None, "calls": counts["calls"],
              "rejected": counts["rejected"], "returncode": proc.returncode}
    if proc.returncode != 0:
        result["log_tail"] = proc.stderr[-4000:]
        found = [f for f in os.listdir(work) if f.startswith(("crash-", "timeout-", "oom-"))]
        result["artifacts"] = [os.path.join(work, f) for f in found]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    scratch = tempfile.mkdtemp(prefix="pyfastseq-fuzz-")
    results = [run_target(t, args.seconds, scratch) for t in args.targets or TARGETS]
    for r in results:
        status = "ok" if r["returncode"] == 0 else f"FAILED (exit {r['returncode']})"
        print(f"{r['target']:>11}: {r['runs']} executions, {r['calls']} calls, "
              f"{sum(r['rejected'].values())} rejected, {status}")
        for kind, count in sorted(r["rejected"].items(), key=lambda kv: -kv[1]):
            print(f"{count:>19}  {kind}")
        if r["returncode"]:
            print(r["log_tail"], "\nreproducers:", *r["artifacts"], sep="\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return int(any(r["returncode"] for r in results))


if __name__ == "__main__":
    sys.exit(main())
