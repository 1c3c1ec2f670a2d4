# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
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

.PHONY: install demo test clean browser airflow airflow-constraints

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[demo,test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo --workdir build/demo

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

test: $(STAMP) browser $(AIRFLOW_STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf build dist *.egg-info test-artifacts
