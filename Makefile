# netfraud: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA := $(PYTHON) deploy/kafka/localkafka.py
EXTRAS := dev,eval,confluent

.PHONY: help venv demo test test-faults check lint typecheck deploy-check bench bench-quality \
        retrain kafka-up kafka-down kafka-status clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

venv: $(STAMP) ## Create the virtualenv and install netfraud with its extras

kafka-up: ## Start the local Kafka broker (127.0.0.1:9092; jars fetched with Maven once)
	$(KAFKA) start

kafka-down: ## Stop the local Kafka broker
	$(KAFKA) stop

kafka-status: ## Say whether the local broker is running
	$(KAFKA) status

demo: venv ## Run the whole path on synthetic traffic and print a summary
	@$(KAFKA) start
	@status=0; $(BIN)/netfraud demo --workdir .demo || status=$$?; \
	  $(KAFKA) stop; exit $$status

test: venv ## Run the test suite (starts its own broker)
	@$(KAFKA) provision
	@status=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || status=$$?; \
	  if [ $$status -eq 5 ]; then echo "pytest: no tests collected"; status=1; fi; exit $$status

test-faults: venv ## Run only the fault-injection tests
	@$(MAKE) --no-print-directory test PYTEST_ARGS="-m faults"

lint: venv ## ruff: lint and formatting
	$(BIN)/ruff check detector features tests bench
	$(BIN)/ruff format --check detector features tests bench

typecheck: venv ## mypy --strict on detector/ and features/
	$(BIN)/mypy

deploy-check: venv ## Validate compose, Dockerfile, Kubernetes and dashboards
	bash deploy/check.sh

check: lint typecheck deploy-check test ## Everything CI runs, and the linters

bench: venv ## Throughput benchmarks through a real broker (writes docs/ and bench/results/)
	$(BIN)/python -m bench.formats
	$(BIN)/python -m bench.packets
	$(BIN)/python -m bench.throughput $(BENCH_ARGS)

# Settings `make demo` leaves; `make retrain` uses them unless NETFRAUD_CONFIG is set.
DEMO_SETTINGS ?= .demo/netfraud.toml
RETRAIN_CONFIG := $(if $(NETFRAUD_CONFIG),,$(if $(wildcard $(DEMO_SETTINGS)),--config $(DEMO_SETTINGS)))

bench-quality: venv ## Detection quality on the shared labelled data sets vs peers (docs/benchmarks.md)
	$(BIN)/python -m bench.quality

retrain: venv ## Train a challenger on recent traffic and promote it if it passes the gate
	@status=0; $(BIN)/netfraud retrain $(RETRAIN_CONFIG) $(RETRAIN_ARGS) || status=$$?; \
	  if [ $$status -eq 3 ]; then echo "retrain: champion kept (exit 3)"; status=0; fi; \
	  exit $$status

clean: ## Remove the virtualenv, caches and local state (not the jar cache)
	rm -rf $(VENV) .kafka .demo .models .pytest_cache .mypy_cache .ruff_cache
