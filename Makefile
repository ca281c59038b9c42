# Every target that needs the project creates .venv on first use, so a fresh clone
# needs nothing but Python >= 3.11 and access to the package index.
#
# Installs are reproducible: .venv gets exactly the versions pinned in uv.lock (`make lock` regenerates
# it). uv itself is installed into .venv with pip, at the version pinned here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9
UV_STAMP := $(VENV)/.uv-$(UV_VERSION)
# The extras CI needs: dev (lint and test tools) and bench (datasets and boto3, which tests/test_compression.py
# and tests/test_bench.py use as well as `make bench`).
EXTRAS := --extra dev --extra bench
UV := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(BIN)/uv

.PHONY: install lock lint test demo bench clean

install: $(STAMP)

$(UV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	touch $(UV_STAMP)

# --frozen: install what uv.lock says, without re-resolving; --inexact: keep pip and uv in .venv;
# --compile-bytecode: write .pyc files now, as pip does (without them every process compiles its imports
# again where PYTHONDONTWRITEBYTECODE is set, which makes `make bench`'s start-up and bulk figures wrong).
$(STAMP): pyproject.toml uv.lock $(UV_STAMP)
	$(UV) sync --frozen --inexact --compile-bytecode $(EXTRAS)
	touch $(STAMP)

# Re-resolve after changing dependencies in pyproject.toml (keeps the other pins where it can);
# `make lock LOCK_ARGS=--upgrade` moves every package to its newest allowed release.
lock: $(UV_STAMP)
	$(UV) lock $(LOCK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check aioc4 scripts tests
	$(BIN)/ruff format --check aioc4 scripts tests
	$(BIN)/mypy

# Most of the suite's time is spent waiting on servers (paced storage, retry backoff, grace periods), not
# computing, so 4 xdist workers beat 2 even on a 2-core machine; each worker starts its own Hub and S3
# servers. `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 4

test: lint
	$(BIN)/pytest -n $(TEST_WORKERS)

demo: $(STAMP)
	$(BIN)/python -m scripts.demo

bench: $(STAMP)
	$(BIN)/python -m scripts.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
