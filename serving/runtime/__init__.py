"""kfp-serve's KServe runtimes: a predictor and a transformer model server.

Entry points: ``python -m kfp_serve.serving.runtime.predictor`` and ``python -m
kfp_serve.serving.runtime.transformer``
(see :mod:`kfp_serve.serving.runtime.server` for the flags).
:mod:`kfp_serve.serving.runtime.launch` starts them as
detached local processes. Importing this package is cheap: kserve is only imported by the
server modules themselves.
"""
