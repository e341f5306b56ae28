PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Touched after a successful install; older than pyproject.toml means "install again".
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv .venv run worker test test-slow test-all test-unit lint

help:
	@echo "make run     API, reaper and a worker in the foreground (embedded PostgreSQL/Redis"
	@echo "             unless DATABASE_URL and REDIS_URL are set); Ctrl-C stops everything"
	@echo "make worker  one more worker against the same services"
	@echo "make test    the test suite but its long runs (PYTEST_ARGS='-k name' to narrow it)"
	@echo "make test-slow  the long runs: chaos, stress, several hosts, make-run trees"
	@echo "make test-all   both"
	@echo "make test-unit  the unit tests alone: in-memory fakes, no PostgreSQL or Redis"
	@echo "make lint    ruff and mypy"
	@echo "make venv    create or refresh $(VENV) from pyproject.toml"

venv .venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[local,dev,flower]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m services.run

worker: $(STAMP)
	$(PY) -m services.run worker

# `make test` leaves out the long runs marked `slow`; `make test-slow` runs them, `make test-all`
# both. CI runs both.
test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=10 -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -ra --durations=10 -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -ra --durations=10 $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -q -m unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Operator tools, benchmarks and the dashboard screenshot.
-include mk/*.mk
