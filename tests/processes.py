"""Finding live processes by their command line, for tests that check what was (not) started."""

from pathlib import Path

from kfp_serve.serving.backends.local.supervisor import start_time as process_start_time


def processes_mentioning(text: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and process_start_time(int(proc.name)) is not None:
                found.append(int(proc.name))
    return found
