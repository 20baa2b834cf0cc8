"""The live window of a gated rollout on a cluster, counted from its own mirrored requests.

A cluster has no kfp-serve router to mirror and count per revision, and kfp-serve does not read
KServe's ``/metrics`` yet. So the analysis makes the traffic it measures: each replay row is sent
to both revisions of the canary, one request each, through KServe's tag routing — with the
annotation ``serving.kserve.io/enable-tag-routing: "true"`` KServe reports every traffic target
in ``status.components.predictor.traffic`` with its own ``url``: tag ``prev`` is the stable
(latest rolled-out) revision, tag ``latest`` the canary. The stable revision's answer is the one
a client would get; the candidate's is only timed, checked and compared with it. The result is
the same :class:`~kfp_serve.serving.gate.LiveWindow` the local router's mirror gives.

Outside the cluster, a tag URL is reached like the endpoint's own (``KFP_SERVE_INGRESS`` /
``INGRESS_HOST``: connect to the ingress gateway, name the tag's host in the Host header);
inside a pod, at the URL itself.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.gate import Counts, LiveWindow, p99

#: KServe's annotation that gives each traffic target (tag) its own URL.
ANNOTATION_TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
#: KServe's tags of a canary's two traffic targets.
STABLE_TAG = "prev"
CANDIDATE_TAG = "latest"
#: Seconds one mirrored request may take before it counts as a failure.
REQUEST_TIMEOUT = 10.0
#: Latency samples kept per revision (the p99 of a long window is read from the first ones).
MAX_SAMPLES = 20_000


def with_tag_routing(serve_config: Any) -> Any:
    """``serve_config`` (anything ``ServeConfig.coerce`` takes) with tag routing on, so the
    canary's revisions get URLs of their own."""
    import dataclasses

    from kfp_serve.serving.config import ServeConfig

    cfg = ServeConfig.coerce(serve_config)
    return dataclasses.replace(
        cfg, annotations={**(cfg.annotations or {}), ANNOTATION_TAG_ROUTING: "true"}
    )


def tag_urls(manifest: dict[str, Any]) -> dict[str, str]:
    """Tag -> URL of the predictor's traffic targets, from the InferenceService's status.

    Raises:
        ServingError: there is no canary (no ``prev`` and ``latest`` targets), or the targets
            have no ``url`` (tag routing is off); the message names the field and the fix.
    """
    name = (manifest.get("metadata") or {}).get("name", "?")
    predictor = ((manifest.get("status") or {}).get("components") or {}).get("predictor") or {}
    targets = {t.get("tag"): t for t in predictor.get("traffic") or [] if t.get("tag")}
    missing = [t for t in (STABLE_TAG, CANDIDATE_TAG) if t not in targets]
    if missing:
        raise ServingError(
            f"InferenceService {name!r} has no canary to analyse: "
            f"status.components.predictor.traffic has no target tagged {missing[0]!r} (tags "
            f"{sorted(targets) or 'none'}); roll a candidate out with a canary share first"
        )
    no_url = [t for t in (STABLE_TAG, CANDIDATE_TAG) if not targets[t].get("url")]
    if no_url:
        raise ServingError(
            f"InferenceService {name!r}: status.components.predictor.traffic[tag={no_url[0]}] "
            f"has no url, so its revision cannot be asked on its own. Set the annotation "
            f"{ANNOTATION_TAG_ROUTING}: \"true\" (gated_rollout does on this backend) and check "
            "that KServe runs in Serverless mode (tag routing is Knative's)"
        )
    return {t: str(targets[t]["url"]) for t in (STABLE_TAG, CANDIDATE_TAG)}


class TagMirrorSource:
    """A gated rollout's live window on a Kubernetes InferenceService: it sends ``rows`` to
    the stable and the candidate revision (one request each per row, round and round, from a
    thread) and counts what they answer.

    Args:
        name, namespace: The InferenceService.
        rows: The requests' rows (one row per request).
        backend: The Kubernetes backend to read the InferenceService with (default: a new one).
    """

    #: It makes its own traffic: the driver sends no replay of its own to the endpoint.
    sends_requests = True

    def __init__(self, name: str, namespace: str | None, rows: Any, *, backend: Any = None) -> None:
        self.name, self.namespace = name, namespace
        self.rows = [list(map(float, r)) for r in rows]
        if not self.rows:
            raise ServingError("the live analysis on a cluster needs at least one row to send")
        self._backend = backend
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._canary = Counts(MAX_SAMPLES)
        self._stable = Counts(MAX_SAMPLES)
        self.mirrored = self.agreed = 0
        self.failure: str | None = None

    def start(self) -> None:
        """Find both revisions' URLs and start sending.

        Raises:
            ServingError: no canary, or no per-revision URLs (see :func:`tag_urls`).
        """
        from kfp_serve.serving.backends.base import KUBERNETES, get_backend
        from kfp_serve.serving.endpoint import Endpoint

        backend = self._backend or get_backend(KUBERNETES)
        status = backend.get(self.name, self.namespace)
        urls = tag_urls(status.manifest)
        # The request path and protocol as a client of the endpoint would use them.
        with Endpoint(self.name, self.namespace, backend=backend) as endpoint:
            protocol, model = endpoint.protocol, endpoint.model_name
        if protocol not in ("v1", "v2"):
            raise ServingError(
                f"the live analysis on a cluster speaks REST (v1 or v2); endpoint {self.name!r} "
                f"uses {protocol!r}"
            )
        path = f"/v2/models/{model}/infer" if protocol == "v2" else f"/v1/models/{model}:predict"
        clients = {tag: _client(url) for tag, url in urls.items()}
        self._started = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, args=(clients, path, protocol), name=f"mirror-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, clients: dict[str, Any], path: str, protocol: str) -> None:
        from kfp_serve.serving.backends.local.mirror import agree
        from kfp_serve.serving.endpoint import v1_request, v2_request

        build = v2_request if protocol == "v2" else v1_request
        i = 0
        try:
            while not self._stop.is_set():
                body = build([self.rows[i % len(self.rows)]])
                i += 1
                stable, stable_ms = _ask(clients[STABLE_TAG], path, body)
                candidate, candidate_ms = _ask(clients[CANDIDATE_TAG], path, body)
                with self._lock:
                    self._stable.add(stable_ms)
                    self._canary.add(candidate_ms)
                    if stable is not None and candidate is not None:
                        self.mirrored += 1
                        self.agreed += agree(stable, candidate)
                if stable is None:
                    # The stable revision failing says nothing about the candidate: let the
                    # cluster breathe instead of hammering it.
                    self._stop.wait(0.05)
        except Exception as e:  # noqa: BLE001 - reported by window(), not lost in a thread
            self.failure = f"{type(e).__name__}: {e}"
        finally:
            for client in clients.values():
                client.close()

    def window(self) -> tuple[LiveWindow, dict[str, Any]]:
        """The window so far, and the status it came from (its ``window`` as the report's)."""
        if self.failure:
            raise ServingError(f"the live analysis of {self.name!r} stopped: {self.failure}")
        with self._lock:
            counts = {
                "canary_requests": self._canary.requests,
                "canary_errors": self._canary.errors,
                "canary_p99_ms": p99(self._canary.latencies),
                "stable_requests": self._stable.requests,
                "stable_errors": self._stable.errors,
                "stable_p99_ms": p99(self._stable.latencies),
                "mirrored": self.mirrored,
                "agreed": self.agreed,
            }
        elapsed = time.monotonic() - self._started
        window = LiveWindow(
            elapsed_seconds=elapsed,
            canary_requests=counts["canary_requests"],
            canary_errors=counts["canary_errors"],
            canary_p99_ms=counts["canary_p99_ms"],
            stable_p99_ms=counts["stable_p99_ms"],
            mirrored=counts["mirrored"],
            agreed=counts["agreed"],
        )
        return window, {"source": "tag-routing mirror", "elapsed_seconds": elapsed,
                        "window": counts}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=REQUEST_TIMEOUT * 2 + 5)


def _client(url: str) -> Any:
    """An HTTP client for one tag URL: through the ingress (Host header) from outside the
    cluster when one is configured, else straight to the URL."""
    import httpx

    from kfp_serve.artifacts.environment import running_in_pod
    from kfp_serve.serving.backends.kubernetes import ingress_address
    from kfp_serve.serving.http import tls_context

    parts = urlsplit(url)
    headers: dict[str, str] = {}
    base = url
    ingress = None if running_in_pod() else ingress_address()
    if ingress is not None:
        headers["Host"] = parts.hostname or parts.netloc
        base = f"{ingress[0]}://{ingress[1]}{parts.path}"
    return httpx.Client(base_url=base.rstrip("/"), headers=headers, verify=tls_context(),
                        timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=min(5.0, REQUEST_TIMEOUT)))


def _ask(client: Any, path: str, body: dict[str, Any]) -> tuple[list[Any] | None, float | None]:
    """(predictions, milliseconds) of one request; (None, None) for a failure: no answer in
    time, or any status but 200 (the other revision answered the same request)."""
    import httpx

    from kfp_serve.serving.predictions import response_predictions

    started = time.perf_counter()
    try:
        response = client.post(path, json=body)
    except httpx.HTTPError:
        return None, None
    ms = (time.perf_counter() - started) * 1000.0
    if response.status_code != 200:
        return None, None
    try:
        return response_predictions(response.json()), ms
    except (ValueError, ServingError):
        return None, None


__all__ = [
    "ANNOTATION_TAG_ROUTING",
    "CANDIDATE_TAG",
    "STABLE_TAG",
    "TagMirrorSource",
    "tag_urls",
    "with_tag_routing",
]
