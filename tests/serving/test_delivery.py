"""rollout / set_traffic / promote / rollback / stop from Python, on real local endpoints with
models in a real MLMD store: where requests go, what describe() says, what lineage records."""

from __future__ import annotations

import pytest

from kfp_serve import artifacts
from kfp_serve.serving import delivery, serve
from kfp_serve.serving.endpoint import Endpoint
from kfp_serve.serving.errors import ServingError

ROW = [[5.1, 3.5, 1.4, 0.2]]
NAME = "iris-delivery"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def versions(home):
    """iris 1.0.0 and 2.0.0; 2.0.0 answers classes 10..12, so its answers are told apart."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    old = artifacts.Model(
        model=LogisticRegression(max_iter=500).fit(X, y), name="iris", version="1.0.0"
    ).submit_artifact()
    new = artifacts.Model(
        model=LogisticRegression(max_iter=500).fit(X, y + 10), name="iris", version="2.0.0"
    ).submit_artifact()
    return old, new


def new_answers(ep: Endpoint, n: int) -> int:
    return sum(1 for _ in range(n) if ep.predictions(ROW)[0] >= 10)


def intervals(model_id: int) -> list[tuple[int, bool, str | None]]:
    """(percent, serving, end reason) of each deployment interval of ``model_id``, oldest first."""
    deps = sorted(artifacts.lineage(model_id)["deployments"], key=lambda d: d["execution_id"])
    return [(d["traffic_percent"], d["serving"], d["end_reason"]) for d in deps]


def test_canary_rollback_promote_stop(versions, capsys):
    old, new = versions
    ep = serve("iris:1.0.0", name=NAME, timeout=120)
    try:
        assert "→" not in capsys.readouterr().err
        canary = delivery.rollout(NAME, "iris:2.0.0", canary=20, timeout=120)
        assert f"{NAME}: 1.0.0 → 2.0.0" in capsys.readouterr().err
        # Binomial(200, 0.2): mean 40, sd 5.7; 15..65 is +-4.4 sd.
        assert 15 <= new_answers(canary, 200) <= 65

        info = ep.describe()
        assert info["traffic"] == "iris 2.0.0 (20 %) / 1.0.0 (80 %)"
        latest, stable = info["revisions"]
        assert latest["model"] == {"id": str(new), "name": "iris", "version": "2.0.0"}
        assert (latest["percent"], latest["latest"], latest["ready"]) == (20, True, True)
        assert (stable["model"]["version"], stable["percent"], stable["stable"]) == (
            "1.0.0", 80, True
        )
        assert latest["created"] and latest["urls"]["predictor"].startswith("http://127.0.0.1:")
        assert info["serve_config"]["predictor"]["canaryTrafficPercent"] == 20
        assert info["events"][-1]["action"] == "serve"
        assert "(iris 1.0.0 → iris 2.0.0)" in info["events"][-1]["message"]
        assert intervals(old) == [(100, False, "replaced"), (80, True, None)]
        assert intervals(new) == [(20, True, None)]

        delivery.rollback(NAME)
        assert new_answers(ep, 40) == 0
        assert ep.describe()["traffic"] == "iris 2.0.0 (0 %) / 1.0.0 (100 %)"
        assert intervals(new) == [(20, False, "rolled back")]
        assert intervals(old)[-1] == (100, True, None)

        state = delivery.promote(NAME)
        assert state.traffic == {f"{NAME}-predictor-00002": 100}
        assert new_answers(ep, 40) == 40
        assert ep.describe()["traffic"] == "iris 2.0.0 (100 %)"
        assert intervals(old)[-1] == (100, False, "promoted")
        assert intervals(new)[-1] == (100, True, None)
        with pytest.raises(ServingError, match="no canary to promote"):
            delivery.promote(NAME)
    finally:
        ep.close()
        delivery.stop(NAME)
    assert intervals(new)[-1] == (100, False, "stopped")
    assert not any(serving for _, serving, _ in intervals(old))


def test_bad_canary_percent_is_refused_before_anything_is_served(versions):
    with pytest.raises(ServingError, match="int from 0 to 100, got 150"):
        delivery.rollout(NAME, "iris:2.0.0", canary=150)
    with pytest.raises(ServingError, match="no local endpoint named"):
        delivery.rollback("nothing-here")
    assert artifacts.lineage(versions[1])["deployments"] == []


def test_serve_component_takes_a_model_reference(versions):
    from kfp_serve.artifacts import set_alias
    from kfp_serve.components.ops import serve as serve_step
    from kfp_serve.errors import InputError

    old, _ = versions
    set_alias("iris", "champion", "1.0.0")
    served = serve_step(model="iris@champion", name="iris-step", timeout=120)
    try:
        labels = served.manifest["metadata"]["labels"]
        assert labels["kfp-serve.kubeflow.org/model-id"] == str(old)
        assert labels["kfp-serve.kubeflow.org/model-alias"] == "champion"
        assert labels["kfp-serve.kubeflow.org/model-version"] == "1.0.0"
    finally:
        delivery.stop("iris-step")
    with pytest.raises(InputError, match="exactly one of them"):
        serve_step(old, model="iris@champion", name="iris-step")
    with pytest.raises(InputError, match="exactly one of them"):
        serve_step(name="iris-step")


def _kill(pid: int) -> None:
    """kill -9, then wait until the process is really gone (reaped or a zombie)."""
    import os
    import signal
    import time

    from kfp_serve.serving.backends.local.supervisor import start_time

    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while start_time(pid) is not None:
        assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
        time.sleep(0.02)


def _second(iso: str):
    from datetime import datetime

    return datetime.fromisoformat(iso).replace(microsecond=0)


def test_killed_servers_are_not_claimed_to_serve(versions):
    """kill -9 the canary's server, then the router: lineage ends exactly what died, says when
    it was last seen, and `stop` afterwards does not claim it served until the stop."""
    from typer.testing import CliRunner

    from kfp_serve.cli import app
    from kfp_serve.lineage_view import lineage_rows
    from kfp_serve.serving import liveness
    from kfp_serve.serving.backends.local.registry import read_record

    old, new = versions
    name = "iris-crash"
    serve("iris:1.0.0", name=name, timeout=120)
    try:
        delivery.rollout(name, "iris:2.0.0", canary=20, timeout=120)
        record = read_record(name)
        stable, candidate = sorted(record.revisions, key=lambda r: r.revision)
        assert liveness.reconcile(name) == []  # everything runs: nothing ends

        _kill(candidate.predictor.pid)
        [dead] = [d for d in liveness.lineage(new)["deployments"] if d["endpoint"] == name]
        assert (dead["serving"], dead["end_reason"]) == (False, "process exited")
        assert _second(dead["start_time"]) <= _second(dead["last_seen"]) <= _second(
            dead["end_time"])
        # The stable revision and the router still run: 1.0.0's 80 % still serves.
        assert [(d["traffic_percent"], d["serving"]) for d in liveness.lineage(old)[
            "deployments"] if d["endpoint"] == name][-1] == (80, True)

        _kill(record.router.pid)
        out = CliRunner().invoke(app, ["lineage", str(old)], env={"COLUMNS": "250"})
        assert out.exit_code == 0, out.output
        served = [line for line in out.output.splitlines() if "served by" in line]
        assert served and not any("to now" in line for line in served), out.output
        assert "process exited; last seen" in served[-1]
        rows = [r for r in lineage_rows(artifacts.lineage(old)) if r[0] == "served by"]
        assert "(process exited; last seen " in rows[-1][1]

        info = Endpoint(name).describe()
        assert (info["ready"], info["reason"]) == (False, "ProcessExited")
        assert "has exited" in info["message"]
        assert not any(r["ready"] for r in info["revisions"] if r["percent"] > 0 and r[
            "latest"])
    finally:
        delivery.stop(name)
    # Stopping a dead endpoint keeps the truth: it ended when its processes died.
    for model in (old, new):
        ends = [d["end_reason"] for d in artifacts.lineage(model)["deployments"]
                if d["endpoint"] == name]
        assert ends[-1] == "process exited" and "stopped" not in ends
