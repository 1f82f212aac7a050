# rumline — `make help` lists the targets.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.deps-stamp
CORE_SRC := $(shell find rust/src -name '*.rs') rust/Cargo.toml Cargo.toml Cargo.lock

.DEFAULT_GOAL := help
.PHONY: help dev serve test test-rust test-python bench loadtest lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet maturin==1.16.0
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

collector/_core.abi3.so collector/.core-stamp: $(STAMP) $(CORE_SRC)
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop --release --quiet
	touch collector/.core-stamp

dev: collector/.core-stamp ## set up .venv and build the Rust core (rumline is then .venv/bin/rumline)

serve: dev ## run the collector on its embedded default (127.0.0.1:8080, ./rumline-data)
	$(BIN)/rumline serve

test: dev ## set up everything and run every Rust and Python test
	bash scripts/setup-test-tools.sh
	cargo test --release --workspace
	$(BIN)/python -m pytest -q

test-rust: ## the Rust unit and property tests only
	cargo test --release --workspace

bench: dev ## run the benchmarks and write docs/benchmarks.md
	$(BIN)/python loadtests/bench_core.py
	$(BIN)/python loadtests/bench_ingest.py --write
	$(BIN)/python loadtests/bench_store.py
	$(BIN)/python loadtests/run_locust.py --run-time 30s --write

loadtest: dev ## Locust against a collector on a temp dir and a free port, 30 s; failures, p50/p95/p99
	$(BIN)/python loadtests/run_locust.py --run-time 30s

lint: dev ## clippy and ruff
	cargo clippy --release --manifest-path rust/Cargo.toml --all-targets -- -D warnings
	$(BIN)/ruff check collector tests loadtests

clean: ## remove build output and the virtualenv
	rm -rf $(VENV) target collector/*.so collector/.core-stamp
