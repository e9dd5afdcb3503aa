# etc-shadow: the two commands of the README, and the pieces they are made of.
#   make demo   build and run the demo console on http://127.0.0.1:3000
#   make test   every check and test: format, lints, unit, integration, end-to-end

SHELL := /bin/bash
DEMO_DIR ?= demo-data
DEMO_LISTEN ?= 127.0.0.1:3000
# Packages are tested one by one: building the whole workspace at once would unify the
# `ssr` and `hydrate` features of `app`.
RUST_PACKAGES := etc-shadow-domain etc-shadow-store etc-shadow-control etc-shadow-tls etc-shadow-agent etc-shadow-server etc-shadow-bench
# Randomised crash rollouts in the crash sweep (CRASH_ROLLOUTS=1000 make unit for the long run).
CRASH_ROLLOUTS ?= 200
CRASH_ROLLOUTS_POSTGRES ?= 60

# Every release build gets the same flags (the console's halves must agree on them, and
# builds with other flags would rebuild the shared dependencies): components' types
# erased, which makes the wasm 40% smaller.
RELEASE_RUSTFLAGS := --cfg erase_components

# Seconds per fuzz target (`make fuzz FUZZ_SECONDS=600` for a longer run).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := format_json format_yaml format_toml format_ini format_env key_diff agent_prepare redact

.PHONY: demo test setup setup-test build-release build lint unit e2e fuzz fuzz-short bench clean-demo

demo: setup build-release
	./target/release/etc-shadow demo --data-dir $(DEMO_DIR) --listen $(DEMO_LISTEN) --site-root target/site

test: setup-test lint unit fuzz-short e2e
	@echo "all tests passed"

# Every fuzz target for a short while, as part of `make test`.
fuzz-short:
	$(MAKE) fuzz FUZZ_SECONDS=20

setup:
	./scripts/setup.sh

setup-test:
	./scripts/setup.sh --test

# The console (server and wasm, scripts/build-site.sh) and the agent.
build-release:
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" ./scripts/build-site.sh --release
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" cargo build --release -p etc-shadow-agent

build:
	./scripts/build-site.sh
	cargo build -p etc-shadow-agent --features failpoints

lint:
	cargo fmt --all -- --check
	for p in $(RUST_PACKAGES); do cargo clippy -p $$p --all-targets -- -D warnings || exit 1; done
	cargo clippy -p etc-shadow-server --features crash-points --all-targets -- -D warnings
	cargo clippy -p etc-shadow-agent --features failpoints -- -D warnings
	cargo clippy -p frontend --target wasm32-unknown-unknown -- -D warnings
	cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

unit:
	cargo build -p etc-shadow-agent --features failpoints
	for p in etc-shadow-domain etc-shadow-store etc-shadow-control etc-shadow-agent; do cargo test -p $$p || exit 1; done
	# The rollout state machine's property test again, printing how many cases it ran.
	cargo test -p etc-shadow-domain --lib rollout::tests::random -- --nocapture
	ETC_SHADOW_CRASH_ROLLOUTS=$(CRASH_ROLLOUTS) cargo test -p etc-shadow-server --features crash-points
	# The same integration suite over PostgreSQL: a throwaway server on a loopback port in a
	# temporary directory, a database per test (processes the tests start on their own
	# data directories without a server of the suite's stay on SQLite).
	ETC_SHADOW_CRASH_ROLLOUTS=$(CRASH_ROLLOUTS_POSTGRES) ./scripts/with-postgres cargo test -p etc-shadow-server --features crash-points
	# The systemd units of deploy/ against the binaries just built.
	./deploy/verify.sh target/debug/etc-shadow target/debug/etc-shadow-agent

e2e: build
	cd end2end && npx playwright test

# Coverage-guided fuzzing of what parses untrusted input (fuzz/): each target for
# FUZZ_SECONDS from the seeds in fuzz/seeds (bombs included); a panic, a hang of 10 s on one
# input or 2 GiB of memory fails. New inputs go to fuzz/corpus, crashes to fuzz/artifacts.
fuzz:
	./scripts/setup.sh --fuzz
	cargo fuzz build --sanitizer none --release
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  cargo fuzz run --sanitizer none --release $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 || exit 1; \
	done

# The console's weight; rollout latency beside a 3-member etcd; the drift monitor; the
# Incidents queries; redaction; rollouts on PostgreSQL beside SQLite and the replicas'
# failover (figures in docs/performance.md).
bench:
	./scripts/setup.sh --bench
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" ./scripts/build-site.sh --release
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" cargo build --release -p etc-shadow-agent -p etc-shadow-bench
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" cargo build --release -p etc-shadow-server
	WITH_POSTGRES_DURABLE=1 ./scripts/with-postgres ./target/release/etc-shadow-bench $(BENCH_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
