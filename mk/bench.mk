# `make bench`: the benchmark suite (bench/README.md). Not part of `make test`.
# Included from the Makefile; uses DATABASE_URL/REDIS_URL when both are set, else the
# embedded servers under .run/. BENCH_ARGS passes options, e.g. BENCH_ARGS=--quick.

VENV ?= .venv
PY ?= $(VENV)/bin/python
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

.PHONY: bench bench-quick

# The bench extra (matplotlib) on top of what `make venv` installs.
$(BENCH_STAMP): pyproject.toml
	@test -x $(PY) || $(or $(PYTHON),python3) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[local,dev,flower,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(PY) -m bench --quick $(BENCH_ARGS)
