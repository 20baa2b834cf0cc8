# The image every kfp-serve component, palette entry point and transformer runs in
# (KFP_SERVE_IMAGE). Build: docker build -t <registry>/kfp-serve:0.1.0 .
FROM python:3.11-slim

# libgomp: the OpenMP runtime xgboost's and scikit-learn's wheels load at import time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/kfp-serve
COPY pyproject.toml README.md ./
COPY artifacts ./artifacts
COPY serving ./serving
COPY components ./components
COPY pipelines ./pipelines
COPY kale_steps ./kale_steps
COPY kfp_serve ./kfp_serve

# ml-metadata 1.17.1 pins protobuf<5 but works with the protobuf 6 kfp and kserve need:
# install it last and without its dependencies, exactly as the Makefile does.
RUN pip install ".[kale]" \
    && pip install --no-deps ml-metadata==1.17.1 \
    && python -c "import kfp_serve.components, kfp_serve.serving, kfp_serve.artifacts, ml_metadata, kfp, kserve, blake3"

# Root, as KFP v2 expects: its launcher materialises artifacts under /minio, /s3, /gcs.
ENV KFP_SERVE_HOME=/var/lib/kfp-serve
WORKDIR /var/lib/kfp-serve
