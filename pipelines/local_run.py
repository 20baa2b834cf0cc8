"""Run a kfp-serve pipeline on this machine with ``kfp.local`` and summarise the result.

Every step runs as a subprocess of the current Python (``SubprocessRunner(use_venv=False)``:
the venv already holds kfp-serve, and nothing is pip-installed). Task artifacts go under
``$KFP_SERVE_HOME/pipeline-runs``. kfp.local prints each task's log and its start/finish lines
on stdout; :func:`run_local` captures that stream to a log file, times each step from it and
shows a one-line progress message per step instead.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp_serve.errors import KfpServeError

RUNS_DIR = "pipeline-runs"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_FINISH = re.compile(r"Task '([^']+)' finished with status (\w+)")
#: Outputs of a pipeline ending in a gated rollout, passed through to the summary.
ROLLOUT_OUTPUTS = ("decision", "promoted")
#: Log lines kept per step for an error message.
_TAIL = 15

Progress = Callable[[str, str, float | None], None]


class PipelineRunError(KfpServeError, RuntimeError):
    """A local pipeline run failed; the message names the step and quotes its log's end."""

    def __init__(self, message: str, *, step: str | None, log_file: Path) -> None:
        super().__init__(message)
        self.step = step
        self.log_file = log_file


@dataclass
class _StepClock:
    """Turns kfp.local's stdout into step timings, progress messages and a log file."""

    log: io.TextIOBase
    progress: Progress | None
    display: dict[str, str]
    clock: Callable[[], float] = time.monotonic
    started: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    tails: dict[str, list[str]] = field(default_factory=dict)
    current: str | None = None
    _buffer: str = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, line: str) -> None:
        if match := _START.search(line):
            step = self.display.get(match.group(1), match.group(1))
            self.current = step
            self.started[step] = self.clock()
            self.tails[step] = []
            self._report(step, "started", None)
        elif match := _FINISH.search(line):
            step = self.display.get(match.group(1), match.group(1))
            self.seconds[step] = self.clock() - self.started.get(step, self.clock())
            self.status[step] = match.group(2)
            self._report(step, match.group(2).lower(), self.seconds[step])
            self.current = None
        elif self.current is not None and line.strip():
            tail = self.tails[self.current]
            tail.append(line.strip())
            del tail[:-_TAIL]

    def _report(self, step: str, event: str, seconds: float | None) -> None:
        if self.progress is not None:
            self.progress(step, event, seconds)


def print_progress(step: str, event: str, seconds: float | None) -> None:
    """The default progress display: one line per step start and finish, on stderr."""
    if seconds is None:
        print(f"  ▶ {step} …", file=sys.stderr, flush=True)
    else:
        mark = "✓" if event == "success" else "✗"
        print(f"  {mark} {step} ({event}, {seconds:.1f} s)", file=sys.stderr, flush=True)


def coerce_params(pipeline: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the pipeline's inputs and convert strings to their types.

    Raises:
        ValueError: An unknown parameter or a value of the wrong type; the message lists the
            pipeline's parameters.
    """
    inputs = pipeline.component_spec.inputs or {}
    unknown = sorted(set(params) - set(inputs))
    if unknown:
        known = ", ".join(f"{k}={v.default!r}" for k, v in inputs.items())
        raise ValueError(f"unknown parameter(s) {unknown}; this pipeline takes: {known}")
    result: dict[str, Any] = {}
    for key, value in params.items():
        kind = inputs[key].type
        try:
            result[key] = _coerce(value, kind)
        except (TypeError, ValueError):
            raise ValueError(
                f"parameter {key!r} must be {kind.lower()}, got {value!r}"
            ) from None
    return result


def _coerce(value: Any, kind: str) -> Any:
    import json

    if kind == "String":
        # A JSON value given for a string parameter (a ServeConfig object) is passed as text.
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "Boolean":
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(value)
    if kind == "Integer":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if kind == "Float":
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    return value


def task_display_names(pipeline: Any) -> dict[str, str]:
    """Compiled task name (``snapshot-2``) -> display name (``snapshot-transformer``), also of
    the tasks inside a loop (each loop body is a DAG of its own)."""
    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    return {
        name: (task.task_info.name or name) for dag in dags for name, task in dag.tasks.items()
    }


def run_local(
    name: str, params: dict[str, Any] | None = None, *, progress: bool | Progress = True
) -> dict[str, Any]:
    """Run pipeline ``name`` locally end to end and return what it produced.

    Args:
        name: A key of ``kfp_serve.pipelines.PIPELINES`` (e.g. ``"sklearn-transformer"``).
        params: Pipeline parameters; strings are converted to the declared types.
        progress: True prints one line per step start/finish on stderr; a callable
            ``(step, event, seconds)`` receives them instead; False is silent.

    Returns:
        ``pipeline``, ``endpoint_url``, ``endpoint_name``, ``model_id``, ``transformer_id``
        (None without a transformer), ``models`` (a multi-model pipeline's hosted models, else
        None), ``smoke_verdict``, ``blessed`` (None without a smoke step), ``decision`` and
        ``promoted`` (a gated rollout's), ``wall_seconds``,
        ``step_seconds`` (display name -> seconds, in run order), ``pipeline_root`` and
        ``log_file`` (the full kfp.local output).

    Raises:
        KeyError: Unknown pipeline.
        ValueError: Unknown or ill-typed parameters.
        PipelineRunError: A step failed.
    """
    from kfp import local

    from kfp_serve.artifacts.home import state_dir
    from kfp_serve.pipelines import PIPELINES

    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; choose one of {sorted(PIPELINES)}")
    pipeline = PIPELINES[name]
    arguments = coerce_params(pipeline, params or {})
    root = state_dir() / RUNS_DIR
    root.mkdir(parents=True, exist_ok=True)
    log_file = root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}.log"
    reporter = print_progress if progress is True else (progress or None)
    _warm_serving()

    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
        raise_on_error=True,
    )
    started = time.monotonic()
    with open(log_file, "w") as log:
        clock = _StepClock(log=log, progress=reporter, display=task_display_names(pipeline))
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(clock):
                # kfp.local warns for every task whose image name lacks "python"; ours is a
                # Python image, so the warning is noise here.
                warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
                # Display names and caching options matter on a cluster only.
                warnings.filterwarnings("ignore", message=".*no effect in the current local runner")
                task = pipeline(**arguments)
        except RuntimeError as e:
            step = clock.current or _failed_step(clock)
            tail = "\n    ".join(clock.tails.get(step or "", [])[-_TAIL:])
            raise PipelineRunError(
                f"pipeline {name!r} failed at step {step!r}: {_first_line(e)}\n"
                f"  last log lines:\n    {tail}\n  full log: {log_file}",
                step=step, log_file=log_file,
            ) from e
    outputs = dict(task.outputs) if task.outputs else {}
    verdict = outputs.get("smoke_verdict")
    transformer_id = outputs.get("transformer_id")
    return {
        "pipeline": name,
        "endpoint_url": outputs.get("endpoint_url"),
        "endpoint_name": outputs.get("endpoint_name"),
        "model_id": _int(outputs.get("model_id")),
        "transformer_id": _int(transformer_id) if transformer_id is not None else None,
        # The hosted models of a multi-model pipeline (None for one model).
        "models": list(outputs["models"]) if outputs.get("models") is not None else None,
        "smoke_verdict": verdict,
        # A pipeline without a smoke step (sklearn-rollout) neither blessed nor failed it.
        "blessed": verdict == "blessed" if verdict is not None else None,
        **{key: outputs[key] for key in ROLLOUT_OUTPUTS if key in outputs},
        "wall_seconds": round(time.monotonic() - started, 2),
        "step_seconds": {k: round(v, 2) for k, v in clock.seconds.items()},
        "pipeline_root": str(root),
        "log_file": str(log_file),
    }


def _warm_serving() -> None:
    """Start the model servers' warm pool now: it imports while the first steps run, so the
    serve step forks ready servers instead of starting two interpreters."""
    from kfp_serve.serving.backends.base import LOCAL, default_backend_name

    if default_backend_name() == LOCAL:
        from kfp_serve.serving.runtime import launch

        launch.warm_up()


def _failed_step(clock: _StepClock) -> str | None:
    failed = [s for s, status in clock.status.items() if status != "SUCCESS"]
    return failed[-1] if failed else None


def _first_line(error: BaseException) -> str:
    text = _ANSI.sub("", str(error)).strip().splitlines()
    return text[0] if text else type(error).__name__


def _int(value: Any) -> int | None:
    # kfp.local may hand integers back as floats.
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
