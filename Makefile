# etc-shadow: the two commands of the README, and the pieces they are made of.
#   make demo   build and run the demo console on http://127.0.0.1:3000
#   make test   every check and test: format, lints, unit, integration, end-to-end

SHELL := /bin/bash
DEMO_DIR ?= demo-data
DEMO_LISTEN ?= 127.0.0.1:3000
# Packages are tested one by one: building the whole workspace at once would unify the
# `ssr` and `hydrate` features of `app`.
RUST_PACKAGES := etc-shadow-domain etc-shadow-store etc-shadow-control etc-shadow-agent etc-shadow-server etc-shadow-bench
# Randomised crash rollouts in the crash sweep (CRASH_ROLLOUTS=1000 make unit for the long run).
CRASH_ROLLOUTS ?= 200

.PHONY: demo test setup setup-test build-release build lint unit e2e bench clean-demo

demo: setup build-release
	./target/release/etc-shadow demo --data-dir $(DEMO_DIR) --listen $(DEMO_LISTEN) --site-root target/site

test: setup-test lint unit e2e
	@echo "all tests passed"

setup:
	./scripts/setup.sh

setup-test:
	./scripts/setup.sh --test

build-release:
	cargo leptos build --release
	cargo build --release -p etc-shadow-agent

build:
	cargo leptos build
	cargo build -p etc-shadow-agent --features failpoints

lint:
	cargo fmt --all -- --check
	for p in $(RUST_PACKAGES); do cargo clippy -p $$p --all-targets -- -D warnings || exit 1; done
	cargo clippy -p etc-shadow-server --features crash-points --all-targets -- -D warnings
	cargo clippy -p etc-shadow-agent --features failpoints -- -D warnings
	cargo clippy -p frontend --target wasm32-unknown-unknown -- -D warnings

unit:
	cargo build -p etc-shadow-agent --features failpoints
	for p in etc-shadow-domain etc-shadow-store etc-shadow-control etc-shadow-agent; do cargo test -p $$p || exit 1; done
	ETC_SHADOW_CRASH_ROLLOUTS=$(CRASH_ROLLOUTS) cargo test -p etc-shadow-server --features crash-points

e2e: build
	cd end2end && npx playwright test

# Rollout latency for 1, 10 and 50 agent shadows and two configuration sets, with the
# time split into fsync, hashing, writes and the network (figures in docs/performance.md).
bench:
	cargo build --release -p etc-shadow-agent -p etc-shadow-bench
	./target/release/etc-shadow-bench $(BENCH_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
