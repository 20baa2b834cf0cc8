"""`kfp-serve run sklearn-multi --new-version`: the slices' models share one version."""

from __future__ import annotations

from kfp_serve.cli.pipeline_commands import bump_versions
from kfp_serve.pipelines import PIPELINES


def _record(name: str, version: str) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kfp_serve.artifacts import Model

    x, y = load_iris(return_X_y=True)
    Model(model=LogisticRegression(max_iter=200).fit(x, y), name=name,
          version=version).submit_artifact()


def test_new_version_goes_past_the_newest_slice_model():
    pipeline = PIPELINES["sklearn-multi"]
    slices = [{"model": "bump-a", "slice": 0, "slices": 2},
              {"model": "bump-b", "slice": 1, "slices": 2}]
    assert bump_versions(pipeline, {"slices": slices}) == {"slices": slices}  # none recorded
    _record("bump-a", "1.0.9")
    _record("bump-b", "1.0.10")
    assert bump_versions(pipeline, {"slices": slices})["model_version"] == "1.0.11"
