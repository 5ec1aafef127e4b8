# The lab's commands. Every target sets up .venv/ first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CATALOG ?= auto

.PHONY: setup models lab test notebooks jupyter bench clean

$(STAMP): requirements.txt pyproject.toml labtools/kernel.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m labtools kernel
	touch $(STAMP)

setup: $(STAMP)

models: setup  ## download (tfhub) or convert (offline) the catalog's models into the cache
	$(PY) -m labtools models --catalog $(CATALOG)

lab: setup  ## run every notebook headlessly on the embedded defaults
	$(PY) -m labtools notebooks --catalog auto

test: setup  ## unit, server and notebook tests (notebooks run offline, nbval compares outputs)
	$(PY) -m labtools notebooks --catalog offline --prepare-only --output-dir build/nbval
	$(PY) -m pytest tests build/nbval --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg

notebooks: setup  ## re-execute the notebooks offline and commit-ready, in place
	$(PY) -m labtools notebooks --catalog offline --in-place

jupyter: setup  ## JupyterLab on the lab's kernel
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf build

bench: setup  ## served vs in-process latency ratios on the offline models (last line: JSON)
	$(PY) -m labtools bench
