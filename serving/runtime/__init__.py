"""kfp-serve's KServe runtimes: a predictor and a transformer model server.

Entry points: ``python -m serving.runtime.predictor`` and ``python -m serving.runtime.transformer``
(see :mod:`serving.runtime.server` for the flags). :mod:`serving.runtime.launch` starts them as
detached local processes. Importing this package is cheap: kserve is only imported by the
server modules themselves.
"""
