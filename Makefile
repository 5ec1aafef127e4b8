# The lab's commands. Every target sets up .venv/ first if it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CATALOG ?= auto

.PHONY: setup models lab test test-fast soak test-backends notebooks jupyter bench stop clean catch-up learner doctor bundle mirror

# BUNDLE=<dir> installs from an offline bundle (make bundle) instead of the network.
$(STAMP): requirements.txt pyproject.toml labtools/kernel.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifdef BUNDLE
	$(PYTHON) -m labtools bundle install $(BUNDLE) --python $(PY)
else
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
endif
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m labtools kernel
	touch $(STAMP)

# Real programs the lab runs besides Python: Prometheus (notebooks 06, 07), haproxy (notebook 07), Chromium and
# its driver (browser test).
COMPONENTS := prometheus haproxy chromium

setup: $(STAMP)  ## the venv, the lab's kernel and the real programs the lab runs
ifdef BUNDLE
	@$(PY) -m labtools bundle install $(BUNDLE)
endif
	@$(PY) -m labtools components install $(COMPONENTS)

models: setup  ## download (tfhub) or convert (offline) the catalog's models into the cache
	$(PY) -m labtools models --catalog $(CATALOG)

lab: setup  ## run every notebook headlessly on the embedded defaults
	$(PY) -m labtools notebooks --catalog auto

# Two pytest-xdist workers: nbval's notebooks and the browser's run side by side (tests/conftest.py groups them).
XDIST := -n 2

test: setup  ## unit, server, browser and notebook tests (notebooks run offline on the stand-in, nbval compares outputs)
	@$(PY) -m labtools components check $(COMPONENTS)
	LAB_CATALOG=offline LAB_BACKEND=local $(PY) -m pytest $(XDIST) tests notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg

test-fast: setup  ## the unit and server tiers only (no notebooks, no browser): a few minutes
	LAB_CATALOG=offline LAB_BACKEND=local $(PY) -m pytest $(XDIST) tests -m "unit or server"

test-backends: setup  ## notebooks 04-05 on TF Serving's binary (a shim) and in Docker (installs and starts dockerd if needed)
	$(PY) -m labtools backends

UPTO ?= 03
catch-up: setup  ## run notebooks 01..UPTO, for a learner who skipped them (make catch-up UPTO=04)
	$(PY) -m labtools notebooks --catalog auto --upto $(UPTO)

doctor:  ## will the lab run on this laptop? (run it the day before a workshop)
	@test -x $(PY) || { echo "venv  FAIL  .venv/ is missing  -> make setup"; exit 1; }
	@TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m labtools doctor

bundle: setup  ## build/bundle/: wheels, model caches, Debian packages, SHA256SUMS (make setup BUNDLE=...)
	$(PY) -m labtools bundle write

HOST ?= 0.0.0.0
PORT ?= 8765
mirror: setup  ## serve this laptop's TF Hub models to the room (learners set LAB_TFHUB_MIRROR)
	$(PY) -m labtools mirror --host $(HOST) --port $(PORT)

learner: setup  ## learner copies of the notebooks (solutions stubbed, no outputs) in build/learner/
	$(PY) -m labtools learner

notebooks: setup  ## re-execute the notebooks offline and commit-ready, in place
	$(PY) -m labtools notebooks --catalog offline --backend local --in-place

jupyter: setup  ## JupyterLab on the lab's kernel
	$(VENV)/bin/jupyter lab notebooks/

stop:  ## stop every server the lab started (model servers, replicas, Prometheus, haproxy, Docker service)
	@test -x $(PY) && $(PY) -m labtools stop || echo "Nothing to stop: the lab is not set up."

clean: stop
	rm -rf build

# The bench's peer, KServe, in its own venv: KServe and its pins (protobuf 6, psutil 5) first on
# the path, then the lab's packages (TensorFlow) through a .pth; made once, then used offline.
BENCH_VENV := build/bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed
KSERVE_VERSION := 0.21.0
$(BENCH_STAMP): | $(STAMP)
	$(PY) -m venv $(BENCH_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(BENCH_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/lab-venv.pth"
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check kserve==$(KSERVE_VERSION)
	touch $@

MINUTES ?= 60
soak: setup  ## MINUTES of REST and gRPC load with config churn every 6 s: 0 failures, RSS flat after minute 6
	$(PY) -m labtools soak --minutes $(MINUTES)

bench: setup $(BENCH_STAMP)  ## served vs in-process, bare-library and KServe ratios (last line: JSON)
	$(PY) -m labtools bench
