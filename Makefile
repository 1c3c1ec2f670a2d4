# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[demo,test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo --workdir build/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf build dist *.egg-info test-artifacts
