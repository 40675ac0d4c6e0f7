# Developer entry points. `make run` starts the whole stack in the foreground
# (data kept in .devstack/), `make test` lints and runs the test suite against
# throwaway servers. Everything, servers included, comes from .venv: the
# machine needs only Python 3.11+ and make.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; reinstall only when requirements change.
STAMP := $(VENV)/.installed
# Extra pytest arguments: make test ARGS="-k foo -x"
ARGS ?=

.PHONY: install run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m devstack run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m devstack test $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .devstack
