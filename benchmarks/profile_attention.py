"""Where a UniLM training step's time goes on a GPU: bench_attention.py's step (new lengths, then
forward + backward through 12 attention layers, L = 512) under ``torch.profiler``, for pyfastseq and
for SDPA with a dense mask. Prints, per implementation, the step's wall time with and without a
host sync per layer, then the operators and kernels by self CPU time and by self CUDA time.

    python benchmarks/profile_attention.py [--out attention_profile.txt]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_attention import BATCH, STEP_LAYERS, build, make_inputs, random_lengths, run  # noqa: E402

L, D = 512, 64


def training_step(impl: str, sync_each_layer: bool = False):
    gen = torch.Generator().manual_seed(1)
    layers = [[t.requires_grad_() for t in make_inputs(L, D, seed)[:3]] for seed in range(STEP_LAYERS)]
    do = make_inputs(L, D)[3]
    batches = [random_lengths(BATCH, L, gen) for _ in range(8)]
    counter = iter(range(10**9))

    def step():
        prefix, seq = batches[next(counter) % len(batches)]
        meta = build(impl, prefix, seq, L)
        outs = []
        for q, k, v in layers:
            outs.append(run(impl, q, k, v, meta))
            if sync_each_layer:
                torch.cuda.synchronize()
        torch.autograd.backward(outs, [do] * STEP_LAYERS)
        torch.cuda.synchronize()

    return step


def wall_ms(step, rounds: int = 10) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    lines = [f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}"]
    for impl in ("pyfastseq", "sdpa_mask"):
        step = training_step(impl)
        lines.append(f"\n== {impl}: step {wall_ms(step):.2f} ms; with a host sync after each forward layer "
                     f"{wall_ms(training_step(impl, sync_each_layer=True)):.2f} ms")
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
