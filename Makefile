# wasmwire: the README's commands.
#   make run    build everything and run the host on wasmwire.toml
#   make test   build everything and run every test
#   make bench  release-build benchmarks, each beside a baseline from the same run
#   make demo   two hosts on loopback, a chat room on each, messages crossing hosts
#   make fuzz   each cargo-fuzz target for FUZZ_SECONDS (600) — see tests/fuzz/
#   make sim    the broker network simulation at 100 to 10 000 virtual hosts (docs/scaling.md)
#   make chaos  hosts behind lossy relays with links cut, every message checked (CHAOS_SECONDS=120)
#
# Guests are wasm32-wasip2 components built here, once per run, in their own cargo
# workspaces (never from build.rs); the host and tests are the root workspace.

CARGO       ?= cargo
GUEST       := wasm32-wasip2
GUEST_DIR   := target/guests
GUEST_OUT   := $(GUEST_DIR)/$(GUEST)/release
SERVICES    := echo counter ticker chat spec
TEST_GUESTS := misbehave bench not-a-service planted giant legacy
MANIFEST    ?= wasmwire.toml

.PHONY: all setup services test-guests build run test lint bench demo clean \
	fuzz-setup fuzz-build fuzz fuzz-smoke sim chaos

# cargo-fuzz (libFuzzer) needs a nightly toolchain. The sanitizer is off by default: the
# host's own code is safe Rust (its two `unsafe` blocks load compiled components, which no
# target reaches), so AddressSanitizer would find nothing of ours and triple the build.
# `make fuzz FUZZ_SANITIZER=address` turns it on.
FUZZ_TOOLCHAIN ?= nightly
FUZZ_SANITIZER ?= none
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TARGETS := manifest wire_data wire_control broker guest
FUZZ_SECONDS ?= 600
SMOKE_SECONDS ?= 20
FUZZ := $(CARGO) +$(FUZZ_TOOLCHAIN) fuzz
FUZZ_FLAGS = --fuzz-dir tests/fuzz -s $(FUZZ_SANITIZER) -O
# Seed inputs per target (directories; libFuzzer reads them and writes new finds to the
# first one, tests/fuzz/corpus/TARGET). Crashes land in tests/fuzz/artifacts/TARGET.
SEEDS_manifest := tests/manifests examples
SEEDS_wire_data := tests/fuzz/seeds/wire_data
SEEDS_wire_control := tests/fuzz/seeds/wire_control
SEEDS_broker := tests/fuzz/seeds/broker
SEEDS_guest :=

all: build

# Installs the toolchain pinned in rust-toolchain.toml (with the wasm32-wasip2 target,
# rustfmt and clippy) when it is missing. Automatic installs may be off, so ask explicitly.
setup:
	@command -v rustup >/dev/null 2>&1 || { echo "error: rustup is needed to install the pinned toolchain (https://rustup.rs)"; exit 1; }
	@rustup toolchain install >/dev/null 2>&1 || rustup toolchain install
	@rustup target list --installed | grep -qx $(GUEST) || rustup target add $(GUEST)

services: setup
	cd sample-services && $(CARGO) build --release --locked --target $(GUEST) --target-dir ../$(GUEST_DIR)
	@mkdir -p target/services
	@for s in $(SERVICES); do cp $(GUEST_OUT)/$$s.wasm target/services/$$s.wasm; done

test-guests: setup
	cd tests/guests && $(CARGO) build --release --locked --target $(GUEST) --target-dir ../../$(GUEST_DIR)
	@mkdir -p target/test-guests
	@for s in $(TEST_GUESTS); do cp $(GUEST_OUT)/$$s.wasm target/test-guests/$$s.wasm; done

build: services
	$(CARGO) build --release --locked -p wasmwire

run: build
	./target/release/wasmwire run $(MANIFEST)

test: services test-guests
	$(CARGO) build --locked -p wasmwire --bins   # the CLI tests run the real binary
	$(CARGO) test --workspace --locked
	$(MAKE) lint
	$(MAKE) fuzz-smoke

# Installs the nightly toolchain and cargo-fuzz when they are missing, as `setup` does for
# the pinned toolchain.
fuzz-setup: setup
	@rustup run $(FUZZ_TOOLCHAIN) rustc --version >/dev/null 2>&1 || rustup toolchain install $(FUZZ_TOOLCHAIN) --profile minimal
	@cargo-fuzz --version 2>/dev/null | grep -q $(CARGO_FUZZ_VERSION) || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

fuzz-build: fuzz-setup services
	$(FUZZ) build $(FUZZ_FLAGS)

# One target for FUZZ_SECONDS. libFuzzer's running commentary goes to a log beside the
# crashes; its closing lines (executions, coverage) are printed; a crash prints the tail
# and stops make.
define fuzz_one
	@mkdir -p tests/fuzz/corpus/$(1) tests/fuzz/artifacts/$(1)
	@echo "== fuzz $(1) for $(FUZZ_SECONDS) s"
	@$(FUZZ) run $(FUZZ_FLAGS) $(1) tests/fuzz/corpus/$(1) $(SEEDS_$(1)) -- \
	  -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 > tests/fuzz/artifacts/$(1)/run.log 2>&1 \
	  || { tail -n 40 tests/fuzz/artifacts/$(1)/run.log; exit 1; }
	@grep -E "^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec)" tests/fuzz/artifacts/$(1)/run.log

endef

# Every target for FUZZ_SECONDS each; stops at the first crash (its input is saved in
# tests/fuzz/artifacts/TARGET/, and `cargo +nightly fuzz run --fuzz-dir tests/fuzz -s none
# -O TARGET FILE` replays it).
fuzz: fuzz-build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz_one,$(t)))

# The same for SMOKE_SECONDS each: part of `make test`.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=$(SMOKE_SECONDS)

lint: setup
	$(CARGO) fmt --all -- --check
	cd sample-services && $(CARGO) fmt --all -- --check
	cd tests/guests && $(CARGO) fmt --all -- --check
	rustfmt --edition 2024 --check tests/fuzz/fuzz_targets/*.rs
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd sample-services && $(CARGO) clippy --release --locked --target $(GUEST) --target-dir ../$(GUEST_DIR) -- -D warnings
	cd tests/guests && $(CARGO) clippy --release --locked --target $(GUEST) --target-dir ../../$(GUEST_DIR) -- -D warnings

bench: services test-guests
	$(CARGO) build --release --locked -p wasmwire   # (k) starts the real binary
	$(CARGO) bench --locked -p wasmwire-tests --bench host
	$(CARGO) bench --locked -p wasmwire-tests --bench net
	$(CARGO) bench --locked -p wasmwire-tests --bench scale

sim: setup
	$(CARGO) bench --locked -p wasmwire-tests --bench sim

chaos: services
	$(CARGO) bench --locked -p wasmwire-tests --bench chaos

demo: build
	bash examples/two-hosts/demo.sh

clean:
	$(CARGO) clean
