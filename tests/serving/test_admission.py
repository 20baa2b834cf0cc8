"""KServe's admission rules, each refused and each near miss admitted, on every surface.

One table, one row per rule: an input the rule refuses and a near miss it admits. Each row is
checked where it can be reached: the builder (``serve``'s manifest), the CLI (``kfp-serve serve
--dry-run`` as a subprocess), and the Kubernetes API double, which answers as KServe's webhook does
(403 Forbidden, "admission webhook ... denied the request: ..."). Rows the builder cannot produce
(spec.canary, updates, fields kfp-serve builds itself) run on the double only; TrainedModel rows
run on the rule functions, on the double, and on the Kubernetes backend's own check.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kfp_serve.serving import ServeConfigError, admission, build_inference_service
from kfp_serve.serving.constants import ANNOTATION_DEPLOYMENT_MODE, KSERVE_VERSION_ENV
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.isvc import IgnoredByKServeWarning
from tests.cli.conftest import run_script
from tests.kube_double.server import KubeDouble
from tests.kube_double.store import ISVC, TRAINED_MODEL, merge_patch

MODEL_URI = "s3://models/iris/1"
OTHER_URI = "s3://models/iris/2"
CLASS = admission.ANNOTATION_AUTOSCALER_CLASS
MODE = ANNOTATION_DEPLOYMENT_MODE
NS = "default"


@dataclass(frozen=True)
class Input:
    """A builder/CLI input: the endpoint name and a ServeConfig dict."""

    config: dict[str, Any] = field(default_factory=dict)
    name: str = "iris"


@dataclass(frozen=True)
class Row:
    """One rule: what it refuses and the near miss it admits.

    ``bad``/``good`` go to the builder and the CLI (None: the builder cannot produce it);
    ``bad_patch``/``good_patch`` are merge patches on the builder's plain manifest for the double;
    ``old_patch`` makes the stored object of an update; ``version`` pins the KServe release.
    """

    rule: str
    bad: Input | None
    good: Input | None
    bad_patch: dict[str, Any]
    good_patch: dict[str, Any]
    old_patch: dict[str, Any] | None = None
    old_status: dict[str, Any] | None = None
    version: str | None = None
    fragment: str = ""  # the field the builder's message must name


def containers(*items: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"image": "registry.local/server:1", **item} for item in items]


def predictor(**spec: Any) -> dict[str, Any]:
    return {"predictor": spec}


def spec_patch(**predictor_spec: Any) -> dict[str, Any]:
    return {"spec": {"predictor": predictor_spec}}


def annotations(**values: str) -> dict[str, Any]:
    return {"metadata": {"annotations": values}}


CANARY = {
    "predictor": {
        "name": "green",
        # master's CRD requires a model name in a canary (and the webhook refuses it on the
        # stable predictor).
        "model": {"name": "iris-2", "modelFormat": {"name": "sklearn"}, "storageUri": OTHER_URI},
    },
    "trafficPercent": 10,
}
TWO_MAINS = containers({"name": "kserve-container"}, {"name": "kserve-container"})
MAIN_AND_SIDECAR = containers({"name": "kserve-container"}, {"name": "agent"})
KEDA = {MODE: "Standard", CLASS: "keda"}


def keda_metric(target: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}]}


ROWS = [
    Row("isvc-name", Input(name="1iris"), Input(name="iris1"),
        {"metadata": {"name": "1iris"}}, {"metadata": {"name": "iris1"}}, fragment="name"),
    Row("autoscaler-class",
        Input({"annotations": {CLASS: "kpa"}}), Input({"annotations": {CLASS: "hpa"}}),
        annotations(**{CLASS: "kpa"}), annotations(**{CLASS: "hpa"}),
        fragment=f"annotations[{CLASS}]"),
    Row("blocked-env",
        Input({"env": [{"name": "PYTHONPATH", "value": "/opt/extra"}]}),
        Input({"env": [{"name": "MY_PYTHONPATH", "value": "/opt/extra"}]}),
        spec_patch(model={"env": [{"name": "PYTHONPATH", "value": "/opt/extra"}]}),
        spec_patch(model={"env": [{"name": "MY_PYTHONPATH", "value": "/opt/extra"}]}),
        fragment="predictor.container.env"),
    Row("one-implementation",
        Input(predictor(containers=TWO_MAINS)), Input(predictor(containers=MAIN_AND_SIDECAR)),
        spec_patch(model=None, containers=TWO_MAINS),
        spec_patch(model=None, containers=MAIN_AND_SIDECAR), fragment="predictor"),
    Row("custom-protocol",
        Input(predictor(containers=containers(
            {"name": "kserve-container", "env": [{"name": "PROTOCOL", "value": "v3"}]}))),
        Input(predictor(containers=containers(
            {"name": "kserve-container", "env": [{"name": "PROTOCOL", "value": "v2"}]}))),
        spec_patch(model=None, containers=containers(
            {"name": "kserve-container", "env": [{"name": "PROTOCOL", "value": "v3"}]})),
        spec_patch(model=None, containers=containers(
            {"name": "kserve-container", "env": [{"name": "PROTOCOL", "value": "v2"}]})),
        fragment="predictor.containers[0].env"),
    Row("replicas",
        Input(predictor(minReplicas=3, maxReplicas=2)),
        Input(predictor(minReplicas=2, maxReplicas=2)),
        spec_patch(minReplicas=3, maxReplicas=2), spec_patch(minReplicas=2, maxReplicas=2),
        fragment="predictor.minReplicas"),
    Row("container-concurrency",
        Input(predictor(containerConcurrency=-1)), Input(predictor(containerConcurrency=0)),
        spec_patch(containerConcurrency=-1), spec_patch(containerConcurrency=0),
        fragment="predictor.containerConcurrency"),
    Row("logger-mode",
        Input(predictor(logger={"url": "http://logger.local"})),
        Input(predictor(logger={"url": "http://logger.local", "mode": "request"})),
        spec_patch(logger={"url": "http://logger.local"}),
        spec_patch(logger={"url": "http://logger.local", "mode": "request"}),
        fragment="predictor.logger.mode"),
    Row("logger-storage",
        Input(predictor(logger={"mode": "all", "storage": {"path": "/logs"}})),
        Input(predictor(logger={"mode": "all", "storage": {
            "path": "/logs", "key": "creds", "parameters": {"type": "s3"}}})),
        spec_patch(logger={"mode": "all", "storage": {"path": "/logs"}}),
        spec_patch(logger={"mode": "all", "storage": {
            "path": "/logs", "key": "creds", "parameters": {"type": "s3"}}}),
        version="master", fragment="predictor.logger.storage"),
    Row("kpa-scaling",
        Input(predictor(scaleMetric="cpu")), Input(predictor(scaleMetric="rps")),
        spec_patch(scaleMetric="cpu"), spec_patch(scaleMetric="rps"),
        fragment="predictor.scaleMetric"),
    Row("hpa-scaling",
        Input({"annotations": {admission.ANNOTATION_KNATIVE_CLASS: admission.KNATIVE_HPA_CLASS},
               **predictor(scaleMetric="concurrency")}),
        Input({"annotations": {admission.ANNOTATION_KNATIVE_CLASS: admission.KNATIVE_HPA_CLASS},
               **predictor(scaleMetric="cpu")}),
        {**annotations(**{admission.ANNOTATION_KNATIVE_CLASS: admission.KNATIVE_HPA_CLASS}),
         **spec_patch(scaleMetric="concurrency")},
        {**annotations(**{admission.ANNOTATION_KNATIVE_CLASS: admission.KNATIVE_HPA_CLASS}),
         **spec_patch(scaleMetric="cpu")},
        fragment="predictor.scaleMetric"),
    Row("keda-scaling",
        Input({"annotations": KEDA, **predictor(autoScaling=keda_metric(
            {"type": "AverageValue"}))}),
        Input({"annotations": KEDA, **predictor(autoScaling=keda_metric(
            {"type": "Utilization", "averageUtilization": 80}))}),
        {**annotations(**KEDA), **spec_patch(autoScaling=keda_metric({"type": "AverageValue"}))},
        {**annotations(**KEDA), **spec_patch(autoScaling=keda_metric(
            {"type": "Utilization", "averageUtilization": 80}))},
        version="master", fragment="predictor.autoScaling.metrics[0].resource.target.type"),
    Row("collocated-storage-uri",
        Input(predictor(containers=containers({"name": "kserve-container"}, {
            "name": "transformer-container", "env": [{"name": "STORAGE_URI", "value": OTHER_URI}]
        }))),
        Input(predictor(containers=containers({"name": "kserve-container"}, {
            "name": "transformer-container", "env": [{"name": "STORAGE_PATH", "value": "/x"}]
        }))),
        spec_patch(model=None, containers=containers({"name": "kserve-container"}, {
            "name": "transformer-container", "env": [{"name": "STORAGE_URI", "value": OTHER_URI}]
        })),
        spec_patch(model=None, containers=containers({"name": "kserve-container"}, {
            "name": "transformer-container", "env": [{"name": "STORAGE_PATH", "value": "/x"}]
        })),
        fragment="predictor.containers[1].env"),
    # The builder always sets the model's storageUri, so only its refusal can be shown there.
    Row("storage-uris",
        Input(predictor(storageUris=[{"uri": OTHER_URI, "mountPath": "/mnt/extra"}])), None,
        spec_patch(storageUris=[{"uri": OTHER_URI, "mountPath": "/mnt/extra"}]),
        spec_patch(model={"storageUri": None},
                   storageUris=[{"uri": OTHER_URI, "mountPath": "/mnt/extra"}]),
        version="master", fragment="predictor.storageUris"),
    Row("standard-predictor-name", None, None,
        spec_patch(model={"name": "blue"}),
        spec_patch(model=None, containers=containers({"name": "blue"})), version="master"),
    Row("canary-mode", None, None,
        {"spec": {"canary": [CANARY]}},
        {**annotations(**{MODE: "Standard"}), "spec": {"canary": [CANARY]}}, version="master"),
    Row("canary-entries", None, None,
        {**annotations(**{MODE: "Standard"}), "spec": {"canary": [
            {**CANARY, "trafficPercent": 60},
            {**CANARY, "predictor": {**CANARY["predictor"], "name": "red"}, "trafficPercent": 50},
        ]}},
        {**annotations(**{MODE: "Standard"}), "spec": {"canary": [
            {**CANARY, "trafficPercent": 60},
            {**CANARY, "predictor": {**CANARY["predictor"], "name": "red"}, "trafficPercent": 40},
        ]}},
        version="master"),
    Row("deployment-mode-change", None, None,
        annotations(**{MODE: "RawDeployment"}), annotations(**{MODE: "Serverless"}),
        old_patch=annotations(**{MODE: "Serverless"}),
        old_status={"deploymentMode": "Serverless"}, version="master"),
    Row("predictor-rename", None, None,
        spec_patch(name="green"), spec_patch(name="green", model={"storageUri": OTHER_URI}),
        old_patch=spec_patch(name="blue"), version="master"),
]  # fmt: skip
WARNING_ROWS = {"canary-ignored-in-raw"}
TM_ROWS = {
    "tm-name": ({"metadata": {"name": "iris.v1"}}, {"metadata": {"name": "Iris_v1"}}, None),
    "tm-storage-uri": (
        {"spec": {"model": {"storageUri": "pvc://models/iris"}}},
        {"spec": {"model": {"storageUri": "gs://models/iris"}}},
        None,
    ),
    "tm-memory-immutable": (
        {"spec": {"model": {"memory": "2Gi"}}},
        {"spec": {"model": {"memory": "1024Mi"}}},
        {"spec": {"model": {"memory": "1Gi"}}},
    ),
}
BUILDER_ROWS = [r for r in ROWS if r.bad is not None]
IDS = [r.rule for r in ROWS]


def test_every_rule_has_a_row():
    covered = {r.rule for r in ROWS} | WARNING_ROWS | set(TM_ROWS)
    assert covered == set(admission.RULES_BY_ID)


# ---- the builder -------------------------------------------------------------------------------


def build(given: Input, *, with_transformer: bool = False, quiet: bool = True) -> dict[str, Any]:
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")  # warnings are asserted by their own tests
        return build_inference_service(
            given.name, MODEL_URI, "sklearn", serve_config=given.config,
            transformer_uri=OTHER_URI if with_transformer else None,
        )


@pytest.fixture
def release(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """$KFP_SERVE_KSERVE_VERSION as the row says (unset: every release's rules)."""
    version = request.param.version
    if version:
        monkeypatch.setenv(KSERVE_VERSION_ENV, version)
    else:
        monkeypatch.delenv(KSERVE_VERSION_ENV, raising=False)
    return version


@pytest.mark.parametrize("row, release", [(r, r) for r in BUILDER_ROWS],
                         ids=[r.rule for r in BUILDER_ROWS], indirect=["release"])
def test_builder_refuses_what_the_webhook_refuses(row: Row, release: str | None):
    with pytest.raises(ServeConfigError) as refused:
        build(row.bad)
    message = str(refused.value)
    assert message.startswith(row.fragment), message
    assert f"admission rule {row.rule!r}" in message
    assert admission.RULES_BY_ID[row.rule].text in message
    if row.good is not None:
        assert build(row.good)["metadata"]["name"] == row.good.name


def test_canary_in_raw_mode_is_admitted_with_a_warning_that_says_what_to_do():
    config = {"annotations": {MODE: "RawDeployment"}, **predictor(canaryTrafficPercent=10)}
    with pytest.warns(IgnoredByKServeWarning) as caught:
        manifest = build(Input(config), quiet=False)
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == 10
    message = str(caught[0].message)
    assert message.startswith("predictor.canaryTrafficPercent: is ignored in RawDeployment mode")
    assert "Knative mode" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredByKServeWarning)
        build(Input(predictor(canaryTrafficPercent=10)), quiet=False)  # serverless: a real split


def test_standard_mode_canary_warning_points_to_spec_canary_on_new_releases(monkeypatch):
    monkeypatch.setenv(KSERVE_VERSION_ENV, "master")
    config = {"annotations": {MODE: "Standard"}, **predictor(canaryTrafficPercent=10)}
    with pytest.warns(IgnoredByKServeWarning, match="in Standard mode.*use spec.canary"):
        build(Input(config), quiet=False)


def test_blocked_env_holds_from_0_18_only(monkeypatch):
    config = Input({"env": [{"name": "PYTHONPATH", "value": "/opt/extra"}]})
    monkeypatch.setenv(KSERVE_VERSION_ENV, "0.17")
    assert build(config)["spec"]["predictor"]["model"]["env"][0]["name"] == "PYTHONPATH"
    monkeypatch.setenv(KSERVE_VERSION_ENV, "v0.18.1")
    with pytest.raises(ServeConfigError, match="KServe \\(0.18\\) admission rule 'blocked-env'"):
        build(config)


def test_raw_deployment_hpa_is_refused_by_0_16_alone_and_the_message_says_how_to_choose(
    monkeypatch,
):
    # 0.16 validates autoscaling for "Standard" only and does not yet rename "RawDeployment",
    # so it applies Knative's rules (cpu is not a Knative metric); the other releases admit it.
    config = Input({"annotations": {MODE: "RawDeployment", CLASS: "hpa"},
                    **predictor(scaleMetric="cpu", scaleTarget=70)})
    monkeypatch.delenv(KSERVE_VERSION_ENV, raising=False)
    with pytest.raises(ServeConfigError) as refused:
        build(config)
    assert "KServe (0.16) admission rule 'kpa-scaling'" in str(refused.value)
    assert f"set {KSERVE_VERSION_ENV} to its release" in str(refused.value)
    for version in ("0.15", "0.17", "master"):
        monkeypatch.setenv(KSERVE_VERSION_ENV, version)
        assert build(config)["spec"]["predictor"]["scaleMetric"] == "cpu"


def test_hpa_target_above_100_is_refused_for_memory_too(monkeypatch):
    monkeypatch.setenv(KSERVE_VERSION_ENV, "0.15")  # the argument wins over the environment
    annotations_ = {MODE: "Standard", CLASS: "hpa"}

    def build_for_master(component: dict[str, Any]) -> dict[str, Any]:
        return build_inference_service("iris", MODEL_URI, "sklearn", kserve_version="master",
                                       serve_config={"annotations": annotations_, **component})

    with pytest.raises(ServeConfigError, match="predictor.scaleTarget: 200 for metric 'memory'"):
        build_for_master(predictor(scaleMetric="memory", scaleTarget=200))
    build_for_master(predictor(scaleMetric="memory", scaleTarget=100))


def test_transformer_rules_name_the_transformer():
    with pytest.raises(ServeConfigError, match="^transformer.logger.mode: is None"):
        build(Input({"transformer": {"logger": {"url": "http://logger.local"}}}),
              with_transformer=True)
    with pytest.raises(ServeConfigError, match="^transformer: sets 0 implementations"):
        build(Input({"transformer": {"containers": []}}), with_transformer=True)


def test_an_unknown_release_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(KSERVE_VERSION_ENV, "0.9")
    with pytest.raises(ServeConfigError, match=f"^{KSERVE_VERSION_ENV}: KServe '0.9'"):
        build(Input())


def test_a_container_name_on_the_model_is_left_out_with_a_warning():
    with pytest.warns(IgnoredByKServeWarning, match="predictor.container.name: 'main'"):
        manifest = build_inference_service(
            "iris", MODEL_URI, "sklearn", serve_config=predictor(container={"name": "main"})
        )
    assert "name" not in manifest["spec"]["predictor"]["model"]


# ---- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_id() -> int:
    """A model in this session's MLMD (the CLI subprocess inherits KFP_SERVE_HOME)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kfp_serve import artifacts

    X, y = load_iris(return_X_y=True)
    return artifacts.Model(
        model=LogisticRegression(max_iter=300).fit(X, y), name="admission-iris", version="1.0.0"
    ).submit_artifact()


def dry_run(model: int, given: Input, version: str | None, monkeypatch) -> Any:
    if version:
        monkeypatch.setenv(KSERVE_VERSION_ENV, version)
    else:
        monkeypatch.delenv(KSERVE_VERSION_ENV, raising=False)
    return run_script("serve", str(model), "--name", given.name,
                      "--config", json.dumps(given.config), "--dry-run")


@pytest.mark.parametrize("row", BUILDER_ROWS, ids=[r.rule for r in BUILDER_ROWS])
def test_cli_dry_run_refuses_what_the_webhook_refuses(row: Row, model_id: int, monkeypatch):
    refused = dry_run(model_id, row.bad, row.version, monkeypatch)
    assert refused.exit_code != 0, refused
    assert "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, refused.stderr
    assert f"admission rule {row.rule!r}" in errors[0] and row.fragment in errors[0]
    assert refused.stdout.strip() == ""
    if row.good is not None:
        admitted = dry_run(model_id, row.good, row.version, monkeypatch)
        assert admitted.exit_code == 0, admitted.stderr
        assert yaml.safe_load(admitted.stdout)["metadata"]["name"] == row.good.name


def test_cli_dry_run_warns_about_a_raw_mode_canary(model_id: int, monkeypatch):
    config = Input({"annotations": {MODE: "RawDeployment"}, **predictor(canaryTrafficPercent=10)})
    outcome = dry_run(model_id, config, None, monkeypatch)
    assert outcome.exit_code == 0, outcome.stderr
    assert yaml.safe_load(outcome.stdout)["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent: is ignored in RawDeployment mode" in outcome.stderr


# ---- the API double ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def double() -> Iterator[KubeDouble]:
    with KubeDouble() as kube:
        yield kube


@pytest.fixture(scope="module")
def api(double: KubeDouble) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(double.api_client())


def base_manifest() -> dict[str, Any]:
    manifest = build(Input())
    manifest["metadata"]["namespace"] = NS
    return manifest


def create(api: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    return api.create_namespaced_custom_object(
        ISVC.group, ISVC.version, NS, ISVC.plural, body, field_validation="Strict"
    )


def write(api: client.CustomObjectsApi, double: KubeDouble, row: Row,
          patch: dict[str, Any]) -> dict[str, Any]:
    """Create the row's object, or (for an update row) store the old one and replace it."""
    body = merge_patch(base_manifest(), patch)
    name = body["metadata"]["name"]
    if row.old_patch is None:
        return create(api, body)
    double.seed(ISVC, merge_patch(base_manifest(), row.old_patch), NS)
    if row.old_status:
        double.store.update(ISVC, NS, name, {"status": row.old_status}, subresource="status")
    return api.replace_namespaced_custom_object(
        ISVC.group, ISVC.version, NS, ISVC.plural, name, body
    )


@pytest.fixture
def release_of(double: KubeDouble) -> Iterator[Any]:
    def pin(version: str | None) -> None:
        double.kserve_version = version

    yield pin
    double.kserve_version = None
    for (namespace, name) in list(double.store.objects[ISVC]):
        double.store.delete(ISVC, namespace, name)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_api_double_denies_like_the_webhook(row: Row, api, double, release_of):
    release_of(row.version)
    with pytest.raises(ApiException) as denied:
        write(api, double, row, row.bad_patch)
    status = json.loads(denied.value.body)
    assert denied.value.status == 403 and status["reason"] == "Forbidden"
    assert status["message"].startswith(
        f'admission webhook "{admission.WEBHOOKS["InferenceService"]}" denied the request: '
    )
    assert f"admission rule {row.rule!r}" in status["message"]
    for (namespace, name) in list(double.store.objects[ISVC]):
        double.store.delete(ISVC, namespace, name)
    admitted = write(api, double, row, row.good_patch)
    assert admitted["metadata"]["generation"] >= 1


NEAR_MISS_ROWS = [r for r in BUILDER_ROWS if r.good is not None]


@pytest.mark.parametrize("row", NEAR_MISS_ROWS, ids=[r.rule for r in NEAR_MISS_ROWS])
def test_what_the_builder_admits_the_double_admits(row: Row, api, double, release_of,
                                                   monkeypatch):
    release_of(row.version)
    if row.version:
        monkeypatch.setenv(KSERVE_VERSION_ENV, row.version)
    body = build(row.good)
    body["metadata"]["namespace"] = NS
    assert create(api, body)["metadata"]["name"] == row.good.name


# ---- the Kubernetes backend against the double's webhook ---------------------------------------


def backend(double: KubeDouble) -> Any:
    from kfp_serve.serving.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(api_client=double.api_client(), namespace=NS, progress=False,
                             request_timeout=5.0)


def test_backend_surfaces_the_webhook_denial_with_the_rule(double, release_of):
    manifest = merge_patch(base_manifest(), spec_patch(model={
        "env": [{"name": "PYTHONPATH", "value": "/opt/extra"}]}))
    with pytest.raises(ServingError) as refused:
        backend(double).apply(manifest, wait=False, timeout=10)
    message = str(refused.value)
    assert "refused to create InferenceService 'iris'" in message
    assert "403 Forbidden: admission webhook" in message
    assert "admission rule 'blocked-env'" in message
    assert "KServe's validating webhook refused the manifest" in message
    assert "RBAC" not in message  # a webhook's 403 is not a missing permission


def test_backend_update_that_changes_the_mode_is_denied(double, release_of):
    release_of("master")
    applied = backend(double).apply(base_manifest(), wait=False, timeout=10)
    assert applied.name == "iris"
    double.kserve.set_ready("iris", NS)  # records status.deploymentMode, as the controller does
    raw = merge_patch(base_manifest(), annotations(**{MODE: "RawDeployment"}))
    with pytest.raises(ServingError) as refused:
        backend(double).apply(raw, wait=False, timeout=10)
    message = str(refused.value)
    assert "refused to patch InferenceService 'iris'" in message
    assert "changes the mode from 'Knative' to 'Standard'" in message
    assert "admission rule 'deployment-mode-change'" in message


# ---- TrainedModel ------------------------------------------------------------------------------


def trained_model(patch: dict[str, Any]) -> dict[str, Any]:
    base = {"metadata": {"name": "iris-v1"},
            "spec": {"inferenceService": "iris", "model": {
                "framework": "sklearn", "storageUri": "s3://models/iris", "memory": "1Gi"}}}
    return merge_patch(base, patch)


@pytest.mark.parametrize("rule", sorted(TM_ROWS))
def test_trained_model_rules(rule: str):
    bad, good, old = TM_ROWS[rule]
    old_obj = trained_model(old) if old is not None else None
    found = admission.evaluate(trained_model(bad), kind=admission.TM_KIND, old=old_obj)
    assert [v.rule.id for v in found] == [rule]
    code, reason, message = admission.denial(admission.TM_KIND, found[0])
    assert (code, reason) == (403, "Forbidden")
    assert message.startswith(f'admission webhook "{admission.WEBHOOKS["TrainedModel"]}" denied')
    assert admission.evaluate(trained_model(good), kind=admission.TM_KIND, old=old_obj) == []


TM_PATH = ("serving.kserve.io", "v1alpha1", NS, "trainedmodels")


@pytest.fixture
def no_tm_controller(double: KubeDouble) -> Iterator[None]:
    """The webhook alone: no controller deleting parentless TrainedModels meanwhile."""
    double.trained_models.program(outcome="never")
    yield
    double.trained_models.program(outcome="reconcile")
    for (namespace, name) in list(double.store.objects[TRAINED_MODEL]):
        double.store.delete(TRAINED_MODEL, namespace, name)


@pytest.mark.parametrize("rule", sorted(TM_ROWS))
def test_api_double_denies_trained_models_like_the_webhook(rule: str, api, no_tm_controller):
    bad, good, old = TM_ROWS[rule]

    def write(body: dict[str, Any]) -> dict[str, Any]:
        if old is None:
            return api.create_namespaced_custom_object(*TM_PATH, body)
        return api.replace_namespaced_custom_object(*TM_PATH, body["metadata"]["name"], body)

    if old is not None:
        api.create_namespaced_custom_object(*TM_PATH, trained_model(old))
    with pytest.raises(ApiException) as denied:
        write(trained_model(bad))
    status = json.loads(denied.value.body)
    assert denied.value.status == 403 and f"admission rule {rule!r}" in status["message"]
    assert status["message"].startswith(
        f'admission webhook "{admission.WEBHOOKS["TrainedModel"]}" denied the request: ')
    if rule == "tm-name":
        good = {"metadata": {"name": "iris-v1"}}  # "Iris_v1" is no object name (DNS-1123) at all
    assert write(trained_model(good))["metadata"]["name"]


@pytest.mark.parametrize("rule", sorted(TM_ROWS))
def test_admit_trained_model_refuses_what_the_webhook_refuses(rule: str):
    bad, good, old = TM_ROWS[rule]
    old_obj = trained_model(old) if old is not None else None
    with pytest.raises(ServeConfigError, match=f"admission rule {rule!r}"):
        admission.admit_trained_model(trained_model(bad), old=old_obj)
    admission.admit_trained_model(trained_model(good), old=old_obj)


def test_rules_are_pure():
    manifest = base_manifest()
    before = copy.deepcopy(manifest)
    admission.evaluate(manifest)
    assert manifest == before


def test_api_double_admits_a_raw_mode_canary_as_the_webhook_does(api, release_of):
    body = merge_patch(base_manifest(), {**annotations(**{MODE: "RawDeployment"}),
                                         **spec_patch(canaryTrafficPercent=10)})
    assert create(api, body)["spec"]["predictor"]["canaryTrafficPercent"] == 10
