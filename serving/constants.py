"""Every label, annotation and environment name kfp-serve writes, named once."""

# Below the serving layer, so that snapshots use the same keys: named there, used from here.
from kfp_serve.artifacts.kube import DOMAIN as DOMAIN
from kfp_serve.artifacts.kube import LABEL_MANAGED_BY as LABEL_MANAGED_BY
from kfp_serve.artifacts.kube import MANAGED_BY as MANAGED_BY

LABEL_MODEL_ID = f"{DOMAIN}/model-id"
LABEL_MODEL_VERSION = f"{DOMAIN}/model-version"
LABEL_MODEL_NAME = f"{DOMAIN}/model-name"
#: The alias a model was served through (``serve("iris@champion")``), absent otherwise.
LABEL_MODEL_ALIAS = f"{DOMAIN}/model-alias"
LABEL_TRANSFORMER_ID = f"{DOMAIN}/transformer-id"

ANNOTATION_SERVE_CONFIG = f"{DOMAIN}/serve-config"
ANNOTATION_MODEL_SNAPSHOT = f"{DOMAIN}/model-snapshot"
ANNOTATION_TRANSFORMER_SNAPSHOT = f"{DOMAIN}/transformer-snapshot"
# KServe's own annotation selecting raw Deployment vs Knative (serverless) mode.
ANNOTATION_DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"

IMAGE_ENV = "KFP_SERVE_IMAGE"
DEFAULT_IMAGE = "ghcr.io/kubeflow/kfp-serve:0.1.0"
#: Docker backend: "kfp-serve" runs KServe's stock runtimes (kserve-sklearnserver, ...) with
#: kfp-serve's runtime, whose answers match theirs, where the stock images cannot be pulled.
DOCKER_STOCK_RUNTIME_ENV = "KFP_SERVE_DOCKER_STOCK_RUNTIME"
# The KServe release the cluster runs ("0.15" ... "master"); unset: check every supported one.
KSERVE_VERSION_ENV = "KFP_SERVE_KSERVE_VERSION"

#: The model server answers with class probabilities (``predict_proba``) when this is "true".
PREDICT_PROBA_ENV = "PREDICT_PROBA"
#: A request asks for probabilities (true) or labels (false) with this key, whatever the
#: server's default: a field of the v1 body, a ``parameters`` entry of a v2 request. The
#: kfp-serve runtime reads it; KServe's stock runtimes ignore it.
PREDICT_PROBA_PARAM = "predict_proba"

#: The two components of an InferenceService (the keys of ServeConfig and of ``spec``).
PREDICTOR = "predictor"
TRANSFORMER = "transformer"

#: KServe's variable telling a custom predictor container which protocol it serves.
PROTOCOL_ENV = "PROTOCOL"
#: KServe runs the storage initializer for a custom container that sets this variable; the
#: local backend reads a transformer's artifact from it.
STORAGE_URI_ENV = "STORAGE_URI"
#: The address a kfp-serve model server binds when no ``--http_host`` is given.
HTTP_HOST_ENV = "KFP_SERVE_HTTP_HOST"

#: Local serving binds this address only: nothing a local endpoint runs is reachable from
#: another machine.
LOOPBACK = "127.0.0.1"
#: The kfp-serve server flag for its second HTTP listener, a unix socket: the router's way in
#: (about half the CPU of a loopback TCP hop for both sides). Abstract names ("@...") live in
#: the network namespace, which host-network containers share with the router.
UNIX_SOCKET_FLAG = "--http_unix_socket"
#: Backlog of a router's listening sockets (bursts of new keep-alive clients).
ROUTER_BACKLOG = 1024

#: Modules run with ``python -m``: the model servers, the router of a local endpoint, and the
#: payload-logging agent a model server starts beside itself.
PREDICTOR_MODULE = "kfp_serve.serving.runtime.predictor"
TRANSFORMER_MODULE = "kfp_serve.serving.runtime.transformer"
ROUTER_MODULE = "kfp_serve.serving.backends.local.router"
PAYLOAD_AGENT_MODULE = "kfp_serve.serving.runtime.payload_agent"

#: Readiness path of a model server: 200 once its models are loaded, on v1 and v2 servers alike.
READY_PATH = "/v2/health/ready"
#: Status path of a local endpoint's router (its generation and in-flight requests).
ROUTER_STATUS_PATH = "/kfp-serve/router"

#: KServe's controller labels every TrainedModel with its parent InferenceService's name, and
#: with this one once the parent's memory has room for it (only those count as loaded).
LABEL_TM_PARENT = "inferenceservice"
LABEL_TM_ALLOCATED = "serving.kserve.io/trainedmodel-allocated"
#: A custom-container predictor is multi-model only when its first container sets this "true".
MULTI_MODEL_SERVER_ENV = "MULTI_MODEL_SERVER"

#: Why a model of a multi-model endpoint is not serving (TrainedModelStatus.reason, and the
#: ``reason`` of the model repository index): more memory than the server has left, a load
#: that failed (bad or tampered snapshot), a model of another framework than the server's.
REASON_MEMORY_UNAVAILABLE = "MemoryResourceUnavailable"
REASON_LOAD_FAILED = "LoadFailed"
REASON_FRAMEWORK_MISMATCH = "FrameworkNotSupported"
