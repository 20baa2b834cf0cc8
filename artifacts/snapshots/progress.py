"""Progress display for snapshot work that takes more than a moment.

Nothing is printed for small, fast snapshots (the common case for a model directory): the bar
appears on stderr only once the work is large (``LARGE_BYTES``) or slow (``SLOW_SECONDS``), so
logs of KFP steps stay clean. Set ``KFP_SERVE_PROGRESS=0`` to never show it.
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType
from typing import Any

LARGE_BYTES = 50 * 1024 * 1024
SLOW_SECONDS = 1.0
PROGRESS_ENV = "KFP_SERVE_PROGRESS"


class ByteProgress:
    """A thread-safe byte counter that turns into a rich progress bar when worthwhile.

    Use as a context manager and call it with byte counts: ``with ByteProgress(...) as p: p(n)``.
    """

    def __init__(self, description: str, total: int, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = os.environ.get(PROGRESS_ENV, "1").lower() not in ("0", "false", "no")
        self.description = description
        self.total = total
        self.done = 0
        self._enabled = enabled
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        if enabled and total >= LARGE_BYTES:
            self._show()

    def _show(self) -> None:
        # rich is imported only when a bar is really shown (import cost ~0.1 s).
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total, completed=self.done)

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is None:
                if self._enabled and time.monotonic() - self._start > SLOW_SECONDS:
                    self._show()
                return
            self._bar.update(self._task, completed=self.done)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            if exc is None:
                self._bar.update(self._task, completed=self.total)
            self._bar.stop()
