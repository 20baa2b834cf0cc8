"""``kfp-serve serve --multi NAME MODEL... --dry-run``: the manifests, nothing applied."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import assert_clean_error


@pytest.fixture(scope="module")
def two_models(iris):
    from sklearn.linear_model import LogisticRegression

    from kfp_serve import artifacts

    X, y = iris
    return [artifacts.Model(model=LogisticRegression(max_iter=300).fit(X, y), name=name,
                            version="1.0.0").submit_artifact()
            for name in ("dry-east", "dry-west")]


def test_dry_run_prints_the_parent_and_one_trained_model_each(cli, two_models, monkeypatch):
    monkeypatch.setenv("KFP_SERVE_BACKEND", "local")
    done = cli("serve", "--multi", "dry-fleet", *map(str, two_models), "--memory", "32Mi",
               "--config", '{"limits": {"memory": "256Mi"}}', "--dry-run", "-o", "json")
    assert done.exit_code == 0, done.stderr
    listed = json.loads(done.stdout)
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
    parent, *models = listed["items"]
    assert parent["kind"] == "InferenceService" and parent["metadata"]["name"] == "dry-fleet"
    assert "storageUri" not in parent["spec"]["predictor"]["model"]
    assert [(m["kind"], m["metadata"]["name"], m["spec"]["inferenceService"],
             m["spec"]["model"]["memory"]) for m in models] == [
        ("TrainedModel", "dry-east", "dry-fleet", "32Mi"),
        ("TrainedModel", "dry-west", "dry-fleet", "32Mi")]
    endpoints = cli("endpoints", "--output", "json")
    assert "dry-fleet" not in endpoints.stdout  # nothing was served


def test_dry_run_for_a_cluster_applies_the_trained_model_webhook_rules(cli, two_models,
                                                                      monkeypatch):
    monkeypatch.setenv("KFP_SERVE_BACKEND", "kubernetes")
    monkeypatch.delenv("KFP_SERVE_SNAPSHOT_STORE", raising=False)  # file:// snapshots
    done = cli("serve", "--multi", "dry-fleet", *map(str, two_models), "--dry-run")
    assert_clean_error(done, "tm-storage-uri", "s3://")
