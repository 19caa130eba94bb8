# Thin entry points; the work lives in scripts/ and cargo.
.PHONY: setup build demo test lint bench policies

CARGO ?= cargo

setup:
	scripts/setup.sh

build:
	$(CARGO) build --workspace

demo: setup policies
	$(CARGO) build --release -p ohno --bins
	scripts/demo.sh

# Integration tests need root (they create network namespaces) and the debug
# binaries, which `cargo test` builds for the `ohno` crate's tests.
test: setup policies
	$(CARGO) build --workspace
	$(CARGO) test --workspace --no-fail-fast

# Policy components for wasm32-wasip2: target/wasm32-wasip2/release/<crate>.wasm
# (crate names with underscores), used by the host's tests and the demo.
policies:
	$(CARGO) build --release --target wasm32-wasip2 -p namespace-pools -p sticky-statefulset -p no-quick-reuse -p pod-ifname -p hostile -p hostile-net -p policy-v1

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	$(CARGO) bench -p ohno --bench cni
