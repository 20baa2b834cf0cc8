"""Each pipeline end to end under kfp.local (one run per pipeline), plus compile options."""

from pathlib import Path

import yaml

from kfp_serve.pipelines import PIPELINES, ClusterOptions, compile_pipeline
from kfp_serve.pipelines.local_run import coerce_params, run_local, task_display_names


def _check_common(result, events):
    assert result["smoke_verdict"] == "blessed" and result["blessed"] is True
    assert result["endpoint_url"].startswith("http://127.0.0.1:")
    assert isinstance(result["model_id"], int)
    assert set(result["step_seconds"]) >= {"validate", "train", "submit-model",
                                           "snapshot-model", "serve", "smoke-predict"}
    started = [step for step, event, _ in events if event == "started"]
    assert started == list(result["step_seconds"])


def test_sklearn_transformer_pipeline_end_to_end(kfp_home):
    from kfp_serve import artifacts
    from kfp_serve.serving.endpoint import Endpoint

    events = []
    result = run_local(
        "sklearn-transformer",
        {"endpoint_name": "iris-e2e", "model_version": "2.0.0",
         "serve_config": {"labels": {"team": "ml"}}},
        progress=lambda *event: events.append(event),
    )
    _check_common(result, events)
    assert result["endpoint_name"] == "iris-e2e"
    assert "snapshot-transformer" in result["step_seconds"]
    model = artifacts.get_artifact(result["model_id"])
    transformer = artifacts.get_artifact(result["transformer_id"])
    # The pipeline's own default names: never the README quick start's "iris"/"iris-scaler".
    assert (model.name, model.version, model.kind) == (
        "sklearn-transformer-model", "2.0.0", "model")
    assert transformer.name == "sklearn-transformer-scaler"
    assert float(model.tags["metric.accuracy"]) > 0.8
    assert transformer.kind == "transformer" and transformer.snapshot_uri
    endpoint = Endpoint("iris-e2e")
    # Raw features go in: the transformer scales them in front of the model.
    assert endpoint.predictions([[5.1, 3.5, 1.4, 0.2]]) == [0]
    manifest = endpoint.status.manifest
    assert manifest["metadata"]["labels"]["team"] == "ml"
    assert "transformer" in manifest["spec"]


def test_xgboost_pipeline_end_to_end(kfp_home):
    events = []
    result = run_local("xgboost", {"hyperparameters": '{"n_estimators": 10}'},
                       progress=lambda *event: events.append(event))
    _check_common(result, events)
    assert result["transformer_id"] is None
    assert result["endpoint_name"] == "xgboost"


def test_a_bad_serve_config_fails_at_validate_before_anything_is_recorded(kfp_home):
    from kfp_serve import artifacts
    from kfp_serve.pipelines.local_run import PipelineRunError

    try:
        run_local("xgboost", {"serve_config": '{"limit": {"memory": "1Gi"}}'}, progress=False)
    except PipelineRunError as e:
        assert e.step == "validate"
        assert "limit: unknown ServeConfig field" in e.log_file.read_text()
    else:
        raise AssertionError("the run with a bad ServeConfig succeeded")
    assert artifacts.list_artifacts() == []


def test_coerce_params_converts_and_rejects():
    pipeline = PIPELINES["sklearn-transformer"]
    assert coerce_params(pipeline, {"fail_on_mismatch": "false", "serve_config": {"a": 1}}) == {
        "fail_on_mismatch": False, "serve_config": '{"a": 1}'}
    for bad, message in (({"nope": 1}, "unknown parameter"),
                         ({"fail_on_mismatch": "maybe"}, "must be boolean")):
        try:
            coerce_params(pipeline, bad)
        except ValueError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_display_names_cover_both_snapshots():
    names = task_display_names(PIPELINES["sklearn-transformer"])
    assert {"snapshot-model", "snapshot-transformer"} <= set(names.values())


def test_a_bad_constant_default_fails_when_the_pipeline_is_defined():
    import pytest

    from kfp_serve.artifacts.errors import InvalidNameError
    from kfp_serve.pipelines.checks import checked_pipeline

    def bad(model_name: str = "Not_A_Name", model_version: str = "1.0.0"):
        """A pipeline with a default KServe would refuse."""

    with pytest.raises(InvalidNameError, match="model_name 'Not_A_Name'"):
        checked_pipeline(bad, name="bad", description="bad")


def test_compiled_pipelines_describe_every_parameter_in_plain_sentences():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for path in sorted((repo / "pipelines").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        parameters = spec["root"]["inputDefinitions"]["parameters"]
        assert {"dataset", "target_column", "model_version"} <= set(parameters), path.name
        for name, parameter in parameters.items():
            text = parameter.get("description") or ""
            assert text, f"{path.name}: {name} has no description"
            assert "\n" not in text and "``" not in text, f"{path.name}: {name}: {text!r}"
            assert parameter.get("defaultValue") != "Default", "experiments are 'default'"


def test_default_compile_needs_no_cluster(tmp_path):
    path = compile_pipeline("sklearn-transformer", tmp_path / "p.yaml")
    spec = yaml.safe_load_all(path.read_text())
    docs = list(spec)
    assert len(docs) == 1  # no platform spec without cluster options


def test_cluster_options_add_secret_env_and_pvc_mount(tmp_path):
    options = ClusterOptions(s3_secret="s3-creds", snapshot_pvc="models-pvc")
    path = compile_pipeline("xgboost", tmp_path / "x.yaml", options)
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-snapshot", "exec-serve", "exec-train"}
    for name, config in executors.items():
        assert config["secretAsEnv"][0]["secretName"] == "s3-creds"
        # train reads an s3:// dataset with the credentials; it never touches the PVC.
        assert ("pvcMount" in config) == (name != "exec-train")
        if name != "exec-train":
            assert config["pvcMount"][0]["constant"] == "models-pvc"


def test_sklearn_multi_pipeline_serves_three_slices_behind_one_endpoint(kfp_home):
    """Three models trained on slices of one dataset, one endpoint, each smoke-tested."""
    import joblib
    from sklearn.datasets import load_iris

    from kfp_serve import artifacts
    from kfp_serve.serving.endpoint import Endpoint

    events = []
    result = run_local("sklearn-multi", {"endpoint_name": "regions"},
                       progress=lambda *event: events.append(event))
    assert result["smoke_verdict"] == "blessed" and result["blessed"] is True
    assert result["endpoint_name"] == "regions"
    assert result["models"] == ["sklearn-multi-a", "sklearn-multi-b", "sklearn-multi-c"]
    assert {"validate", "train", "submit-model", "snapshot-model", "serve-many",
            "smoke-predict-many"} <= set(result["step_seconds"])
    endpoint = Endpoint("regions")
    rows = load_iris().data[::7].tolist()
    answers = set()
    for name in result["models"]:
        record = artifacts.find_artifact(name, kind="model")
        assert record.tags["train.dataset"].startswith("iris (slice ")
        # Each hosted model answers exactly like the model it was trained as.
        local_model = joblib.load(next(Path(record.uri).glob("*.joblib")))
        served = endpoint.predict(rows, model=name)["predictions"]
        assert served == local_model.predict(rows).tolist()
        answers.add(tuple(local_model.coef_.ravel().round(6)))
        # Its lineage says which endpoint hosts it.
        deployments = artifacts.lineage(record.id)["deployments"]
        assert [d["endpoint"] for d in deployments] == ["regions"]
    assert len(answers) == 3  # three slices, three different models


def test_display_names_reach_into_loops():
    names = task_display_names(PIPELINES["sklearn-multi"])
    assert {"train", "submit-model", "snapshot-model", "serve-many"} <= set(names.values())


def test_sklearn_rollout_pipeline_serves_promotes_and_rejects(kfp_home):
    """First run: nothing serves yet, the model takes the endpoint and the alias. A better
    candidate (C=5) passes the offline gate and the canary on replayed held-out traffic and is
    promoted; a much worse one (C=0.001) is rejected offline and never served."""
    import json

    from kfp_serve import artifacts
    from kfp_serve.pipelines import sklearn_rollout
    from kfp_serve.serving.backends.local import registry

    name = "rollout-e2e"
    first = run_local("sklearn-rollout", {"endpoint_name": name}, progress=False)
    assert first["decision"] == "served" and first["promoted"] is True
    assert set(first["step_seconds"]) == {"validate", "train", "submit-model",
                                          "snapshot-model", "rollout"}
    model = "sklearn-rollout-model"
    assert artifacts.list_aliases(model) == {"champion": "1.0.0"}

    # The default gate, with a latency bound this shared machine's noise cannot break (the
    # p99 rule is tested with the gate itself).
    gate = json.loads(sklearn_rollout.DEFAULT_GATE)
    gate["live"]["max_p99_ratio"] = 20.0
    better = run_local("sklearn-rollout", {"endpoint_name": name, "model_version": "1.1.0",
                                           "hyperparameters": '{"C": 5}',
                                           "gate": json.dumps(gate)}, progress=False)
    # The step's verdict report: every check with its threshold and measured value.
    reports = sorted(kfp_home.rglob("report"), key=lambda p: p.stat().st_mtime)
    text = reports[-1].read_text()
    assert better["decision"] == "promoted", text
    assert artifacts.list_aliases(model) == {"champion": "1.1.0"}
    record = registry.read_record(name)
    assert record.traffic == {str(record.latest.revision): 100}
    labels = record.latest.manifest["metadata"]["labels"]
    assert labels["kfp-serve.kubeflow.org/model-version"] == "1.1.0"
    assert "**promoted**" in text and "| agreement |" in text and "| accuracy.change |" in text

    worse = run_local("sklearn-rollout", {"endpoint_name": name, "model_version": "1.2.0",
                                          "hyperparameters": '{"C": 0.001}'}, progress=False)
    assert worse["decision"] == "rejected offline" and worse["promoted"] is False
    assert artifacts.list_aliases(model) == {"champion": "1.1.0"}
    assert registry.read_record(name).latest.revision == record.latest.revision
