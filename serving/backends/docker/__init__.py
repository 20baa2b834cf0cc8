"""The Docker serving backend (``KFP_SERVE_BACKEND=docker``): the local backend's endpoints,
with the containers KServe would create instead of processes.

- :mod:`.runtimes`: which image, command and args a ServingRuntime name stands for (pure);
- :mod:`.spec`: manifest -> the containers to run (pure);
- :mod:`.containers`: the engine: run, check, stop, read logs, volumes;
- :mod:`.storage_init`: the storage initializer, run in the kfp-serve image;
- :mod:`.backend`: :class:`DockerBackend` and the container side of the local backend's seam.
"""

from kfp_serve._lazy import lazy_exports

_EXPORTS = {"DockerBackend": "kfp_serve.serving.backends.docker.backend"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
