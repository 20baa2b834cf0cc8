"""Security: loopback-only servers, names refused wherever they enter, snapshot restore that
cannot be walked out of the tree, and secrets that never show up in logs, reports, MLMD or the CLI.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from kfp_serve import artifacts
from kfp_serve.artifacts import InvalidNameError, SnapshotError, SnapshotStore
from kfp_serve.cli import app
from kfp_serve.serving.backends.base import get_backend
from tests.kube_double.fixtures import kube_double, kubeconfig  # noqa: F401
from tests.reliability.conftest import (
    ENDPOINT,
    SECRET_ENV,
    SECRET_SERVE_CONFIG,
    Served,
    Trained,
)

# ------------------------------------------------------------------------ loopback only


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket that process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:
                continue
            hexaddr, hexport = local.split(":")
            raw = bytes.fromhex(hexaddr)
            if width == 8:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # /proc prints each 32-bit word of an IPv6 address little-endian
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                address = socket.inet_ntop(socket.AF_INET6, words)
            found.add((address, int(hexport, 16)))
    return found


def _other_addresses() -> list[str]:
    """Addresses of this machine to connect through that are not 127.0.0.1: another loopback
    address (127.0.0.2, on lo but not bound) and the machine's own interface addresses."""
    addresses = {"127.0.0.2"}
    try:
        out = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        addresses.update(a for a in out.split() if ":" not in a)
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addresses.add(str(info[4][0]))
    except OSError:
        pass
    addresses.discard("127.0.0.1")
    return sorted(addresses)


def test_local_servers_listen_on_127_0_0_1_only(served: Served) -> None:
    from kfp_serve.serving.backends.local.registry import read_record

    record = read_record(served.name)
    assert record is not None
    ports = {}
    for role, pid in served.pids.items():
        listening = _listening_addresses(pid)
        # One listener per server, on 127.0.0.1, on its recorded port: no 0.0.0.0, no gRPC port
        # (this endpoint does not turn gRPC on); the router has its gRPC listener beside it.
        port = int(served.urls[role].rsplit(":", 1)[1])
        expected = {("127.0.0.1", port)}
        if role == "router":
            expected.add(("127.0.0.1", record.router.grpc_port))
            ports["router-grpc"] = record.router.grpc_port
        assert listening == expected, (role, listening)
        ports[role] = port
    others = _other_addresses()
    assert "127.0.0.2" in others
    for address in others:
        for port in ports.values():
            with pytest.raises(OSError):  # ECONNREFUSED: nothing listens there
                socket.create_connection((address, port), timeout=2).close()
    if socket.has_ipv6:
        for port in ports.values():
            with pytest.raises(OSError):
                socket.create_connection(("::1", port), timeout=2).close()
    # The same ports answer on 127.0.0.1.
    for role, port in ports.items():
        if role == "router-grpc":
            continue
        r = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", trust_env=False, timeout=5)
        assert r.status_code == 200, (role, r.text)


# ------------------------------------------------------------------ names refused everywhere

BAD_NAMES = [
    "../etc",
    "..",
    "a/../../b",
    "iris/predictor",
    "iris;rm -rf ~",
    "iris && id",
    "$(id)",
    "`id`",
    "iris\nx-injected: 1",
    "iris\n",
    "iris\r\nx",
    "iris\x00",
    "Iris",
    "IRIS",
    "a" * 64,
    "",
    " iris",
    "-iris",
    "iris-",
    "iris_v1",
    "iris.v1",
    "iris v1",
    "ïris",
]
BAD_VERSIONS = [
    "../1", "1.0/../../x", "1.0;rm -rf ~", "1.0\n", "1.0\nx", "1 0", "", "-1.0", "v" * 64, "$(id)",
]


def _entry_points(trained: Trained) -> dict[str, Callable[[str], Any]]:
    """Every API that takes a user-chosen name, as ``f(name)``."""
    from sklearn.dummy import DummyClassifier
    from sklearn.preprocessing import StandardScaler

    from kfp_serve import serving
    from kfp_serve.serving.endpoint import Endpoint
    from kfp_serve.serving.isvc import build_inference_service

    estimator = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
    scaler = StandardScaler().fit([[0.0], [1.0]])
    uri = f"file:///tmp/snapshots/blake3-{'0' * 64}"
    backend = get_backend("local")
    return {
        "serve(name=)": lambda n: serving.serve(trained.model_id, name=n),
        "serve(name=, dry_run=True)": lambda n: serving.serve(
            trained.model_id, trained.transformer_id, name=n, dry_run=True
        ),
        "build_inference_service(name)": lambda n: build_inference_service(n, uri, "sklearn"),
        "build_inference_service(namespace=)": lambda n: build_inference_service(
            "iris", uri, "sklearn", namespace=n
        ),
        "Model(name=)": lambda n: artifacts.Model(model=estimator, name=n, version="1.0.0"),
        "Transformer(name=)": lambda n: artifacts.Transformer(name=n, transformer=scaler),
        "find_artifact(name)": lambda n: artifacts.find_artifact(n),
        "Endpoint(name)": lambda n: Endpoint(n),
        "local backend get": lambda n: backend.get(n),
        "local backend delete": lambda n: backend.delete(n),
    }


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_bad_names_are_refused_by_every_api(trained: Trained, reliability_home: Path) -> None:
    before = _tree(reliability_home)
    ids_before = {r.id for r in artifacts.list_artifacts()}
    failures = []
    for where, call in _entry_points(trained).items():
        for name in BAD_NAMES:
            try:
                call(name)
            except InvalidNameError as e:
                text = str(e)
                if "\n" in text or "valid DNS-1123 name" not in text:
                    failures.append((where, name, f"unclear message: {text!r}"))
            except Exception as e:  # noqa: BLE001 - collected, reported below
                failures.append((where, name, f"{type(e).__name__}: {e}"))
            else:
                failures.append((where, name, "accepted"))
    assert not failures, "\n".join(map(repr, failures))
    # Nothing was written for any of them: no file, no directory, no MLMD artifact.
    assert _tree(reliability_home) == before
    assert {r.id for r in artifacts.list_artifacts()} == ids_before


def test_bad_versions_are_refused(trained: Trained) -> None:
    from sklearn.dummy import DummyClassifier

    estimator = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
    for version in BAD_VERSIONS:
        with pytest.raises(InvalidNameError, match="not a valid version"):
            artifacts.Model(model=estimator, name="iris", version=version)
        with pytest.raises(InvalidNameError, match="not a valid version"):
            artifacts.find_artifact("iris", version=version)
    assert all(r.version == "1.0.0" for r in artifacts.list_artifacts() if r.name == "iris")


def test_bad_names_are_refused_by_the_kubernetes_backend_before_any_api_call(
    kube_double, kubeconfig, monkeypatch  # noqa: F811
) -> None:
    from kfp_serve.serving.backends import kubernetes as kb
    from tests.kube_double.manifests import isvc_manifest

    monkeypatch.setattr(kb, "running_in_pod", lambda: False)
    backend = kb.KubernetesBackend(kubeconfig=kubeconfig, request_timeout=2.0)
    for name in ("../etc", "iris;id", "iris\nx", "iris\n", "Iris", "a" * 64):
        for call in (
            lambda n: backend.get(n),
            lambda n: backend.delete(n),
            lambda n: backend.get("iris", namespace=n),
            lambda n: backend.list(namespace=n),
            lambda n: backend.apply(isvc_manifest(n), wait=False),
            lambda n: backend.apply(isvc_manifest("iris", namespace=n), wait=False),
        ):
            with pytest.raises(InvalidNameError, match="not a valid DNS-1123 name"):
                call(name)
    assert kube_double.calls == []  # refused here, not left to the API server


CLI_COMMANDS: dict[str, Callable[[str, Trained], list[str]]] = {
    "predict": lambda n, t: ["predict", "--data", "[[1, 2, 3, 4]]", "--", n],
    "explain": lambda n, t: ["explain", "--data", "[[1, 2, 3, 4]]", "--", n],
    "stop": lambda n, t: ["stop", "--", n],
    "serve --name": lambda n, t: ["serve", str(t.model_id), f"--name={n}", "--dry-run"],
    "serve --namespace": lambda n, t: [
        "serve", str(t.model_id), f"--namespace={n}", "--dry-run"
    ],
}


@pytest.mark.parametrize("command", sorted(CLI_COMMANDS))
def test_cli_refuses_bad_names_with_one_line_and_a_failing_exit_code(
    trained: Trained, command: str
) -> None:
    runner = CliRunner()
    for name in BAD_NAMES:
        result = runner.invoke(app, CLI_COMMANDS[command](name, trained))
        where = f"kfp-serve {command} {name!r}"
        assert result.exit_code == 1, (where, result.output, result.exception)
        error = result.stderr.strip()
        assert error.startswith("error:") and "\n" not in error, (where, result.stderr)
        assert "not a valid DNS-1123 name" in error, (where, error)
        assert "Traceback" not in result.output, where


def test_installed_cli_refuses_injection_in_names(trained: Trained) -> None:
    """The real console script, as a shell user runs it: exit code 1, one line on stderr."""
    cli = str(Path(sys.executable).with_name("kfp-serve"))
    for name in ("../../etc/passwd", "iris;touch pwned", "iris\nx"):
        done = subprocess.run(
            [cli, "stop", "--", name], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1, done
        assert done.stderr.count("\n") == 1 and "not a valid DNS-1123 name" in done.stderr
        assert done.stdout == ""
    assert not Path("pwned").exists()


# -------------------------------------------------------- snapshot restore stays in the tree


@pytest.fixture
def stored(tmp_path: Path) -> tuple[SnapshotStore, Any, Path]:
    """A store with one snapshot; also a secret file outside it."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "model.joblib").write_bytes(b"model bytes")
    (tree / "sub" / "a.txt").write_text("a")
    store = SnapshotStore(str(tmp_path / "store"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside secret")
    return store, store.snapshot(tree, progress=False), outside


def _writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_restore_refuses_uris_that_walk_out_of_the_store(stored, tmp_path: Path) -> None:
    store, snap, _ = stored
    root, name = snap.uri.rsplit("/", 1)
    for uri in (
        f"{snap.uri}/../..",
        f"{snap.uri}/../../outside",
        f"{root}/../outside",
        f"{root}/{name[:-1]}/../{name}x",
        f"{root}/blake3-../../outside",
        f"file://{tmp_path}/outside",
        f"{snap.uri}\n",
        f"{snap.uri}\n/../../outside",
    ):
        with pytest.raises(SnapshotError, match="not a snapshot URI"):
            store.restore(uri, tmp_path / "dest")
        with pytest.raises(SnapshotError, match="not a snapshot URI"):
            store.open(uri)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize(
    ("plant", "match"),
    [
        ("absolute-file-link", "is absolute"),
        ("relative-file-link", "points outside the tree"),
        ("directory-link", "points outside the tree"),
    ],
)
def test_restore_refuses_symlinks_planted_to_leave_the_tree(
    stored, tmp_path: Path, plant: str, match: str
) -> None:
    """Someone with write access to the store swaps a file or directory for a symlink out of
    the tree: restore and open refuse it, and nothing outside is read into the destination."""
    store, snap, outside = stored
    directory = store.open(snap.uri)
    sub = directory / "sub"
    _writable(directory)
    _writable(sub)
    if plant == "absolute-file-link":
        (sub / "a.txt").unlink()
        os.symlink(outside / "secret.txt", sub / "a.txt")
    elif plant == "relative-file-link":
        (sub / "a.txt").unlink()
        os.symlink(os.path.relpath(outside / "secret.txt", sub), sub / "a.txt")
    else:
        (sub / "a.txt").unlink()
        sub.rmdir()
        os.symlink(os.path.relpath(outside, directory), sub)
    dest = tmp_path / "dest"
    with pytest.raises(SnapshotError, match=match):
        store.restore(snap.uri, dest)
    with pytest.raises(SnapshotError, match=match):
        store.open(snap.uri)
    with pytest.raises(SnapshotError, match=match):
        store.verify(snap.uri)
    assert not dest.exists()
    assert not list(tmp_path.glob(".dest.restore-*"))
    assert (outside / "secret.txt").read_text() == "outside secret"


# ----------------------------------------------------------------- secrets never shown


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {n!r}" for n in needles if n in data]
    return hits


def test_secret_values_never_appear_in_logs_reports_mlmd_or_cli_output(
    served: Served, reliability_home: Path, tmp_path: Path
) -> None:
    from kfp_serve.serving.smoke import smoke_endpoint

    values = list(SECRET_ENV.values())
    needles = [v.encode() for v in values]

    # The secrets are referenced (by name) in what was applied, and their values really were
    # within reach of the servers: they inherit the environment that holds them.
    manifest = json.dumps(served.endpoint.status.manifest)
    assert "iris-api-credentials" in manifest and "iris-db" in manifest
    environ = Path(f"/proc/{served.pids['predictor']}/environ").read_bytes()
    assert all(n in environ for n in needles)
    assert not any(v in manifest for v in values)

    # Endpoint logs (after the load, bad-payload and fault tests wrote to them).
    logs = reliability_home / "endpoints" / ENDPOINT / "logs"
    assert {p.name for p in logs.iterdir()} >= {
        "router.log", "rev1-predictor.log", "rev1-transformer.log"
    }
    assert _files_containing(logs, needles) == []

    # A smoke report of the endpoint.
    rows = served.trained.X[::15].tolist()
    samples = tmp_path / "samples.json"
    samples.write_text(
        json.dumps({"instances": rows, "expected": served.trained.expected(rows),
                    "output": "label"})
    )
    result = smoke_endpoint(ENDPOINT, samples, deadline_s=30)
    assert result.blessed, result.message
    report = json.dumps(result.to_dict()) + result.to_markdown() + result.message
    assert not any(v in report for v in values)

    # CLI output: listings, lineage, and a dry run of the very same ServeConfig.
    runner = CliRunner()
    outputs = []
    for args in (
        ["endpoints"],
        ["models"],
        ["lineage", str(served.trained.model_id)],
        ["serve", str(served.trained.model_id), "--transformer",
         str(served.trained.transformer_id), "--name", "iris-dry",
         "--config", json.dumps(SECRET_SERVE_CONFIG), "--dry-run"],
        ["predict", ENDPOINT, "--data", json.dumps(rows[:2])],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    assert "iris-api-credentials" in outputs[3]  # the dry run shows the reference ...
    assert not any(v in out for v in values for out in outputs)  # ... never the value

    # MLMD: the records, their lineage (deployments included), and the raw database files.
    for artifact_id in (served.trained.model_id, served.trained.transformer_id):
        text = json.dumps(artifacts.lineage(artifact_id), default=str)
        text += json.dumps(artifacts.get_artifact(artifact_id).__dict__, default=str)
        assert ENDPOINT in text or artifact_id == served.trained.transformer_id
        assert not any(v in text for v in values)
    # And nowhere in the whole state directory: MLMD, snapshots, registries, logs.
    assert _files_containing(reliability_home, needles) == []
