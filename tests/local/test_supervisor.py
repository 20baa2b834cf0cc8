"""The one process supervisor of local serving, on real processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kfp_serve.locks import try_exclusive
from kfp_serve.serving.backends.local import supervisor
from kfp_serve.serving.backends.local.registry import ProcessRecord


def _start(tmp_path: Path, code: str, name: str = "p") -> tuple[ProcessRecord, Path]:
    log = tmp_path / "logs" / f"{name}.log"
    proc = supervisor.start_detached(
        [sys.executable, "-c", code], log=log, env=dict(os.environ), cwd=tmp_path
    )
    return ProcessRecord.started(proc, name, 0, log), log


def test_a_detached_process_has_its_own_session_and_writes_only_to_its_log(
    tmp_path: Path,
) -> None:
    record, log = _start(
        tmp_path, "import sys, time; print('hello', flush=True); "
        "print('oops', file=sys.stderr, flush=True); time.sleep(60)",
    )
    try:
        assert record.alive()
        assert os.getsid(record.pid) == record.pid != os.getsid(0)
        assert os.readlink(f"/proc/{record.pid}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{record.pid}/fd/1") == str(log)
        deadline = time.monotonic() + 30
        while "oops" not in supervisor.log_tail(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.log_tail(log).splitlines() == ["hello", "oops"]
    finally:
        supervisor.stop([record], grace=2.0)
    assert not record.alive()


def test_stop_kills_what_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    # The process ignores SIGTERM and forks a grandchild in its group: both must go.
    record, log = _start(
        tmp_path, "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pid = os.fork(); pid and print(pid, flush=True); time.sleep(60)",
    )
    deadline = time.monotonic() + 30
    while not supervisor.log_tail(log).strip().isdigit() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(supervisor.log_tail(log).strip())
    started = time.monotonic()
    supervisor.stop([record], grace=0.3)
    assert not record.alive()
    assert supervisor.start_time(grandchild) is None
    assert time.monotonic() - started < 30  # it did not wait forever for a SIGTERM


def test_stop_kills_a_worker_that_ignores_sigterm_after_its_leader_obeyed(tmp_path: Path) -> None:
    # The leader exits on SIGTERM at once; the worker it forked ignores SIGTERM. Stopping the
    # leader must not orphan the worker: it is killed after the grace period.
    record, log = _start(
        tmp_path, "import os, signal, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN); print(os.getpid(), flush=True)\n"
        "time.sleep(60)",
    )
    deadline = time.monotonic() + 30
    while not supervisor.log_tail(log).strip().isdigit() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(supervisor.log_tail(log).strip())
    assert sorted(supervisor.group_members(record.pid)) == sorted([record.pid, worker])
    supervisor.stop([record], grace=0.3)
    assert not record.alive()
    assert supervisor.start_time(worker) is None
    assert supervisor.group_members(record.pid) == []


def test_an_exit_code_is_read_from_our_own_child(tmp_path: Path) -> None:
    record, _ = _start(tmp_path, "raise SystemExit(7)")
    deadline = time.monotonic() + 30
    while supervisor.exit_code(record.pid) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert supervisor.exit_code(record.pid) == 7
    assert not record.alive()


def test_log_tail_reads_the_end_of_a_large_log(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("x" * 10_000_000 + "\n" + "".join(f"line {i}\n" for i in range(30)))
    assert supervisor.log_tail(log, lines=3) == "line 27\nline 28\nline 29"


def test_the_name_lock_admits_one_holder(tmp_path: Path) -> None:
    with supervisor.name_lock(tmp_path, "iris"):
        assert try_exclusive(tmp_path / ".iris.lock") is None
        other = try_exclusive(tmp_path / ".other.lock")
        assert other is not None
        other.release()
    again = try_exclusive(tmp_path / ".iris.lock")
    assert again is not None
    again.release()
