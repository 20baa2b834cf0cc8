"""kale_steps functions on the embedded defaults: real MLMD (SQLite), snapshots, local servers."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kfp_serve import kale_steps
from kfp_serve.kale_steps import steps

# ---------------------------------------------------------------------------------------------
# plain values, light import


def test_import_loads_nothing_heavy() -> None:
    """``import kfp_serve.kale_steps`` runs in every step's imports block, so it must stay cheap."""
    code = (
        "import json, sys, kale_steps\n"
        "heavy = ('artifacts', 'serving', 'numpy', 'sklearn', 'xgboost', 'kserve', 'kfp')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        pytest.param(np.array([[1.5, 2.0]]), [[1.5, 2.0]], id="array"),
        pytest.param(np.int64(3), 3, id="numpy-scalar"),
        pytest.param((np.float32(0.5), "a"), [0.5, "a"], id="tuple"),
        pytest.param({"k": np.array([1, 2])}, {"k": [1, 2]}, id="dict"),
        pytest.param("text", "text", id="str"),
    ],
)
def test_plain_values(value: Any, plain: Any) -> None:
    assert steps._plain(value) == plain


def test_plain_dataframe() -> None:
    import pandas as pd

    assert steps._plain(pd.DataFrame({"a": [1, 2], "b": [3, 4]})) == [[1, 3], [2, 4]]


@pytest.mark.parametrize("bad", ["abc", 3.5, True, 0, -2, None], ids=repr)
def test_ids_must_be_artifact_ids(bad: Any) -> None:
    with pytest.raises(TypeError, match="artifact id"):
        steps._as_id(bad, "model_id")


def test_ids_accept_int_like_values() -> None:
    # Metadata read back from KFP comes as float; a numpy int comes from array maths.
    assert steps._as_id(7.0, "model_id") == 7
    assert steps._as_id(np.int64(7), "model_id") == 7


# ---------------------------------------------------------------------------------------------
# linking to the KFP run


def _clear_run_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv first so that teardown removes what link_run exports.
    for name in ("KFP_SERVE_RUN_ID", "KFP_RUN_ID"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_link_run_outside_a_pod_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    _clear_run_env(monkeypatch)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert steps.link_run(read_pod_labels=_fail) is None
    assert "KFP_SERVE_RUN_ID" not in os.environ


def test_link_run_keeps_a_run_id_already_given(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_run_env(monkeypatch)
    monkeypatch.setenv("KFP_RUN_ID", "given")
    assert steps.link_run(read_pod_labels=_fail) == "given"


def test_link_run_in_a_pod_exports_the_run_label(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import kfp_serve.artifacts.environment as environment

    _clear_run_env(monkeypatch)
    monkeypatch.setenv("KFP_POD_NAME", "wine-abc-system-container-impl-123")
    monkeypatch.setattr(environment, "running_in_pod", lambda: True)
    monkeypatch.setattr(environment, "pod_namespace", lambda: "team-a")
    seen = []

    def labels(pod: str, namespace: str) -> dict[str, str]:
        seen.append((pod, namespace))
        return {"pipeline/runid": "6f1c-run"}

    assert steps.link_run(read_pod_labels=labels) == "6f1c-run"
    assert os.environ["KFP_SERVE_RUN_ID"] == "6f1c-run"
    assert seen == [("wine-abc-system-container-impl-123", "team-a")]
    # Once known, the pod is not read again.
    assert steps.link_run(read_pod_labels=_fail) == "6f1c-run"


def test_link_run_survives_an_unreadable_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    import kfp_serve.artifacts.environment as environment

    _clear_run_env(monkeypatch)
    monkeypatch.setenv("KFP_POD_NAME", "some-pod")
    monkeypatch.setattr(environment, "running_in_pod", lambda: True)
    monkeypatch.setattr(environment, "pod_namespace", lambda: "team-a")
    assert steps.link_run(read_pod_labels=_fail) is None


def _fail(pod: str, namespace: str) -> dict[str, str]:
    raise PermissionError("pods is forbidden")


# ---------------------------------------------------------------------------------------------
# the whole flow, as the notebook steps use it


@pytest.fixture(scope="module")
def wine() -> dict[str, Any]:
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y)
    return {"x": x, "y": y, "scaler": scaler, "model": model}


def test_submit_snapshot_serve_and_smoke(kfp_serve_home: Path, wine: dict[str, Any]) -> None:
    from kfp_serve.artifacts import get_artifact
    from kfp_serve.serving import Endpoint
    from kfp_serve.serving.errors import ServingError

    transformer_id = kale_steps.submit_transformer(wine["scaler"], name="wine-scaler")
    model_id = kale_steps.submit_model(
        wine["model"], name="wine-lr", version="1.0.0", tags={"dataset": "wine"}
    )
    assert isinstance(transformer_id, int) and isinstance(model_id, int)
    # A re-run cell (or a retried step) submits the same content again: the same artifact.
    again = kale_steps.submit_model(wine["model"], name="wine-lr", version="1.0.0")
    assert again == model_id
    record = get_artifact(model_id)
    assert (record.kind, record.name, record.version) == ("model", "wine-lr", "1.0.0")
    assert record.tags.get("dataset") == "wine"
    assert get_artifact(transformer_id).kind == "transformer"

    snap = kale_steps.snapshot(model_id)
    assert snap["digest"].startswith("blake3:") and snap["artifact_id"] == model_id
    assert get_artifact(model_id).snapshot_uri == snap["uri"]
    assert kale_steps.snapshot(model_id)["uri"] == snap["uri"], "snapshots are idempotent"
    # A later step runs in another pod, where the artifact's directory does not exist: the
    # snapshot taken earlier is what it gets.
    shutil.rmtree(record.uri)
    assert kale_steps.snapshot(model_id)["uri"] == snap["uri"]
    kale_steps.snapshot(transformer_id)

    endpoint = kale_steps.serve(
        model_id, transformer_id, serve_config={"limits": {"memory": "1Gi"}}, name="wine-steps"
    )
    assert endpoint["name"] == "wine-steps"
    assert endpoint["url"].startswith("http://127.0.0.1:")
    assert (endpoint["model_id"], endpoint["transformer_id"]) == (model_id, transformer_id)
    assert pickle.loads(pickle.dumps(endpoint)) == endpoint  # survives Kale's marshalling

    rows = wine["x"][::20]
    expected = wine["model"].predict(wine["scaler"].transform(rows))
    result = kale_steps.smoke_predict(endpoint["name"], rows, expected)
    assert result["passed"] is True, result
    assert (result["mismatches"], result["n_samples"]) == (0, len(rows))
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert json.loads(json.dumps(result)) == result  # plain values only

    wrong = kale_steps.smoke_predict(endpoint["name"], rows, (expected + 1) % 3)
    assert wrong["passed"] is False
    assert wrong["verdict"] == "mismatch"
    assert wrong["mismatches"] == len(rows)
    assert wrong["mismatch_examples"][0]["index"] == 0

    kale_steps.stop("wine-steps")
    with pytest.raises(ServingError):
        Endpoint("wine-steps")


def test_serve_defaults_to_the_model_name(kfp_serve_home: Path, wine: dict[str, Any]) -> None:
    model_id = kale_steps.submit_model(wine["model"], "wine-raw")
    # No transformer: the endpoint answers scaled features only.
    endpoint = kale_steps.serve(model_id)
    assert endpoint["name"] == "wine-raw"
    assert endpoint["transformer_id"] is None


# ---------------------------------------------------------------------------------------------
# bad use: clear errors


def test_serve_an_id_that_does_not_exist(kfp_serve_home: Path) -> None:
    from kfp_serve.artifacts.errors import MetadataError

    with pytest.raises(MetadataError, match="987654"):
        kale_steps.serve(987654, name="ghost")


def test_serve_a_transformer_id_that_does_not_exist(
    kfp_serve_home: Path, wine: dict[str, Any]
) -> None:
    from kfp_serve.artifacts.errors import MetadataError

    model_id = kale_steps.submit_model(wine["model"], "wine-lr")
    with pytest.raises(MetadataError, match="987654"):
        kale_steps.serve(model_id, 987654, name="ghost")


def test_serve_an_unknown_model_name(kfp_serve_home: Path, wine: dict[str, Any]) -> None:
    from kfp_serve.artifacts.errors import MetadataError

    kale_steps.submit_model(wine["model"], "wine-lr")
    unknown = r"no model named 'wine-rf'.*known names: \['wine-lr'\]"
    with pytest.raises(MetadataError, match=unknown):
        kale_steps.serve("wine-rf")


def test_serve_by_alias_returns_the_version_served(
    kfp_serve_home: Path, wine: dict[str, Any]
) -> None:
    from kfp_serve import artifacts
    from kfp_serve.serving import Endpoint, constants

    first = kale_steps.submit_model(wine["model"], "wine-lr", version="1.0.0")
    kale_steps.submit_model(wine["model"], "wine-lr", version="2.0.0")
    artifacts.set_alias("wine-lr", "champion", "1.0.0")
    endpoint = kale_steps.serve("wine-lr@champion", name="wine-alias")
    try:
        assert endpoint["model_id"] == first
        labels = Endpoint("wine-alias").status.manifest["metadata"]["labels"]
        assert labels[constants.LABEL_MODEL_ALIAS] == "champion"
        assert labels[constants.LABEL_MODEL_VERSION] == "1.0.0"
    finally:
        kale_steps.stop("wine-alias")


class NotAModel:
    """Has predict(), but is neither scikit-learn nor XGBoost."""

    def predict(self, rows: Any) -> list[int]:
        return [0 for _ in rows]


@pytest.mark.parametrize(
    "model",
    [pytest.param(NotAModel(), id="custom-class"), pytest.param({"w": [1, 2]}, id="dict")],
)
def test_submit_an_unsupported_model_type(kfp_serve_home: Path, model: Any) -> None:
    from kfp_serve.artifacts.errors import ArtifactError

    with pytest.raises(ArtifactError, match=type(model).__name__):
        kale_steps.submit_model(model, "bad-model")


def test_submit_an_unfitted_model(kfp_serve_home: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from kfp_serve.artifacts.errors import ArtifactError

    with pytest.raises(ArtifactError, match="(?i)fit"):
        kale_steps.submit_model(LogisticRegression(), "unfitted")


def test_submit_a_transformer_without_transform(kfp_serve_home: Path) -> None:
    from kfp_serve.artifacts.errors import ArtifactError

    with pytest.raises(ArtifactError, match="transform"):
        kale_steps.submit_transformer(NotAModel(), "bad-transformer")


@pytest.mark.parametrize(
    ("serve_config", "path"),
    [
        pytest.param({"limitz": {"memory": "1Gi"}}, "limitz", id="top-level"),
        pytest.param(
            {"predictor": {"container": {"resourcez": {}}}},
            "predictor.container.resourcez",
            id="nested",
        ),
        pytest.param('{"limitz": {"memory": "1Gi"}}', "limitz", id="json-text"),
        pytest.param('{"limits": ', "JSON", id="bad-json"),
    ],
)
def test_serve_config_with_an_unknown_key(
    kfp_serve_home: Path, wine: dict[str, Any], serve_config: Any, path: str
) -> None:
    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.errors import ServeConfigError

    model_id = kale_steps.submit_model(wine["model"], "wine-lr")
    with pytest.raises(ServeConfigError, match=path.replace(".", r"\.")):
        kale_steps.serve(model_id, serve_config=serve_config, name="bad-config")
    assert get_backend().list() == [], "nothing is served with a bad config"


def test_smoke_predict_an_endpoint_that_does_not_exist(kfp_serve_home: Path) -> None:
    from kfp_serve.serving.errors import ServingError

    with pytest.raises(ServingError, match="no-such-endpoint"):
        kale_steps.smoke_predict("no-such-endpoint", [[1.0, 2.0]], [0])


def test_smoke_predict_needs_one_expected_per_row(kfp_serve_home: Path) -> None:
    with pytest.raises(ValueError, match="one prediction per sample row"):
        kale_steps.smoke_predict("any", [[1.0], [2.0]], [0])
