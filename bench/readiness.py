"""Readiness latency: from the controller flipping Ready to the waiting client returning.

Against the Kubernetes API double (tests/kube_double) on 127.0.0.1, in the same run:

- ``KubernetesBackend.apply(wait=True)``: watches the InferenceService, so it returns as soon as
  the Ready event arrives;
- ``kserve.KServeClient.wait_isvc_ready`` with its default ``polling_interval`` (10 s): it
  sleeps, then polls. Ready is flipped at evenly spread phases of the polling interval, so the
  median is the latency a user sees on average (about half the interval).

The double's "ready time" is taken just before it writes the Ready status.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET_SECONDS = 0.2
KSERVE_POLLING_INTERVAL = 10  # KServeClient.wait_isvc_ready's default, reported as is


def _manifest(name: str) -> dict:
    from tests.kube_double.manifests import isvc_manifest

    return isvc_manifest(name)


def _ours(double, kubeconfig: Path, runs: int, delay: float) -> list[float]:
    from kfp_serve.serving.backends.kubernetes import KubernetesBackend

    backend = KubernetesBackend(kubeconfig=kubeconfig, progress=False, probe_timeout=0)
    backend.namespace  # noqa: B018 - configure the client outside the measurement
    latencies = []
    for i in range(runs):
        name = f"ours-{i}"
        double.kserve.program(name, delay=delay)
        backend.apply(_manifest(name), timeout=60)
        returned = time.perf_counter()
        latencies.append(returned - double.kserve.ready_times[("default", name, 1)])
    return latencies


def _kserve(double, kubeconfig: Path, phases: list[float]) -> list[float]:
    saved = sys.argv
    sys.argv = [saved[0]]  # importing kserve parses sys.argv (DESIGN.md): keep ours out of it
    try:
        from kserve import KServeClient
    finally:
        sys.argv = saved
    from kubernetes import client

    kserve = KServeClient(config_file=str(kubeconfig))
    custom = client.CustomObjectsApi(double.api_client())
    latencies = []
    for i, phase in enumerate(phases):
        name = f"kserve-{i}"
        double.kserve.program(name, outcome="manual")
        custom.create_namespaced_custom_object("serving.kserve.io", "v1beta1", "default",
                                               "inferenceservices", _manifest(name))
        flip = threading.Timer(phase, lambda n=name: double.kserve.set_ready(n, "default"))
        flip.start()
        kserve.wait_isvc_ready(name, namespace="default", timeout_seconds=60)
        returned = time.perf_counter()
        flip.join()
        latencies.append(returned - double.kserve.ready_times[("default", name, 1)])
    return latencies


def run(quick: bool) -> list[dict]:
    """Measure both clients; one figure (ours, with KServeClient as the reference)."""
    from tests.kube_double.server import KubeDouble

    ours_runs = 5 if quick else 15
    kserve_runs = 2 if quick else 3
    phases = [(i + 0.5) / kserve_runs * KSERVE_POLLING_INTERVAL for i in range(kserve_runs)]
    with KubeDouble(validate=False) as double, tempfile.TemporaryDirectory() as tmp:
        kubeconfig = double.write_kubeconfig(Path(tmp) / "kubeconfig")
        ours = _ours(double, kubeconfig, ours_runs, delay=0.3)
        theirs = _kserve(double, kubeconfig, phases)
    value = statistics.median(ours)
    reference = statistics.median(theirs)
    return [
        {
            "name": "Ready flip -> apply(wait=True) returns (vs KServeClient.wait_isvc_ready, "
            f"polling_interval={KSERVE_POLLING_INTERVAL}s)",
            "value": round(value, 4),
            "unit": "s",
            "reference": round(reference, 3),
            "ratio": round(value / reference, 5) if reference else None,
            "target": f"<= {TARGET_SECONDS} s",
            "passed": value <= TARGET_SECONDS,
            "runs": ours_runs,
            "spread": f"{min(ours):.4f}–{max(ours):.4f} s (KServeClient {min(theirs):.2f}–"
            f"{max(theirs):.2f} s over {kserve_runs} runs)",
        }
    ]


if __name__ == "__main__":
    for figure in run(quick="--quick" in sys.argv):
        print(figure)
