"""An ML Metadata gRPC service for tests: MLMD's own C++ store on 127.0.0.1, over a SQLite file.

Use the fixtures in a conftest.py::

    from tests.mlmd_grpc.fixtures import mlmd_grpc  # noqa: F401
"""

from tests.mlmd_grpc.fixtures import MlmdGrpcServer

__all__ = ["MlmdGrpcServer"]
