"""kfp-serve: from a trained model to a smoke-tested KServe endpoint, as KFP v2 components.

The short public API::

    from kfp_serve import Model, Transformer, ServeConfig, serve, Endpoint

Every importable module lives under this one namespace: ``kfp_serve.artifacts``,
``kfp_serve.serving``, ``kfp_serve.components``, ``kfp_serve.pipelines`` and
``kfp_serve.kale_steps`` (``kfp_serve.cli`` is the command line). Names load on first use, so
``import kfp_serve`` stays cheap for pipeline steps.

Kale pip-installs the top-level package of every import in a notebook's ``imports`` cell, so
``from kfp_serve import kale_steps`` resolves to this distribution (already in the image).
"""

from kfp_serve._lazy import lazy_exports

_EXPORTS = {
    "Model": "kfp_serve.artifacts.model",
    "Transformer": "kfp_serve.artifacts.model",
    "ServeConfig": "kfp_serve.serving.config",
    "serve": "kfp_serve.serving.deploy",
    "serve_many": "kfp_serve.serving.multi",
    "add_model": "kfp_serve.serving.multi",
    "remove_model": "kfp_serve.serving.multi",
    "Endpoint": "kfp_serve.serving.endpoint",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
