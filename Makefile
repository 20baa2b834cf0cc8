# Everything runs from a venv this Makefile creates; a fresh machine needs only python3.11 and make.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# ml-metadata 1.17.1 pins protobuf<5 but works with the protobuf 6 that kfp and kserve need:
# install it last and without its dependencies (DESIGN.md, "ML Metadata").
MLMD := ml-metadata==1.17.1
# What KServe's storage initializer runs; its cloud SDKs load lazily, so --no-deps as well.
KSERVE_STORAGE := kserve-storage==0.21.0
# Elyra 4.1 (the visual editor whose own parser checks our palette files) would downgrade click
# and packaging in the main venv, so it gets a venv of its own.
ELYRA_VENV := .venv-elyra
ELYRA_STAMP := $(ELYRA_VENV)/.installed-stamp
# MLServer 1.7, the peer the serving benchmark measures against, in its own venv as well.
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed-stamp

.PHONY: install test demo lint bench clean wheelhouse image base-image-debian

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null && $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null \
		|| { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		     && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv; } \
		|| { echo "kfp-serve needs $(PYTHON) with its venv module on PATH (Debian: apt-get install python3.11-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps $(MLMD)
	touch $(STAMP)

$(ELYRA_STAMP):
	$(PYTHON) -m venv $(ELYRA_VENV)
	$(ELYRA_VENV)/bin/python -m pip install --quiet 'elyra==4.1.*'
	touch $(ELYRA_STAMP)

test: install $(ELYRA_STAMP)
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/kfp-serve demo

lint: install
	$(VENV)/bin/ruff check .

$(MLSERVER_STAMP):
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet "mlserver==1.7.*" mlserver-sklearn mlserver-xgboost
	touch $(MLSERVER_STAMP)

# wrk (Debian) is the load generator; without it the benchmark falls back to an asyncio client.
# h2load (Debian's nghttp2-client) loads gRPC the way wrk loads REST.
bench: install $(MLSERVER_STAMP)
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || true
	command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; } || true
	$(PY) -m bench.run

# --- The image (KFP_SERVE_IMAGE) --------------------------------------------------------------
DOCKER ?= docker
# The name compiled YAML uses by default (serving/constants.py), so a local build serves it as is.
IMAGE ?= $(shell sed -n 's/^DEFAULT_IMAGE = "\(.*\)"$$/\1/p' serving/constants.py)
BASE_IMAGE ?= python:3.11-slim
# For machines without registry access: a base built from Debian packages (make base-image-debian).
DEBIAN_BASE ?= kfp-serve-base:bookworm
DEBIAN_SUITE ?= bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
WHEELHOUSE := build/wheelhouse

# The venv's versions, as wheels built on the host, for the base image's Python (image/wheelhouse.py).
wheelhouse: install
	@$(DOCKER) info >/dev/null 2>&1 || { echo "no Docker engine answers: start one with sudo bash .ci/docker-engine"; exit 1; }
	@$(DOCKER) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || $(DOCKER) pull $(BASE_IMAGE) || { \
		echo "base image $(BASE_IMAGE) is not here and cannot be pulled: make base-image-debian, then make image BASE_IMAGE=$(DEBIAN_BASE)"; exit 1; }
	$(PY) image/wheelhouse.py --out $(WHEELHOUSE) --no-deps $(MLMD) --no-deps $(KSERVE_STORAGE) \
		--python-version "$$($(DOCKER) run --rm --network host $(BASE_IMAGE) python3 -c 'import platform; print(platform.python_version())')"

# Installs from the wheelhouse only (--no-index); the wheels stay in the build stage, not in a layer.
image: wheelhouse
	$(DOCKER) build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg IMAGE=$(IMAGE) \
		-t $(IMAGE) -f Dockerfile $(WHEELHOUSE)
	@echo "built $(IMAGE) on $(BASE_IMAGE): $$($(DOCKER) image inspect -f '{{.Size}}' $(IMAGE) | awk '{printf "%.0f MB", $$1/1e6}')"

# debootstrap minbase + the Python and OpenMP runtime the image needs, imported as $(DEBIAN_BASE).
base-image-debian:
	@command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
	rm -rf build/rootfs
	debootstrap --variant=minbase --include=python3,python3-venv,libgomp1,ca-certificates \
		$(DEBIAN_SUITE) $(CURDIR)/build/rootfs $(DEBIAN_MIRROR)
	rm -rf build/rootfs/var/cache/apt/archives/*.deb build/rootfs/var/lib/apt/lists/*
	tar -C build/rootfs -c . | $(DOCKER) import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'CMD ["python3"]' - $(DEBIAN_BASE)
	rm -rf build/rootfs

clean:
	rm -rf $(VENV) $(ELYRA_VENV) $(MLSERVER_VENV) build *.egg-info
