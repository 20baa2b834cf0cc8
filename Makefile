# Everything runs from a venv this Makefile creates; a fresh machine needs only python3.11 and make.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# ml-metadata 1.17.1 pins protobuf<5 but works with the protobuf 6 that kfp and kserve need:
# install it last and without its dependencies (DESIGN.md, "ML Metadata").
MLMD := ml-metadata==1.17.1
# Elyra 4.1 (the visual editor whose own parser checks our palette files) would downgrade click
# and packaging in the main venv, so it gets a venv of its own.
ELYRA_VENV := .venv-elyra
ELYRA_STAMP := $(ELYRA_VENV)/.installed-stamp
# MLServer 1.7, the peer the serving benchmark measures against, in its own venv as well.
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed-stamp

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "kfp-serve needs $(PYTHON) on PATH"; exit 1; }
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
bench: install $(MLSERVER_STAMP)
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || true
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) $(ELYRA_VENV) $(MLSERVER_VENV) build *.egg-info
