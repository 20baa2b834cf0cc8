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

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) $(ELYRA_VENV) build *.egg-info
