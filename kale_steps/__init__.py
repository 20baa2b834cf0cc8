"""kfp-serve helpers for Kale-tagged notebook cells, plus example notebooks (``examples/``).

Every function takes and returns plain values, because Kale pickles variables between steps::

    transformer_id = submit_transformer(scaler, name="wine-scaler")
    snapshot(transformer_id)
    model_id = submit_model(model, name="wine-classifier", version="1.0.0")
    snapshot(model_id)
    endpoint = serve(model_id, transformer_id, name="wine")
    result = smoke_predict(endpoint["name"], rows, expected=model.predict(rows))

Importing this package loads only the standard library; ``artifacts`` and ``serving`` load on
the first call.
"""

from kfp_serve.kale_steps.steps import (
    link_run,
    serve,
    smoke_predict,
    snapshot,
    stop,
    submit_model,
    submit_transformer,
)

__all__ = [
    "link_run",
    "serve",
    "smoke_predict",
    "snapshot",
    "stop",
    "submit_model",
    "submit_transformer",
]
