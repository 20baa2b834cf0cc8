"""The multi-model components' functions: slices, the serve_many and smoke_many steps."""

from __future__ import annotations

import pytest

from kfp_serve.components import ops
from kfp_serve.errors import InputError
from kfp_serve.serving.errors import ServingError


def _slices(*entries):
    return [{"model": m, "slice": i, "slices": n} for m, i, n in entries]


def test_slices_parse_from_json_or_a_list():
    text = ('[{"model": "east", "slice": 0, "slices": 2}, '
            '{"model": "west", "slice": 1, "slices": 2}]')
    assert ops.parse_slices(text) == [ops.DataSlice("east", 0, 2), ops.DataSlice("west", 1, 2)]
    # KFP hands JSON numbers over as floats.
    assert ops.parse_slices([{"model": "one", "slice": 0.0, "slices": 1.0}]) == [
        ops.DataSlice("one", 0, 1)]


@pytest.mark.parametrize(("value", "message"), [
    pytest.param([], "non-empty list", id="empty"),
    pytest.param("[oops", "must be a JSON list", id="json"),
    pytest.param([{"model": "a", "slice": 0}], r"slices\[0\] must have exactly the keys",
                 id="keys"),
    pytest.param(_slices(("Bad_Name", 0, 1)), r"slices\[0\].model 'Bad_Name'", id="name"),
    pytest.param(_slices(("a", 2, 2), ("b", 1, 2)), r"slices\[0\]: slice must be", id="range"),
    pytest.param(_slices(("a", 0, 2), ("a", 1, 2)), "its own name", id="twice"),
    pytest.param(_slices(("a", 0, 3), ("b", 1, 3)), "cover slice 0 to slices - 1", id="gap"),
    pytest.param(_slices(("a", 0, 2), ("b", 1, 3)), "one value of slices", id="mixed"),
])
def test_bad_slices_name_the_entry(value, message):
    with pytest.raises((InputError, ValueError), match=message):
        ops.parse_slices(value)


def test_validate_checks_the_slices_before_anything_runs():
    with pytest.raises(InputError, match="its own name"):
        ops.validate_run(names={}, versions={"model_version": "1.0.0"},
                         slices=_slices(("a", 0, 2), ("a", 1, 2)))
    assert ops.validate_run(names={}, versions={"model_version": "1.0.0"},
                            slices=_slices(("a", 0, 2), ("b", 1, 2))) == "{}"


def test_on_a_cluster_validate_wants_a_store_trained_models_can_load(monkeypatch):
    from kfp_serve.components import get_component
    from kfp_serve.serving.errors import ServeConfigError

    validate = get_component("validate").python_func
    slices = _slices(("a", 0, 1))
    monkeypatch.setenv("KFP_SERVE_BACKEND", "kubernetes")
    monkeypatch.delenv("KFP_SERVE_SNAPSHOT_STORE", raising=False)
    with pytest.raises(ServeConfigError, match="snapshot_store: 'file://.*s3://, gs://"):
        validate(model_version="1.0.0", slices=slices)
    validate(model_version="1.0.0", slices=slices, snapshot_store="s3://models/snapshots")
    validate(model_version="1.0.0")  # one model: an InferenceService loads pvc:// too
    monkeypatch.setenv("KFP_SERVE_BACKEND", "local")  # locally file:// is fine
    validate(model_version="1.0.0", slices=slices)


def test_serve_many_needs_ids():
    with pytest.raises(InputError, match="at least one MLMD model id"):
        ops.serve_many([], name="regions")
    with pytest.raises(InputError, match=r"model_ids\[1\] must be a positive MLMD id"):
        ops.serve_many([1, 0], name="regions")


def test_smoke_many_pairs_ids_with_samples():
    with pytest.raises(InputError, match="2 ids and 1 samples files"):
        ops.smoke_many("regions", [1, 2], ["s.json"])


def test_serve_many_and_smoke_many_on_a_local_endpoint(kfp_home, tmp_path):
    """Two slices' models behind one local endpoint; a third that does not fit is refused."""
    from kfp_serve.artifacts.training import train_model

    ids, samples = [], []
    for i, name in enumerate(("east", "west")):
        model_dir, samples_path = tmp_path / name, tmp_path / f"{name}.json"
        train_model(model_dir=model_dir, samples_path=samples_path, preprocessing="none",
                    data_slice=i, data_slices=2)
        saved = tmp_path / f"{name}-saved"
        ids.append(ops.submit(ops.MODEL, model_dir, saved, name=name, version="1.0.0"))
        samples.append(str(samples_path))
    served = ops.serve_many(ids, name="regions", serve_config='{"limits": {"memory": "1Gi"}}',
                            memory='{"east": "100Mi", "west": "200Mi"}', timeout=120)
    assert served.name == "regions" and served.url.startswith("http://127.0.0.1:")
    assert served.models == ["east", "west"]
    assert [(m["name"], m["memory"], m["ready"]) for m in served.manifest["models"]] == [
        ("east", "100Mi", True), ("west", "200Mi", True)]
    results = ops.smoke_many("regions", ids, samples, deadline=60)
    assert [(name, r.verdict, r.endpoint) for name, r in results] == [
        ("east", "blessed", "regions/east"), ("west", "blessed", "regions/west")]
    # Asked with the other model's samples, a model disagrees: the pairing is what is tested.
    swapped = ops.smoke_many("regions", ids, samples[::-1], deadline=5)
    assert any(r.verdict == "mismatch" for _, r in swapped)
    with pytest.raises(ServingError, match="refused"):
        ops.serve_many(ids[:1], name="small", serve_config='{"limits": {"memory": "64Mi"}}',
                       memory="100Mi", timeout=60)
