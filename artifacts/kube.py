"""Kubernetes client configuration, shared by pvc:// snapshots and the Kubernetes backend.

In a pod the service account is used; elsewhere the kubeconfig (``$KUBECONFIG``, read at call
time: the client library freezes its own default when it is imported).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kfp_serve.artifacts.environment import pod_namespace, running_in_pod

#: The prefix of every label and annotation key kfp-serve writes on Kubernetes objects (here,
#: below both layers, so that snapshots and serving name it once).
DOMAIN = "kfp-serve.kubeflow.org"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kfp-serve"


def use_in_cluster(kubeconfig: str | None = None) -> bool:
    """True when the pod's service account, not a kubeconfig, configures the client."""
    return kubeconfig is None and running_in_pod()


def kubeconfig_path(kubeconfig: str | None = None) -> str:
    """The kubeconfig file to read: the explicit one, ``$KUBECONFIG``, or ``~/.kube/config``."""
    return kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def client_configuration(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A ``kubernetes.client.Configuration`` for this environment.

    Raises:
        kubernetes.config.ConfigException, OSError: no usable configuration; callers wrap it in
            their own error with the fix that fits them.
    """
    from kubernetes import client, config

    cfg = client.Configuration()
    if use_in_cluster(kubeconfig):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(
            config_file=kubeconfig_path(kubeconfig),
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )
    return cfg


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """The pod's namespace in a pod, else the kubeconfig context's (None when it names none).

    KServeClient ignores the context's namespace and falls back to "default": we do not.
    """
    if use_in_cluster(kubeconfig):
        return pod_namespace()
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(kubeconfig_path(kubeconfig))
    except (config.ConfigException, OSError):
        return None
    if context:
        active = next((c for c in contexts if c.get("name") == context), active)
    return ((active or {}).get("context") or {}).get("namespace")
