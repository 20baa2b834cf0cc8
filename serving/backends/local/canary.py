"""KServe's canary semantics over a local endpoint's registry record (pure: no processes).

The cluster keeps revisions and ``status.components.predictor.traffic``; a local endpoint keeps
the same facts in :class:`EndpointRecord`: its revisions, ``traffic`` (percent per revision) and
``rolled_out`` (the revisions that took all traffic, the last being the stable one). This module
reads them as a :class:`RolloutState` and plans the traffic of ``traffic N``, ``promote`` and
``rollback`` exactly as :mod:`..traffic` plans the cluster's patches:

* **traffic N**: the latest revision gets N %, the stable (latest rolled-out) one the rest;
  at 100 the latest revision takes all traffic and becomes the stable one;
* **promote**: the canary field is removed, the latest revision takes all traffic;
* **rollback**: canary 0, the stable revision takes all traffic, also when the latest one no
  longer runs. The latest one keeps running with no traffic, as a 0 % revision does on a
  cluster, so ``traffic N`` or ``promote`` can resume it.

Every function takes ``alive`` (revision -> its servers run) from the caller, so the rules are
tested on plain records. The local backend and every backend built on this package (Docker)
apply the planned traffic with :func:`.rollout.commit`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfp_serve.serving.backends.local.registry import EndpointRecord, RevisionRecord, revision_name
from kfp_serve.serving.backends.traffic import (
    CANARY_FIELD,
    COMPONENTS,
    PROMOTE,
    ROLLBACK,
    TRAFFIC,
    RolloutState,
    check_percent,
)
from kfp_serve.serving.errors import ServingError

Alive = Callable[[RevisionRecord], bool]


@dataclass(frozen=True)
class Move:
    """What a traffic action changes: the new split and the latest revision's canary field."""

    traffic: dict[str, int]
    #: ``spec.<component>.canaryTrafficPercent`` of the latest revision afterwards (None: unset).
    canary_percent: int | None
    message: str


def stable(record: EndpointRecord) -> RevisionRecord | None:
    """The stable revision: the latest rolled-out one still in the record.

    A record written before rolled-out revisions were kept falls back to the revision with the
    most traffic other than the latest one (the latest one when it is alone).
    """
    for number in reversed(record.rolled_out):
        rev = record.revision(number)
        if rev is not None:
            return rev
    if record.rolled_out or not record.revisions:
        return None
    others = [r for r in record.active if r.revision != record.latest.revision]
    if others:
        return max(others, key=lambda r: record.traffic.get(str(r.revision), 0))
    return record.latest if record.latest in record.active else None


def canary_percent(record: EndpointRecord) -> int | None:
    """``spec.predictor.canaryTrafficPercent`` of the latest revision (None when unset)."""
    predictor = (record.latest.manifest.get("spec") or {}).get("predictor") or {}
    value = predictor.get(CANARY_FIELD)
    return int(value) if value is not None else None


def with_canary(manifest: dict[str, Any], percent: int | None) -> dict[str, Any]:
    """``manifest`` with every component's canary field set to ``percent`` (None removes it),
    the way the cluster's merge patch changes the spec."""
    result = copy.deepcopy(manifest)
    spec = result.get("spec") or {}
    for component in COMPONENTS:
        part = spec.get(component)
        if not isinstance(part, dict):
            continue
        if percent is None:
            part.pop(CANARY_FIELD, None)
        else:
            part[CANARY_FIELD] = percent
    return result


def rollout_state(record: EndpointRecord, alive: Alive) -> RolloutState:
    """The predictor's revisions and traffic, named and shaped as KServe reports them."""
    names = {r.revision: revision_name(record.name, r.revision) for r in record.revisions}
    running = [r for r in record.revisions if alive(r)]
    current = stable(record)
    previous = [n for n in record.rolled_out if current is None or n != current.revision]
    return RolloutState(
        component="predictor",
        canary_percent=canary_percent(record),
        latest_created=names[record.latest.revision],
        latest_ready=names[max(running, key=lambda r: r.revision).revision] if running else None,
        latest_rolled_out=names[current.revision] if current is not None else None,
        previous_rolled_out=(
            revision_name(record.name, previous[-1]) if previous else None
        ),
        traffic={names[int(k)]: v for k, v in record.traffic.items() if int(k) in names},
        observed_generation=record.generation,
        generation=record.generation,
    )


def plan_move(
    record: EndpointRecord, action: str, alive: Alive, percent: object = None
) -> Move:
    """The traffic after ``action`` (TRAFFIC with ``percent``, PROMOTE or ROLLBACK).

    Raises:
        ServingError: bad percent; nothing to promote or roll back; the revision that should
            take the traffic no longer runs.
    """
    where = f"local endpoint {record.name!r}"
    latest = record.latest
    base = stable(record)
    if action == ROLLBACK:
        if base is None or base.revision == latest.revision:
            previous = [n for n in record.rolled_out if n != latest.revision]
            if previous:
                raise ServingError(
                    f"{where} has no canary to roll back: revision {latest.revision} took all "
                    f"traffic when it was promoted, and revision {previous[-1]} was stopped "
                    "then. To go back to its model, serve it again"
                )
            raise ServingError(
                f"{where} has no previous revision to roll back to: revision "
                f"{latest.revision} is the only one that has served"
            )
        if not alive(base):
            raise ServingError(
                f"{where}: the stable revision {base.revision} no longer runs, so it cannot "
                "take the traffic back; serve its model again"
            )
        return Move(
            {str(base.revision): 100, str(latest.revision): 0},
            0,
            f"rolled back: revision {base.revision} ({model_label(base)}) takes all traffic, "
            f"revision {latest.revision} ({model_label(latest)}) none",
        )
    if action == PROMOTE:
        if canary_percent(record) is None:
            raise ServingError(
                f"{where} has no canary to promote: spec.predictor.{CANARY_FIELD} is not set, "
                f"so its latest revision {latest.revision} ({model_label(latest)}) already "
                "takes all traffic. Start one with rollout(name, model, canary=N) or "
                "`kfp-serve rollout NAME MODEL --canary N`"
            )
        new_percent: int | None = None
        share = 100
    elif action == TRAFFIC:
        share = new_percent = check_percent(percent)
    else:
        raise ValueError(f"unknown traffic action {action!r}")
    if share > 0 and not alive(latest):
        raise ServingError(
            f"{where}: its latest revision {latest.revision} no longer runs, so it cannot take "
            "traffic; `kfp-serve rollback` sends everything to the stable revision, or serve "
            "the model again"
        )
    if base is None or base.revision == latest.revision or share >= 100 or not alive(base):
        traffic = {str(latest.revision): 100}
        message = f"revision {latest.revision} ({model_label(latest)}) takes all traffic"
    else:
        traffic = {str(base.revision): 100 - share, str(latest.revision): share}
        message = (
            f"revision {latest.revision} ({model_label(latest)}) gets {share} %, revision "
            f"{base.revision} ({model_label(base)}) {100 - share} %"
        )
    return Move(traffic, new_percent, message)


def model_label(rev: RevisionRecord) -> str:
    """``iris 2.0.0`` (or ``model 7`` when the manifest names no model version)."""
    ids = rev.model_ids
    name = ids.get("model_name") or rev.model_name
    if ids.get("model_version"):
        return f"{name} {ids['model_version']}"
    return f"{name} (model {ids['model']})" if ids.get("model") else name


__all__ = [
    "Move",
    "canary_percent",
    "model_label",
    "plan_move",
    "rollout_state",
    "stable",
    "with_canary",
]
