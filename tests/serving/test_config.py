"""ServeConfig: the Kale semantics, as a table of merge rules, reference examples and bad input."""

import pytest
from kubernetes.client import (
    V1Affinity,
    V1Container,
    V1EnvFromSource,
    V1EnvVar,
    V1NodeAffinity,
    V1NodeSelector,
    V1NodeSelectorRequirement,
    V1NodeSelectorTerm,
    V1SecretEnvSource,
    V1Toleration,
)

from kfp_serve.serving import ServeConfig, ServeConfigError

SSD_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["ssd"]}]}
            ]
        }
    }
}
GPU_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]
        }
    }
}
TOL_A = {"key": "a", "operator": "Exists", "effect": "NoSchedule"}
TOL_B = {"key": "b", "operator": "Equal", "value": "x", "effect": "NoExecute"}


def env(name, value):
    return {"name": name, "value": value}


# (id, config kwargs, component, what the resolved component must contain)
MERGE_RULES = [
    (
        "generic-env-fills-both-predictor",
        {"env": [env("A", "1")]},
        "predictor",
        {"container.env": [env("A", "1")]},
    ),
    (
        "generic-env-fills-both-transformer",
        {"env": [env("A", "1")]},
        "transformer",
        {"container.env": [env("A", "1")]},
    ),
    (
        "env-merged-generic-first",
        {"env": [env("A", "1")], "predictor": {"container": {"env": [env("B", "2")]}}},
        "predictor",
        {"container.env": [env("A", "1"), env("B", "2")]},
    ),
    (
        "env-specific-wins-by-name",
        {
            "env": [env("A", "generic"), env("C", "3")],
            "transformer": {"container": {"env": [env("A", "specific")]}},
        },
        "transformer",
        {"container.env": [env("C", "3"), env("A", "specific")]},
    ),
    (
        "env-from-merged",
        {
            "env_from": [{"secretRef": {"name": "s3"}}],
            "predictor": {"container": {"env_from": [{"configMapRef": {"name": "cm"}}]}},
        },
        "predictor",
        {"container.envFrom": [{"secretRef": {"name": "s3"}}, {"configMapRef": {"name": "cm"}}]},
    ),
    (
        "tolerations-merged",
        {"tolerations": [TOL_A], "predictor": {"tolerations": [TOL_B]}},
        "predictor",
        {"spec.tolerations": [TOL_A, TOL_B]},
    ),
    (
        "tolerations-deduplicated",
        {"tolerations": [TOL_A], "predictor": {"tolerations": [TOL_A]}},
        "predictor",
        {"spec.tolerations": [TOL_A]},
    ),
    (
        "tolerations-generic-only",
        {"tolerations": [TOL_A]},
        "transformer",
        {"spec.tolerations": [TOL_A]},
    ),
    (
        "limits-generic-fills",
        {"limits": {"memory": "4Gi"}},
        "predictor",
        {"container.resources": {"limits": {"memory": "4Gi"}}},
    ),
    (
        "limits-specific-replaces-whole",
        {
            "limits": {"memory": "4Gi", "cpu": "1"},
            "predictor": {"container": {"resources": {"limits": {"memory": "2Gi"}}}},
        },
        "predictor",
        {"container.resources": {"limits": {"memory": "2Gi"}}},
    ),
    (
        "limits-specific-on-other-component",
        {
            "limits": {"memory": "4Gi"},
            "predictor": {"container": {"resources": {"limits": {"memory": "2Gi"}}}},
        },
        "transformer",
        {"container.resources": {"limits": {"memory": "4Gi"}}},
    ),
    (
        "requests-specific-replaces-whole",
        {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "transformer": {"container": {"resources": {"requests": {"cpu": "250m"}}}},
        },
        "transformer",
        {"container.resources": {"requests": {"cpu": "250m"}}},
    ),
    (
        "requests-and-limits-independent",
        {
            "requests": {"cpu": "1"},
            "predictor": {"container": {"resources": {"limits": {"cpu": "2"}}}},
        },
        "predictor",
        {"container.resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "1"}}},
    ),
    (
        "node-selector-generic-fills",
        {"node_selector": {"zone": "a"}},
        "transformer",
        {"spec.nodeSelector": {"zone": "a"}},
    ),
    (
        "node-selector-specific-replaces-whole",
        {
            "node_selector": {"zone": "a", "disk": "ssd"},
            "predictor": {"node_selector": {"zone": "b"}},
        },
        "predictor",
        {"spec.nodeSelector": {"zone": "b"}},
    ),
    (
        "affinity-generic-fills",
        {"affinity": SSD_AFFINITY},
        "predictor",
        {"spec.affinity": SSD_AFFINITY},
    ),
    (
        "affinity-specific-replaces-whole",
        {"affinity": SSD_AFFINITY, "transformer": {"affinity": GPU_AFFINITY}},
        "transformer",
        {"spec.affinity": GPU_AFFINITY},
    ),
    (
        "service-account-fills-both",
        {"service_account_name": "sa"},
        "transformer",
        {"spec.serviceAccountName": "sa"},
    ),
    (
        "service-account-specific-wins",
        {"service_account_name": "sa", "predictor": {"serviceAccountName": "other"}},
        "predictor",
        {"spec.serviceAccountName": "other"},
    ),
    (
        "component-fields-pass-through",
        {
            "predictor": {
                "min_replicas": 1,
                "maxReplicas": 3,
                "canary_traffic_percent": 10,
                "scaleTarget": 5,
                "scale_metric": "cpu",
                "containerConcurrency": 4,
                "timeout": 30,
                "batcher": {"max_batch_size": 32, "maxLatency": 50},
                "logger": {"mode": "all", "url": "http://logger"},
            }
        },
        "predictor",
        {
            "spec": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "canaryTrafficPercent": 10,
                "scaleTarget": 5,
                "scaleMetric": "cpu",
                "containerConcurrency": 4,
                "timeout": 30,
                "batcher": {"maxBatchSize": 32, "maxLatency": 50},
                "logger": {"mode": "all", "url": "http://logger"},
            }
        },
    ),
    (
        "custom-containers-get-generic-env",
        {
            "env": [env("A", "1")],
            "limits": {"cpu": "1"},
            "predictor": {"containers": [{"name": "c", "image": "i"}]},
        },
        "predictor",
        {
            "containers": [
                {
                    "name": "c",
                    "image": "i",
                    "env": [env("A", "1")],
                    "resources": {"limits": {"cpu": "1"}},
                }
            ]
        },
    ),
    (
        "runtime-selected",
        {"predictor": {"runtime": "kfp-serve"}},
        "predictor",
        {"runtime": "kfp-serve"},
    ),
]


def lookup(resolved, dotted):
    head, _, rest = dotted.partition(".")
    value = getattr(resolved, head)
    return value[rest] if rest else value


@pytest.mark.parametrize(
    "config, component, expected", [pytest.param(*r[1:], id=r[0]) for r in MERGE_RULES]
)
def test_merge_rules(config, component, expected):
    resolved = ServeConfig(**config).resolve(component)
    for dotted, value in expected.items():
        assert lookup(resolved, dotted) == value


def test_resolve_does_not_mutate_config():
    cfg = ServeConfig(env=[env("A", "1")], predictor={"container": {"env": [env("B", "2")]}})
    before = cfg.to_dict()
    cfg.resolve("predictor").container["env"].append(env("C", "3"))
    assert cfg.to_dict() == before


# The examples of the Kale ServeConfig reference, as written there.
COMPLEX_ENV = {"name": "MY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
REFERENCE_PREDICTOR = {
    "affinity": SSD_AFFINITY,
    "tolerations": [
        {"key": "key1", "operator": "Exists", "value": "value1", "effect": "NoExecute"}
    ],
    "node_selector": {"node": "node1"},
    "containers": [
        {
            "env": [{"name": "name_str", "value": "value_str"}],
            "name": "container_name",
            "image": "image_str",
            "resources": {"limits": {"memory": "4Gi"}},
        }
    ],
}
REFERENCE_EXAMPLES = [
    pytest.param(lambda: ServeConfig.coerce({"limits": {"memory": "4Gi"}}), id="plain-dict-limits"),
    pytest.param(
        lambda: ServeConfig.coerce(
            {
                "predictor": {"container": {"resources": {"limits": {"memory": "4Gi"}}}},
                "transformer": {"container": {"resources": {"limits": {"memory": "2Gi"}}}},
            }
        ),
        id="specific-limits-per-component",
    ),
    pytest.param(
        lambda: ServeConfig(
            env=[V1EnvVar(name="ENV1", value="VALUE1")],
            labels={"significant-label": "a-value"},
            runtime_version="2.6.2",
            predictor={
                "tolerations": [
                    V1Toleration(key="key1", operator="Exists", value="value1", effect="NoSchedule")
                ],
                "container": V1Container(name="container_name", image="image_str"),
            },
        ),
        id="client-objects",
    ),
    pytest.param(
        lambda: ServeConfig(
            env=[V1EnvVar(name="ENV", value="VALUE"), COMPLEX_ENV],
            limits={"cpu": "100m", "memory": "1Gi"},
            node_selector={"node-id": "1234"},
            predictor=REFERENCE_PREDICTOR,
        ),
        id="dicts-and-objects-mixed",
    ),
]


@pytest.mark.parametrize("make", REFERENCE_EXAMPLES)
def test_reference_examples_build_and_round_trip(make):
    cfg = make()
    assert ServeConfig.from_dict(cfg.to_dict()) == cfg
    assert ServeConfig.coerce(cfg.to_json()) == cfg


def test_reference_example_resolves_as_documented():
    cfg = REFERENCE_EXAMPLES[3].values[0]()
    predictor = cfg.resolve("predictor")
    main = predictor.containers[0]
    assert main["env"] == [env("ENV", "VALUE"), COMPLEX_ENV, env("name_str", "value_str")]
    assert main["resources"] == {"limits": {"memory": "4Gi"}}  # specific limits win whole
    assert predictor.spec["nodeSelector"] == {"node": "node1"}
    transformer = cfg.resolve("transformer")
    assert transformer.container["resources"] == {"limits": {"cpu": "100m", "memory": "1Gi"}}
    assert transformer.spec["nodeSelector"] == {"node-id": "1234"}


def test_client_objects_equal_dicts_in_either_case():
    from_objects = ServeConfig(
        env_from=[V1EnvFromSource(secret_ref=V1SecretEnvSource(name="s3"))],
        affinity=V1Affinity(
            node_affinity=V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=V1NodeSelector(
                    node_selector_terms=[
                        V1NodeSelectorTerm(
                            match_expressions=[
                                V1NodeSelectorRequirement(
                                    key="disktype", operator="In", values=["ssd"]
                                )
                            ]
                        )
                    ]
                )
            )
        ),
    )
    from_camel = ServeConfig.from_dict(
        {"envFrom": [{"secretRef": {"name": "s3"}}], "affinity": SSD_AFFINITY}
    )
    from_snake = ServeConfig(
        env_from=[{"secret_ref": {"name": "s3"}}],
        affinity={
            "node_affinity": {
                "required_during_scheduling_ignored_during_execution": {
                    "node_selector_terms": [
                        {
                            "match_expressions": [
                                {"key": "disktype", "operator": "In", "values": ["ssd"]}
                            ]
                        }
                    ]
                }
            }
        },
    )
    assert from_objects == from_camel == from_snake


def test_label_keys_are_not_camelised():
    cfg = ServeConfig(labels={"my_label": "x"}, node_selector={"node_pool": "cpu_big"})
    assert cfg.to_dict()["labels"] == {"my_label": "x"}
    assert cfg.resolve("predictor").spec["nodeSelector"] == {"node_pool": "cpu_big"}


def test_integer_quantities_become_strings():
    assert ServeConfig(limits={"cpu": 2}).limits == {"cpu": "2"}


BAD_INPUT = [
    ("unknown-top-level-key", lambda: ServeConfig.from_dict({"limitz": {}}), "limitz"),
    (
        "unknown-nested-key",
        lambda: ServeConfig(predictor={"container": {"resourcez": {}}}),
        "predictor.container.resourcez",
    ),
    (
        "unknown-deep-key",
        lambda: ServeConfig(affinity={"nodeAffinity": {"required": 1}}),
        "affinity.nodeAffinity.required",
    ),
    (
        "unknown-component-key",
        lambda: ServeConfig(transformer={"replicas": 2}),
        "transformer.replicas",
    ),
    ("bad-quantity", lambda: ServeConfig(limits={"memory": "4 GB"}), "limits.memory"),
    (
        "bad-nested-quantity",
        lambda: ServeConfig(predictor={"container": {"resources": {"requests": {"cpu": "lots"}}}}),
        "predictor.container.resources.requests.cpu",
    ),
    ("bad-protocol", lambda: ServeConfig(protocol_version="v3"), "protocol_version"),
    (
        "negative-min-replicas",
        lambda: ServeConfig(predictor={"min_replicas": -1}),
        "predictor.minReplicas",
    ),
    (
        "negative-max-replicas",
        lambda: ServeConfig(transformer={"maxReplicas": -2}),
        "transformer.maxReplicas",
    ),
    (
        "min-above-max",
        lambda: ServeConfig(predictor={"minReplicas": 3, "maxReplicas": 1}),
        "minReplicas",
    ),
    (
        "canary-above-100",
        lambda: ServeConfig(predictor={"canaryTrafficPercent": 101}),
        "predictor.canaryTrafficPercent",
    ),
    (
        "canary-negative",
        lambda: ServeConfig(predictor={"canary_traffic_percent": -5}),
        "predictor.canaryTrafficPercent",
    ),
    ("env-not-a-list", lambda: ServeConfig(env={"A": "1"}), "env"),
    ("env-without-name", lambda: ServeConfig(env=[{"value": "1"}]), "env[0]"),
    (
        "wrong-type-int",
        lambda: ServeConfig(predictor={"minReplicas": "one"}),
        "predictor.minReplicas",
    ),
    ("bool-is-not-int", lambda: ServeConfig(predictor={"timeout": True}), "predictor.timeout"),
    ("label-value-not-string", lambda: ServeConfig(labels={"a": 1}), "labels.a"),
    (
        "container-and-containers",
        lambda: ServeConfig(predictor={"container": {}, "containers": [{"name": "c"}]}),
        "predictor",
    ),
    ("model-spec-is-ours", lambda: ServeConfig(predictor={"model": {}}), "predictor.model"),
    (
        "runtime-on-transformer",
        lambda: ServeConfig(transformer={"runtime": "x"}),
        "transformer.runtime",
    ),
    (
        "scale-metric-not-allowed",
        lambda: ServeConfig(predictor={"scaleMetric": "gpu"}),
        "predictor.scaleMetric",
    ),
    (
        "logger-mode-not-allowed",
        lambda: ServeConfig(transformer={"logger": {"mode": "some"}}),
        "transformer.logger.mode",
    ),
    (
        "custom-container-needs-name",
        lambda: ServeConfig(predictor={"containers": [{"image": "i"}]}),
        "predictor.containers[0]",
    ),
    (
        "volume-mount-needs-path",
        lambda: ServeConfig(predictor={"container": {"volumeMounts": [{"name": "v"}]}}),
        "predictor.container.volumeMounts[0]",
    ),
    ("not-json", lambda: ServeConfig.coerce("{limits"), "JSON"),
    (
        "snake-and-camel-twice",
        lambda: ServeConfig.from_dict({"node_selector": {}, "nodeSelector": {}}),
        "nodeSelector",
    ),
]


@pytest.mark.parametrize("make, path", [pytest.param(*r[1:], id=r[0]) for r in BAD_INPUT])
def test_bad_input_names_the_path(make, path):
    with pytest.raises(ServeConfigError) as info:
        make()
    assert path in str(info.value)
    assert isinstance(info.value, ValueError)
