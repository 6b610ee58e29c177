# wasmwire: the README's commands.
#   make run    build everything and run the host on wasmwire.toml
#   make test   build everything and run every test
#   make bench  release-build benchmarks, each beside a baseline from the same run
#   make demo   two hosts on loopback, a chat room on each, messages crossing hosts
#
# Guests are wasm32-wasip2 components built here, once per run, in their own cargo
# workspaces (never from build.rs); the host and tests are the root workspace.

CARGO       ?= cargo
GUEST       := wasm32-wasip2
GUEST_DIR   := target/guests
GUEST_OUT   := $(GUEST_DIR)/$(GUEST)/release
SERVICES    := echo counter ticker chat spec
TEST_GUESTS := misbehave bench not-a-service planted giant
MANIFEST    ?= wasmwire.toml

.PHONY: all setup services test-guests build run test lint bench demo clean

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

lint: setup
	$(CARGO) fmt --all -- --check
	cd sample-services && $(CARGO) fmt --all -- --check
	cd tests/guests && $(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd sample-services && $(CARGO) clippy --release --locked --target $(GUEST) --target-dir ../$(GUEST_DIR) -- -D warnings
	cd tests/guests && $(CARGO) clippy --release --locked --target $(GUEST) --target-dir ../../$(GUEST_DIR) -- -D warnings

bench: services test-guests
	$(CARGO) bench --locked -p wasmwire-tests --bench host

demo: build
	bash examples/two-hosts/demo.sh

clean:
	$(CARGO) clean
