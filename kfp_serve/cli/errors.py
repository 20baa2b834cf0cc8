"""Errors as a user of the CLI sees them: one ``error:`` line, a ``hint:`` line, exit code 1.

The hint names a ``kfp-serve`` command or flag, never a Python call; unknown names get a
did-you-mean. ``kfp-serve --debug`` shows the traceback instead.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

import typer
from rich.markup import escape

from kfp_serve.cli.ui import err

#: Set by ``kfp-serve --debug``: errors propagate with their traceback.
DEBUG = {"on": False}

# "predictor.container.resourcez: unknown field for V1Container; known fields are ['args', …]"
_UNKNOWN_FIELD = re.compile(r"^(?P<path>[\w.\[\]]+): unknown .*?known fields are \[(?P<known>.*)\]")
# The exception line Python prints last in a failed step's log.
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(?P<type>\w*(?:Error|Exception)): (?P<message>.+)$")
# "model 'x' version '1.0.0' already exists (id 3) with different content"
_VERSION_CONFLICT = re.compile(
    r"(?P<kind>model|transformer) '(?P<name>[^']+)' version '(?P<version>[^']+)' already "
    r"exists.*different content"
)

#: The library's advice to Python callers, and what a CLI user types instead.
_CLI_WORDING = {
    "none (submit one with Model(...).submit_artifact())":
        "none (`kfp-serve run PIPELINE` trains and records one)",
    "serve(..., dry_run=True) checks the same rules":
        "`kfp-serve serve MODEL_ID --dry-run` checks the same rules",
    "wait for serve() to finish": "wait for `kfp-serve serve` to finish",
}


class CliError(Exception):
    """An error with the command-line fix spelled out.

    Args:
        message: What went wrong, naming the value (one line).
        hint: What to type instead (a command or a flag), or None.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def did_you_mean(value: str, choices: Iterable[str]) -> str | None:
    """``"did you mean 'limits'?"`` for the closest of ``choices``, or None."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def explain(error: BaseException) -> CliError:
    """The one-line message and hint for an error kfp-serve raised on purpose."""
    if isinstance(error, CliError):
        return error
    from kfp_serve.pipelines.local_run import PipelineRunError

    if isinstance(error, PipelineRunError):
        return _pipeline_failure(error)
    message = _first_line(str(error))
    return CliError(_in_cli_terms(message), _hint_for(message))


def _in_cli_terms(message: str) -> str:
    """The library's message without its advice to Python callers (the hint replaces it)."""
    if match := _VERSION_CONFLICT.search(message):
        return (f"{match.group('kind')} {match.group('name')!r} version "
                f"{match.group('version')!r} already exists with different content")
    for python, cli in _CLI_WORDING.items():
        message = message.replace(python, cli)
    return message


def _hint_for(message: str) -> str | None:
    from kfp_serve.artifacts.names import next_patch

    if match := _VERSION_CONFLICT.search(message):
        kind, version = match.group("kind"), match.group("version")
        return (f"pass --param {kind}_version={next_patch(version)}, or --new-version to "
                "record new content under the patch version after the latest recorded one")
    if match := _UNKNOWN_FIELD.match(message):
        field = match.group("path").rsplit(".", 1)[-1]
        known = [k.strip().strip("'\"") for k in match.group("known").split(",")]
        suggestion = did_you_mean(field, known)
        if suggestion:
            return f"{suggestion} (in --config / --param serve_config)"
    if "no local endpoint named" in message:
        # The message says where it looked and how to list the endpoints: say how to start one.
        return "`kfp-serve serve MODEL_ID` or `kfp-serve run PIPELINE` starts an endpoint"
    if "no artifact with id" in message:
        return "run `kfp-serve models` to list the recorded artifacts"
    return None


def _pipeline_failure(error: Any) -> CliError:
    """A failed step: the exception its log ends with, and where the full log is."""
    cause = None
    for line in reversed(_log_lines(error.log_file)):
        if match := _EXCEPTION_LINE.match(line.strip()):
            cause = match.group("message")
            break
    step = error.step or "?"
    cause = cause or _first_line(str(error))
    message = f"step {step!r} failed: {_in_cli_terms(cause)}"
    hint = _hint_for(cause)
    log_hint = f"full log: {error.log_file}"
    return CliError(message, f"{hint}; {log_hint}" if hint else log_hint)


def _log_lines(path: Any) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def report(error: CliError) -> None:
    """Print ``error:`` and ``hint:`` lines on stderr (as text: "[...]" stays as is)."""
    err.print(f"error: {escape(str(error))}", highlight=False, soft_wrap=True)
    if error.hint:
        err.print(f"hint: {escape(error.hint)}", highlight=False, soft_wrap=True)


def fails_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors kfp-serve raises on purpose into ``error:``/``hint:`` lines, exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kfp_serve.errors import KfpServeError

        try:
            return command(*args, **kwargs)
        except (CliError, KfpServeError, ValueError, OSError, KeyError) as e:
            if DEBUG["on"]:
                raise
            report(explain(e) if not isinstance(e, KeyError) else CliError(str(e.args[0])))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper
