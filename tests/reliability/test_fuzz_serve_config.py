"""Fuzz ServeConfig → manifest: every input builds a manifest that is CRD-valid and admitted by
KServe's webhook rules, or is a ServeConfigError (quoting the rule when the webhook is why)."""

import re
import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kfp_serve.serving import ServeConfigError, admission, build_inference_service
from kfp_serve.serving.constants import ANNOTATION_DEPLOYMENT_MODE
from tests.kserve_schema import SKIP_REASON, reference_available, validate_strict

pytestmark = pytest.mark.skipif(not reference_available(), reason=SKIP_REASON)

EXAMPLES = 2000
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def weighted(common, rare, odds):
    """``rare`` about once in ``odds`` draws (one_of alone leans towards its later branches)."""
    return st.sampled_from(range(odds)).flatmap(lambda i: rare if i == 0 else common)


def mostly(valid):
    """``valid`` most of the time, junk sometimes: enough of both to exercise both outcomes."""
    return weighted(valid, junk, 30)


names = st.sampled_from(["A", "MY_VAR", "PREDICT_PROBA", "x-y", "A", "PYTHONPATH", "PROTOCOL"])
quantities = mostly(
    st.one_of(
        st.sampled_from(
            [
                "1",
                "100m",
                "4Gi",
                "512Mi",
                "1.5",
                "2e3",
                "0.5",
                "4Gi",
                "8Gi",
                "250m",
                "2",
                "4 GB",
                "1Gi ",
            ]
        ),
        st.integers(0, 64),
    )
)
resources = st.dictionaries(
    st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]), quantities, max_size=3
)
env_var = mostly(
    st.one_of(
        st.fixed_dictionaries({"name": names, "value": st.text(max_size=5)}),
        st.fixed_dictionaries(
            {"name": names, "valueFrom": st.just({"fieldRef": {"fieldPath": "status.podIP"}})}
        ),
        st.fixed_dictionaries(
            {
                "name": names,
                "value_from": st.just({"secret_key_ref": {"name": "s3", "key": "token"}}),
            }
        ),
        st.dictionaries(
            st.sampled_from(["name", "value", "valu"]), st.text(max_size=3), max_size=3
        ),
    )
)
toleration = mostly(
    st.one_of(
        st.fixed_dictionaries(
            {
                "key": st.text("abc", max_size=4),
                "operator": st.sampled_from(["Exists", "Equal"]),
                "effect": st.sampled_from(["NoSchedule", "NoExecute"]),
            }
        ),
        st.dictionaries(
            st.sampled_from(
                ["key", "operator", "tolerationSeconds", "toleration_seconds", "effekt"]
            ),
            st.one_of(st.text(max_size=3), st.integers()),
            max_size=3,
        ),
    )
)
string_map = mostly(
    st.dictionaries(st.text("abc-_./", min_size=1, max_size=8), st.text(max_size=6), max_size=3)
)
# Annotations KServe's webhook reads: deployment mode, autoscaler classes (valid and not).
kserve_annotations = st.fixed_dictionaries(
    {},
    optional={
        ANNOTATION_DEPLOYMENT_MODE: st.sampled_from(
            ["Serverless", "RawDeployment", "Standard", "Knative"]
        ),
        admission.ANNOTATION_AUTOSCALER_CLASS: st.sampled_from(["hpa", "keda", "kpa", "none"]),
        admission.ANNOTATION_KNATIVE_CLASS: st.just(admission.KNATIVE_HPA_CLASS),
    },
)
container = st.fixed_dictionaries(
    {},
    optional={
        "env": mostly(st.lists(env_var, max_size=2)),
        "resources": mostly(
            st.fixed_dictionaries({}, optional={"limits": resources, "requests": resources})
        ),
        "image": mostly(st.text("abc:/", min_size=1, max_size=6)),
        "args": mostly(st.lists(st.text(max_size=4), max_size=2)),
        "volume_mounts": mostly(
            st.lists(
                st.fixed_dictionaries({"name": st.just("cache"), "mountPath": st.just("/cache")}),
                max_size=1,
            )
        ),
        "resourcez": junk,
        "name": mostly(st.sampled_from(["kserve-container", "c1", "transformer-container"])),
    },
)
replicas = mostly(st.integers(-2, 12))
component = st.fixed_dictionaries(
    {},
    optional={
        "minReplicas": replicas,
        "min_replicas": replicas,
        "maxReplicas": replicas,
        "canaryTrafficPercent": mostly(st.integers(-10, 120)),
        "timeout": mostly(st.integers(-1, 600)),
        "containerConcurrency": replicas,
        "scaleTarget": mostly(st.integers(0, 100)),
        "scaleMetric": mostly(st.sampled_from(["cpu", "memory", "concurrency", "rps", "gpu"])),
        "serviceAccountName": mostly(st.sampled_from(["sa", "serving"])),
        "tolerations": mostly(st.lists(toleration, max_size=2)),
        "nodeSelector": string_map,
        "node_selector": string_map,
        "container": mostly(container),
        "containers": mostly(st.lists(container, max_size=2)),
        "runtime": mostly(
            st.sampled_from(["kfp-serve", "kserve-mlserver", "kserve-sklearnserver"])
        ),
        "batcher": mostly(
            st.fixed_dictionaries(
                {},
                optional={"maxBatchSize": st.integers(-1, 64), "max_latency": st.integers(0, 500)},
            )
        ),
        "logger": mostly(
            st.fixed_dictionaries(
                {},
                optional={
                    "mode": st.sampled_from(["all", "request", "response", "sometimes"]),
                    "url": st.text(max_size=5),
                },
            )
        ),
        "replicas": junk,
        "model": junk,
        "annotations": string_map,
    },
)
well_formed = st.fixed_dictionaries(
    {},
    optional={
        "env": mostly(st.lists(env_var, max_size=3)),
        "env_from": mostly(
            st.sampled_from([[{"secretRef": {"name": "s3"}}], [{"config_map_ref": {"name": "cm"}}]])
        ),
        "requests": mostly(resources),
        "limits": mostly(resources),
        "annotations": st.one_of(string_map, kserve_annotations),
        "labels": string_map,
        "node_selector": string_map,
        "affinity": mostly(st.sampled_from([{"nodeAffinity": {}}, {"pod_anti_affinity": {}}])),
        "tolerations": mostly(st.lists(toleration, max_size=2)),
        "predictor": mostly(component),
        "transformer": mostly(component),
        "protocol_version": mostly(st.sampled_from(["v1", "v2", "v3", "grpc-v2"])),
        "runtime_version": mostly(st.sampled_from(["v0.15.2", "2.6.2"])),
        "service_account_name": mostly(st.just("sa")),
    },
)
# Now and then a config spelt in camelCase, or with a typo'd or duplicated key.
configs = weighted(
    well_formed,
    st.one_of(
        well_formed.map(lambda c: {**c, "limitz": {"memory": "1Gi"}}),
        well_formed.map(lambda c: {**c, "nodeSelector": {"a": "b"}}),
        well_formed.map(lambda c: {("envFrom" if k == "env_from" else k): v for k, v in c.items()}),
    ),
    6,
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    config=configs,
    with_transformer=st.booleans(),
    framework=st.sampled_from(["sklearn", "xgboost"]),
)
def test_config_builds_a_valid_manifest_or_raises_serve_config_error(
    config, with_transformer, framework
):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest = build_inference_service(
                "fuzz",
                "file:///snapshots/blake3-0",
                framework,
                serve_config=config,
                transformer_uri="file:///snapshots/blake3-1" if with_transformer else None,
            )
    except ServeConfigError as e:
        quoted = re.search(r"admission rule '([a-z0-9-]+)': \"(.*?)\"", str(e))
        if quoted:  # a webhook refusal quotes the rule it breaks, word for word
            assert admission.RULES_BY_ID[quoted.group(1)].text == quoted.group(2), str(e)
        event(f"refused by rule {quoted.group(1)}" if quoted else "refused by ServeConfig")
        return
    event("built")
    assert validate_strict(manifest) == [], config
    # Valid also means admitted: no supported KServe release's webhook refuses it.
    for version in admission.KSERVE_VERSIONS:
        refused = admission.refusals(admission.evaluate(manifest, versions=[version]))
        assert refused == [], (version, config)


# Configs without junk, built from the settings KServe's webhook reads: every one is either
# admitted by every release or refused with the rule quoted.
webhook_component = st.fixed_dictionaries(
    {},
    optional={
        "minReplicas": st.integers(0, 3),
        "maxReplicas": st.integers(0, 3),
        "scaleMetric": st.sampled_from(["cpu", "memory", "concurrency", "rps"]),
        "scaleTarget": st.integers(1, 150),
        "canaryTrafficPercent": st.integers(0, 100),
        "logger": st.fixed_dictionaries(
            {"url": st.just("http://logger.local")},
            optional={"mode": st.sampled_from(["all", "request", "response"])},
        ),
        "container": st.fixed_dictionaries(
            {}, optional={"env": st.lists(
                st.fixed_dictionaries({"name": names, "value": st.just("v1")}), max_size=2)},
        ),
    },
)
webhook_configs = st.fixed_dictionaries(
    {},
    optional={
        "annotations": kserve_annotations,
        "env": st.lists(st.fixed_dictionaries({"name": names, "value": st.just("x")}), max_size=2),
        "predictor": webhook_component,
        "transformer": webhook_component,
    },
)


@settings(max_examples=EXAMPLES // 4, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow])
@given(config=webhook_configs, with_transformer=st.booleans())
def test_webhook_settings_are_admitted_everywhere_or_refused_with_the_rule(
    config, with_transformer
):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest = build_inference_service(
                "fuzz", "file:///snapshots/blake3-0", "sklearn", serve_config=config,
                transformer_uri="file:///snapshots/blake3-1" if with_transformer else None,
            )
    except ServeConfigError as e:
        quoted = re.search(r"admission rule '([a-z0-9-]+)': \"(.*?)\"", str(e))
        assert quoted, f"a webhook-only config refused without a rule: {e}"
        assert admission.RULES_BY_ID[quoted.group(1)].text == quoted.group(2), str(e)
        event(f"refused by rule {quoted.group(1)}")
        return
    event("built")
    for version in admission.KSERVE_VERSIONS:
        assert admission.refusals(admission.evaluate(manifest, versions=[version])) == [], config
