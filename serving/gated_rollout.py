"""The gated rollout: a candidate model reaches production only if it earns it.

offline gate on held-out data → canary at N % → live analysis over a window → promote (and move
the alias) or roll back, with a verdict report. The steps are pure functions over plain values
(``load_gate``, ``held_out_metrics``, ``offline_gate``, ``RolloutReport``); ``gated_rollout``
is the thin driver that serves, watches and decides.

Two promises the driver keeps:

* nothing is served before the gate file is checked (unknown metric, contradicting bounds) and
  the offline gate passed;
* a run that stops mid-canary — an exception, Ctrl-C, SIGTERM (a pipeline step being
  cancelled) — leaves the endpoint on its stable revision: the canary is rolled back on the way
  out, and the alias is moved only after the promotion took effect.

The live window is read from the local router's mirror session (:mod:`.backends.local.mirror`):
the canary's own requests and the stable revision's requests mirrored to it. On a cluster there
is no such router: the window counts its own requests to both revisions, sent through KServe's
tag routing (:mod:`.cluster_live`); see ``live_source``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from kfp_serve.serving import gate
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.gate import GateError, LiveCriteria, LiveWindow, Threshold, Verdict

logger = logging.getLogger(__name__)

#: Decisions of a whole rollout (``RolloutReport.decision``).
PROMOTED = "promoted"
ROLLED_BACK = "rolled back"
REJECTED = "rejected offline"
SERVED = "served"  # nothing served yet: no stable revision to canary against

DEFAULT_CANARY = 20
DEFAULT_ALIAS = "champion"
#: Seconds between two reads of the live window.
POLL_INTERVAL = 0.2
#: Seconds the router gets to pick up a new mirror session.
MIRROR_START_TIMEOUT = 10.0

_GATE_KEYS = ("task", "offline", "canary", "live", "alias")
_LIVE_KEYS = tuple(f.name for f in fields(LiveCriteria))


@dataclass(frozen=True)
class GatePolicy:
    """Everything a gated rollout checks, from a gate file (``load_gate``).

    Attributes:
        thresholds: The offline gate's bounds, per metric.
        task: "classification" or "regression" (which metrics apply).
        canary: Percent of requests the candidate gets during the live window (1..99).
        live: The live analysis's window and limits.
        alias: The alias moved to the candidate when it is promoted.
    """

    thresholds: tuple[Threshold, ...]
    task: str = gate.CLASSIFICATION
    canary: int = DEFAULT_CANARY
    live: LiveCriteria = field(default_factory=LiveCriteria)
    alias: str = DEFAULT_ALIAS

    def __post_init__(self) -> None:
        if self.task not in gate.TASKS:
            raise GateError(f"gate task {self.task!r} is not one of {list(gate.TASKS)}")
        for t in self.thresholds:
            spec = gate.METRICS[t.metric]
            if spec.task != self.task:
                known = [n for n, s in gate.METRICS.items() if s.task == self.task]
                raise GateError(
                    f"gate offline.{t.metric} is a {spec.task} metric but the gate's task is "
                    f"{self.task}; use one of {', '.join(known)} (or set task: {spec.task})"
                )
        if isinstance(self.canary, bool) or not isinstance(self.canary, int) \
                or not 1 <= self.canary <= 99:
            raise GateError(
                f"gate canary must be a percent from 1 to 99 (the candidate's share of the live "
                f"window), got {self.canary!r}"
            )
        from kfp_serve.artifacts.names import validate_name

        try:
            validate_name(self.alias, "gate alias")
        except ValueError as e:
            raise GateError(str(e)) from e


def load_gate(source: str | Path | Mapping[str, Any]) -> GatePolicy:
    """A ``GatePolicy`` from a YAML/JSON file, a YAML/JSON string, or a mapping::

        task: classification
        offline:                 # metric: {min, max, max_change}
          accuracy: {min: 0.9, max_change: 0.01}
          log_loss: {max: 0.5}
        canary: 20               # percent for the candidate during the live window
        live: {window_requests: 500, window_seconds: 600, max_error_rate: 0.01,
               max_p99_ratio: 1.5, min_agreement: 0.95}
        alias: champion

    Raises:
        GateError: unreadable file, unknown key (the known ones are listed), unknown metric
            (the known metrics are listed), min > max, a bad live limit.
    """
    data = _gate_mapping(source)
    unknown = sorted(set(data) - set(_GATE_KEYS))
    if unknown:
        raise GateError(f"gate key {unknown[0]!r} is not known; use {', '.join(_GATE_KEYS)}")
    if "offline" not in data:
        raise GateError(
            "the gate has no 'offline' thresholds; add e.g. offline: {accuracy: {min: 0.9, "
            "max_change: 0.01}}"
        )
    live = data.get("live") or {}
    if not isinstance(live, Mapping):
        raise GateError(f"gate live must be a mapping of {', '.join(_LIVE_KEYS)}")
    bad = sorted(set(live) - set(_LIVE_KEYS))
    if bad:
        raise GateError(f"gate live.{bad[0]} is not known; use {', '.join(_LIVE_KEYS)}")
    try:
        criteria = LiveCriteria(**dict(live))
    except TypeError as e:
        raise GateError(f"gate live: {e}") from e
    return GatePolicy(
        thresholds=tuple(gate.parse_thresholds(data["offline"])),
        task=data.get("task", gate.CLASSIFICATION),
        canary=data.get("canary", DEFAULT_CANARY),
        live=criteria,
        alias=data.get("alias", DEFAULT_ALIAS),
    )


def _gate_mapping(source: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    import yaml

    text = str(source)
    path = Path(text)
    if isinstance(source, Path) or ("\n" not in text and not text.lstrip().startswith("{")):
        try:
            text = path.read_text()
        except OSError as e:
            raise GateError(f"cannot read gate file {str(path)!r}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        raise GateError(f"the gate is not valid YAML/JSON: {e}") from e
    if not isinstance(data, Mapping):
        raise GateError("the gate must be a mapping with 'offline' (and optionally 'live', "
                        "'canary', 'task', 'alias')")
    return data


# -- the offline gate ---------------------------------------------------------------------------


def held_out_metrics(
    model: Any, x: Any, y: Sequence[Any], task: str, names: Sequence[str]
) -> dict[str, float]:
    """``names`` of one fitted model on held-out rows (probabilities only when a metric needs
    them and the model has ``predict_proba``)."""
    needs_scores = any(gate.METRICS[n].needs_scores for n in names)
    scores = model.predict_proba(x) if needs_scores and hasattr(model, "predict_proba") else None
    return gate.compute_metrics(task, list(y), list(model.predict(x)), scores, names=names)


def offline_gate(
    policy: GatePolicy, candidate: Any, champion: Any | None, x: Any, y: Sequence[Any]
) -> tuple[Verdict, dict[str, float], dict[str, float] | None]:
    """The offline verdict, with the candidate's and the champion's metrics."""
    names = sorted({t.metric for t in policy.thresholds})
    cand = held_out_metrics(candidate, x, y, policy.task, names)
    champ = held_out_metrics(champion, x, y, policy.task, names) if champion is not None else None
    return gate.evaluate_offline(cand, policy.thresholds, champ), cand, champ


# -- the report ---------------------------------------------------------------------------------


@dataclass
class RolloutReport:
    """What a gated rollout decided and why (``to_markdown``, ``to_metrics``)."""

    endpoint: str
    candidate: str
    champion: str | None
    decision: str
    offline: Verdict
    live: Verdict | None = None
    alias: str = DEFAULT_ALIAS
    alias_moved: bool = False
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None
    #: Seconds from the canary taking traffic to the decision (None without a canary).
    decision_seconds: float | None = None
    window: dict[str, Any] | None = None
    note: str = ""

    @property
    def promoted(self) -> bool:
        return self.decision in (PROMOTED, SERVED)

    def to_markdown(self) -> str:
        champion = self.champion or "none"
        alias = (
            f"`{self.alias}` moved to {self.candidate}" if self.alias_moved
            else f"`{self.alias}` unchanged" + (f" ({champion})" if self.champion else "")
        )
        lines = [
            f"# Gated rollout of {self.candidate} on `{self.endpoint}`: **{self.decision}**",
            "",
            f"- candidate: {self.candidate}; champion: {champion}",
            f"- alias: {alias}",
        ]
        if self.decision_seconds is not None:
            lines.append(f"- canary start to decision: {self.decision_seconds:.2f} s")
        if self.note:
            lines.append(f"- {self.note}")
        lines += ["", "### Held-out metrics", "", "| metric | candidate | champion |",
                  "|---|---|---|"]
        for name, value in self.candidate_metrics.items():
            champ = (self.champion_metrics or {}).get(name)
            lines.append(f"| {name} | {value:.6g} | {'n/a' if champ is None else f'{champ:.6g}'} |")
        lines += ["", self.offline.to_markdown()]
        if self.live is not None:
            lines.append(self.live.to_markdown())
        else:
            lines.append("## Live analysis: not run\n")
        return "\n".join(lines)

    def to_metrics(self) -> dict[str, float]:
        out = {"rollout.promoted": 1.0 if self.promoted else 0.0,
               "rollout.alias_moved": 1.0 if self.alias_moved else 0.0}
        out.update({f"candidate.{k}": float(v) for k, v in self.candidate_metrics.items()})
        out.update({f"champion.{k}": float(v) for k, v in (self.champion_metrics or {}).items()})
        out.update(self.offline.to_metrics())
        if self.live is not None:
            out.update(self.live.to_metrics())
        if self.decision_seconds is not None:
            out["rollout.decision_seconds"] = float(self.decision_seconds)
        return out


# -- the live window ----------------------------------------------------------------------------


class LiveSource(Protocol):
    """Where the live analysis reads its window from."""

    def start(self) -> None: ...

    def window(self) -> tuple[LiveWindow, dict[str, Any]]: ...

    def stop(self) -> None: ...


class LocalMirrorSource:
    """The window of a local endpoint's router, from a mirror session (stable → candidate)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.session_id: str | None = None

    def status(self) -> dict[str, Any]:
        """The router's ``mirror`` status now."""
        import httpx

        from kfp_serve.serving.backends.local import registry
        from kfp_serve.serving.constants import ROUTER_STATUS_PATH

        record = registry.read_record(self.name)
        if record is None:
            raise ServingError(f"endpoint {self.name!r} is gone: its registry record vanished")
        url = f"{record.url}{ROUTER_STATUS_PATH}"
        return httpx.get(url, timeout=5.0, trust_env=False).json()["mirror"]

    def start(self) -> None:
        from kfp_serve.retry import wait_until
        from kfp_serve.serving.backends.local import mirror, registry, rollout

        record = registry.read_record(self.name)
        stable = rollout.stable_revision(record) if record is not None else None
        if record is None or stable is None or stable.revision == record.latest.revision:
            raise ServingError(f"endpoint {self.name!r} has no canary to analyse")
        session = mirror.open_session(
            registry.endpoint_dir(self.name), stable.revision, record.latest.revision
        )
        self.session_id = session.id
        wait_until(
            lambda: (s := self.status())["session"] == session.id and s["active"],
            deadline=MIRROR_START_TIMEOUT, interval=0.05,
            describe=f"the router of {self.name!r} starting the mirror session",
        )

    def window(self) -> tuple[LiveWindow, dict[str, Any]]:
        from kfp_serve.serving.backends.local import mirror

        status = self.status()
        if status.get("session") != self.session_id:
            raise ServingError(f"the mirror session of endpoint {self.name!r} was replaced")
        if status.get("failure"):
            raise ServingError(
                f"the router of endpoint {self.name!r} turned its mirror off: "
                f"{status['failure']} (its log has the traceback)"
            )
        return mirror.live_window(status), status

    def stop(self) -> None:
        from kfp_serve.serving.backends.local import mirror, registry

        with contextlib.suppress(OSError):
            mirror.close_session(registry.endpoint_dir(self.name))


def live_source(
    name: str, backend: str, *, namespace: str | None = None, rows: Sequence[Any] | None = None
) -> LiveSource:
    """The live window of endpoint ``name`` on ``backend``.

    Locally, the router mirrors the endpoint's own traffic and counts per revision. On
    Kubernetes, kfp-serve does not read KServe's ``/metrics``: the window counts its own
    mirrored requests, ``rows`` sent to both revisions through tag routing
    (:mod:`.cluster_live`), so it needs them. Other backends have no per-revision window; the
    error says so before the canary starts.
    """
    from kfp_serve.serving.backends.base import KUBERNETES, LOCAL

    if backend == LOCAL:
        return LocalMirrorSource(name)
    if backend == KUBERNETES:
        if rows is None or not len(rows):
            raise ServingError(
                "the live analysis on the kubernetes backend counts its own mirrored requests "
                "(sent to both revisions through KServe's tag routing; the revisions' /metrics "
                "are not read): give it rows to send, replay=ROWS (`kfp-serve rollout --gate "
                "... --replay`)"
            )
        from kfp_serve.serving.cluster_live import TagMirrorSource

        return TagMirrorSource(name, namespace, rows)
    raise ServingError(
        f"the live analysis of a gated rollout runs on the local and kubernetes backends (a "
        f"per-revision window: the local router's mirror, KServe's tag routing); the "
        f"{backend!r} backend has none yet. Use rollout --canary N and promote/rollback by "
        "hand there"
    )


def watch_window(
    source: LiveSource,
    criteria: LiveCriteria,
    *,
    interval: float = POLL_INTERVAL,
    progress: Callable[[str], None] | None = None,
) -> tuple[Verdict, dict[str, Any]]:
    """Read the window until ``decide_live`` promotes or rolls back."""
    last_shown = 0.0
    while True:
        window, status = source.window()
        verdict = gate.decide_live(window, criteria)
        now = time.monotonic()
        if progress is not None and (verdict.decision != gate.WAIT or now - last_shown >= 2.0):
            last_shown = now
            progress(
                f"live window: {window.canary_requests}/{criteria.window_requests} canary "
                f"requests, {window.canary_errors} errors, {window.agreed}/{window.mirrored} "
                f"mirrored agreed, {window.elapsed_seconds:.0f}/{criteria.window_seconds:g} s"
            )
        if verdict.decision != gate.WAIT:
            return verdict, status
        time.sleep(interval)


class Replay:
    """Sends ``rows`` to an endpoint one per request, round and round, from a thread: the live
    traffic of a demo or a pipeline run where no client calls the endpoint."""

    def __init__(self, name: str, rows: Sequence[Any], *, namespace: str | None = None,
                 backend: str | None = None) -> None:
        if not len(rows):
            raise GateError("replay needs at least one row to send")
        self.name, self.rows = name, [list(map(float, r)) for r in rows]
        self.namespace, self.backend = namespace, backend
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"replay-{name}", daemon=True)

    def _run(self) -> None:
        from kfp_serve.serving.endpoint import Endpoint

        with Endpoint(self.name, self.namespace, backend=self.backend) as endpoint:
            i = 0
            while not self._stop.is_set():
                try:
                    endpoint.predict([self.rows[i % len(self.rows)]])
                except ServingError:
                    self.failed += 1
                    self._stop.wait(0.05)
                self.sent += 1
                i += 1

    def __enter__(self) -> Replay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# -- interruption -------------------------------------------------------------------------------


class RolloutInterrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM) during a gated rollout."""


class _Interrupts:
    """While active, SIGTERM raises ``RolloutInterrupted`` in the main thread (so ``finally``
    blocks run, as for Ctrl-C); inside ``shielded()`` a SIGTERM is only remembered, so the
    stable revision's restoration is not itself interrupted, and is raised once it is done."""

    def __init__(self) -> None:
        self.shielding = False
        self.pending: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.shielding:
            logger.warning("signal %s while restoring the stable revision: finishing first",
                           signum)
            self.pending = signum
            return
        raise RolloutInterrupted(f"signal {signum}")

    @contextlib.contextmanager
    def active(self) -> Iterator[_Interrupts]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals are delivered to the main thread only
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        self.shielding = True
        try:
            yield
        finally:
            self.shielding = False
        if self.pending is not None:
            # The process was told to stop: it does now (an error in flight becomes the
            # context of this one).
            raise RolloutInterrupted(f"signal {self.pending}")


# -- the driver ---------------------------------------------------------------------------------


def _champion_record(
    name: str, namespace: str | None, candidate: Any, champion: Any, alias: str, backend: str
) -> Any | None:
    """The champion's MLMD record: ``champion`` if given, else ``<model>@<alias>``, else the
    model the endpoint serves now; None when there is none."""
    from kfp_serve.artifacts import MetadataError, get_artifact, list_aliases
    from kfp_serve.serving.backends.base import LOCAL, get_backend
    from kfp_serve.serving.constants import LABEL_MODEL_ID
    from kfp_serve.serving.deploy import resolve_model

    if champion is not None:
        return resolve_model(champion)[0]
    if alias in list_aliases(candidate.name):
        return resolve_model(f"{candidate.name}@{alias}")[0]
    try:
        status = get_backend(backend).get(name, namespace)
    except ServingError:
        return None
    manifest = status.manifest
    if backend == LOCAL:
        # The record's summary manifest is the latest revision's, which after a rolled-back
        # canary is not the one serving: read the stable revision's.
        from kfp_serve.serving.backends.local import registry, rollout

        record = registry.read_record(name)
        stable = rollout.stable_revision(record) if record is not None else None
        manifest = stable.manifest if stable is not None else {}
    model_id = ((manifest.get("metadata") or {}).get("labels") or {}).get(LABEL_MODEL_ID)
    if not status.ready or not model_id:
        return None
    try:
        return get_artifact(int(model_id))
    except (MetadataError, ValueError):
        return None


def _load(record: Any) -> Any:
    from kfp_serve.artifacts.model import load_model_file

    return load_model_file(Path(record.uri))


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def gated_rollout(
    name: str,
    candidate: Any,
    gate_policy: GatePolicy | str | Path | Mapping[str, Any],
    x_held_out: Any,
    y_held_out: Sequence[Any],
    *,
    champion: Any = None,
    serve_config: Any = None,
    namespace: str | None = None,
    backend: str | None = None,
    timeout: float = 300.0,
    progress: bool = True,
    source: LiveSource | None = None,
    replay: Sequence[Any] | None = None,
) -> RolloutReport:
    """Take ``candidate`` to production on endpoint ``name`` only if it passes both gates.

    Args:
        name: The endpoint.
        candidate: The model to roll out: an MLMD id or a reference ("iris:2.0.0").
        gate_policy: A ``GatePolicy``, or what ``load_gate`` reads (a path or a mapping).
        x_held_out: Held-out feature rows the offline gate predicts on (raw model inputs).
        y_held_out: Their labels/targets.
        champion: The model to compare with (default: ``<model>@<alias>``, else what the
            endpoint serves now).
        serve_config: The candidate's ServeConfig (as for ``serve()``).
        namespace, backend: As for ``serve()``.
        timeout: Seconds the candidate's servers get to become Ready.
        progress: Print the live window's progress on stderr.
        source: Where the live window is read (default: ``live_source``).
        replay: Rows to send to the endpoint during the live window (``Replay``), for a demo
            or a pipeline run without clients; None waits for real traffic. On Kubernetes
            they are required: the window is made of them, each sent to both revisions.

    Returns:
        The report; ``report.promoted`` says whether the candidate serves all traffic now.

    Raises:
        GateError: a bad gate (nothing was served).
        ServingError: the candidate could not be served (the stable revision keeps serving).
    """
    from kfp_serve.artifacts import set_alias
    from kfp_serve.serving import delivery
    from kfp_serve.serving.backends.base import KUBERNETES, default_backend_name
    from kfp_serve.serving.cluster_live import with_tag_routing
    from kfp_serve.serving.deploy import resolve_model

    policy = gate_policy if isinstance(gate_policy, GatePolicy) else load_gate(gate_policy)
    backend = backend or default_backend_name()
    show = _stderr if progress else None
    cand_rec, _ = resolve_model(candidate)
    cand_label = f"{cand_rec.name}:{cand_rec.version}"
    champ_rec = _champion_record(name, namespace, cand_rec, champion, policy.alias, backend)
    champ_label = f"{champ_rec.name}:{champ_rec.version}" if champ_rec is not None else None
    if champ_rec is not None and champ_rec.id == cand_rec.id:
        raise GateError(
            f"the candidate {cand_label} is the champion already; submit a new version to roll "
            "out, or name another champion"
        )

    verdict, cand_metrics, champ_metrics = offline_gate(
        policy, _load(cand_rec), _load(champ_rec) if champ_rec is not None else None,
        x_held_out, y_held_out,
    )
    report = RolloutReport(
        endpoint=name, candidate=cand_label, champion=champ_label, decision=REJECTED,
        offline=verdict, alias=policy.alias, candidate_metrics=cand_metrics,
        champion_metrics=champ_metrics,
    )
    if not verdict.passed:
        report.note = "the candidate was never served"
        return report

    serving = _serves(name, namespace, backend)
    if not serving:
        # Nothing to canary against: the candidate takes the endpoint (offline gate passed).
        from kfp_serve.serving.deploy import serve

        serve(cand_rec.id, serve_config=serve_config, name=name, namespace=namespace,
              timeout=timeout, backend=backend)
        set_alias(cand_rec.name, policy.alias, cand_rec.version,
                  reason=f"gated rollout on {name}: first revision, offline gate passed")
        report.decision, report.alias_moved = SERVED, True
        report.note = "the endpoint served nothing yet: no live analysis (no stable revision)"
        return report

    source = source or live_source(name, backend, namespace=namespace, rows=replay)
    if backend == KUBERNETES:
        # The canary's revisions get URLs of their own (status...traffic[].url), which the
        # cluster's live window sends its mirrored requests to.
        serve_config = with_tag_routing(serve_config)
    # A source that makes its own traffic (the cluster's) needs no replay to the endpoint.
    replaying = replay is not None and not getattr(source, "sends_requests", False)
    decided = False
    canary_started = False
    with _Interrupts().active() as interrupts:
        try:
            # Set first: an interruption inside rollout() may come after its traffic switch.
            canary_started = True
            delivery.rollout(name, cand_rec.id, policy.canary, serve_config=serve_config,
                             namespace=namespace, timeout=timeout, backend=backend)
            started = time.monotonic()
            source.start()
            with Replay(name, replay, namespace=namespace, backend=backend) if replaying \
                    else contextlib.nullcontext():
                live, status = watch_window(source, policy.live, progress=show)
            report.live, report.window = live, status.get("window")
            if live.passed:
                delivery.promote(name, namespace, backend=backend)
                decided = True
                set_alias(cand_rec.name, policy.alias, cand_rec.version,
                          reason=f"gated rollout on {name}: {live.reason}")
                report.decision, report.alias_moved = PROMOTED, True
            else:
                delivery.rollback(name, namespace, backend=backend)
                decided = True
                report.decision = ROLLED_BACK
            report.decision_seconds = time.monotonic() - started
        finally:
            with interrupts.shielded():
                with contextlib.suppress(Exception):
                    source.stop()
                if canary_started and not decided:
                    _restore_stable(name, namespace, backend)
    return report


def _serves(name: str, namespace: str | None, backend: str) -> bool:
    from kfp_serve.serving.backends.base import get_backend

    try:
        return get_backend(backend).get(name, namespace).ready
    except ServingError:
        return False


def _restore_stable(name: str, namespace: str | None, backend: str) -> None:
    """Roll an interrupted canary back, so the stable revision takes all traffic again."""
    from kfp_serve.serving import delivery

    try:
        state = delivery.rollout_state(name, namespace, backend=backend)
        if not state.canary_in_progress or not state.percent(state.latest_created):
            return  # the canary never took traffic (its start was interrupted)
        logger.warning("gated rollout of %r interrupted mid-canary: rolling back", name)
        delivery.rollback(name, namespace, backend=backend)
    except ServingError as e:
        logger.error("could not roll back endpoint %r: %s", name, e)


def report_json(report: RolloutReport) -> str:
    """The report as JSON (for the CLI's ``--output json``)."""
    return json.dumps(
        {
            "endpoint": report.endpoint, "candidate": report.candidate,
            "champion": report.champion, "decision": report.decision,
            "alias": report.alias, "alias_moved": report.alias_moved,
            "decision_seconds": report.decision_seconds, "metrics": report.to_metrics(),
            "offline": report.offline.reason, "live": report.live.reason if report.live else None,
        },
        indent=2,
    )
