"""models alias → serve NAME@ALIAS → rollout --canary → traffic → rollback → promote, each as
the real console script in a subprocess, on real local endpoints; describe, endpoints and
lineage show what serves."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cli.conftest import assert_clean_error, run_script, stop_quietly

NAME = "cli-canary"
ROW = [[5.1, 3.5, 1.4, 0.2]]


def ok(*args: str) -> str:
    outcome = run_script(*args, timeout=180)
    assert outcome.exit_code == 0, outcome.stderr
    return outcome.stdout + outcome.stderr


@pytest.fixture(scope="module")
def versions(iris):
    """cli-rollout 1.0.0 and 2.0.0 in MLMD; 2.0.0 answers classes 10..12."""
    from sklearn.linear_model import LogisticRegression

    from kfp_serve import artifacts

    X, y = iris
    old = artifacts.Model(model=LogisticRegression(max_iter=500).fit(X, y),
                          name="cli-rollout", version="1.0.0").submit_artifact()
    new = artifacts.Model(model=LogisticRegression(max_iter=500).fit(X, y + 10),
                          name="cli-rollout", version="2.0.0").submit_artifact()
    yield old, new
    stop_quietly(NAME)


def new_answers(n: int) -> int:
    from kfp_serve.serving.endpoint import Endpoint

    with Endpoint(NAME) as ep:
        return sum(1 for _ in range(n) if ep.predictions(ROW)[0] >= 10)


def endpoint_row(cli) -> dict:
    [row] = [r for r in json.loads(cli("endpoints", "--output", "json").stdout)
             if r["name"] == NAME]
    return row


def test_alias_canary_rollback_promote(cli, versions):
    old, new = versions
    assert "cli-rollout@champion -> 1.0.0" in ok("models", "alias", "cli-rollout", "champion",
                                                 "1.0.0")
    ok("serve", "cli-rollout@champion", "--name", NAME, "--timeout", "120")
    out = ok("rollout", NAME, "cli-rollout:2.0.0", "--canary", "20", "--timeout", "120")
    assert f"{NAME}: 1.0.0 → 2.0.0" in out
    assert "cli-rollout 2.0.0 (20 %) / 1.0.0 (80 %)" in out
    # Binomial(200, 0.2): mean 40, sd 5.7; 15..65 is +-4.4 sd.
    assert 15 <= new_answers(200) <= 65

    row = endpoint_row(cli)
    assert row["traffic"] == "cli-rollout 2.0.0 (20 %) / 1.0.0 (80 %)"
    assert row["model id"] == f"{new}, {old}"

    table = ok("describe", NAME)
    assert "traffic: cli-rollout 2.0.0 (20 %) / 1.0.0 (80 %)" in table
    assert "champion" in table and "canaryTrafficPercent: 20" in table
    info = json.loads(run_script("describe", NAME, "--output", "json").stdout)
    assert yaml.safe_load(run_script("describe", NAME, "-o", "yaml").stdout) == info
    latest, stable = info["revisions"]
    assert (latest["model"]["version"], latest["percent"], latest["ready"]) == ("2.0.0", 20, True)
    assert (stable["model"]["alias"], stable["percent"], stable["stable"]) == ("champion", 80, True)
    assert info["urls"]["router"] == info["url"] and info["backend"] == "local"

    assert "cli-rollout 2.0.0 (50 %) / 1.0.0 (50 %)" in ok("traffic", NAME, "50")

    assert "cli-rollout 2.0.0 (0 %) / 1.0.0 (100 %)" in ok("rollback", NAME)
    assert new_answers(30) == 0
    # After the rollback only the stable model serves: the idle canary's id is not claimed.
    assert endpoint_row(cli)["model id"] == str(old)

    assert "promoted cli-canary: cli-rollout 2.0.0 (100 %)" in ok("promote", NAME)
    assert new_answers(30) == 30
    assert endpoint_row(cli)["model id"] == str(new)
    described = json.loads(run_script("describe", NAME, "-o", "json").stdout)
    events = [e["action"] for e in described["events"]]
    assert events[-4:] == ["serve", "traffic", "rollback", "promote"]

    lineage = cli("lineage", "cli-rollout@champion").stdout  # 1.0.0, by reference
    assert "cli-canary 80 % from" in lineage and "(promoted)" in lineage
    assert " to now" not in lineage

    ok("stop", NAME)
    assert " to now" not in cli("lineage", str(new)).stdout


def test_delivery_errors_are_clean(cli, versions):
    outcome = run_script("models", "alias", "cli-rollout", "champion", "9.9.9")
    assert_clean_error(outcome, "has no version '9.9.9'", "2.0.0", "1.0.0")
    assert_clean_error(run_script("promote", "cli-nothing"), "no local endpoint named")
    ok("serve", "cli-rollout:1.0.0", "--name", "cli-lonely", "--timeout", "120")
    try:
        assert_clean_error(run_script("promote", "cli-lonely"), "no canary to promote")
        assert_clean_error(run_script("rollback", "cli-lonely"),
                           "no previous revision to roll back to")
        assert_clean_error(run_script("traffic", "cli-lonely", "101"), "percent")
        assert_clean_error(run_script("rollout", "cli-lonely", "cli-rollout@nope", "--canary",
                                      "10"), "has no alias 'nope'", "cli-rollout@champion")
        ok("stop", "cli-lonely")
    finally:
        stop_quietly("cli-lonely")
