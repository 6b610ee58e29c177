# wasmwire: the README's commands.
#   make run    build everything and run the host on wasmwire.toml
#   make test   build everything and run every test
#   make bench  release-build benchmarks, each beside a baseline from the same run
#   make demo   two hosts on loopback, a chat room on each, messages crossing hosts
#   make fuzz   each cargo-fuzz target for FUZZ_SECONDS (600) — see tests/fuzz/
#   make sim    the broker network simulation at 100 to 100 000 virtual hosts (docs/scaling.md;
#               knobs SIM_HOSTS, SIM_MINUTES, ... in tests/bench/sim.rs)
#   make chaos  hosts behind lossy relays with links cut, every message checked (CHAOS_SECONDS=120)
#   make soak   three host processes under mixed load, one killed every 5 min (SOAK_MINUTES=30)
#
# Guests are wasm32-wasip2 components built here, once per run, in their own cargo
# workspaces (never from build.rs); the host and tests are the root workspace.

CARGO       ?= cargo
GUEST       := wasm32-wasip2
GUEST_DIR   := target/guests
GUEST_OUT   := $(GUEST_DIR)/$(GUEST)/release
SERVICES    := echo counter ticker chat spec
TEST_GUESTS := misbehave bench not-a-service planted giant legacy durable batch013
MANIFEST    ?= wasmwire.toml

# Sample services in other languages, built from wit/ alone (no SDK). Their toolchains are
# pinned here (Python) or in sample-services/greeter-js/package-lock.json (JavaScript) and
# installed on first use into target/toolchains/ — nothing global. Needs python3 (with
# venv) and npm (with node); each service is rebuilt only when its sources, wit/ or its
# toolchain change.
PY_SERVICES := greeter-py
JS_SERVICES := greeter-js
PYTHON      ?= python3
NPM         ?= npm
COMPONENTIZE_PY_VERSION := 0.25.1
TOOLCHAINS  := target/toolchains
PY_TOOLCHAIN := $(TOOLCHAINS)/python
PY_STAMP    := $(PY_TOOLCHAIN)/.componentize-py-$(COMPONENTIZE_PY_VERSION)
JS_TOOLCHAIN := $(TOOLCHAINS)/js
JS_PACKAGE  := sample-services/greeter-js
JS_STAMP    := $(JS_TOOLCHAIN)/.npm-ci
WIT_FILES   := $(wildcard wit/*.wit wit/deps/*/*.wit)
POLYGLOT    := $(PY_SERVICES:%=target/services/%.wasm) $(JS_SERVICES:%=target/services/%.wasm)

.PHONY: all setup services toolchains polyglot test-guests browser build run test lint bench demo clean \
	fuzz-setup fuzz-build fuzz fuzz-smoke sim chaos soak

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
# Optimized, into tests/fuzz/target; the smoke run overrides this (see fuzz-smoke).
FUZZ_BUILD ?= -O
FUZZ_FLAGS = --fuzz-dir tests/fuzz -s $(FUZZ_SANITIZER) $(FUZZ_BUILD)
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

services: setup polyglot
	cd sample-services && $(CARGO) build --release --locked --target $(GUEST) --target-dir ../$(GUEST_DIR)
	@mkdir -p target/services
	@for s in $(SERVICES); do cp $(GUEST_OUT)/$$s.wasm target/services/$$s.wasm; done

toolchains: $(PY_STAMP) $(JS_STAMP)

polyglot: $(POLYGLOT)

# componentize-py into a venv of its own; the stamp names the version, so a new pin reinstalls.
$(PY_STAMP):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) is needed to build $(PY_SERVICES) (install Python 3 with venv, or set PYTHON=...)"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "error: $(PYTHON) cannot make a venv (on Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(PY_TOOLCHAIN)
	$(PY_TOOLCHAIN)/bin/pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	@rm -f $(PY_TOOLCHAIN)/.componentize-py-*
	@touch $@

# ComponentizeJS exactly as the lockfile says, into target/toolchains/js/node_modules.
# package.json pins @bytecodealliance/jco (ComponentizeJS's own dependency, ^1.15.1) to
# 1.25.2 with `overrides`: newer jco pulls in optional platform packages that were never
# published, which leaves the lockfile incomplete and `npm ci` refusing it.
$(JS_STAMP): $(JS_PACKAGE)/package.json $(JS_PACKAGE)/package-lock.json
	@command -v $(NPM) >/dev/null 2>&1 && command -v node >/dev/null 2>&1 || { echo "error: npm and node are needed to build $(JS_SERVICES) (install Node.js 20 or later, or set NPM=...)"; exit 1; }
	@mkdir -p $(JS_TOOLCHAIN)
	cp $(JS_PACKAGE)/package.json $(JS_PACKAGE)/package-lock.json $(JS_TOOLCHAIN)/
	cd $(JS_TOOLCHAIN) && $(NPM) ci --no-audit --no-fund
	@touch $@

# A Python service is sample-services/NAME/app.py (and any *.py beside it); componentize-py
# makes the bindings for the `service` world in a temporary folder at each build. It runs
# from a copy in target/polyglot/ because the guest CPython that pre-initializes the app
# writes __pycache__ beside the sources.
define py_service
target/services/$(1).wasm: $(wildcard sample-services/$(1)/*.py) $(WIT_FILES) $(PY_STAMP)
	@mkdir -p target/services
	@rm -rf target/polyglot/$(1) && mkdir -p target/polyglot/$(1) && cp -R sample-services/$(1)/. target/polyglot/$(1)/
	$(PY_TOOLCHAIN)/bin/componentize-py -d wit -w service componentize -p target/polyglot/$(1) app -o $$@.tmp
	@mv $$@.tmp $$@
endef
$(foreach s,$(PY_SERVICES),$(eval $(call py_service,$(s))))

# A JavaScript service is sample-services/NAME/app.js (ES modules beside it may be imported).
# wasi:http is left out (`-d http fetch-event`): the host links no wasi:http.
define js_service
target/services/$(1).wasm: $(wildcard sample-services/$(1)/*.js) $(WIT_FILES) $(JS_STAMP)
	@mkdir -p target/services
	$(JS_TOOLCHAIN)/node_modules/.bin/componentize-js --wit wit --world-name service -d http fetch-event -o $$@.tmp sample-services/$(1)/app.js
	@mv $$@.tmp $$@
endef
$(foreach s,$(JS_SERVICES),$(eval $(call js_service,$(s))))

test-guests: setup
	cd tests/guests && $(CARGO) build --release --locked --target $(GUEST) --target-dir ../../$(GUEST_DIR)
	@mkdir -p target/test-guests
	@for s in $(TEST_GUESTS); do cp $(GUEST_OUT)/$$s.wasm target/test-guests/$$s.wasm; done

# The gateway's browser test drives a headless Chromium (Debian's `chromium` package),
# installed here when it is missing and the machine lets us (root with apt-get); otherwise
# the test says it was skipped, and why. CHROMIUM=/path picks another browser.
CHROMIUM_NAMES := chromium chromium-browser google-chrome google-chrome-stable
browser:
	@if [ -n "$$CHROMIUM" ]; then exit 0; fi; \
	for b in $(CHROMIUM_NAMES); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the gateway's browser test (apt-get)"; \
	  { apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; }; } || \
	  echo "note: chromium could not be installed: the browser test will be skipped"; \
	else \
	  echo "note: no chromium, and no root apt-get to install it: the browser test will be skipped"; \
	fi

build: services
	$(CARGO) build --release --locked -p wasmwire

run: build
	./target/release/wasmwire run $(MANIFEST)

test: services test-guests browser
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
# -O TARGET FILE` replays it; one from the smoke run, with `-D --target-dir
# target/fuzz-smoke` for `-O`, since only that build checks overflow and debug assertions).
fuzz: fuzz-build
	$(foreach t,$(FUZZ_TARGETS),$(call fuzz_one,$(t)))

# The same for SMOKE_SECONDS each: part of `make test`. Built unoptimized (with line
# tables only) into a folder of its own: the optimized build with libFuzzer's
# instrumentation takes 2.6 times the CPU (about 9 of the 30 minutes `make test` may take
# on 2 cores), and a smoke run looks for what breaks at once, not deep (a debug build also
# checks overflow and debug assertions). `make fuzz` stays optimized.
fuzz-smoke:
	CARGO_PROFILE_DEV_DEBUG=line-tables-only $(MAKE) fuzz FUZZ_SECONDS=$(SMOKE_SECONDS) \
	  FUZZ_BUILD="-D --target-dir target/fuzz-smoke"

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
	$(CARGO) bench --locked -p wasmwire-tests --bench store
	$(CARGO) bench --locked -p wasmwire-tests --bench scale
	$(CARGO) bench --locked -p wasmwire-tests --bench gateway

sim: setup
	$(CARGO) bench --locked -p wasmwire-tests --bench sim

chaos: services
	$(CARGO) bench --locked -p wasmwire-tests --bench chaos

# The soak runs the release binary (its hosts are real processes, SIGKILLed and restarted).
SOAK_MINUTES ?= 30
soak: services
	$(CARGO) build --release --locked -p wasmwire
	SOAK_MINUTES=$(SOAK_MINUTES) $(CARGO) bench --locked -p wasmwire-tests --bench soak

demo: build
	bash examples/two-hosts/demo.sh

clean:
	$(CARGO) clean
