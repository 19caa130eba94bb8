# Thin entry points; the work lives in scripts/ and cargo.
.PHONY: setup build demo test lint bench

CARGO ?= cargo

setup:
	scripts/setup.sh

build:
	$(CARGO) build --workspace

demo: setup
	$(CARGO) build --release -p ohno --bins
	scripts/demo.sh

# Integration tests need root (they create network namespaces) and the debug
# binaries, which `cargo test` builds for the `ohno` crate's tests.
test: setup
	$(CARGO) build --workspace
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	$(CARGO) bench -p ohno --bench cni
