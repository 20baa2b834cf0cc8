"""Opening a metadata store: which one, bad URIs and settings, missing ml-metadata, types."""

from __future__ import annotations

import sys

import pytest

from kfp_serve.artifacts import MetadataError
from kfp_serve.artifacts.mlmd import MODEL_TYPE, open_store, store_uri


def test_type_registration_is_idempotent_and_incompatible_change_is_clear(home, tmp_path):
    path = tmp_path / "types.sqlite"
    first = open_store(f"sqlite://{path}")
    second = open_store(f"sqlite://{path}")
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
        open_store(f"sqlite://{bad}")


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
