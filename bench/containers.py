"""The kfp-serve image and the Docker serving backend, against their process counterparts.

* Image build: ``make image`` split into its two phases, the wheelhouse on the host (from pip's
  cache after the first time) and ``docker build --no-cache`` from it; the image's size.
* The ``sklearn-transformer`` pipeline, compiled against the image, run end to end by kfp.local's
  DockerRunner (every step a container, host network; the serve step drives the Docker serving
  backend, smoke_predict reaches its endpoint) and by its SubprocessRunner (every step a process
  of this venv, the process backend), one after the other in the same run (per-step times from
  kfp.local's own log timestamps). Target: Docker ≤ 3× subprocess.
* Serving: the same manifest (kfp-serve runtime, an sklearn model) applied by the Docker backend
  and by the process backend: seconds from apply to Ready, and requests/s through each
  endpoint's router (the runtime's resources apply to the container: 1 CPU). Target: the Docker
  endpoint ≥ 0.9× the process one.

Needs a Docker engine and the built image; without them, one figure says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE_MODULE = "sklearn_transformer"
TARGET_RATIO = 3.0
#: The last step of the pipeline: both runners are compared end to end.
COMPARED_UNTIL = "smoke-predict"
#: Requests/s of the Docker endpoint against the process one.
TARGET_RPS_RATIO = 0.9
#: The load generator's CPU (bench.dataplane's choice: away from the server's).
LOAD_CPUS = "1"
BENCH_TAG = "kfp-serve:bench"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STAMP = r"(\d\d:\d\d:\d\d\.\d+) - \w+ - "
_START = re.compile(_STAMP + r"Executing task '([^']+)'")
_FINISH = re.compile(_STAMP + r"Task '([^']+)' finished with status (\w+)")


def _image() -> str:
    from kfp_serve.serving.constants import DEFAULT_IMAGE, IMAGE_ENV

    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def _base_image(client) -> str:  # noqa: ANN001 - docker.DockerClient, imported lazily
    """The base ``make image`` would use here: the registry's slim Python, else the Debian one."""
    from docker.errors import ImageNotFound

    for name in (os.environ.get("BASE_IMAGE"), "python:3.11-slim", "kfp-serve-base:bookworm"):
        if not name:
            continue
        with contextlib.suppress(ImageNotFound):
            client.images.get(name)
            return name
    raise RuntimeError("no base image: make base-image-debian (or pull python:3.11-slim)")


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def image_build(client) -> list[dict]:  # noqa: ANN001
    """The two phases of ``make image`` and the size of what they build."""
    base = _base_image(client)
    wheelhouse = REPO / "build" / "wheelhouse"
    version = client.containers.run(
        base, ["python3", "-c", "import platform; print(platform.python_version())"],
        network_mode="host", remove=True,
    ).decode().strip()
    wheels_s = _timed([sys.executable, "image/wheelhouse.py", "--out", str(wheelhouse),
                       "--python-version", version,
                       "--no-deps", "ml-metadata==1.17.1", "--no-deps", "kserve-storage==0.21.0"])
    build_s = _timed(["docker", "build", "--no-cache", "--network", "host", "--build-arg",
                      f"BASE_IMAGE={base}", "-t", BENCH_TAG, "-f", "Dockerfile", str(wheelhouse)])
    size_mb = client.images.get(BENCH_TAG).attrs["Size"] / 1e6
    client.images.remove(BENCH_TAG)
    return [
        {"name": f"image build: wheelhouse on the host ({base})", "value": round(wheels_s, 1),
         "unit": "s", "reference": None, "ratio": None, "target": "measured", "passed": True,
         "runs": 1, "spread": "pip's cache warm after the first build"},
        {"name": "image build: docker build --no-cache", "value": round(build_s, 1), "unit": "s",
         "reference": None, "ratio": None, "target": "measured", "passed": True, "runs": 1,
         "spread": ""},
        {"name": "image size", "value": round(size_mb), "unit": "MB", "reference": None,
         "ratio": None, "target": "measured", "passed": True, "runs": 1, "spread": base},
    ]


def _step_seconds(log: str) -> dict[str, float]:
    """Task -> seconds, from kfp.local's timestamped start and finish lines, in run order."""
    started = {task: stamp for stamp, task in _START.findall(log)}
    seconds = {}
    for stamp, task, _status in _FINISH.findall(log):
        begin = datetime.strptime(started[task], "%H:%M:%S.%f")
        seconds[task] = (datetime.strptime(stamp, "%H:%M:%S.%f") - begin).total_seconds()
    return seconds


def pipeline_run(pipeline_yaml: Path, docker: bool) -> dict[str, float]:
    """One run of the compiled pipeline in a fresh home; seconds per step."""
    import kfp.components
    import kfp.local

    from kfp_serve.serving.backends.base import get_backend
    from kfp_serve.serving.constants import DOCKER_STOCK_RUNTIME_ENV, IMAGE_ENV
    from kfp_serve.serving.runtime import warm_pool

    saved = {k: os.environ.get(k) for k in ("KFP_SERVE_HOME", "KFP_SERVE_BACKEND")}
    with tempfile.TemporaryDirectory(prefix="kfp-serve-bench-") as home:
        home = str(Path(home).resolve())
        os.environ.update(KFP_SERVE_HOME=home, KFP_SERVE_BACKEND="local")
        if docker:
            import docker as docker_sdk

            socket = "/var/run/docker.sock"
            runner = kfp.local.DockerRunner(
                network_mode="host", pid_mode="host",
                environment={"KFP_SERVE_HOME": home, "KFP_SERVE_BACKEND": "docker",
                             IMAGE_ENV: _image(), DOCKER_STOCK_RUNTIME_ENV: "kfp-serve",
                             "PIP_NO_INDEX": "1"},
                mounts=[docker_sdk.types.Mount(target=home, source=home, type="bind"),
                        docker_sdk.types.Mount(target=socket, source=socket, type="bind")],
            )
        else:
            runner = kfp.local.SubprocessRunner(use_venv=False)
        kfp.local.init(runner=runner, pipeline_root=f"{home}/pipeline-runs",
                       raise_on_error=False)
        buffer = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
                warnings.simplefilter("ignore")
                kfp.components.load_component_from_file(str(pipeline_yaml))()
        except ValueError:
            pass  # a failed task's output is a pipeline output: kfp.local raises at the end
        finally:
            backend = get_backend("docker" if docker else "local")
            for status in backend.list():
                backend.delete(status.name)
            warm_pool.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return _step_seconds(_ANSI.sub("", buffer.getvalue()))


def _until(steps: dict[str, float], last: str) -> float:
    """Seconds of the steps up to and including ``last`` (run order)."""
    total = 0.0
    for name, seconds in steps.items():
        total += seconds
        if name == last:
            return total
    raise RuntimeError(f"the run never finished step {last!r}: {steps}")


def runners(quick: bool) -> list[dict]:
    """DockerRunner vs SubprocessRunner on the same compiled pipeline, alternating."""
    with tempfile.TemporaryDirectory(prefix="kfp-serve-compiled-") as out:
        subprocess.run([sys.executable, "-m", "kfp_serve.build", "--out", out, "--image",
                        _image()], check=True, capture_output=True)
        pipeline_yaml = Path(out) / "pipelines" / f"{PIPELINE_MODULE}.yaml"
        repeats = 1 if quick else 3
        docker_s, process_s = [], []
        for _ in range(repeats):
            docker_s.append(_until(pipeline_run(pipeline_yaml, docker=True), COMPARED_UNTIL))
            process_s.append(_until(pipeline_run(pipeline_yaml, docker=False), COMPARED_UNTIL))
    value, reference = statistics.median(docker_s), statistics.median(process_s)
    ratio = value / reference
    return [{
        "name": f"{PIPELINE_MODULE} pipeline end to end under DockerRunner",
        "value": round(value, 1), "unit": "s", "reference": round(reference, 1),
        "ratio": round(ratio, 2), "target": f"≤ {TARGET_RATIO:g}× SubprocessRunner",
        "passed": ratio <= TARGET_RATIO, "runs": repeats,
        "spread": f"docker {min(docker_s):.1f}–{max(docker_s):.1f} s, subprocess "
                  f"{min(process_s):.1f}–{max(process_s):.1f} s",
    }]


def serving(quick: bool) -> list[dict]:
    """The Docker backend against the process backend: apply → Ready, and requests/s."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from bench.loadgen import run_load
    from kfp_serve.artifacts.snapshots import SnapshotStore
    from kfp_serve.serving.backends.docker.backend import DockerBackend
    from kfp_serve.serving.backends.local import LocalBackend
    from kfp_serve.serving.isvc import build_inference_service
    from kfp_serve.serving.runtime import warm_pool

    repeats = 1 if quick else 3
    duration = 3.0 if quick else 5.0
    rounds = 2 if quick else 4
    saved = os.environ.get("KFP_SERVE_HOME")
    ready: dict[str, list[float]] = {"docker": [], "local": []}
    rps: dict[str, list[float]] = {"docker": [], "local": []}
    X, y = load_iris(return_X_y=True)
    body = json.dumps({"instances": X[:4].tolist()}).encode()
    with tempfile.TemporaryDirectory(prefix="kfp-serve-bench-") as home:
        os.environ["KFP_SERVE_HOME"] = str(Path(home).resolve())
        try:
            model = Path(home) / "model"
            model.mkdir()
            joblib.dump(LogisticRegression(max_iter=500).fit(X, y), model / "model.joblib")
            uri = SnapshotStore().snapshot(model).uri
            backends = {"docker": DockerBackend(progress=False, stop_grace=2.0),
                        "local": LocalBackend(progress=False, stop_grace=2.0)}
            urls: dict[str, str] = {}
            for i in range(repeats):
                for name, backend in backends.items():
                    manifest = build_inference_service(
                        f"bench-{name}", uri, "sklearn",
                        serve_config={"predictor": {"runtime": "kfp-serve"}},
                    )
                    started = time.perf_counter()
                    status = backend.apply(manifest, timeout=300)
                    ready[name].append(time.perf_counter() - started)
                    if i < repeats - 1:
                        backend.delete(f"bench-{name}")
                    else:
                        urls[name] = f"{status.url}/v1/models/bench-{name}:predict"
            # Both endpoints up at once, loaded in interleaved rounds (A B, B A, ...): on a
            # shared machine the load from elsewhere moves by the second, so the figure is the
            # median of the per-round ratios.
            for url in urls.values():
                run_load(url, body, connections=16, duration=1, cpus=LOAD_CPUS)  # warm
            for r in range(rounds):
                for name in (["docker", "local"] if r % 2 == 0 else ["local", "docker"]):
                    rps[name].append(run_load(urls[name], body, connections=16,
                                              duration=duration, cpus=LOAD_CPUS).rps)
            for name, backend in backends.items():
                backend.delete(f"bench-{name}")
        finally:
            warm_pool.stop()
            if saved is None:
                os.environ.pop("KFP_SERVE_HOME", None)
            else:
                os.environ["KFP_SERVE_HOME"] = saved
    docker_s, local_s = statistics.median(ready["docker"]), statistics.median(ready["local"])
    ratios = [d / p for d, p in zip(rps["docker"], rps["local"], strict=True)]
    ratio = statistics.median(ratios)
    return [
        {"name": "Docker backend: apply → Ready (sklearn, kfp-serve runtime)",
         "value": round(docker_s, 2), "unit": "s", "reference": round(local_s, 2),
         "ratio": round(docker_s / local_s, 2), "target": "measured (process backend: warm pool)",
         "passed": True, "runs": repeats,
         "spread": f"docker {min(ready['docker']):.2f}–{max(ready['docker']):.2f} s, process "
                   f"{min(ready['local']):.2f}–{max(ready['local']):.2f} s"},
        {"name": "Docker backend: req/s through the endpoint (v1, 4 rows, 16 connections)",
         "value": round(statistics.median(rps["docker"])), "unit": "req/s",
         "reference": round(statistics.median(rps["local"])),
         "ratio": round(ratio, 2), "target": f"≥ {TARGET_RPS_RATIO:g}× process endpoint",
         "passed": ratio >= TARGET_RPS_RATIO, "runs": rounds,
         "spread": f"per-round ratio {min(ratios):.2f}–{max(ratios):.2f}; {rounds} interleaved "
                   f"rounds of {duration:g} s"},
    ]


def run(quick: bool) -> list[dict]:
    """Figures: image build phases and size; the pipeline under the two runners; serving."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        client.ping()
        client.images.get(_image())
    except DockerException as e:
        return [{"name": "containers: not measured", "value": None, "unit": "",
                 "reference": None, "ratio": None, "target": "a Docker engine and the image",
                 "passed": False, "runs": 0,
                 "spread": f"{type(e).__name__}: start one (sudo bash .ci/docker-engine), "
                           "then make image"}]
    try:
        return image_build(client) + serving(quick) + runners(quick)
    finally:
        client.close()
