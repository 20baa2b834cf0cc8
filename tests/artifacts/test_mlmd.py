"""Submitting to a real MLMD store, once over SQLite and once over gRPC: records, lookup,
duplicates, lineage."""

from __future__ import annotations

import pytest

from kfp_serve import artifacts
from kfp_serve.artifacts import MetadataError, Model, Transformer
from kfp_serve.artifacts.mlmd import current_run, metadata_store

pytestmark = pytest.mark.every_store


def test_submit_and_read_back_every_property(home, classifier):
    model_id = Model(
        model=classifier,
        name="iris",
        version="1.0.0",
        description="logistic regression",
        author="ada",
        tags={"stage": "dev"},
    ).submit_artifact()
    rec = artifacts.get_artifact(model_id)
    assert (rec.id, rec.kind, rec.name, rec.version) == (model_id, "model", "iris", "1.0.0")
    assert (rec.author, rec.description, rec.tags) == (
        "ada",
        "logistic regression",
        {"stage": "dev"},
    )
    assert rec.framework == "sklearn" and rec.framework_version
    assert rec.signature["n_features"] == 4 and rec.signature["classes"] == [0, 1, 2]
    assert rec.snapshot_uri is None and rec.digest is None
    assert rec.uri == str(home / "artifacts" / "model" / "iris" / "1.0.0")
    assert (home / "mlmd.sqlite").is_file()
    assert artifacts.layout.read_metadata(rec.uri)["name"] == "iris"


def test_same_version_twice_is_refused_unless_allowed(home, classifier, iris):
    from sklearn.tree import DecisionTreeClassifier

    first = Model(model=classifier, name="iris").submit_artifact()
    with pytest.raises(
        MetadataError, match=r"'iris' version '1.0.0' already exists.*allow_overwrite"
    ):
        Model(model=classifier, name="iris").submit_artifact()
    # Idempotent re-run: identical content under the same version returns the same id.
    assert Model(model=classifier, name="iris").submit_artifact(allow_existing=True) == first
    other = DecisionTreeClassifier().fit(*iris)
    with pytest.raises(MetadataError, match="different content"):
        Model(model=other, name="iris").submit_artifact(allow_existing=True)
    # An explicit overwrite replaces content and properties under the same id.
    again = Model(model=other, name="iris", description="v2").submit_artifact(allow_overwrite=True)
    assert again == first
    assert artifacts.get_artifact(first).description == "v2"
    assert len(artifacts.list_artifacts()) == 1


@pytest.mark.parametrize(
    ("versions", "latest"),
    [
        (["1.0.0", "1.2.0", "1.10.0"], "1.10.0"),
        (["1.10.0", "1.9.0"], "1.10.0"),
        (["2.0.0-rc1", "2.0.0"], "2.0.0"),
        (["2.0.0", "2.0.0-rc1"], "2.0.0"),
        (["v1", "v2"], "v2"),
    ],
)
def test_find_latest_version(home, classifier, versions, latest):
    for v in versions:
        Model(model=classifier, name="iris", version=v).submit_artifact()
    assert artifacts.find_artifact("iris").version == latest
    assert artifacts.find_artifact("iris", versions[0]).version == versions[0]


def test_find_and_list(home, classifier, scaler):
    mid = Model(model=classifier, name="iris").submit_artifact()
    tid = Transformer(name="scaler", transformer=scaler).submit_artifact()
    Transformer(name="iris", transformer=scaler).submit_artifact()
    assert [r.id for r in artifacts.list_artifacts()] == sorted([mid, tid, tid + 1])
    assert [r.name for r in artifacts.list_artifacts(kind="transformer")] == ["scaler", "iris"]
    assert artifacts.find_artifact("scaler").id == tid
    with pytest.raises(MetadataError, match="kind='model'"):
        artifacts.find_artifact("iris")
    assert artifacts.find_artifact("iris", kind="model").id == mid
    with pytest.raises(MetadataError, match=r"no model or transformer named 'nope'.*iris"):
        artifacts.find_artifact("nope")
    assert artifacts.find_artifact("nope", missing_ok=True) is None
    with pytest.raises(MetadataError, match="not one of"):
        artifacts.list_artifacts(kind="dataset")


def test_get_unknown_id_names_it(home, classifier):
    Model(model=classifier, name="iris").submit_artifact()
    with pytest.raises(MetadataError, match="no artifact with id 999"):
        artifacts.get_artifact(999)


def test_lineage_run_experiment_inputs_snapshots_deployments(home, classifier, scaler, monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "run-42")
    monkeypatch.setenv("KFP_SERVE_EXPERIMENT", "iris-exp")
    tid = Transformer(name="scaler", transformer=scaler).submit_artifact()
    mid = Model(model=classifier, name="iris").submit_artifact(inputs=[tid])
    snap = artifacts.snapshot_artifact(mid)
    dep = artifacts.record_deployment("iris", "team-a", mid, tid, "http://127.0.0.1:9/v1")

    graph = artifacts.lineage(mid)
    assert graph["artifact"]["id"] == mid
    assert graph["produced_by"]["step"] == "submit_artifact"
    assert (graph["run"], graph["experiment"]) == ("run-42", "iris-exp")
    assert [i["id"] for i in graph["inputs"]] == [tid]
    assert [(s["uri"], s["digest"]) for s in graph["snapshots"]] == [(snap.uri, snap.digest)]
    [d] = graph["deployments"]
    assert (d["execution_id"], d["endpoint"], d["namespace"], d["transformer_id"]) == (
        dep,
        "iris",
        "team-a",
        tid,
    )
    # The transformer sees the same deployment, and its snapshot list is empty.
    assert [d["endpoint"] for d in artifacts.lineage(tid)["deployments"]] == ["iris"]
    rec = artifacts.get_artifact(mid)
    assert (rec.snapshot_uri, rec.digest) == (snap.uri, snap.digest)


def test_local_run_is_per_process_and_default_experiment(home, classifier):
    run = current_run()
    assert run.experiment == "default" and run.source == "local"
    mid = Model(model=classifier, name="iris").submit_artifact()
    assert artifacts.lineage(mid)["run"] == run.run_id


def test_run_and_experiment_contexts_keep_their_properties_across_writes(home, classifier):
    """Every write attaches the run's contexts; MLMD upserts them, so they must go whole."""
    run = current_run()
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        Model(model=classifier, name="iris", version=version).submit_artifact()
    raw = metadata_store().raw
    ctx = raw.get_context_by_type_and_name("kfp_serve.PipelineRun", run.run_id)
    props = {k: v.string_value for k, v in ctx.properties.items()}
    assert props == {"run_id": run.run_id, "experiment": "default", "source": "local"}
    ctx = raw.get_context_by_type_and_name("kfp_serve.Experiment", "default")
    assert ctx.properties["experiment"].string_value == "default"


def test_link_snapshot_keeps_every_property(home, classifier):
    mid = Model(model=classifier, name="iris", tags={"a": "b"}, author="ada").submit_artifact()
    before = artifacts.get_artifact(mid)
    snap = artifacts.SnapshotStore().snapshot(before.uri)
    artifacts.link_snapshot(mid, snap)
    after = artifacts.get_artifact(mid)
    assert after.snapshot_uri == snap.uri
    assert (after.tags, after.author, after.signature, after.uri) == (
        before.tags,
        before.author,
        before.signature,
        before.uri,
    )


def test_put_execution_guard_never_wipes_an_artifact(home, classifier):
    """MLMD upserts what put_execution is given; the store wrapper completes partial artifacts."""
    mid = Model(model=classifier, name="iris", author="ada").submit_artifact()
    store = metadata_store()
    pb = store.pb
    execution = pb.Execution(type_id=store.type_id("kfp_serve.Deploy"))
    partial = pb.Artifact(id=mid)  # id only: raw MLMD would clear uri and properties
    with store.write():
        store.put_execution(execution, [(partial, pb.Event(type=pb.Event.INPUT))], [])
    rec = artifacts.get_artifact(mid)
    assert rec.author == "ada" and rec.uri.endswith("1.0.0") and rec.signature
