# picofleet: `make up` runs the hub on embedded defaults, `make test` runs every check.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch $@

up: install
	$(BIN)/picofleet up $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: install node_modules/.installed lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

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
