"""``make bench``: run every benchmark and write bench/results/REPORT.md, results.json and plots.

Each benchmark module offers ``run(quick: bool) -> list[dict]``; a figure is a dict with
``name, value, unit, reference, ratio, target, passed, runs, spread`` — a ratio taken in one run
against its reference, the median of repeated runs, and the spread (min–max) of those runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# Order: cheap first, so a failure late still leaves the early figures in the report.
MODULES = [
    "bench.import_cost",
    "bench.snapshot_mlmd",
    "bench.delivery",
    "bench.gated_rollout",
    "bench.readiness",
    "bench.serving",
    "bench.dataplane",
    "bench.warm_start",
    "bench.multi_model",
    "bench.end_to_end",
    "bench.containers",
]


def run_all(quick: bool, only: list[str] | None = None) -> list[dict]:
    figures: list[dict] = []
    for module_name in MODULES:
        if only and not any(o in module_name for o in only):
            continue
        started = time.monotonic()
        print(f"== {module_name}", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(module_name)
            for figure in module.run(quick=quick):
                figure.setdefault("benchmark", module_name.removeprefix("bench."))
                figures.append(figure)
        except Exception as e:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            figures.append({"benchmark": module_name.removeprefix("bench."),
                            "name": f"{module_name} failed", "value": None, "unit": "",
                            "reference": None, "ratio": None, "target": "runs",
                            "passed": False, "runs": 0, "spread": str(e)})
        print(f"   {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return figures


def write_report(figures: list[dict], seconds: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "seconds": round(seconds, 1),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    tmp = RESULTS / "results.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "figures": figures}, indent=2, default=str))
    tmp.replace(RESULTS / "results.json")
    lines = [
        "# kfp-serve benchmark report",
        "",
        f"Run {meta['date']} on {meta['cpus']} CPUs, Python {meta['python']}; "
        f"whole run {meta['seconds']} s. Each ratio is measured against its reference in the "
        "same run; value is the median of `runs` repeats, spread is min–max.",
        "",
        "| benchmark | figure | value | reference | ratio | target | met | runs | spread |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        lines.append(
            f"| {f.get('benchmark', '')} | {f['name']} | {fmt(f.get('value'))} {f.get('unit', '')} "
            f"| {fmt(f.get('reference'))} | {fmt(f.get('ratio'))} | {f.get('target', '')} "
            f"| {'yes' if f.get('passed') else 'NO'} | {f.get('runs', '')} "
            f"| {f.get('spread', '')} |"
        )
    plots = plot(figures)
    if plots:
        lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    (RESULTS / "REPORT.md").write_text("\n".join(lines) + "\n")


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def plot(figures: list[dict]) -> list[Path]:
    """Bar charts, ours beside the reference, one per unit (req/s, ms, …)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for title, unit in (("throughput", "req/s"), ("latency", "ms")):
        chosen = [f for f in figures if f.get("unit") == unit and f.get("value") is not None
                  and isinstance(f.get("reference"), (int, float))]
        if not chosen:
            continue
        fig, ax = plt.subplots(figsize=(11, 0.5 * len(chosen) + 1.5))
        labels = [f["name"].split(" (")[0] for f in chosen]
        y = range(len(chosen))
        # A linear axis starting at zero, so bar lengths compare honestly.
        ax.barh([i + 0.2 for i in y], [float(f["value"]) for f in chosen], height=0.4,
                label="kfp-serve")
        ax.barh([i - 0.2 for i in y], [float(f["reference"]) for f in chosen], height=0.4,
                label="reference (MLServer, or the predictor alone for the transformer hop)")
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.set_xlabel(unit)
        ax.legend(fontsize=8)
        ax.set_title(f"kfp-serve {title} vs reference, same run (16 connections unless noted)")
        fig.tight_layout()
        path = RESULTS / f"{title}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller data")
    parser.add_argument("--only", nargs="*", help="substrings of benchmark module names")
    args = parser.parse_args()
    started = time.monotonic()
    figures = run_all(args.quick, args.only)
    write_report(figures, time.monotonic() - started)
    print((RESULTS / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
