"""Turn pytest-benchmark JSON files into the markdown ratio table and a PNG chart.

    python benchmarks/report.py trie.json beam.json ... --markdown table.md --png ratios.png

A benchmark names its implementation by ``extra_info["impl"]``, an ``impl`` parameter, or the last
word of its test name (``test_mask_pyfastseq`` / ``test_mask_transformers``); pyfastseq rows are
paired with every peer row of the same test and parameters. A benchmark that timed its peer itself
records ``extra_info["peer"]`` and ``extra_info["peer_median_s"]`` (or ``peer_min_s``, against its own
fastest round) instead. A GPU kernel benchmark (bench_cuda.py) records its CUDA-event time as
``kernel_s`` and each peer's as ``<peer>_s`` beside ``ratio_vs_<peer>``; with ``gbps`` and
``pct_of_peak`` it also gets a row in the bandwidth table, with ``step_with_bookkeeping_s`` where
it records one. A benchmark that also records the GPU's own time per call as ``device_s`` gets a
second row, "<test>, GPU time", comparing those.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

OURS = "pyfastseq"


@dataclass
class Row:
    what: str
    case: str
    peer: str
    ours_s: float
    peer_s: float
    gbps: float | None = None
    pct_of_peak: float | None = None
    whole_step_s: float | None = None  # a beam step with the search's bookkeeping

    @property
    def ratio(self) -> float:
        return self.peer_s / self.ours_s


def _split_impl(bench: dict) -> tuple[str, str]:
    """(test name without the implementation, implementation)."""
    base = bench["name"].split("[")[0]
    params = bench.get("params") or {}
    if "impl" not in params:
        base, _, suffix = base.rpartition("_")
    impl = bench.get("extra_info", {}).get("impl") or params.get("impl") or suffix
    return base, str(impl)


def _case(bench: dict) -> str:
    params = {k: v for k, v in (bench.get("params") or {}).items() if k != "impl"}
    return ", ".join(f"{k}={v}" for k, v in params.items())


def rows_from(files: list[Path]) -> tuple[list[Row], str]:
    rows: list[Row] = []
    machine = ""
    groups: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for path in files:
        data = json.loads(path.read_text())
        info = data.get("machine_info", {})
        machine = machine or f"{info.get('cpu', {}).get('brand_raw', info.get('processor', ''))}".strip()
        module = Path(data["benchmarks"][0]["fullname"].split("::")[0]).stem if data["benchmarks"] else ""
        for bench in data["benchmarks"]:
            median = bench["stats"]["median"]
            extra = bench.get("extra_info", {})
            what = f"{module}: {re.sub(r'^test_', '', bench['name'].split('[')[0])}"
            if "peer_median_s" in extra or "peer_min_s" in extra:
                ours, peer_s = ((median, extra["peer_median_s"]) if "peer_median_s" in extra
                                else (bench["stats"]["min"], extra["peer_min_s"]))
                rows.append(Row(what, _case(bench), extra.get("peer", "peer"), ours, peer_s))
                if "model_alone_s" in extra:  # the model's calls alone: the ceiling on the ratio
                    rows.append(Row(f"{what}, its model calls alone", _case(bench), extra.get("peer", "peer"),
                                    extra["model_alone_s"], peer_s))
                continue
            if "kernel_s" in extra:
                what = f"{module}: {extra.get('kernel', what)}"
                peers = [key.removeprefix("ratio_vs_") for key in extra if key.startswith("ratio_vs_")]
                for peer in peers or [""]:
                    rows.append(Row(what, extra.get("shape", _case(bench)), peer, extra["kernel_s"],
                                    extra.get(f"{peer}_s", float("nan")), extra.get("gbps"), extra.get("pct_of_peak"),
                                    extra.get("step_with_bookkeeping_s")))
                continue
            base, impl = _split_impl(bench)
            groups[(module, base, _case(bench))][impl] = median
            if "device_s" in extra:  # the GPU's own time, beside the call's
                groups[(module, f"{base}, GPU time", _case(bench))][impl] = extra["device_s"]
    for (module, base, case), impls in groups.items():
        if OURS not in impls:
            continue
        for impl, median in impls.items():
            if impl != OURS:
                rows.append(Row(f"{module}: {re.sub(r'^test_', '', base)}", case, impl, impls[OURS], median))
    return rows, machine


def markdown(rows: list[Row], machine: str) -> str:
    lines = [f"Machine: {machine or 'unknown'}", "", "| what | case | peer | pyfastseq | peer time | ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r.peer:
            lines.append(f"| {r.what} | {r.case} | {r.peer} | {_fmt(r.ours_s)} | {_fmt(r.peer_s)} | {r.ratio:.1f}x |")
    kernels = {(r.what, r.case): r for r in rows if r.gbps is not None}
    if kernels:
        lines += ["", "| kernel | shape | time | GB/s | % of peak | with the search's bookkeeping |",
                  "|---|---|---|---|---|---|"]
        for r in kernels.values():
            pct = "" if r.pct_of_peak is None else f"{r.pct_of_peak:.0f}%"
            whole = "" if r.whole_step_s is None else _fmt(r.whole_step_s)
            lines.append(f"| {r.what} | {r.case} | {_fmt(r.ours_s)} | {r.gbps:.0f} | {pct} | {whole} |")
    return "\n".join(lines) + "\n"


def _fmt(seconds: float) -> str:
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.what} [{r.case}] vs {r.peer}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.2))
    ax.barh(range(len(rows)), [r.ratio for r in rows], color=["#2a7" if r.ratio >= 1 else "#c44" for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("pyfastseq speed-up: peer time / pyfastseq time (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json outputs")
    parser.add_argument("--markdown", type=Path, help="write the table here (default: print it)")
    parser.add_argument("--png", type=Path, help="write a bar chart of the ratios here")
    args = parser.parse_args(argv)
    rows, machine = rows_from(args.json)
    table = markdown(rows, machine)
    if args.markdown:
        args.markdown.write_text(table)
    else:
        print(table)
    compared = [r for r in rows if r.peer]
    if args.png and compared:
        chart(compared, args.png)


if __name__ == "__main__":
    main()
