"""Where a UniLM training step's time goes on a GPU: bench_attention.py's step (new lengths, then
forward + backward through 12 attention layers, L = 512) under ``torch.profiler``, for pyfastseq and
for SDPA with a dense mask. Prints, per implementation, the step's time with and without a host
sync after each forward layer, then the operators and kernels by self CPU time and by self CUDA time.

    python benchmarks/profile_attention.py [--out attention_profile.txt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import training_step  # noqa: E402
from timing import best_time  # noqa: E402

L = 512


def synced(step):
    def run():
        step()
        torch.cuda.synchronize()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    lines = [f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}"]
    for impl in ("pyfastseq", "sdpa_mask"):
        step = synced(training_step(impl, L)[0])
        each_layer = synced(training_step(impl, L, sync_each_layer=True)[0])
        lines.append(f"\n== {impl}: step {1e3 * best_time(step, rounds=10):.2f} ms; with a host sync after each "
                     f"forward layer {1e3 * best_time(each_layer, rounds=10):.2f} ms")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
        table = prof.key_averages()
        lines.append(table.table(sort_by="self_cpu_time_total", row_limit=25))
        lines.append(table.table(sort_by="self_cuda_time_total", row_limit=15))
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
