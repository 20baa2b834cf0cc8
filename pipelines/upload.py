"""Upload a compiled pipeline to a Kubeflow Pipelines cluster (``kfp-serve upload``).

Every upload adds exactly one pipeline version, named by ``version``; the pipeline itself is
created on the first upload. Running the command again after a change is therefore the normal
way to publish it, never an "already exists" error.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from kfp_serve.errors import KfpServeError
from kfp_serve.pipelines import PIPELINES, ClusterOptions, compile_pipeline, get_pipeline

_CONFLICT = 409


class UploadError(KfpServeError):
    """The KFP API could not be reached or refused the upload; the message says what to do."""


def upload_pipeline(
    name: str,
    *,
    host: str,
    namespace: str | None = None,
    options: ClusterOptions | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Compile pipeline ``name`` and upload it as a new version (creating the pipeline if new).

    Args:
        name: A key of ``kfp_serve.pipelines.PIPELINES``.
        host: The KFP API endpoint, e.g. ``http://localhost:8080``.
        namespace: The Kubeflow profile namespace (multi-user installs); the pipeline is looked
            up and created there.
        options: Kubernetes additions (S3 secret, snapshot PVC) to compile in.
        version: The version name; default ``<pipeline>-<UTC timestamp to the millisecond>``.

    Returns:
        {"name": pipeline display name, "version": version name, "id": pipeline id,
        "version_id": version id, "created": True when this upload created the pipeline}.

    Raises:
        ValueError: Unknown pipeline name.
        UploadError: The API is unreachable or refused a request (e.g. the version name is
            taken).
    """
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose one of {sorted(PIPELINES)}")
    display_name = get_pipeline(name, options).name
    version = version or default_version(display_name)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(name, Path(tmp) / f"{name}.yaml", options)
        try:
            return _upload(package, display_name, version, host=host, namespace=namespace)
        except KfpServeError:
            raise
        except Exception as e:  # noqa: BLE001 - client and transport errors, reworded below
            raise _upload_error(e, host) from e


def _upload(
    package: Path, display_name: str, version: str, *, host: str, namespace: str | None
) -> dict[str, Any]:
    import kfp
    import kfp_server_api

    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": noise on
        # every upload, and the API we call is v2beta1 anyway.
        warnings.filterwarnings("ignore", category=FutureWarning, module="kfp.client")
        client = kfp.Client(host=host, namespace=namespace)
    pipeline_id = find_pipeline_id(client, display_name, namespace)
    created = False
    if pipeline_id is None:
        try:
            # Create the pipeline without a version: the upload endpoint would add one named
            # after the pipeline, and every upload must add exactly the version it names.
            pipeline = client.pipelines.pipeline_service_create_pipeline(
                kfp_server_api.V2beta1Pipeline(display_name=display_name, namespace=namespace)
            )
            pipeline_id, created = pipeline.pipeline_id, True
        except kfp_server_api.ApiException as e:
            # Someone else created it between our lookup and our create: use theirs.
            if e.status != _CONFLICT:
                raise
            pipeline_id = find_pipeline_id(client, display_name, namespace)
            if pipeline_id is None:
                raise
    try:
        uploaded = client.upload_pipeline_version(
            str(package), pipeline_version_name=version, pipeline_id=pipeline_id
        )
    except kfp_server_api.ApiException as e:
        if created:
            # Leave no empty pipeline behind when its first version was refused.
            client.delete_pipeline(pipeline_id)
        if e.status == _CONFLICT:
            raise UploadError(
                f"pipeline {display_name!r} already has a version named {version!r}; choose "
                "another version name (or leave it out for a timestamped one)"
            ) from e
        raise
    return {"name": display_name, "version": version, "id": pipeline_id,
            "version_id": uploaded.pipeline_version_id, "created": created}


def default_version(display_name: str) -> str:
    """``<pipeline>-YYYYmmdd-HHMMSS-mmm`` (UTC): two uploads in one second still differ."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{display_name}-{stamp}-{int(now * 1000) % 1000:03d}"


def find_pipeline_id(client: Any, display_name: str, namespace: str | None) -> str | None:
    """The id of the pipeline called ``display_name`` in ``namespace`` (None: not there).

    ``kfp.Client.get_pipeline_id`` lists without a namespace, which on a multi-user install
    only sees shared pipelines: a namespaced pipeline would never be found again and every
    upload after the first would fail as a duplicate.
    """
    pipeline_filter = json.dumps({"predicates": [
        {"operation": "EQUALS", "key": "display_name", "stringValue": display_name}
    ]})
    result = client.list_pipelines(filter=pipeline_filter, namespace=namespace, page_size=2)
    pipelines = result.pipelines or []
    if len(pipelines) > 1:
        raise UploadError(
            f"{len(pipelines)} pipelines are called {display_name!r}"
            f"{f' in namespace {namespace!r}' if namespace else ''}; delete or rename the "
            "extra ones in the KFP UI"
        )
    return pipelines[0].pipeline_id if pipelines else None


def _upload_error(error: Exception, host: str) -> UploadError:
    """A one-line explanation of a kfp client or transport failure, with what to check."""
    import kfp_server_api

    if isinstance(error, kfp_server_api.ApiException):
        detail = _api_message(error)
        if error.status in (401, 403):
            hint = "check your credentials and that you may write to this namespace"
        elif error.status == 404:
            hint = "check that --host is the KFP API (it must serve /apis/v2beta1)"
        else:
            hint = "see the KFP API server log"
        return UploadError(
            f"the KFP API at {host} refused the upload (HTTP {error.status}: {detail}); {hint}"
        )
    reason = str(getattr(error, "reason", None) or error).splitlines()[0]
    return UploadError(
        f"cannot reach the KFP API at {host} ({type(error).__name__}: {reason}); check --host, "
        "e.g. `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and "
        "--host http://localhost:8080"
    )


def _api_message(error: Any) -> str:
    body = getattr(error, "body", None) or ""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body)[:200] or str(error.reason)
    if isinstance(data, dict):
        for key in ("error_message", "message", "error"):
            if data.get(key):
                return str(data[key])[:200]
    return json.dumps(data)[:200]
