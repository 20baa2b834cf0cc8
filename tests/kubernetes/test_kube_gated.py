"""The gated rollout on the Kubernetes backend (the API double playing KServe): the live window
is counted from the analysis's own requests, sent to both revisions through KServe's tag routing;
each revision answers with its own sklearn model (loaded from its storageUri), or with what the
test makes it answer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kfp_serve.artifacts import Model, list_aliases, set_alias
from kfp_serve.serving import gated_rollout as gr
from kfp_serve.serving.backends.base import get_backend
from kfp_serve.serving.cluster_live import ANNOTATION_TAG_ROUTING
from kfp_serve.serving.deploy import serve
from kfp_serve.serving.errors import ServingError
from tests.kube_double.store import ISVC

MODEL = "gated-iris"
NAME = "gated"
STABLE, CANDIDATE = f"{NAME}-predictor-00001", f"{NAME}-predictor-00002"
GATE = {
    "offline": {"accuracy": {"min": 0.9, "max_change": 0.05}},
    "canary": 30,
    "live": {"window_requests": 120, "window_seconds": 60, "max_error_rate": 0.02,
             "max_p99_ratio": 50.0, "min_agreement": 0.9},
}


@pytest.fixture
def cluster(tmp_path, monkeypatch, kube_double, kubeconfig) -> dict[str, Any]:
    """A kubernetes home with four iris versions and the champion served; the double's
    ingress reachable from here (INGRESS_HOST/PORT), as a laptop reaches a cluster's."""
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.tree import DecisionTreeClassifier

    for var in ("KFP_SERVE_MLMD", "METADATA_GRPC_SERVICE_HOST", "KFP_SERVE_INGRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KFP_SERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KFP_SERVE_BACKEND", "kubernetes")
    monkeypatch.setenv("INGRESS_HOST", "127.0.0.1")
    monkeypatch.setenv("INGRESS_PORT", str(kube_double.port))
    kube_double.kserve.program(delay=0.05)
    x, y = load_iris(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0,
                                                        stratify=y)
    ids = {}
    for key, estimator, version in [
        ("champion", DecisionTreeClassifier(max_depth=2, random_state=0), "1.0.0"),
        ("drifts", KNeighborsClassifier(3), "1.2.0"),
        ("better", LogisticRegression(max_iter=500), "2.0.0"),
        ("errors", DummyClassifier(strategy="most_frequent"), "3.0.0"),
    ]:
        estimator.fit(x_train, y_train)
        ids[key] = Model(model=estimator, name=MODEL, version=version).submit_artifact()
    serve(ids["champion"], name=NAME, timeout=20)
    set_alias(MODEL, "champion", "1.0.0")
    rng = np.random.default_rng(0)
    return {"ids": ids, "x_test": x_test, "y_test": y_test, "live": x.tolist(),
            # Rows anywhere in the feature box: where the tree and the neighbours disagree.
            "drifted": rng.uniform(x.min(0), x.max(0), size=(200, 4)).tolist()}


def _traffic() -> dict[str, int]:
    state = get_backend().rollout_state(NAME)
    return {k: v for k, v in state.traffic.items() if v}


def _requests_to(kube_double, tag: str) -> int:
    return sum(1 for host, _, _ in kube_double.kserve.data_plane_requests
               if host.startswith(f"{tag}-{NAME}-predictor."))


def test_a_candidate_that_disagrees_is_rolled_back_and_the_alias_stays(cluster, kube_double):
    report = gr.gated_rollout(NAME, f"{MODEL}:1.2.0", GATE, cluster["x_test"],
                              cluster["y_test"], replay=cluster["drifted"], progress=False)
    assert report.offline.passed, report.offline.reason
    assert report.decision == gr.ROLLED_BACK, report.to_markdown()
    agreement = next(c for c in report.live.checks if c.name == "agreement")
    assert not agreement.passed and agreement.measured < 0.9
    assert report.window["canary_requests"] >= 120 and report.window["mirrored"] >= 120
    # Every row went to both revisions, each at its own tag URL.
    assert _requests_to(kube_double, "latest") >= 120 and _requests_to(kube_double, "prev") >= 120
    assert _traffic() == {STABLE: 100}
    assert list_aliases(MODEL) == {"champion": "1.0.0"}
    # The canary was deployed with tag routing on, which gave its targets their URLs.
    obj = kube_double.get(ISVC, NAME)
    assert obj["metadata"]["annotations"][ANNOTATION_TAG_ROUTING] == "true"


def test_a_candidate_that_fails_requests_is_rolled_back(cluster, kube_double):
    kube_double.kserve.answer(CANDIDATE, lambda instances: 500)
    report = gr.gated_rollout(NAME, f"{MODEL}:2.0.0", GATE, cluster["x_test"],
                              cluster["y_test"], replay=cluster["live"], progress=False)
    assert report.decision == gr.ROLLED_BACK, report.to_markdown()
    errors = next(c for c in report.live.checks if c.name == "error_rate")
    assert not errors.passed and errors.measured == 1.0
    assert report.window["mirrored"] == 0 and report.window["stable_errors"] == 0
    assert _traffic() == {STABLE: 100}
    assert list_aliases(MODEL) == {"champion": "1.0.0"}


def test_a_better_candidate_is_promoted_and_the_alias_moves(cluster, kube_double):
    report = gr.gated_rollout(NAME, f"{MODEL}:2.0.0", GATE, cluster["x_test"],
                              cluster["y_test"], replay=cluster["live"], progress=False)
    assert report.decision == gr.PROMOTED, report.to_markdown()
    assert report.alias_moved and list_aliases(MODEL) == {"champion": "2.0.0"}
    assert report.window["agreed"] / report.window["mirrored"] >= 0.9
    assert _traffic() == {CANDIDATE: 100}
    assert report.decision_seconds is not None and report.decision_seconds > 0


def test_without_rows_or_tag_urls_the_error_says_what_is_missing(cluster, kube_double):
    with pytest.raises(ServingError, match="counts its own mirrored requests"):
        gr.gated_rollout(NAME, f"{MODEL}:2.0.0", GATE, cluster["x_test"], cluster["y_test"],
                         progress=False)
    assert _traffic() == {STABLE: 100}  # refused before the canary
    # A canary rolled out by hand, without tag routing: its targets have no url.
    from kfp_serve.serving import delivery
    from kfp_serve.serving.cluster_live import TagMirrorSource

    delivery.rollout(NAME, f"{MODEL}:2.0.0", canary=20, timeout=20)
    with pytest.raises(ServingError, match=r"traffic\[tag=prev\] has no url.*enable-tag-routing"):
        TagMirrorSource(NAME, None, cluster["live"]).start()
