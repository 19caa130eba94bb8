# Thin entry points; the work lives in scripts/ and cargo.
.PHONY: setup build demo test lint bench policies memcheck flamegraph fuzz coverage

CARGO ?= cargo

setup:
	scripts/setup.sh

build:
	$(CARGO) build --workspace

demo: setup policies
	$(CARGO) build --release -p ohno --bins
	scripts/demo.sh
	scripts/demo-cluster.sh

# Integration tests need root (they create network namespaces) and the debug
# binaries, which `cargo test` builds for the `ohno` crate's tests.
test: setup policies
	$(CARGO) build --workspace
	$(CARGO) test --workspace --no-fail-fast

# Policy components for wasm32-wasip2: target/wasm32-wasip2/release/<crate>.wasm
# (crate names with underscores), used by the host's tests and the demo.
policies:
	$(CARGO) build --release --target wasm32-wasip2 -p namespace-pools -p annotation-pool -p sticky-statefulset -p no-quick-reuse -p pod-ifname -p hostile -p hostile-net -p policy-v1

# rustfmt + clippy -D warnings: the workspace (all targets), the policies as
# wasm32-wasip2 components, and the CNI core (ohno lib without default features).
lint: setup
	scripts/lint.sh

# The debug `ohno` under valgrind memcheck: ADD, CHECK, DEL with the local store,
# the etcd store (mTLS cluster in a throwaway netns) and a WebAssembly policy.
memcheck: setup policies
	scripts/memcheck.sh

# perf + inferno: an ADD burst of the release binary -> docs/flamegraph-add.svg.
flamegraph: setup
	scripts/setup-flamegraph.sh
	scripts/flamegraph.sh

# cargo-fuzz (nightly) on the config, CNI_ARGS, result and version parsers and
# the helpers' socket framing,
# FUZZ_SECONDS (default 60) per target.
fuzz: setup
	scripts/setup-fuzz.sh
	scripts/fuzz.sh

# Line coverage of host/src over every test tier (cargo-llvm-cov; the binaries the
# integration tests exec are instrumented too). HTML in target/coverage/html.
coverage: setup policies
	scripts/setup-coverage.sh
	scripts/coverage.sh

# Every benchmark in one run (the CNI, policy and CRI benches, then the cross-node
# bench on a simulated cluster); docs/bench/ gets the Markdown report and the
# ADD-latency chart, with the machine they ran on.
bench: setup policies
	$(CARGO) bench -p ohno --bench cni --bench policy --bench cri
	$(CARGO) build --release -p ohno --bins
	scripts/bench-cross-node.sh
	scripts/bench-report.sh

# The compose cluster of myclusters/ (three mutual-TLS etcd members, the
# certificate generator, a dev container with the repository at /src) under
# OHNO_DEVENV_DIR (default /tmp/ohno-devenv), waited on until healthy; images
# built from this machine's Debian packages unless OHNO_DEVENV_IMAGES=public.
# devenv-down removes it all; RMI=1 also the local images.
.PHONY: devenv devenv-down
devenv: setup
	myclusters/devenv.sh up

devenv-down:
	myclusters/devenv.sh down $(if $(RMI),--rmi)
