"""Show an artifact's lineage (``kfp_serve.artifacts.lineage``) as table rows or a PNG graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def lineage_rows(graph: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(relation, what, id, detail) rows, from where the artifact came from to where it went."""
    art = graph["artifact"]
    rows = [("artifact", f"{art['kind']} {art['name']} {art['version']}", str(art["id"]),
             art.get("uri") or "")]
    if graph.get("experiment"):
        rows.append(("experiment", graph["experiment"], "", ""))
    if graph.get("run"):
        rows.append(("pipeline run", graph["run"], "", ""))
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
        where = dep["endpoint"] + (f" ({dep['namespace']})" if dep.get("namespace") else "")
        rows.append(("served by", where, str(dep["execution_id"]), dep.get("url") or ""))
    return rows


def draw_lineage(graph: dict[str, Any], path: Path) -> Path:
    """Draw the lineage as three columns: sources → the artifact → what uses it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = lineage_rows(graph)
    upstream = [r for r in rows if r[0] in ("experiment", "pipeline run", "produced by", "input")]
    downstream = [r for r in rows if r[0] in ("snapshot", "served by")]
    center = rows[0]
    height = max(len(upstream), len(downstream), 1)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.9 * height))
    ax.set_axis_off()
    ax.set_xlim(0, 3)
    ax.set_ylim(-0.5, height - 0.5)

    def box(x: float, y: float, row: tuple[str, str, str, str], color: str) -> None:
        label = f"{row[0]}\n{_short(row[1])}" + (f"\nid {row[2]}" if row[2] else "")
        ax.text(x, y, label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": color, "edgecolor": "#555"})

    middle = (height - 1) / 2
    box(1.5, middle, center, "#ffe8a3")
    for i, row in enumerate(upstream):
        y = height - 1 - i * (height / max(len(upstream), 1))
        box(0.45, y, row, "#cfe3ff")
        ax.annotate("", xy=(1.15, middle), xytext=(0.8, y), arrowprops={"arrowstyle": "->"})
    for i, row in enumerate(downstream):
        y = height - 1 - i * (height / max(len(downstream), 1))
        box(2.55, y, row, "#d4f5d4")
        ax.annotate("", xy=(2.2, y), xytext=(1.85, middle), arrowprops={"arrowstyle": "->"})
    ax.set_title(f"lineage of {center[1]} (id {center[2]})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(text: str, width: int = 38) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]
