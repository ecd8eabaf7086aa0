# taskmedic — two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help deps venv test lint unit demo bench mixin clean

help:
	@echo "make demo   - run the real stack locally: incidents seeded, detected, alerted and healed"
	@echo "make test   - lint, type-check and run every test against real PostgreSQL/Redis/Prometheus"
	@echo "make bench  - benchmarks; results in docs/benchmarks.md"
	@echo "make mixin  - regenerate rules/, dashboards and Kubernetes objects from deploy/mixin"

deps:
	@deploy/local/install-deps.sh

$(BIN)/taskmedic-exporter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/taskmedic-exporter

lint: venv
	$(BIN)/ruff check taskmedic exporter remediator tests deploy
	$(BIN)/mypy
	$(BIN)/python -m deploy.mixin.build --check

test: deps venv lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: deps venv
	$(BIN)/python -m deploy.local.demo $(if $(ONCE),--once)

bench: deps venv
	$(BIN)/python -m tests.bench

mixin: deps venv
	$(BIN)/python -m deploy.mixin.build

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
