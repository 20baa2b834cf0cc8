"""The containers the Docker backend derives from a manifest, checked without an engine.

The stock runtimes' images cannot be pulled on these machines, so this is how far they are
tested: their container spec against KServe's own runtime manifests (reference test data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kfp_serve.serving.backends.docker.containers import LABEL_ROLE, Mount
from kfp_serve.serving.backends.docker.runtimes import STOCK_RUNTIMES, runtime_container
from kfp_serve.serving.backends.docker.spec import (
    engine_limits,
    engine_security,
    env_file,
    predictor_args,
    server_specs,
    wanted_ports,
)
from kfp_serve.serving.backends.local.plan import plan_manifest
from kfp_serve.serving.constants import (
    DOCKER_STOCK_RUNTIME_ENV,
    IMAGE_ENV,
    LABEL_MODEL_ID,
    LABEL_TRANSFORMER_ID,
)
from kfp_serve.serving.errors import ServingError
from kfp_serve.serving.isvc import Provenance, build_inference_service
from tests.kserve_schema import crd_root

REFERENCE_RUNTIMES = crd_root().parent / "runtimes"


def manifest(runtime: str | None = None, transformer: bool = False, **cfg: Any) -> dict:
    serve_config: dict[str, Any] = dict(cfg)
    if runtime:
        serve_config.setdefault("predictor", {})["runtime"] = runtime
    return build_inference_service(
        "iris",
        "file:///models/blake3-" + "a" * 64,
        "xgboost" if runtime == "kserve-xgbserver" else "sklearn",
        transformer_uri=("file:///t/blake3-" + "b" * 64) if transformer else None,
        serve_config=serve_config,
        provenance=Provenance(model_id=7, transformer_id=8 if transformer else None),
    )


def specs(m: dict, ports: dict | None = None) -> list:
    plan = plan_manifest(m)
    ports = ports or {"predictor": {"--http_port": 40001}, "transformer": {"--http_port": 40002}}
    models = {
        "predictor": Mount("/snap/model", "/mnt/models"),
        "transformer": Mount("vol-t", "/mnt/models", volume=True),
    }
    return server_specs(plan, 3, ports, models, "abc123")


def test_kfp_serve_runtime_container_listens_on_loopback_at_its_port(monkeypatch) -> None:
    monkeypatch.setenv(IMAGE_ENV, "registry.example/kfp-serve:1")
    (predictor,) = specs(manifest("kfp-serve"))
    assert predictor.image == "registry.example/kfp-serve:1"
    assert predictor.entrypoint == ["python", "-m", "kfp_serve.serving.runtime.predictor"]
    assert "--model_name=iris" in predictor.args and "--model_dir=/mnt/models" in predictor.args
    # The runtime's 8080 and 0.0.0.0 are what a pod needs; on the host network: loopback only.
    assert "--http_port=40001" in predictor.args and "--http_port=8080" not in predictor.args
    assert "--http_host=127.0.0.1" in predictor.args
    assert not any(a.startswith("--http_host=0.0.0.0") for a in predictor.args)
    # The router's way in: an abstract unix socket named after the (unique) container.
    assert f"--http_unix_socket=@{predictor.name}" in predictor.args
    assert predictor.labels[LABEL_MODEL_ID] == "7" and predictor.labels[LABEL_ROLE] == "predictor"
    assert predictor.mounts[0].target == "/mnt/models" and predictor.mounts[0].read_only
    # The runtime's resources as engine limits, its securityContext as engine options.
    assert predictor.limits == {
        "nano_cpus": 1_000_000_000, "mem_limit": 2 * 1024**3,
        "cpu_shares": 1024, "mem_reservation": 1024**3,
    }
    assert predictor.security["user"] == "1000"
    assert predictor.security["cap_drop"] == ["ALL"]
    assert predictor.security["security_opt"] == ["no-new-privileges"]
    assert not predictor.non_root  # runAsUser is set: the image's root user does not matter


def test_transformer_is_pointed_at_the_predictor_container() -> None:
    predictor, transformer = specs(manifest("kfp-serve", transformer=True))
    assert "--predictor_host=127.0.0.1:40001" in transformer.args
    assert "--http_port=40002" in transformer.args and "--http_host=127.0.0.1" in transformer.args
    assert f"--http_unix_socket=@{transformer.name}" in transformer.args
    assert transformer.environment["STORAGE_URI"].startswith("file:///t/blake3-")
    assert transformer.labels[LABEL_TRANSFORMER_ID] == "8"
    assert transformer.mounts[0].volume and transformer.mounts[0].read_only
    assert predictor.name != transformer.name and "-3-" in transformer.name


@pytest.mark.parametrize("runtime", sorted(STOCK_RUNTIMES))
def test_stock_runtime_containers_match_kserve_manifests(runtime: str) -> None:
    reference = REFERENCE_RUNTIMES / "v0.15.2-install-kserve-cluster-resources.yaml"
    if not reference.is_file():
        pytest.skip(f"KServe reference runtimes not found at {reference}")
    docs = [d for d in yaml.safe_load_all(reference.read_text()) if d]
    (expected,) = [d["spec"]["containers"][0] for d in docs if d["metadata"]["name"] == runtime]
    ours = runtime_container(runtime)
    for key in ("image", "args", "resources", "securityContext"):
        assert ours[key] == expected[key], key


def test_stock_runtime_becomes_a_container_of_its_image() -> None:
    (predictor,) = specs(manifest("kserve-xgbserver"))
    assert predictor.image == "kserve/xgbserver:v0.15.2"
    assert predictor.entrypoint is None  # the image's own entry point, as on a cluster
    assert predictor.args == [
        "--model_name=iris", "--model_dir=/mnt/models", "--nthread=1", "--http_port=40001"
    ]
    assert predictor.non_root  # runAsNonRoot without a user: the image's user is checked


def test_stock_runtime_can_run_as_kfp_serve(monkeypatch) -> None:
    monkeypatch.setenv(DOCKER_STOCK_RUNTIME_ENV, "kfp-serve")
    (predictor,) = specs(manifest())  # kserve-sklearnserver by default
    assert predictor.entrypoint == ["python", "-m", "kfp_serve.serving.runtime.predictor"]


def test_a_server_with_grpc_enabled_gets_a_grpc_port_of_its_own() -> None:
    # --enable_grpc alone would bind the server's default 8081: on the host network every
    # container serving gRPC would collide there.
    m = manifest("kfp-serve")
    m["spec"]["predictor"]["model"]["args"] = ["--enable_grpc=true"]
    plan = plan_manifest(m)
    assert plan.predictor.grpc
    assert wanted_ports(predictor_args(plan), grpc=plan.predictor.grpc) == [
        "--http_port", "--grpc_port"
    ]
    assert wanted_ports(predictor_args(plan_manifest(manifest("kfp-serve"))),
                        grpc=False) == ["--http_port"]


def test_model_spec_merges_into_the_runtime_container() -> None:
    m = manifest("kfp-serve")
    model = m["spec"]["predictor"]["model"]
    model["args"] = ["--grpc_port=9000", "--enable_grpc=true"]
    model["env"] = [{"name": "KFP_SERVE_LOG_LEVEL", "value": "DEBUG"}]
    model["resources"] = {"limits": {"cpu": "500m", "memory": "512Mi"}}
    plan = plan_manifest(m)
    assert wanted_ports(predictor_args(plan)) == ["--http_port", "--grpc_port"]
    (predictor,) = specs(m, {"predictor": {"--http_port": 40001, "--grpc_port": 40003}})
    assert "--grpc_port=40003" in predictor.args and "--grpc_port=9000" not in predictor.args
    assert predictor.environment["KFP_SERVE_LOG_LEVEL"] == "DEBUG"
    assert predictor.limits == {"nano_cpus": 500_000_000, "mem_limit": 512 * 1024**2}


def test_env_from_and_secret_refs_read_local_env_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path))
    m = manifest("kfp-serve")
    model = m["spec"]["predictor"]["model"]
    model["envFrom"] = [{"secretRef": {"name": "creds"}, "prefix": "X_"}]
    model["env"] = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "t"}}}]
    with pytest.raises(ServingError, match=r"creds.*create that file"):
        specs(m)
    env_file("creds").parent.mkdir(parents=True)
    env_file("creds").write_text("# credentials\nt=s3cret\nregion=eu\n")
    (predictor,) = specs(m)
    assert predictor.environment["TOKEN"] == "s3cret"
    assert predictor.environment["X_region"] == "eu"
    model["env"][0]["valueFrom"]["secretKeyRef"]["key"] = "missing"
    with pytest.raises(ServingError, match="key 'missing' is not in"):
        specs(m)


def test_bad_resources_and_unknown_runtimes_name_the_field() -> None:
    with pytest.raises(ServingError, match=r"resources\.limits\.memory.*'lots'"):
        engine_limits({"limits": {"memory": "lots"}}, "predictor")
    with pytest.raises(ServingError, match="'my-runtime' is not a runtime the Docker backend"):
        specs(manifest("my-runtime"))
    assert engine_security({"privileged": True, "readOnlyRootFilesystem": True}) == {
        "privileged": True, "read_only": True,
    }
