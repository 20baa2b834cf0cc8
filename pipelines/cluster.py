"""What pipeline pods need on a cluster, applied with kfp-kubernetes at compile time.

Nothing here is applied by default, so the default pipelines compile (and run under kfp.local)
without a cluster. ``kfp-serve compile`` / :func:`kfp_serve.pipelines.compile_pipelines` take a
:class:`ClusterOptions` to add:

- the S3 credentials of the snapshot store, as environment variables from a Secret
  (``kfp.kubernetes.use_secret_as_env``), on the steps that read or write snapshots, and on
  the train step, which reads an ``s3://`` dataset with the same settings;
- a PVC mounted on the steps that take and serve ``pvc://`` snapshots
  (``kfp.kubernetes.mount_pvc``), with ``KFP_SERVE_PVC_MOUNT`` telling them where it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kfp_serve.artifacts.snapshots.pvc import DEFAULT_MOUNT, MOUNT_ENV

#: Secret key -> environment variable, the names boto3/s3fs read.
DEFAULT_S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}
#: The env var that tells the pvc:// snapshot store where its volume is mounted.
PVC_MOUNT_ENV = MOUNT_ENV
DEFAULT_PVC_MOUNT = DEFAULT_MOUNT


@dataclass(frozen=True)
class ClusterOptions:
    """Kubernetes additions to the pipeline pods (all off by default).

    Attributes:
        s3_secret: Name of a Secret holding S3 credentials for an ``s3://`` snapshot store.
        s3_secret_keys: Secret key -> environment variable to expose.
        snapshot_pvc: Name of the PVC that holds ``pvc://`` snapshots.
        pvc_mount_path: Where the PVC is mounted in the step pods.
    """

    s3_secret: str | None = None
    s3_secret_keys: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_S3_KEYS))
    snapshot_pvc: str | None = None
    pvc_mount_path: str = DEFAULT_PVC_MOUNT

    @property
    def enabled(self) -> bool:
        """True when any option changes the compiled pipeline."""
        return bool(self.s3_secret or self.snapshot_pvc)

    def apply(self, task: Any) -> Any:
        """Add the configured secrets and mounts to a task that touches snapshots."""
        if not self.enabled:
            return task
        from kfp import kubernetes  # only needed when an option is set

        self.apply_s3(task)
        if self.snapshot_pvc:
            kubernetes.mount_pvc(task, pvc_name=self.snapshot_pvc, mount_path=self.pvc_mount_path)
            task.set_env_variable(PVC_MOUNT_ENV, self.pvc_mount_path)
        return task

    def apply_s3(self, task: Any) -> Any:
        """Add the S3 credentials only (the train step reads ``s3://`` datasets with them)."""
        if self.s3_secret:
            from kfp import kubernetes

            kubernetes.use_secret_as_env(
                task, secret_name=self.s3_secret, secret_key_to_env=dict(self.s3_secret_keys)
            )
        return task
