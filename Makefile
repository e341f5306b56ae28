PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Touched after a successful install; older than pyproject.toml means "install again".
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv .venv run worker test test-unit lint

help:
	@echo "make run     API, reaper and a worker in the foreground (embedded PostgreSQL/Redis"
	@echo "             unless DATABASE_URL and REDIS_URL are set); Ctrl-C stops everything"
	@echo "make worker  one more worker against the same services"
	@echo "make test    the whole test suite (PYTEST_ARGS='-k name' to narrow it)"
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

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=10 $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -q -m unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Operator tools, benchmarks and the dashboard screenshot.
-include mk/*.mk
