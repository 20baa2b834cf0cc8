"""KServe canary traffic: reading an InferenceService's revisions and planning promote/rollback.

Pure functions over the InferenceService object, with KServe's semantics exactly:

* **traffic N**: set ``canaryTrafficPercent: N`` — the latest ready revision gets N %, the
  latest rolled-out revision the rest;
* **promote**: remove ``canaryTrafficPercent`` — the latest revision takes all traffic and
  becomes the latest rolled-out one;
* **rollback**: ``canaryTrafficPercent: 0`` — the latest rolled-out (stable) revision takes all
  traffic again, also while the new revision is not Ready.

The status fields are the ones KServe writes under ``status.components.<component>``:
``latestCreatedRevision``, ``latestReadyRevision``, ``latestRolledoutRevision``,
``previousRolledoutRevision`` and ``traffic`` (a list of ``{revisionName, percent, tag,
latestRevision}``, possibly naming one revision twice, whose shares add up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kfp_serve.serving.errors import ServingError

CANARY_FIELD = "canaryTrafficPercent"
COMPONENTS = ("predictor", "transformer", "explainer")
PROMOTE = "promote"
ROLLBACK = "rollback"
TRAFFIC = "traffic"


@dataclass(frozen=True)
class RolloutState:
    """One component's revisions and where its traffic goes.

    Attributes:
        component: "predictor", "transformer" or "explainer".
        canary_percent: ``spec.<component>.canaryTrafficPercent``, None when unset.
        latest_created: The newest revision (it may not be Ready).
        latest_ready: The newest Ready revision.
        latest_rolled_out: The revision that last took 100 % (the stable one during a canary).
        previous_rolled_out: The rolled-out revision before it.
        traffic: Percent per revision name, as routed now.
        observed_generation: The generation the controller has reconciled.
        generation: The object's generation.
    """

    component: str
    canary_percent: int | None
    latest_created: str | None
    latest_ready: str | None
    latest_rolled_out: str | None
    previous_rolled_out: str | None
    traffic: dict[str, int] = field(default_factory=dict)
    observed_generation: int | None = None
    generation: int = 1

    @property
    def canary_in_progress(self) -> bool:
        """A newer revision than the stable one exists and the stable one still serves."""
        return bool(
            self.latest_rolled_out
            and self.latest_created
            and self.latest_created != self.latest_rolled_out
        )

    def percent(self, revision: str | None) -> int:
        return self.traffic.get(revision or "", 0)


def rollout_state(obj: dict[str, Any], component: str = "predictor") -> RolloutState:
    """The ``component``'s rollout state of an InferenceService object."""
    spec = (obj.get("spec") or {}).get(component) or {}
    status = obj.get("status") or {}
    comp = (status.get("components") or {}).get(component) or {}
    traffic: dict[str, int] = {}
    for target in comp.get("traffic") or []:
        name = target.get("revisionName")
        if name:
            traffic[name] = traffic.get(name, 0) + int(target.get("percent") or 0)
    return RolloutState(
        component=component,
        canary_percent=spec.get(CANARY_FIELD),
        latest_created=comp.get("latestCreatedRevision"),
        latest_ready=comp.get("latestReadyRevision"),
        latest_rolled_out=comp.get("latestRolledoutRevision"),
        previous_rolled_out=comp.get("previousRolledoutRevision"),
        traffic=traffic,
        observed_generation=status.get("observedGeneration"),
        generation=(obj.get("metadata") or {}).get("generation", 1),
    )


def _components(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec") or {}
    return [c for c in COMPONENTS if isinstance(spec.get(c), dict)]


def _patch(obj: dict[str, Any], value: int | None) -> dict[str, Any]:
    # A merge patch: null removes the field. resourceVersion makes it fail with 409 if the
    # object changed since it was read, instead of moving traffic on a spec we did not see.
    return {
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
        "spec": {c: {CANARY_FIELD: value} for c in _components(obj)},
    }


def _where(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"InferenceService {meta.get('name')!r} in namespace {meta.get('namespace')!r}"


def traffic_patch(obj: dict[str, Any], percent: object) -> dict[str, Any]:
    """The patch that sends ``percent`` % to the latest revision (the rest to the stable one).

    Raises:
        ServingError: ``percent`` is not an int in 0..100.
    """
    return _patch(obj, check_percent(percent))


def check_percent(percent: object) -> int:
    """``percent`` if it is an int in 0..100.

    Raises:
        ServingError: it is not (the message says what 0 and 100 mean).
    """
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ServingError(
            f"traffic percent must be an int from 0 to 100, got {percent!r} (0 is a rollback, "
            "100 sends everything to the latest revision; promote removes the canary)"
        )
    return percent


def promote_patch(obj: dict[str, Any]) -> dict[str, Any]:
    """The patch that lets the latest revision take all traffic.

    Raises:
        ServingError: no canary is set (nothing to promote).
    """
    state = rollout_state(obj)
    if state.canary_percent is None:
        raise ServingError(
            f"{_where(obj)} has no canary to promote: spec.predictor.{CANARY_FIELD} is not set, "
            f"so its latest revision {state.latest_created or '(none yet)'} already takes all "
            "traffic. Start one by serving a new model with a canary percent"
        )
    return _patch(obj, None)


def rollback_patch(obj: dict[str, Any]) -> dict[str, Any]:
    """The patch that sends all traffic back to the latest rolled-out revision.

    Raises:
        ServingError: there is no earlier revision to go back to.
    """
    state = rollout_state(obj)
    # A new transformer with the same model is a canary too: any component may carry it.
    if not any(rollout_state(obj, c).canary_in_progress for c in _components(obj)):
        if state.previous_rolled_out:
            raise ServingError(
                f"{_where(obj)} has no canary to roll back: revision {state.latest_rolled_out} "
                f"took all traffic when it was promoted, and KServe routes only to the latest "
                f"rolled-out revision. To go back to {state.previous_rolled_out}, serve its "
                "model again"
            )
        raise ServingError(
            f"{_where(obj)} has no previous revision to roll back to: "
            f"{state.latest_created or 'its first revision'} is the only one that has served"
        )
    return _patch(obj, 0)


def settled(obj: dict[str, Any], action: str, percent: int | None = None) -> bool:
    """True once the controller has reconciled ``action`` and traffic is where it should be."""
    generation = (obj.get("metadata") or {}).get("generation", 1)
    for comp in _components(obj):
        state = rollout_state(obj, comp)
        if (state.observed_generation or 0) < generation:
            return False
        if action == ROLLBACK:
            target, share = state.latest_rolled_out, 100
        elif action == PROMOTE:
            target, share = state.latest_created, 100
            if state.latest_ready != state.latest_created:
                return False
        else:
            if state.latest_ready != state.latest_created:
                return False
            target, share = state.latest_created, 100 if percent is None else percent
            if not state.latest_rolled_out or state.latest_rolled_out == target:
                share = 100  # nothing to split with: the only revision takes everything
        if state.percent(target) != share:
            return False
    return True
