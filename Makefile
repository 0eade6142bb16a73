# LiveDesk — `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables

UV ?= uv
RUN := $(UV) run --frozen
PYTEST := $(RUN) pytest -p no:cacheprovider

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: ## Install Python deps from uv.lock and buf from package-lock.json
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet uv
	$(UV) sync --frozen --all-packages
	@if [[ ! -x node_modules/.bin/buf ]]; then npm ci --no-audit --no-fund --loglevel=error; fi

.PHONY: up
up: install ## Run all of LiveDesk on 127.0.0.1:8080 in the foreground (Ctrl-C stops it; DETACH=1: background)
	tools/up.sh $$(case "$${DETACH:-}" in 1|true|yes) echo --detach;; esac)

.PHONY: down
down: ## Stop a LiveDesk started with make up DETACH=1
	tools/down.sh

.PHONY: test
# Each package's tests run once, in test-isolated (its own venv: what test-unit
# runs in the shared one, plus the check that it declares what it imports).
test: install lint proto-check test-isolated test-integration test-deploy ## Everything CI checks

.PHONY: lint
lint: ## ruff (lint + format check) and mypy --strict
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy libs/platform libs/contracts/tests libs/assignment-client services/*/src services/*/tests tests tools gateway

.PHONY: fmt
fmt: ## Format and auto-fix with ruff
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

.PHONY: proto
proto: ## Regenerate libs/contracts from proto/
	$(RUN) python tools/gen_proto.py

.PHONY: proto-check
proto-check: ## buf lint, buf format, buf breaking, generated code up to date
	PYTHON=.venv/bin/python tools/check_proto.sh

.PHONY: test-unit
test-unit: test-platform test-contracts test-assignment-client test-chat test-assignment test-analytics ## Tests beside each package

.PHONY: test-platform
test-platform: ## Platform library tests (real RabbitMQ and PostgreSQL)
	$(PYTEST) libs/platform/tests

.PHONY: test-contracts
test-contracts: ## Contract tests
	$(PYTEST) libs/contracts/tests

.PHONY: test-assignment-client
test-assignment-client: ## Assignment client library tests
	$(PYTEST) libs/assignment-client/tests

.PHONY: test-chat
test-chat: ## Chat service tests
	$(PYTEST) services/chat/tests

.PHONY: test-assignment
test-assignment: ## Assignment service tests
	$(PYTEST) services/assignment/tests

.PHONY: test-analytics
test-analytics: ## Analytics service tests
	$(PYTEST) services/analytics/tests

.PHONY: test-integration
test-integration: ## Real service processes against the real servers
	$(PYTEST) tests/integration

.PHONY: test-deploy
test-deploy: ## Kubernetes manifests and Helm chart validated offline
	$(PYTEST) tests/deploy

.PHONY: test-isolated
test-isolated: ## Each package's tests in its own venv with only its declared deps
	tools/test_isolated.sh

.PHONY: bench
bench: bench-chat bench-assignment bench-analytics ## All benchmarks (results in docs/benchmarks.md)

.PHONY: bench-chat
bench-chat: install ## Chat: k6 visitor/agent pairs through two chat pods
	services/chat/bench/run.sh

.PHONY: bench-assignment
bench-assignment: install ## Assignment: decisions/s of the engine core and end to end over the bus
	services/assignment/bench/run.sh

.PHONY: bench-analytics
bench-analytics: install ## Analytics: ingest rate and report latency
	services/analytics/bench/run.sh

.PHONY: bench-gateway
bench-gateway: install ## Gateway: TTFB of authenticated history reads at 1,000 req/s, vs. the pod direct
	gateway/bench/run.sh

.PHONY: clean
clean: ## Remove local state (.run) and caches
	rm -rf .run .venvs .mypy_cache .ruff_cache .pytest_cache
