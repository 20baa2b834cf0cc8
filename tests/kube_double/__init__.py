"""A Kubernetes API double for tests and benchmarks (see server.py).

    with KubeDouble() as double:
        double.kserve.program("iris", delay=0.2)          # or outcome="fail", reason=..., ...
        double.trained_models.program(delay=0.1)          # the TrainedModel controller
        double.faults.add(verb="patch", status=403)
        kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig", namespace="team-a")
"""

from tests.kube_double.controllers import (
    IsvcBehavior,
    RecordedCall,
    SnapshotBehavior,
    TrainedModelBehavior,
)
from tests.kube_double.faults import Fault, FaultPlan
from tests.kube_double.server import KubeDouble
from tests.kube_double.store import (
    ISVC,
    PVC,
    TRAINED_MODEL,
    VOLUME_SNAPSHOT,
    ApiError,
    Resource,
    merge_patch,
)

__all__ = [
    "ISVC",
    "PVC",
    "TRAINED_MODEL",
    "VOLUME_SNAPSHOT",
    "ApiError",
    "Fault",
    "FaultPlan",
    "IsvcBehavior",
    "KubeDouble",
    "RecordedCall",
    "Resource",
    "SnapshotBehavior",
    "TrainedModelBehavior",
    "merge_patch",
]
