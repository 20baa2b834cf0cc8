"""Records made inside a KFP run attach to the run's ``system.PipelineRun`` context, made first
the way KFP's launcher makes it, so that KFP's own views (which list a run's artifacts and
executions by that context) show them."""

from __future__ import annotations

import pytest

from kfp_serve import artifacts
from kfp_serve.artifacts import Model, Transformer
from kfp_serve.artifacts.mlmd import (
    DEPLOY_EXECUTION,
    KFP_PIPELINE_TYPE,
    KFP_RUN_TYPE,
    SNAPSHOT_EXECUTION,
    SUBMIT_EXECUTION,
    metadata_store,
)

pytestmark = pytest.mark.every_store

RUN_ID = "5f0c3a52-8d4e-4c0b-9a61-2b7d1e6f9a10"  # KFP run ids are UUIDs


def launcher_contexts(raw, pb, pipeline: str, run_id: str) -> tuple[int, int]:
    """What KFP's launcher does before a step starts: schemaless context types, a pipeline
    context, and the run context named by the run id (its details as custom properties),
    child of the pipeline context."""
    pipeline_type = raw.put_context_type(pb.ContextType(name=KFP_PIPELINE_TYPE))
    run_type = raw.put_context_type(pb.ContextType(name=KFP_RUN_TYPE))
    run = pb.Context(type_id=run_type, name=run_id)
    for key, value in {
        "namespace": "kubeflow-user",
        "resource_name": f"iris-pipeline-{run_id[:5]}",
        "pipeline_root": f"minio://mlpipeline/v2/artifacts/iris-pipeline/{run_id}",
        "store_session_info": "{}",
    }.items():
        run.custom_properties[key].string_value = value
    pipeline_id, run_ctx_id = raw.put_contexts(
        [pb.Context(type_id=pipeline_type, name=pipeline), run]
    )
    raw.put_parent_contexts([pb.ParentContext(child_id=run_ctx_id, parent_id=pipeline_id)])
    return pipeline_id, run_ctx_id


def test_records_inside_a_kfp_run_attach_to_its_pipeline_run_context(
    home, classifier, scaler, monkeypatch
):
    store = metadata_store()
    _, run_ctx = launcher_contexts(store.raw, store.pb, "iris-pipeline", RUN_ID)
    monkeypatch.setenv("KFP_RUN_ID", RUN_ID)

    tid = Transformer(name="scaler", transformer=scaler).submit_artifact()
    mid = Model(model=classifier, name="iris").submit_artifact(inputs=[tid])
    snap = artifacts.snapshot_artifact(mid)
    artifacts.record_deployment("iris", "kubeflow-user", mid, tid, "http://iris.example")

    # What KFP's run view asks MLMD for: the run context's artifacts and executions.
    listed = {a.id: a for a in store.raw.get_artifacts_by_context(run_ctx)}
    assert {mid, tid} <= set(listed)
    assert snap.uri in {a.uri for a in listed.values()}
    executed = [x.type for x in store.raw.get_executions_by_context(run_ctx)]
    assert sorted(executed) == sorted(
        [SUBMIT_EXECUTION, SUBMIT_EXECUTION, SNAPSHOT_EXECUTION, DEPLOY_EXECUTION]
    )
    # The launcher's context is used, not copied: still one, with its own properties.
    [run] = [c for c in store.raw.get_contexts_by_type(KFP_RUN_TYPE)]
    assert run.id == run_ctx and run.name == RUN_ID
    assert run.custom_properties["namespace"].string_value == "kubeflow-user"
    # kfp-serve's own run context carries the same run id.
    assert artifacts.lineage(mid)["run"] == RUN_ID


def test_records_outside_kfp_never_create_kfp_contexts(home, classifier):
    Model(model=classifier, name="iris").submit_artifact()
    store = metadata_store()
    assert KFP_RUN_TYPE not in {t.name for t in store.raw.get_context_types()}
