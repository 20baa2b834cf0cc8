"""Opening a metadata store: which one, bad URIs and settings, missing ml-metadata, types."""

from __future__ import annotations

import sys

import pytest

from kfp_serve.artifacts import MetadataError, MetadataStore, Model, get_artifact, metadata
from kfp_serve.artifacts.metadata import STORES, register_store, store_class
from kfp_serve.artifacts.mlmd import (
    MLMD_ENV,
    MODEL_TYPE,
    RETRY_DEADLINE_ENV,
    TIMEOUT_ENV,
    GrpcStore,
    SqliteStore,
    open_store,
    store_uri,
)


@pytest.fixture(params=["sqlite", "grpc"])
def store_over(request, start_mlmd_grpc):
    """Open the store over a SQLite file directly, or through the gRPC service over it."""

    def open_over(db):
        if request.param == "sqlite":
            return open_store(f"sqlite://{db}")
        return open_store(start_mlmd_grpc(db=db).uri)

    return open_over


def test_type_registration_is_idempotent_and_incompatible_change_is_clear(
    home, tmp_path, store_over
):
    path = tmp_path / "types.sqlite"
    first = store_over(path)
    second = store_over(path)
    assert first.type_id(MODEL_TYPE) == second.type_id(MODEL_TYPE)

    bad = tmp_path / "bad.sqlite"
    from ml_metadata.metadata_store import metadata_store as ms
    from ml_metadata.proto import metadata_store_pb2 as pb

    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = str(bad)
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    t = pb.ArtifactType(name=MODEL_TYPE)
    t.properties["version"] = pb.INT  # someone registered the name with another schema
    ms.MetadataStore(config).put_artifact_type(t)
    with pytest.raises(
        MetadataError, match=r"'kfp_serve.Model'.*version: stored INT, expected STRING"
    ):
        store_over(bad)


def test_stores_come_from_one_registry_and_meet_the_protocol(home, tmp_path, monkeypatch):
    assert (store_class("sqlite"), store_class("grpc")) == (SqliteStore, GrpcStore)
    assert set(STORES.names()) == {"sqlite", "grpc"}
    store = open_store(f"sqlite://{tmp_path / 'a.sqlite'}")
    assert isinstance(store, MetadataStore)

    class AuditedStore(SqliteStore):
        """A store of another scheme: the registry picks it for its URIs, records work on it."""

        def __init__(self, uri):
            super().__init__(uri.replace("audited://", "sqlite://", 1))
            self.writes = 0

        def put_execution(self, *args, **kwargs):
            self.writes += 1
            return super().put_execution(*args, **kwargs)

    monkeypatch.setattr(metadata.STORES, "registered", {})
    register_store("audited", AuditedStore)
    monkeypatch.setenv(MLMD_ENV, f"audited://{tmp_path / 'b.sqlite'}")
    from sklearn.dummy import DummyClassifier

    model = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
    model_id = Model(model=model, name="dummy").submit_artifact()
    chosen = metadata.metadata_store()
    assert isinstance(chosen, AuditedStore) and chosen.writes == 1
    assert get_artifact(model_id).name == "dummy"


@pytest.mark.parametrize(
    ("env", "value"), [(TIMEOUT_ENV, "soon"), (TIMEOUT_ENV, "0"), (RETRY_DEADLINE_ENV, "-1")]
)
def test_bad_grpc_settings_name_the_variable(home, monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(MetadataError, match=rf"{env}='{value}' is not a number of seconds"):
        open_store("grpc://127.0.0.1:1")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "sqlite://{home}/mlmd.sqlite"),
        ({"KFP_SERVE_MLMD": "sqlite:///x/y.sqlite"}, "sqlite:///x/y.sqlite"),
        ({"METADATA_GRPC_SERVICE_HOST": "mlmd.kubeflow"}, "grpc://mlmd.kubeflow:8080"),
        (
            {"METADATA_GRPC_SERVICE_HOST": "h", "METADATA_GRPC_SERVICE_PORT": "9090"},
            "grpc://h:9090",
        ),
        (
            {"METADATA_GRPC_SERVICE_HOST": "h", "KFP_SERVE_MLMD": "grpc://other:1"},
            "grpc://other:1",
        ),
    ],
)
def test_store_selection(home, monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert store_uri() == expected.format(home=home)


@pytest.mark.parametrize("uri", ["mysql://db", "sqlite://relative.sqlite", "grpc://nohost"])
def test_bad_store_uri_is_explained(home, uri):
    with pytest.raises(MetadataError, match="sqlite:///|grpc://host:port"):
        open_store(uri)


def test_missing_ml_metadata_prints_install_command(home, monkeypatch):
    # None in sys.modules makes the import fail exactly as an absent package does.
    for mod in [m for m in sys.modules if m.startswith("ml_metadata")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "ml_metadata", None)
    with pytest.raises(MetadataError) as err:
        open_store(f"sqlite://{home}/x.sqlite")
    assert "pip install --no-deps ml-metadata==1.17.1" in str(err.value)
    assert "absl-py" in str(err.value)
