"""Components run under kfp.local's SubprocessRunner (one subprocess per task)."""

import json
from pathlib import Path

import pytest
from kfp import components as kfp_components
from kfp import dsl

from kfp_serve.components import get_component

REPO = Path(__file__).resolve().parents[2]
# kfp.local warns for an image name without "python"; ours is a Python image.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


def test_train_submit_snapshot_chain_records_mlmd(kfp_local):
    from kfp_serve import artifacts
    train, submit_model, snapshot = (
        get_component(n) for n in ("train", "submit_model", "snapshot")
    )

    @dsl.pipeline(name="chain")
    def chain() -> int:
        trained = train(dataset_name="wine", estimator="random_forest",
                        hyperparameters='{"n_estimators": 5}')
        model = submit_model(model=trained.outputs["model"], name="wine-rf", version="0.1.0",
                             tags='{"stage": "test"}', run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        snapshot(artifact=model.outputs["saved_model"], artifact_id=model.outputs["model_id"])
        return model.outputs["model_id"]

    model_id = int(chain().output)
    record = artifacts.get_artifact(model_id)
    assert (record.kind, record.name, record.version) == ("model", "wine-rf", "0.1.0")
    # The train step names its data on the model artifact; submit records it beside the tags.
    assert record.tags == {"stage": "test", "train.dataset": "wine"}
    assert record.snapshot_uri and record.digest.startswith("blake3:")
    assert record.signature["n_features"] == 13


def test_train_loaded_from_compiled_yaml_runs(kfp_local):
    train = kfp_components.load_component_from_file(str(REPO / "components" / "train.yaml"))
    task = train(framework="xgboost", estimator="xgb_classifier", preprocessing="none",
                 dataset_name="breast_cancer", hyperparameters='{"n_estimators": 3}',
                 n_samples=3)
    assert task.outputs["has_transformer"] is False
    assert task.outputs["accuracy"] > 0.8
    metrics = task.outputs["metrics"].metadata
    assert set(metrics) == {"accuracy", "f1_macro", "train_seconds"}
    matrix = task.outputs["confusion_matrix"].metadata["confusionMatrix"]
    assert len(matrix["rows"]) == 2
    samples = json.loads(Path(task.outputs["samples"].path).read_text())
    assert len(samples["instances"]) == 3
    # kfp.local hands integer artifact metadata back as float.
    assert task.outputs["model"].metadata["n_features"] == 30


def test_submit_transformer_alone(kfp_local, tmp_path):
    import joblib
    from sklearn.preprocessing import StandardScaler

    from kfp_serve import artifacts
    source = tmp_path / "scaler"
    source.mkdir()
    joblib.dump(StandardScaler().fit([[0.0, 1.0], [2.0, 3.0]]), source / "transformer.joblib")
    submit = get_component("submit_transformer")

    # kfp.local passes artifacts into a task only inside a pipeline: import the directory.
    @dsl.pipeline(name="submit-transformer-alone")
    def alone() -> int:
        imported = dsl.importer(artifact_uri=str(source), artifact_class=dsl.Artifact)
        return submit(transformer=imported.output, name="tiny-scaler",
                      version="2.0.0").outputs["transformer_id"]

    record = artifacts.get_artifact(int(alone().output))
    assert (record.kind, record.name, record.version) == ("transformer", "tiny-scaler", "2.0.0")
    assert (Path(record.uri) / "transformer.joblib").is_file()


def _smoke_pipeline(samples: Path, fail_on_mismatch: bool):
    smoke = get_component("smoke_predict")

    @dsl.pipeline(name="smoke-alone")
    def alone() -> str:
        imported = dsl.importer(artifact_uri=str(samples), artifact_class=dsl.Dataset)
        task = smoke(samples=imported.output, endpoint_name="no-such-endpoint", deadline=2.0,
                     fail_on_mismatch=fail_on_mismatch)
        return task.outputs["verdict"]

    return alone


def test_smoke_predict_alone_records_not_blessed(kfp_local, tmp_path):
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps({"instances": [[1.0]], "expected": [1], "output": "label"}))
    assert _smoke_pipeline(samples, fail_on_mismatch=False)().output == "error"
    (report,) = Path(kfp_local, "pipeline-root").glob("smoke-alone-*/smoke-predict/report")
    assert "no-such-endpoint" in report.read_text()


def test_smoke_predict_fails_the_run_by_default(kfp_local, tmp_path):
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps({"instances": [[1.0]], "expected": [1], "output": "label"}))
    with pytest.raises(RuntimeError, match="FAILURE"):
        _smoke_pipeline(samples, fail_on_mismatch=True)()
