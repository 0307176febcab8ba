# picofleet: `make up` runs the hub on embedded defaults (runtime dependencies only),
# `make test` installs what the tests need (system packages too) and runs every check.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --progress-bar on --disable-pip-version-check

.PHONY: install runtime test-deps up test lint typecheck bench clean

$(BIN)/python:
	@echo "== creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)

# What `picofleet up` needs, nothing more (no test or lint tools).
$(RUNTIME): pyproject.toml | $(BIN)/python
	@echo "== installing picofleet's runtime dependencies into $(VENV)"
	$(PIP) -e .
	touch $@

# Developer tools and test dependencies on top.
$(STAMP): $(RUNTIME)
	@echo "== installing the dev extras (pytest, mypy, ruff, selenium, ...)"
	$(PIP) -e '.[dev]'
	touch $@

runtime: $(RUNTIME)
install: $(STAMP)

# System packages the tests use (Mosquitto, Chromium + driver, Node, PostgreSQL, ...).
test-deps:
	scripts/test-deps.sh

node_modules/.installed: package.json | test-deps
	npm install --no-audit --no-fund
	touch $@

up: runtime
	$(BIN)/picofleet up $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Every optional component is required: a missing one fails its tests, none skips.
test: test-deps install node_modules/.installed lint typecheck
	PICOFLEET_REQUIRE_ALL=1 $(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache

# `make release VERSION=X.Y.Z [RELEASE_KEY=file] [ALLOW_DIRTY=1]`: the signed Pi bundle
# (picofleet-X.Y.Z.tar.gz, meta.json, the wheel) in dist/release; same tree, same sha256.
# The key defaults to env PICOFLEET_RELEASE_KEY; make one with `picofleet release keygen FILE`.
.PHONY: release
release: install
	@test -n "$(VERSION)" || { echo "usage: make release VERSION=X.Y.Z" >&2; exit 2; }
	$(BIN)/python release/build_bundle.py --version "$(VERSION)" --out dist/release \
		$(if $(RELEASE_KEY),--key "$(RELEASE_KEY)") $(if $(ALLOW_DIRTY),--allow-dirty)
