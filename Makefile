# Two commands on a fresh machine:
#   make run    the local stack (MongoDB, SQS, SMTP) plus both services
#   make test   starts the stack if needed, then lint and every test
#   make chaos  the fault-injection suite (issue 4): real binaries, things broken
#   make bench  release build, services on a fresh database, order-bench's scenarios and the issue 16 targets
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help run test chaos bench bench-smoke stack-up stack-down stack-status build lint fmt check-compose check-k8s test-only seed browser

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: ## start the local stack and both services (Ctrl-C stops the services)
	scripts/run.sh

test: stack-up browser lint check-compose check-k8s test-only ## the whole suite: fmt, clippy, compose file, k8s manifests, all tests

test-only: ## cargo tests against the running stack
	cargo test --workspace --all-targets --no-fail-fast

# Where cargo puts debug binaries (CARGO_TARGET_DIR or a config may move it);
# the tools are run from there, not by `cargo run -p`, which would select one
# package and so another feature set.
BIN = $$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug

# Every build names the whole workspace (`--workspace`), as `make test` does:
# cargo picks dependency features from the packages a command selects, so a
# build of some packages would compile the shared dependencies a second time
# with other features. One feature set, one compile per profile.
chaos: ## fault-injection suite against the stack (SCENARIOS=1,7 runs some; see README "Guarantees")
	cargo build --workspace --bins
	scripts/stack.sh up
	"$(BIN)/order-chaos" $(SCENARIOS)

bench: ## release build, stack, both services on a fresh database and queues, the standard scenarios (BENCHMARKS.md)
	scripts/bench.sh

bench-smoke: ## the same with debug binaries and ~1 s per scenario: the tool works and produces numbers (CI)
	scripts/bench.sh --smoke

lint: ## rustfmt and clippy, warnings are errors; one feature set for every build
	cargo fmt --all -- --check
	scripts/check-features.sh
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## format the tree
	cargo fmt --all

seed: ## add the sample catalogue in seed/products.json (safe to repeat; never resets stock)
	cargo build --workspace --bins
	ENV_FILE=$$([[ -f .env ]] && echo .env || echo .env.example) \
	  "$(BIN)/order-api" seed-products seed/products.json

build: ## build both services (debug), and the chaos and bench tools
	cargo build --workspace --bins

check-compose: ## validate docker-compose.yml and the Dockerfiles it names
	scripts/check-compose.sh

check-k8s: ## render deploy/k8s and validate it offline (Kubernetes 1.32 schemas, KEDA's CRDs, policy)
	scripts/check-k8s.sh

browser: ## install Debian's headless Chromium when missing (the docs page test opens /api/docs in it)
	scripts/install-chromium.sh

stack-up: ## install (first time) and start MongoDB, LocalStack SQS and MailDev on 127.0.0.1
	scripts/stack.sh up

stack-down: ## stop what stack-up started
	scripts/stack.sh down

stack-status: ## show what runs
	scripts/stack.sh status
