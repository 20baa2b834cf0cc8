"""Run the fault and load tests many times in a row with a CPU hog beside them (not in make test).

A flaky test is a bug; this is how issue 11 checks that the fault and load tests are not:
``python -m tests.reliability.repeat_with_hog [--runs 30]`` runs ``test_faults.py`` and
``test_load.py`` (each run a fresh pytest process, so a fresh KFP_SERVE_HOME and fresh servers)
while one process keeps a core busy, and prints each run's result and duration, then the
pass/fail counts. The hog is bounded (it ends by itself even if this script is killed).
Logs of failed runs are kept under ``--logs``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from bench.loadgen import cpu_hog

TESTS = ["tests/reliability/test_faults.py", "tests/reliability/test_load.py"]
#: Upper bound of one run (the hog is renewed per run and outlives it by no more than this).
RUN_LIMIT = 900.0
REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    """Run the loop; exit status 1 if any run failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--hogs", type=int, default=1, help="busy processes beside the tests")
    parser.add_argument("--logs", type=Path, default=Path("/tmp/kfp-serve-repeat-with-hog"))
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    results: list[tuple[int, bool, float, str]] = []
    with Progress(console=console) as progress:
        task = progress.add_task("runs", total=args.runs)
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            with cpu_hog(RUN_LIMIT, args.hogs):
                proc = subprocess.run(  # noqa: S603 - fixed argv
                    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=RUN_LIMIT,
                    check=False,
                )
            took = time.monotonic() - started
            summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
            ok = proc.returncode == 0
            if not ok:
                (args.logs / f"run-{run:02d}.log").write_text(proc.stdout + proc.stderr)
            results.append((run, ok, took, summary))
            verdict = "PASS" if ok else "FAIL"
            progress.console.print(f"run {run:2d}: {verdict} {took:5.0f} s  {summary}")
            progress.advance(task)
    durations = [r[2] for r in results]
    passed = sum(1 for r in results if r[1])
    console.print(
        f"{passed} passed, {len(results) - passed} failed of {len(results)} runs with "
        f"{args.hogs} CPU hog(s); run time median {statistics.median(durations):.0f} s, "
        f"min {min(durations):.0f} s, max {max(durations):.0f} s"
    )
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
