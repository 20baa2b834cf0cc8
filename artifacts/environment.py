"""Facts about where kfp-serve runs, shared by the artifacts and serving layers."""

import os
from pathlib import Path

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def running_in_pod() -> bool:
    """True inside a Kubernetes pod (a KFP step or a notebook server on the cluster)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and SERVICE_ACCOUNT_DIR.is_dir()


def pod_namespace() -> str | None:
    """The namespace of the pod's service account, or None outside a pod."""
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or None
    except OSError:
        return None
