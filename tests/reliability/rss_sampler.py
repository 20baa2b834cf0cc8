"""Resident memory of some processes, sampled from a process of its own.

``python -m tests.reliability.rss_sampler INTERVAL '{"role": pid, ...}'`` prints one JSON line
``[monotonic time, {"role": KiB, ...}]`` every INTERVAL seconds until its stdin is closed.
A sampler thread inside a test shares the GIL with whatever the test runs: beside 64 busy
clients on a loaded machine it got 3 samples in the last third of a run instead of 13. Its own
process is scheduled by the kernel alone, and CLOCK_MONOTONIC reads the same in every process.
"""

from __future__ import annotations

import json
import select
import sys
import time
from pathlib import Path


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def main(argv: list[str]) -> None:
    interval, pids = float(argv[0]), json.loads(argv[1])
    while True:
        row = [time.monotonic(), {role: rss_kib(pid) for role, pid in pids.items()}]
        print(json.dumps(row), flush=True)
        if select.select([sys.stdin], [], [], interval)[0]:
            return  # stdin closed (or written to): the test is done


if __name__ == "__main__":
    main(sys.argv[1:])
