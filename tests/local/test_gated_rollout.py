"""The gated rollout on real local endpoints: real model servers, the real router mirroring the
stable revision's requests, a real MLMD alias. The champion is a depth-2 decision tree on iris.

* a candidate worse on held-out data is never served; the alias stays;
* a candidate as good on held-out data but answering the (drifted) live traffic differently
  from the champion is canaried and rolled back by the live analysis; the alias stays;
* a better candidate that agrees on live traffic is promoted and the alias moves to it;
* a run stopped by SIGTERM mid-canary leaves the stable revision serving everything;
* a bad gate serves nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from kfp_serve.artifacts import Model, list_aliases, set_alias
from kfp_serve.serving import gated_rollout as gr
from kfp_serve.serving.backends.local import mirror, registry
from kfp_serve.serving.deploy import serve
from kfp_serve.serving.gate import GateError

MODEL = "gated-iris"
#: Generous latency bound: this machine is shared, and p99 is covered by the gate's own tests.
GATE = {
    "offline": {"accuracy": {"min": 0.9, "max_change": 0.05}},
    "canary": 30,
    "live": {"window_requests": 150, "window_seconds": 120, "max_error_rate": 0.02,
             "max_p99_ratio": 20.0, "min_agreement": 0.9},
}


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    rng = np.random.default_rng(0)
    return {
        "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
        # Live traffic like the training data, and drifted traffic anywhere in the feature box.
        "live": x.tolist(),
        "drifted": rng.uniform(x.min(0), x.max(0), size=(200, 4)).tolist(),
    }


def _submit(estimator: Any, version: str, data: dict[str, Any]) -> int:
    estimator.fit(data["x_train"], data["y_train"])
    return Model(model=estimator, name=MODEL, version=version).submit_artifact()


@pytest.fixture(scope="module")
def models(data: dict[str, Any]) -> dict[str, int]:
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.tree import DecisionTreeClassifier

    return {
        "champion": _submit(DecisionTreeClassifier(max_depth=2, random_state=0), "1.0.0", data),
        "worse": _submit(DummyClassifier(strategy="most_frequent"), "1.1.0", data),
        "drifts": _submit(KNeighborsClassifier(3), "1.2.0", data),
        "better": _submit(LogisticRegression(max_iter=500), "2.0.0", data),
    }


class Traffic:
    """Clients sending one row per request to the endpoint until stopped."""

    def __init__(self, url: str, path: str, rows: list[list[float]]) -> None:
        self.url, self.path, self.rows = url, path, rows
        self.answers: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, trust_env=False, timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                row = self.rows[i % len(self.rows)]
                i += 1
                try:
                    r = client.post(self.path, json={"instances": [row]})
                    self.answers.append(r.json()["predictions"][0] if r.status_code == 200
                                        else r.status_code)
                except httpx.HTTPError:
                    time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def endpoint(models: dict[str, int]) -> Iterator[str]:
    name = "gated"
    serve(models["champion"], name=name, timeout=120, backend="local")
    set_alias(MODEL, "champion", "1.0.0")
    yield name
    from kfp_serve.serving.backends.local import LocalBackend

    LocalBackend(progress=False, stop_grace=2.0).delete(name)


def _traffic(name: str, rows: list[list[float]]) -> Traffic:
    record = registry.read_record(name)
    return Traffic(record.url, f"/v1/models/{name}:predict", rows)


def _serving(name: str) -> dict[str, int]:
    """Revision -> percent of the endpoint's traffic now, for the revisions that get any."""
    return {k: v for k, v in registry.read_record(name).traffic.items() if v}


def _champion_revision(name: str) -> str:
    (revision,) = _serving(name)
    return revision


def test_a_candidate_worse_offline_is_never_served(
    endpoint: str, models: dict[str, int], data: dict[str, Any]
) -> None:
    before = registry.read_record(endpoint)
    report = gr.gated_rollout(endpoint, f"{MODEL}:1.1.0", GATE, data["x_test"], data["y_test"],
                              progress=False)
    assert report.decision == gr.REJECTED and not report.promoted and report.live is None
    assert report.champion == f"{MODEL}:1.0.0"  # resolved from the alias
    assert "accuracy.min" in report.to_markdown() and "FAIL" in report.to_markdown()
    after = registry.read_record(endpoint)
    assert [r.revision for r in after.revisions] == [r.revision for r in before.revisions]
    assert list_aliases(MODEL) == {"champion": "1.0.0"}


def test_a_candidate_that_disagrees_on_live_traffic_is_rolled_back(
    endpoint: str, models: dict[str, int], data: dict[str, Any]
) -> None:
    stable = _champion_revision(endpoint)
    with _traffic(endpoint, data["drifted"]) as traffic:
        report = gr.gated_rollout(endpoint, f"{MODEL}:1.2.0", GATE, data["x_test"],
                                  data["y_test"], progress=False)
    assert report.offline.passed, report.offline.reason
    assert report.decision == gr.ROLLED_BACK, report.to_markdown()
    agreement = next(c for c in report.live.checks if c.name == "agreement")
    assert not agreement.passed and agreement.measured < 0.9
    assert report.window["mirrored"] > 0 and report.window["canary_requests"] >= 150
    # The stable revision takes everything again, and the alias did not move.
    assert _serving(endpoint) == {stable: 100}
    assert list_aliases(MODEL) == {"champion": "1.0.0"}
    # Every client got an answer, and only the revisions' own: the mirrored ones went nowhere.
    assert traffic.answers and all(a in (0, 1, 2) for a in traffic.answers)
    assert not mirror.session_path(registry.endpoint_dir(endpoint)).exists()


def test_a_better_candidate_is_promoted_and_the_alias_moves(
    endpoint: str, models: dict[str, int], data: dict[str, Any]
) -> None:
    with _traffic(endpoint, data["live"]) as traffic:
        report = gr.gated_rollout(endpoint, f"{MODEL}:2.0.0", GATE, data["x_test"],
                                  data["y_test"], progress=False)
        # Requests keep being answered after the promotion, by the candidate alone.
        time.sleep(0.3)
    assert report.decision == gr.PROMOTED, report.to_markdown()
    assert report.alias_moved and list_aliases(MODEL) == {"champion": "2.0.0"}
    assert report.decision_seconds is not None and report.decision_seconds > 0
    record = registry.read_record(endpoint)
    assert _serving(endpoint) == {str(record.latest.revision): 100}
    labels = record.latest.manifest["metadata"]["labels"]
    assert labels["kfp-serve.kubeflow.org/model-version"] == "2.0.0"
    assert len(traffic.answers) > 150 and all(a in (0, 1, 2) for a in traffic.answers)
    # Nothing was rolled out twice: the old champion's servers are gone.
    assert [r.revision for r in record.revisions] == [record.latest.revision]


class _FailingSource(gr.LocalMirrorSource):
    """The real mirror source, whose window read fails once the canary is live."""

    def window(self) -> Any:
        raise RuntimeError("the metrics backend went away")


def test_an_error_mid_canary_rolls_back_and_is_raised(
    endpoint: str, models: dict[str, int], data: dict[str, Any]
) -> None:
    stable = _champion_revision(endpoint)
    champion_before = list_aliases(MODEL)
    with pytest.raises(RuntimeError, match="metrics backend went away"):
        gr.gated_rollout(endpoint, f"{MODEL}:1.2.0",
                         {**GATE, "offline": {"accuracy": {"min": 0.5}}},
                         data["x_test"], data["y_test"], progress=False,
                         source=_FailingSource(endpoint))
    assert _serving(endpoint) == {stable: 100}
    assert list_aliases(MODEL) == champion_before
    assert not mirror.session_path(registry.endpoint_dir(endpoint)).exists()


_INTERRUPTED_RUN = """
import sys
from sklearn.datasets import load_iris
from kfp_serve.serving import gated_rollout as gr
x, y = load_iris(return_X_y=True)
gate = {"offline": {"accuracy": {"min": 0.5}}, "canary": 40,
        "live": {"window_requests": 100000, "window_seconds": 3600}}
gr.gated_rollout(sys.argv[1], sys.argv[2], gate, x, y, progress=False)
"""


def test_a_run_stopped_mid_canary_leaves_the_stable_revision_serving(
    endpoint: str, models: dict[str, int], data: dict[str, Any]
) -> None:
    stable = _champion_revision(endpoint)
    champion_before = list_aliases(MODEL)
    session = mirror.session_path(registry.endpoint_dir(endpoint))
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_RUN, endpoint, f"{MODEL}:1.2.0"],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        # The canary takes traffic and the live window is open: stop the run now.
        while not (session.exists() and len(_serving(endpoint)) == 2):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the canary never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "RolloutInterrupted" in out, out[-3000:]
    assert _serving(endpoint) == {stable: 100}
    assert list_aliases(MODEL) == champion_before
    assert not session.exists()


def test_a_bad_gate_serves_nothing(models: dict[str, int], data: dict[str, Any]) -> None:
    with pytest.raises(GateError, match="known metrics: accuracy"):
        gr.gated_rollout("never-served", f"{MODEL}:2.0.0", {"offline": {"f1": {"min": 0.5}}},
                         data["x_test"], data["y_test"], progress=False)
    with pytest.raises(GateError, match="min 0.9 is above max 0.5"):
        gr.gated_rollout("never-served", f"{MODEL}:2.0.0",
                         {"offline": {"accuracy": {"min": 0.9, "max": 0.5}}},
                         data["x_test"], data["y_test"], progress=False)
    assert not registry.exists("never-served")


def test_mirrored_answers_never_reach_the_client(
    backend: Any, model_dir: Any, shifted_model_dir: Any
) -> None:
    """Stable answers classes 0..2, the candidate 10..12: a client sees the candidate only on
    the canary's own share, while every stable answer is also compared with the candidate's."""
    from tests.local.conftest import make_manifest

    name = "mirror-only"
    backend.apply(make_manifest(name, model_dir[0]), timeout=120)
    backend.apply(make_manifest(name, shifted_model_dir[0], canary=20), timeout=120)
    try:
        source = gr.LocalMirrorSource(name)
        source.start()
        with httpx.Client(base_url=registry.read_record(name).url, trust_env=False) as client:
            answers = [
                client.post(f"/v1/models/{name}:predict",
                            json={"instances": [[5.1, 3.5, 1.4, 0.2]]}).json()["predictions"][0]
                for _ in range(200)
            ]
        from kfp_serve.retry import wait_until

        status = wait_until(lambda: (s := source.window()[1])["inflight"] == 0
                            and s["queued"] == 0 and s, deadline=30, describe="mirror drained")
        source.stop()
        revisions = status["revisions"]
        from_candidate = sum(1 for a in answers if a >= 10)
        assert from_candidate == revisions["candidate"]["requests"]
        assert 200 - from_candidate == revisions["stable"]["requests"]
        # Every stable answer was mirrored and compared (none dropped), and none agreed.
        assert status["window"]["mirrored"] == revisions["stable"]["requests"] > 0
        assert status["window"]["agreed"] == 0 and status["dropped"] == 0
        assert status["window"]["canary_requests"] == 200
    finally:
        backend.delete(name)
