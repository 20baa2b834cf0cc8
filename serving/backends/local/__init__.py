"""The local serving backend: InferenceService manifests run as processes on this machine.

One package, one module per concern, in the order a manifest walks through them:

- :mod:`.plan`: manifest -> what to run (pure; no processes, no files);
- :mod:`.supervisor`: the one way a process is started detached, checked, signalled and stopped;
- :mod:`.rollout`: start a revision, wait until it is ready, switch traffic, drain the old one;
- :mod:`.canary`: KServe's canary rules (traffic N, promote, rollback) over the record (pure);
- :mod:`.registry`: ``endpoint.json``, the only code that knows its format;
- :mod:`.router`: the HTTP router in front of every endpoint;
- :mod:`.backend`: :class:`LocalBackend`, which ties them together.

Attributes load on first use: the router and the model servers import parts of this package
and must not pay for the rest.
"""

from kfp_serve._lazy import lazy_exports

_EXPORTS = {
    "LocalBackend": "kfp_serve.serving.backends.local.backend",
    "Plan": "kfp_serve.serving.backends.local.backend",
    "plan_manifest": "kfp_serve.serving.backends.local.backend",
    "resolve_storage": "kfp_serve.serving.backends.local.backend",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
