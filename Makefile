# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every third-party version `make install` (and so `make demo`, `make test`,
# CI), the Dockerfile and the Dataflow/Flink workers install: all transitive
# dependencies, pinned with hashes, for CPython 3.11 on Linux x86-64.
# setup.py keeps version ranges for library users; `make lock` regenerates it.
LOCK        := requirements.lock
LOCK_PYTHON := 3.11
PIP_VERSION := 26.3
UV_VERSION  := 0.13.9
CHROMIUM ?= /usr/bin/chromium
# Airflow lives in its own virtualenv: its pins and TensorFlow's do not mix,
# and BeamRunPythonPipelineOperator shells out to $(VENV)'s python anyway.
AIRFLOW_VENV    ?= .venv-airflow
AIRFLOW_STAMP   := $(AIRFLOW_VENV)/.installed
AIRFLOW_VERSION := 3.3.2
AIRFLOW_CONSTRAINTS := dags/constraints-airflow.txt
# 6.3.x needs Beam >= 2.76; its operator also needs the Google provider,
# even for local runners.
AIRFLOW_PACKAGES := "apache-airflow==$(AIRFLOW_VERSION)" \
	"apache-airflow-providers-apache-beam[google]==6.3.1" "apache-airflow-providers-google==22.8.0"

.PHONY: install demo test test-fast clean browser airflow airflow-constraints lock

# The lock first, hash-checked (pip refuses a file whose hash differs, and
# any dependency the lock lacks), then this package on top without touching
# it; pip check proves setup.py's ranges hold for the locked versions.
$(STAMP): setup.py $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(LOCK_PYTHON)".split("."))))' \
	  || { echo "$(LOCK) is for Python $(LOCK_PYTHON); run with PYTHON=python$(LOCK_PYTHON) (or regenerate it: make lock LOCK_PYTHON=X.Y)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "pip==$(PIP_VERSION)"
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m beam_projector.pipeline.demo --workdir build/demo

# tests/test_browser.py drives Debian's chromium headless; CI runs as root.
browser:
	@test -x $(CHROMIUM) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# Airflow's constraints-file install, with the constraints kept in the repo
# (made from PyPI by `make airflow-constraints`) since Airflow's published
# ones are not reachable from every machine.
$(AIRFLOW_STAMP): $(AIRFLOW_CONSTRAINTS)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q -c $(AIRFLOW_CONSTRAINTS) $(AIRFLOW_PACKAGES)
	touch $@

airflow: $(AIRFLOW_STAMP)

airflow-constraints:
	rm -rf build/airflow-resolve && $(PYTHON) -m venv build/airflow-resolve
	build/airflow-resolve/bin/pip install -q --upgrade pip
	build/airflow-resolve/bin/pip install -q $(AIRFLOW_PACKAGES)
	{ sed -n '/^#/p' $(AIRFLOW_CONSTRAINTS); build/airflow-resolve/bin/pip freeze | sort -f; } > $(AIRFLOW_CONSTRAINTS).new
	mv $(AIRFLOW_CONSTRAINTS).new $(AIRFLOW_CONSTRAINTS)

# Resolve setup.py (with the demo and test extras) afresh from PyPI into
# $(LOCK): run it to take new releases on purpose (a security fix, a new
# Beam), then `make test` and commit the lock with the Dockerfile's FROM tag
# following its apache-beam version (tests/test_container.py checks both).
lock:
	rm -rf build/lock && $(PYTHON) -m venv build/lock
	build/lock/bin/pip install -q "uv==$(UV_VERSION)"
	build/lock/bin/uv pip compile setup.py --extra demo --extra test --generate-hashes \
	  --python-version $(LOCK_PYTHON) --python-platform x86_64-unknown-linux-gnu \
	  --no-header --quiet -o build/lock/resolved.txt
	{ echo "# The locked environment, made by 'make lock' (uv $(UV_VERSION): uv pip compile setup.py"; \
	  echo "# --extra demo --extra test --generate-hashes) for python $(LOCK_PYTHON) on Linux x86-64."; \
	  echo "# make install, the Dockerfile and the Dataflow/Flink workers install exactly this."; \
	  cat build/lock/resolved.txt; } > $(LOCK)

test: $(STAMP) browser $(AIRFLOW_STAMP)
	$(BIN)/python -m pytest -q tests

# The development loop: every test that runs in seconds (no pipeline runs
# beyond the unit ones, no browser, Airflow or job service); make test runs
# everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser and not airflow and not cluster" tests

clean:
	rm -rf build dist *.egg-info test-artifacts
