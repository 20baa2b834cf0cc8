"""Progressive delivery from Python: canary a candidate, move traffic, promote, roll back.

Each call picks the backend as ``serve()`` does (``backend=`` or ``KFP_SERVE_BACKEND``, else
local outside a pod) and has KServe's semantics on every backend::

    rollout("iris", "iris:2.0.0", canary=20)   # 2.0.0 gets 20 %, the stable revision 80 %
    set_traffic("iris", 50)                    # half and half
    promote("iris")                            # 2.0.0 takes all traffic, the old one stops
    rollback("iris")                           # or: the stable revision takes all again
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kfp_serve.serving.backends.traffic import CANARY_FIELD, RolloutState, check_percent
from kfp_serve.serving.config import ServeConfig
from kfp_serve.serving.constants import PREDICTOR
from kfp_serve.serving.errors import ServingError

if TYPE_CHECKING:
    from kfp_serve.serving.backends.base import TrafficBackend
    from kfp_serve.serving.endpoint import Endpoint

#: Default seconds a traffic move gets to take effect.
TRAFFIC_TIMEOUT = 120.0


def rollout(
    name: str,
    model: Any,
    canary: int,
    *,
    transformer: Any = None,
    serve_config: ServeConfig | dict[str, Any] | str | None = None,
    namespace: str | None = None,
    wait: bool = True,
    timeout: float = 300.0,
    backend: str | None = None,
) -> Endpoint:
    """Serve ``model`` on endpoint ``name`` as a canary that gets ``canary`` % of requests.

    The revision serving now keeps the rest. Then ``set_traffic``, ``promote`` or
    ``rollback``.

    Args:
        name: The endpoint.
        model: What ``serve()`` accepts: an id, ``"iris"``, ``"iris:2.0.0"``, ``"iris@challenger"``.
        canary: Percent of requests for the new revision (0..100; 100 replaces at once).
        transformer, serve_config, namespace, wait, timeout, backend: as for ``serve()``; the
            config's ``predictor.canaryTrafficPercent`` is set to ``canary``.

    Raises:
        ServingError: bad percent, or the candidate did not become Ready (the stable revision
            keeps serving all traffic).
    """
    from kfp_serve.serving.deploy import serve

    cfg = ServeConfig.coerce(serve_config)
    predictor = {**cfg.predictor, CANARY_FIELD: check_percent(canary)}
    cfg = ServeConfig.from_dict({**cfg.to_dict(), PREDICTOR: predictor})
    return serve(  # type: ignore[return-value]  # not a dry run: an Endpoint
        model,
        transformer,
        serve_config=cfg,
        name=name,
        namespace=namespace,
        wait=wait,
        timeout=timeout,
        backend=backend,
    )


def set_traffic(
    name: str,
    percent: int,
    namespace: str | None = None,
    *,
    timeout: float = TRAFFIC_TIMEOUT,
    backend: str | None = None,
) -> RolloutState:
    """Send ``percent`` % of endpoint ``name``'s requests to its latest revision, the rest to
    the stable one (0 is a rollback, 100 makes the latest revision the stable one)."""
    return _traffic_backend(backend).set_traffic(name, percent, namespace, timeout=timeout)


def promote(
    name: str,
    namespace: str | None = None,
    *,
    timeout: float = TRAFFIC_TIMEOUT,
    backend: str | None = None,
) -> RolloutState:
    """Let the canary (latest revision) of endpoint ``name`` take all traffic.

    Raises:
        ServingError: the endpoint has no canary (the message says what serves).
    """
    return _traffic_backend(backend).promote(name, namespace, timeout=timeout)


def rollback(
    name: str,
    namespace: str | None = None,
    *,
    timeout: float = TRAFFIC_TIMEOUT,
    backend: str | None = None,
) -> RolloutState:
    """Send all of endpoint ``name``'s traffic back to its stable revision.

    Raises:
        ServingError: there is no previous revision to roll back to.
    """
    return _traffic_backend(backend).rollback(name, namespace, timeout=timeout)


def rollout_state(
    name: str, namespace: str | None = None, *, backend: str | None = None
) -> RolloutState:
    """Endpoint ``name``'s revisions and where its traffic goes now."""
    return _traffic_backend(backend).rollout_state(name, namespace)


def _traffic_backend(name: str | None) -> TrafficBackend:
    from kfp_serve.serving.backends.base import TrafficBackend, get_backend

    chosen = get_backend(name)
    if not isinstance(chosen, TrafficBackend):
        raise ServingError(
            f"the {chosen.name!r} serving backend cannot move traffic between revisions; "
            "use the local or kubernetes backend (backend= or KFP_SERVE_BACKEND)"
        )
    return chosen


__all__ = ["promote", "rollback", "rollout", "rollout_state", "set_traffic"]
