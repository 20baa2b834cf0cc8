# The image every kfp-serve component, palette entry point and transformer runs in
# (KFP_SERVE_IMAGE). Build it with `make image` (IMAGE=, BASE_IMAGE=): the build context is the
# wheelhouse image/wheelhouse.py fills on the host with the venv's exact versions, so nothing here
# touches the network and nothing is pip-installed when a step runs.
ARG BASE_IMAGE=python:3.11-slim

# --- build: a venv filled from the wheelhouse; the wheels never reach the final image ---------
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
COPY . /wheels
# A venv, not the base's site-packages: the same path and layout on python:3.11-slim and on the
# Debian base (whose python3 is Debian's, with Debian's own packages beside it).
RUN python3 -m venv /opt/kfp-serve \
    && /opt/kfp-serve/bin/pip install --no-index --find-links /wheels \
        --constraint /wheels/constraints.txt "kfp-serve[kale]" \
    # ml-metadata pins protobuf<5 but works with the protobuf 6 kfp and kserve need, and
    # kserve-storage (what KServe's storage initializer runs) loads its cloud SDKs lazily:
    # both go in last, without their dependencies, exactly as the Makefile does.
    && /opt/kfp-serve/bin/pip install --no-index --find-links /wheels --no-deps \
        --requirement /wheels/no-deps.txt \
    # Nothing broken but what those two --no-deps installs knowingly leave out.
    && ! /opt/kfp-serve/bin/pip check \
        | grep -v -e '^No broken' -e '^ml-metadata ' -e '^kserve-storage '

# --- the image -----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# The name this image is built as (make image IMAGE=...): a step that creates containers (a
# transformer's, the Docker backend's) gives them this image, not the default name.
ARG IMAGE=ghcr.io/kubeflow/kfp-serve:0.1.0
# libgomp: the OpenMP runtime xgboost's and scikit-learn's wheels load at import time. The Debian
# base has it already; python:3.11-slim gets it from apt (the one step that needs a mirror).
RUN ldconfig -p | grep -q 'libgomp\.so\.1' \
    || { apt-get update && apt-get install -y --no-install-recommends libgomp1 \
         && rm -rf /var/lib/apt/lists/*; }
COPY --from=build /opt/kfp-serve /opt/kfp-serve
# What was pinned, and which pins were changed for this base's Python (image/wheelhouse.py).
COPY --from=build /wheels/constraints.txt /wheels/image-overrides.txt /opt/kfp-serve/
ENV KFP_SERVE_IMAGE=${IMAGE} \
    PATH=/opt/kfp-serve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KFP_SERVE_HOME=/var/lib/kfp-serve

# The build's check: the CLI, every layer's imports, and one component's entry point.
RUN python -c "import kfp_serve; print('kfp-serve', kfp_serve.__version__)" \
    && python -c "import kfp_serve.artifacts, kfp_serve.serving, kfp_serve.components, \
kfp_serve.pipelines, kfp_serve.kale_steps, kfp_serve.serving.runtime, ml_metadata, kfp, kserve, \
kserve_storage, blake3, kale" \
    && kfp-serve --help >/dev/null \
    && python -m kfp_serve.components.entry --help >/dev/null

# Root, as KFP v2 expects: its launcher materialises artifacts under /minio, /s3, /gcs.
WORKDIR /var/lib/kfp-serve
