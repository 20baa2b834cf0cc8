"""Show an artifact's lineage (``kfp_serve.artifacts.lineage``) as table rows or a PNG graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Relations drawn left of the artifact (where it came from) and right of it (what uses it).
UPSTREAM = ("experiment", "pipeline run", "trained on", "produced by", "input")
DOWNSTREAM = ("snapshot", "served by")
#: Points of text width per character at the PNG's font size, to size the figure to its labels.
_CHAR_WIDTH_INCHES = 0.075


def training_row(art: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """("trained on", dataset, "", metrics) from the tags a pipeline's train step recorded."""
    from kfp_serve.components.ops import DATASET_TAG, recorded_metrics

    tags = art.get("tags") or {}
    metrics = recorded_metrics(tags)
    if DATASET_TAG not in tags and not metrics:
        return None
    detail = ", ".join(f"{k}={_metric(v)}" for k, v in metrics.items())
    return ("trained on", f"step train, dataset {tags.get(DATASET_TAG, '?')}", "", detail)


def lineage_rows(graph: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(relation, what, id, detail) rows, from where the artifact came from to where it went."""
    art = graph["artifact"]
    rows = [("artifact", f"{art['kind']} {art['name']} {art['version']}", str(art["id"]),
             art.get("uri") or "")]
    if graph.get("experiment"):
        rows.append(("experiment", graph["experiment"], "", ""))
    if graph.get("run"):
        rows.append(("pipeline run", graph["run"], "", ""))
    if trained := training_row(art):
        rows.append(trained)
    producer = graph.get("produced_by")
    if producer:
        rows.append(("produced by", f"step {producer.get('step') or producer['type']}",
                     str(producer["execution_id"]), producer.get("create_time", "")))
    for item in graph.get("inputs", []):
        what = " ".join(str(item[k]) for k in ("kind", "name", "version") if item.get(k))
        rows.append(("input", what or item.get("type", ""), str(item["id"]), item.get("uri") or ""))
    for snap in graph.get("snapshots", []):
        rows.append(("snapshot", snap["uri"], str(snap["id"]), str(snap.get("digest") or "")))
    for dep in graph.get("deployments", []):
        rows.append(("served by", served_by(dep), str(dep["execution_id"]), dep.get("url") or ""))
    return rows


def served_by(dep: dict[str, Any]) -> str:
    """``iris 20 % from 2026-01-02 10:00:00 to now`` (or ``to <time> (stopped)``, or
    ``to <time> (process exited; last seen <time>)`` for one whose processes died)."""
    where = dep["endpoint"] + (f" ({dep['namespace']})" if dep.get("namespace") else "")
    start = _when(dep.get("start_time") or dep.get("create_time"))
    if dep.get("end_time"):
        why = [dep["end_reason"]] if dep.get("end_reason") else []
        if dep.get("last_seen"):
            why.append(f"last seen {_when(dep['last_seen'])}")
        end = _when(dep["end_time"]) + (f" ({'; '.join(why)})" if why else "")
    else:
        end = "now"
    return f"{where} {dep.get('traffic_percent', 100)} % from {start} to {end}"


def _when(iso: str | None) -> str:
    """An ISO time as ``2026-01-02 10:00:00`` (UTC, seconds)."""
    if not iso:
        return "?"
    from datetime import UTC, datetime

    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def box_label(row: tuple[str, str, str, str]) -> str:
    """A box's text: relation, the whole name (never cut), id and the train step's metrics."""
    relation, what, ident, detail = row
    lines = [relation, what]
    if ident:
        lines.append(f"id {ident}")
    if relation == "trained on" and detail:
        lines.append(detail)
    return "\n".join(lines)


def draw_lineage(graph: dict[str, Any], path: Path) -> Path:
    """Draw the lineage as three columns: sources → the artifact → what uses it.

    Each arrow is anchored to the edges of the two boxes it joins (matplotlib resolves an
    annotation's coordinates against the boxes when drawing), so arrows touch their boxes
    whatever the length of the names; the figure is as wide as its longest label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = lineage_rows(graph)
    upstream = [r for r in rows if r[0] in UPSTREAM]
    downstream = [r for r in rows if r[0] in DOWNSTREAM]
    center = rows[0]
    widest = max(len(line) for r in rows for line in box_label(r).splitlines())
    height = max(len(upstream), len(downstream), 1)
    fig = plt.figure(figsize=(max(10.0, 2.4 * widest * _CHAR_WIDTH_INCHES),
                              1.2 + 1.1 * height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, 3)
    ax.set_ylim(-0.6, height - 0.4)

    def box(x: float, y: float, row: tuple[str, str, str, str], color: str) -> Any:
        text = ax.text(x, y, box_label(row), ha="center", va="center", fontsize=8,
                       bbox={"boxstyle": "round,pad=0.4", "facecolor": color,
                             "edgecolor": "#555"})
        return text

    def arrow(source: Any, target: Any) -> None:
        # Coordinates relative to each box's patch: (1, 0.5) is the right edge's middle.
        ax.annotate("", xy=(0, 0.5), xycoords=target.get_bbox_patch(), xytext=(1, 0.5),
                    textcoords=source.get_bbox_patch(),
                    arrowprops={"arrowstyle": "-|>", "shrinkA": 0, "shrinkB": 0,
                                "color": "#333"})

    def ys(count: int) -> list[float]:
        step = height / max(count, 1)
        return [height - 1 - i * step - (step - 1) / 2 for i in range(count)]

    middle = (height - 1) / 2
    hub = box(1.5, middle, center, "#ffe8a3")
    fig.canvas.draw()  # lays out the boxes, so arrows can be anchored to their patches
    sources = [box(0.5, y, row, "#cfe3ff") for y, row in zip(ys(len(upstream)), upstream,
                                                              strict=True)]
    sinks = [box(2.5, y, row, "#d4f5d4") for y, row in zip(ys(len(downstream)), downstream,
                                                            strict=True)]
    fig.canvas.draw()
    for source in sources:
        arrow(source, hub)
    for sink in sinks:
        arrow(hub, sink)
    fig.suptitle(f"lineage of {center[1]} (id {center[2]})", y=0.99)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.3)
    plt.close(fig)
    return path


def _metric(value: str) -> str:
    try:
        return f"{float(value):.3f}"
    except ValueError:
        return value
