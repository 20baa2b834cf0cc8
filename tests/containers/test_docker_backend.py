"""KFP_SERVE_BACKEND=docker against the real engine: the containers KServe would create.

Each test serves from a fresh KFP_SERVE_HOME with the image under test; at the end of each, no
container or volume labelled with that home may be left (what ``stop`` must remove).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, iris: Any) -> dict[str, Any]:
    """Model dirs: a scaler + a model fitted on scaled rows, a plain model, a shifted one
    (classes 10-12, so its answers are told apart) and a corrupt one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = iris
    root = tmp_path_factory.mktemp("docker-artifacts")
    scaler = StandardScaler().fit(X)
    scaled = LogisticRegression(max_iter=500).fit(scaler.transform(X), y)
    plain = LogisticRegression(max_iter=500).fit(X, y)
    shifted = LogisticRegression(max_iter=500).fit(X, y + 10)
    dirs = {name: root / name for name in ("transformer", "scaled", "plain", "shifted", "bad")}
    for d in dirs.values():
        d.mkdir()
    joblib.dump(scaler, dirs["transformer"] / "transformer.joblib")
    joblib.dump(scaled, dirs["scaled"] / "model.joblib")
    joblib.dump(plain, dirs["plain"] / "model.joblib")
    joblib.dump(shifted, dirs["shifted"] / "model.joblib")
    (dirs["bad"] / "model.joblib").write_bytes(b"this is not a joblib file")
    expected = {
        "scaled": scaled.predict(scaler.transform(ROWS)).tolist(),
        "plain": plain.predict(ROWS).tolist(),
        "shifted": shifted.predict(ROWS).tolist(),
    }
    return {"dirs": dirs, "expected": expected}


@pytest.fixture
def docker_home(
    image: str, docker_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A fresh home served by the Docker backend in the image under test; nothing of it may
    be left in the engine afterwards."""
    from kfp_serve.serving.backends.docker import containers

    home = (tmp_path / "home").resolve()
    home.mkdir()
    monkeypatch.setenv("KFP_SERVE_HOME", str(home))
    monkeypatch.setenv("KFP_SERVE_BACKEND", "docker")
    monkeypatch.setenv("KFP_SERVE_IMAGE", image)
    yield home
    from kfp_serve.serving.backends.docker.backend import DockerBackend

    backend = DockerBackend(progress=False, stop_grace=2.0)
    for status in backend.list():
        backend.delete(status.name)
    left = containers.left_behind(str(home))
    for name in left:  # clean up before failing, so one failure does not leak into others
        with contextlib.suppress(Exception):
            docker_client.containers.get(name).remove(force=True)
        with contextlib.suppress(Exception):
            docker_client.volumes.get(name).remove(force=True)
    assert not left, f"left behind in the engine: {left}"


def snapshot(directory: Path) -> str:
    from kfp_serve.artifacts.snapshots import SnapshotStore

    return SnapshotStore().snapshot(directory).uri


def manifest(name: str, model_uri: str, *, transformer_uri: str | None = None,
             **cfg: Any) -> dict:
    from kfp_serve.serving.isvc import Provenance, build_inference_service

    predictor = {"runtime": "kfp-serve", **cfg.pop("predictor", {})}
    return build_inference_service(
        name, model_uri, "sklearn", transformer_uri=transformer_uri,
        serve_config={"predictor": predictor, **cfg},
        provenance=Provenance(model_id=41, transformer_id=42 if transformer_uri else None),
    )


def backend(**kwargs: Any) -> Any:
    from kfp_serve.serving.backends.docker.backend import DockerBackend

    return DockerBackend(progress=False, stop_grace=2.0, **kwargs)


def containers_of(client: Any, home: Path, **labels: str) -> list[Any]:
    from kfp_serve.serving.backends.docker.containers import LABEL_HOME

    filters = [f"{LABEL_HOME}={home}", *(f"kfp-serve.kubeflow.org/{k}={v}" for k, v in
                                         labels.items())]
    return client.containers.list(all=True, filters={"label": filters})


@pytest.mark.timeout(300)
def test_transformer_and_predictor_containers_serve_like_kserve(
    docker_home: Path, docker_client: Any, artifacts: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from kfp_serve.cli import app
    from kfp_serve.serving.endpoint import Endpoint

    dirs = artifacts["dirs"]
    status = backend().apply(
        manifest("iris", snapshot(dirs["scaled"]), transformer_uri=snapshot(dirs["transformer"])),
        timeout=180,
    )
    assert status.ready and status.backend == "docker", status
    assert Endpoint("iris").predictions(ROWS) == artifacts["expected"]["scaled"]

    by_role = {c.labels["kfp-serve.kubeflow.org/role"]: c for c in containers_of(
        docker_client, docker_home, endpoint="iris")}
    assert set(by_role) == {"router", "predictor", "transformer"}
    predictor, transformer = by_role["predictor"], by_role["transformer"]
    for c in (predictor, transformer):
        assert c.labels["kfp-serve.kubeflow.org/model-id"] == "41"
        assert c.labels["kfp-serve.kubeflow.org/transformer-id"] == "42"
        assert c.attrs["HostConfig"]["NetworkMode"] == "host"
        (mount,) = c.attrs["Mounts"]
        assert mount["Destination"] == "/mnt/models" and mount["RW"] is False
        assert "--http_host=127.0.0.1" in c.attrs["Args"]
    # Verified snapshots, bind-mounted read-only; the runtime's securityContext applied.
    assert predictor.attrs["Mounts"][0]["Source"].endswith(snapshot(dirs["scaled"])[-20:])
    assert predictor.attrs["Config"]["User"] == "1000"
    assert predictor.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert predictor.attrs["HostConfig"]["Memory"] == 2 * 1024**3
    predictor_port = status.components["predictor"].rsplit(":", 1)[1]
    assert f"--predictor_host=127.0.0.1:{predictor_port}" in transformer.attrs["Args"]
    # Bound to loopback only: another address of this machine does not answer.
    outside = _non_loopback_address()
    if outside:
        with pytest.raises(OSError):
            socket.create_connection((outside, int(predictor_port)), timeout=2).close()

    # On an engine without cgroup limits (it says so in its info), the status says so too.
    from kfp_serve.serving.backends.docker import containers

    assert containers.limits_enforced() == []  # this engine applies them (Memory above)
    with monkeypatch.context() as patched:
        patched.setattr(containers, "limits_enforced", lambda: ["memory"])
        unenforced = backend().get("iris")
    assert unenforced.ready and "does not enforce memory limits" in unenforced.message

    runner = CliRunner()
    listing = runner.invoke(app, ["endpoints", "--output", "json"])
    assert listing.exit_code == 0 and '"ready"' in listing.stdout and "41" in listing.stdout
    logs = runner.invoke(app, ["logs", "iris", "--component", "predictor"])
    assert logs.exit_code == 0 and logs.stdout.strip(), logs.stdout
    stopped = runner.invoke(app, ["stop", "iris"])
    assert stopped.exit_code == 0, stopped.stdout
    assert containers_of(docker_client, docker_home) == []
    from kfp_serve.serving.errors import ServingError

    with pytest.raises(ServingError, match="no docker endpoint named 'iris'"):
        Endpoint("iris")


@pytest.mark.timeout(400)
def test_rollouts_keep_the_old_revision_split_a_canary_and_report_a_dead_container(
    docker_home: Path, docker_client: Any, artifacts: dict
) -> None:
    from kfp_serve.serving.endpoint import Endpoint
    from kfp_serve.serving.errors import ServingError

    dirs, expected = artifacts["dirs"], artifacts["expected"]
    b = backend()
    first = b.apply(manifest("flowers", snapshot(dirs["plain"])), timeout=180)
    assert first.ready
    ep = Endpoint("flowers", retry_window=2.0)

    # A revision whose model cannot load: the error carries its log, the old one keeps serving.
    with pytest.raises(ServingError) as failed:
        b.apply(manifest("flowers", f"file://{dirs['bad']}"), timeout=120)
    assert "revision 2" in str(failed.value) and "keeps serving" in str(failed.value)
    assert "joblib" in str(failed.value).lower() or "load" in str(failed.value).lower()
    assert ep.predictions(ROWS) == expected["plain"]
    assert len(containers_of(docker_client, docker_home, role="predictor")) == 1

    # A 50% canary: both revisions answer through the one URL.
    canary = b.apply(
        manifest("flowers", snapshot(dirs["shifted"]), predictor={"canary_traffic_percent": 50}),
        timeout=180,
    )
    assert canary.url == first.url
    seen = {tuple(ep.predictions(ROWS)) for _ in range(40)}
    assert seen == {tuple(expected["plain"]), tuple(expected["shifted"])}

    # The canary's server dies: the status says so, with the container's log tail.
    from kfp_serve.serving.backends.local.registry import read_record

    latest = docker_client.containers.get(read_record("flowers").latest.predictor.container)
    assert latest.labels["kfp-serve.kubeflow.org/revision"] == "2"  # the failed one left none
    latest.kill()
    status = b.get("flowers")
    assert not status.ready and status.reason == "ProcessExited"
    assert f"container {latest.name}" in status.message and "log ends with" in status.message
    b.delete("flowers")


@pytest.mark.timeout(300)
def test_s3_snapshot_goes_through_the_storage_initializer(
    docker_home: Path, docker_client: Any, artifacts: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto_server = pytest.importorskip("moto.server")
    import boto3

    from kfp_serve.artifacts.snapshots import SnapshotStore
    from kfp_serve.serving.endpoint import Endpoint
    from kfp_serve.serving.errors import ServingError

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                           ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint)):
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        uri = SnapshotStore("s3://models/snaps").snapshot(artifacts["dirs"]["plain"]).uri

        status = backend().apply(manifest("from-s3", uri), timeout=180)
        assert status.ready
        assert Endpoint("from-s3").predictions(ROWS) == artifacts["expected"]["plain"]
        (predictor,) = containers_of(docker_client, docker_home, role="predictor")
        (mount,) = predictor.attrs["Mounts"]
        assert mount["Type"] == "volume" and mount["RW"] is False
        backend().delete("from-s3")
        assert mount["Name"] not in [v.name for v in docker_client.volumes.list()]

        # A tampered object: the storage initializer refuses it; nothing is left.
        key = uri[len("s3://models/"):] + "/model.joblib"
        s3.put_object(Bucket="models", Key=key, Body=b"tampered")
        with pytest.raises(ServingError, match="failed verification"):
            backend().apply(manifest("tampered", uri), timeout=180)
    finally:
        server.stop()


@pytest.mark.timeout(300)
def test_bad_input_is_explained(
    docker_home: Path, docker_client: Any, artifacts: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfp_serve.serving.backends.docker import containers
    from kfp_serve.serving.backends.local.registry import read_record
    from kfp_serve.serving.errors import ServingError

    model = snapshot(artifacts["dirs"]["plain"])
    # The image is not in the engine: says how to build it.
    with pytest.raises(ServingError, match=r"'kfp-serve:no-such-tag' is not in the Docker "
                                           r"engine: build it with `make image"):
        backend(image="kfp-serve:no-such-tag").apply(manifest("no-image", model), timeout=60)

    # The router's port taken while it was down: the endpoint comes back on another one.
    first = backend().apply(manifest("ports", model), timeout=180)
    record = read_record("ports")
    router = docker_client.containers.get(record.router.container)
    router.kill()
    router.wait(timeout=60)  # kill only signals: the port is free once it has exited
    with socket.socket() as squatter:
        # Its closed connections may linger in TIME_WAIT: they do not hold a listening port.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", record.router.port))
        squatter.listen()
        again = backend().apply(manifest("ports", model), timeout=180)
        assert again.ready and again.url != first.url

    # No engine: one line saying how to start one.
    monkeypatch.setattr(containers, "_client", None)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    try:
        with pytest.raises(ServingError) as no_engine:
            backend().apply(manifest("no-engine", model), timeout=60)
    finally:
        monkeypatch.delenv("DOCKER_HOST")
        containers._client = None  # the next call connects to the real engine again
    message = str(no_engine.value)
    assert "\n" not in message and "no Docker engine answers" in message
    assert "start one with" in message


def _non_loopback_address() -> str | None:
    """An address of this machine other than loopback (None if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.timeout(400)
def test_canary_promote_and_rollback_move_traffic_between_containers(
    docker_home: Path, artifacts: dict
) -> None:
    """KServe's semantics on the container backend, as on the process one: rollback sends all
    traffic to the stable revision, promote gives it all to the latest."""
    from kfp_serve.serving.endpoint import Endpoint

    dirs, expected = artifacts["dirs"], artifacts["expected"]
    b = backend()
    assert b.apply(manifest("tulips", snapshot(dirs["plain"])), timeout=180).ready
    canary = manifest("tulips", snapshot(dirs["shifted"]),
                      predictor={"canaryTrafficPercent": 50})
    assert b.apply(canary, timeout=180).ready
    ep = Endpoint("tulips", retry_window=2.0)
    seen = {tuple(ep.predictions(ROWS)) for _ in range(40)}
    assert seen == {tuple(expected["plain"]), tuple(expected["shifted"])}

    state = b.rollback("tulips")
    assert state.traffic[state.latest_rolled_out] == 100
    assert {tuple(ep.predictions(ROWS)) for _ in range(20)} == {tuple(expected["plain"])}

    b.set_traffic("tulips", 50)
    state = b.promote("tulips")
    assert state.traffic[state.latest_created] == 100
    assert {tuple(ep.predictions(ROWS)) for _ in range(20)} == {tuple(expected["shifted"])}


@pytest.mark.timeout(400)
def test_many_models_behind_one_container_endpoint(docker_home: Path, iris: Any) -> None:
    """serve_many on the container backend: each model staged into the mounted model directory,
    loaded without a restart, answering at its own route; unloading one leaves the others."""
    from sklearn.linear_model import LogisticRegression

    from kfp_serve.artifacts import Model
    from kfp_serve.serving.multi import add_model, remove_model, serve_many

    X, y = iris
    fitted = {f"shop-{i}": LogisticRegression(max_iter=300).fit(X, y + 10 * i) for i in range(3)}
    ids = {name: Model(model=est, name=name, version="1.0.0").submit_artifact()
           for name, est in fitted.items()}
    ep = serve_many("shops", [ids["shop-0"], ids["shop-1"]],
                    {"limits": {"memory": "512Mi"}, "predictor": {"runtime": "kfp-serve"}},
                    memory="64Mi", backend="docker",
                    timeout=180)
    for name in ("shop-0", "shop-1"):
        assert ep.predict(ROWS, model=name)["predictions"] == fitted[name].predict(ROWS).tolist()
    add_model(ep, ids["shop-2"], memory="64Mi")
    assert ep.predict(ROWS, model="shop-2")["predictions"] == fitted["shop-2"].predict(
        ROWS).tolist()
    remove_model(ep, "shop-0")
    assert sorted(m.name for m in ep.refresh().models) == ["shop-1", "shop-2"]
    assert ep.predict(ROWS, model="shop-1")["predictions"] == fitted["shop-1"].predict(
        ROWS).tolist()


@pytest.mark.timeout(400)
def test_grpc_through_the_routers_stable_address_across_a_rollout(
    docker_home: Path, artifacts: dict
) -> None:
    """OIP gRPC on the container backend: the router (itself a container) listens for gRPC on
    the endpoint's stable address and relays to the predictor container of the revision
    serving; a rollout changes the answers, not the address."""
    from kfp_serve.serving.backends.local.registry import read_record
    from kfp_serve.serving.endpoint import Endpoint

    dirs, expected = artifacts["dirs"], artifacts["expected"]
    b = backend()
    grpc_on = {"container": {"args": ["--enable_grpc=true"]}}
    status = b.apply(manifest("sepals", snapshot(dirs["plain"]), protocol_version="v2",
                              predictor=grpc_on), timeout=180)
    assert status.ready, status.message
    record = read_record("sepals")
    assert record is not None and record.router.container
    assert status.grpc_address == f"127.0.0.1:{record.router.grpc_port}"
    assert record.latest.predictor.grpc_port not in (0, 8081, record.router.grpc_port)
    # The router reaches the container over its abstract unix socket (no TCP fallback).
    assert record.latest.predictor.unix_socket.startswith("@kfp-serve-sepals-")
    with Endpoint("sepals", protocol="grpc") as ep:
        assert ep.ready()
        assert ep.predictions(ROWS) == expected["plain"]

    status = b.apply(manifest("sepals", snapshot(dirs["shifted"]), protocol_version="v2",
                              predictor=grpc_on), timeout=180)
    assert status.ready, status.message
    assert status.grpc_address == f"127.0.0.1:{record.router.grpc_port}"
    with Endpoint("sepals", protocol="grpc") as ep:
        assert ep.predictions(ROWS) == expected["shifted"]
