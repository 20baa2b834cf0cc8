"""Every label, annotation and environment name kfp-serve writes, named once."""

DOMAIN = "kfp-serve.kubeflow.org"

LABEL_MODEL_ID = f"{DOMAIN}/model-id"
LABEL_MODEL_VERSION = f"{DOMAIN}/model-version"
LABEL_MODEL_NAME = f"{DOMAIN}/model-name"
#: The alias a model was served through (``serve("iris@champion")``), absent otherwise.
LABEL_MODEL_ALIAS = f"{DOMAIN}/model-alias"
LABEL_TRANSFORMER_ID = f"{DOMAIN}/transformer-id"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kfp-serve"

ANNOTATION_SERVE_CONFIG = f"{DOMAIN}/serve-config"
ANNOTATION_MODEL_SNAPSHOT = f"{DOMAIN}/model-snapshot"
ANNOTATION_TRANSFORMER_SNAPSHOT = f"{DOMAIN}/transformer-snapshot"
# KServe's own annotation selecting raw Deployment vs Knative (serverless) mode.
ANNOTATION_DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"

IMAGE_ENV = "KFP_SERVE_IMAGE"
DEFAULT_IMAGE = "ghcr.io/kubeflow/kfp-serve:0.1.0"
# The KServe release the cluster runs ("0.15" ... "master"); unset: check every supported one.
KSERVE_VERSION_ENV = "KFP_SERVE_KSERVE_VERSION"

#: The model server answers with class probabilities (``predict_proba``) when this is "true".
PREDICT_PROBA_ENV = "PREDICT_PROBA"
