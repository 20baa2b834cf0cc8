"""How the CLI prints: tables for people, JSON or YAML for programs, one-line messages."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console()
err = Console(stderr=True)


class Output(StrEnum):
    """What ``--output`` accepts."""

    table = "table"
    json = "json"
    yaml = "yaml"


OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table (for people), json or yaml.")
]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Kubernetes namespace (cluster only).")
]


def new_table(*headers: str, **options: Any) -> Table:
    """A table whose cells wrap (fold) instead of being cut off with "…": ids, names and paths
    are what people copy."""
    table = Table(*headers, **options)
    for column in table.columns:
        column.overflow = "fold"
    return table


def show(table: Table) -> None:
    """Print ``table``; into a pipe or file as wide as it needs, one line per row (grep-able)."""
    if out.is_terminal:
        out.print(table)
        return
    needed = out.measure(table, options=out.options.update_width(100_000)).maximum
    # Console.print caps width= at the console's own width: a wider console does the job.
    Console(file=out.file, width=max(out.width, needed)).print(table)


def say(text: str) -> None:
    """One line of plain text on stdout (no markup, no wrapping: paths and URLs stay whole)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def dump(data: Any, output: Output) -> None:
    """``data`` as JSON or YAML on stdout, exactly (no wrapping, no colour)."""
    if output is Output.yaml:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    else:
        text = json.dumps(data, indent=2, default=str)
    out.file.write(text if text.endswith("\n") else text + "\n")


def render(rows: list[dict[str, Any]], output: Output, *, title: str | None = None) -> None:
    """Rows (dicts with the same keys) as a table, or as a JSON/YAML list."""
    if output is not Output.table:
        dump(rows, output)
        return
    headers = list(rows[0]) if rows else []
    table = new_table(*headers, title=title)
    for row in rows:
        table.add_row(*(escape(cell_text(v)) for v in row.values()))
    show(table)


def cell_text(value: Any) -> str:
    """A value as a table cell: "-" for nothing, ``k=v`` pairs for a mapping."""
    if value is None or (isinstance(value, str | dict | list) and not value):
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def model_ref(text: str) -> int | str:
    """A MODEL argument: an MLMD id (digits) or a reference ``name[:version|@alias]``."""
    return int(text) if text.isdigit() else text
