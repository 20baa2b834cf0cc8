"""Upload a compiled pipeline to a Kubeflow Pipelines cluster (``kfp-serve upload``).

Uploading a pipeline that already exists adds a new version instead of failing, so running the
command again after a change is the normal way to publish it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines import ClusterOptions, compile_pipeline, get_pipeline


def upload_pipeline(
    name: str,
    *,
    host: str,
    namespace: str | None = None,
    options: ClusterOptions | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Compile pipeline ``name`` and upload it (a new version when it already exists).

    Args:
        name: A key of ``pipelines.PIPELINES``.
        host: The KFP API endpoint, e.g. ``http://localhost:8080``.
        namespace: The Kubeflow profile namespace (multi-user installs).
        options: Kubernetes additions (S3 secret, snapshot PVC) to compile in.
        version: The version name; default ``<pipeline>-<UTC timestamp>``.

    Returns:
        {"name": pipeline display name, "version": version name, "id": pipeline id,
        "version_id": version id}.
    """
    import kfp

    display_name = get_pipeline(name, options).name
    version = version or f"{display_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    client = kfp.Client(host=host, namespace=namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", options)
        pipeline_id = client.get_pipeline_id(display_name)
        if pipeline_id is None:
            created = client.upload_pipeline(
                str(package), pipeline_name=display_name, namespace=namespace
            )
            pipeline_id = created.pipeline_id
            # The first upload also creates a first version; add ours as a named one so every
            # upload, first or not, is findable by the version name this returns.
        uploaded = client.upload_pipeline_version(
            str(package), pipeline_version_name=version, pipeline_id=pipeline_id
        )
    return {"name": display_name, "version": version, "id": pipeline_id,
            "version_id": getattr(uploaded, "pipeline_version_id", None)}
