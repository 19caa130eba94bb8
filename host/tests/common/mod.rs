//! Harness for Ohno's netns integration tests and the CNI benchmark.
//!
//! Everything here happens inside network namespaces the harness creates and
//! deletes: a throwaway "host" namespace per test (where the plugin runs, via
//! `ip netns exec`, and where the bridge, host veths and nftables rules live)
//! and one namespace per pod beside it. The machine's own namespace is never
//! touched. Names are `ohno-t-<pid>-<n>-<role>`, unique per process and per
//! test, so tests run in parallel; guards delete them on drop, and a run sweeps
//! namespaces left behind by harness processes that no longer exist (killed
//! by a signal, say) once they are half an hour old.
//!
//! It also carries a small CNI runtime (what libcni does for a conflist): ADD
//! each plugin in order with `name`, `cniVersion`, `prevResult` and the
//! `runtimeConfig` of declared capabilities injected; CHECK in order and DEL in
//! reverse with the cached ADD result as `prevResult`.
//!
//! Shared by every test crate and by `benches/cni.rs` (through `#[path]`), so
//! each user sees parts it does not call.
#![allow(dead_code)]

mod netns;
mod node;
mod plugin;
mod process;
mod runtime;
mod util;

// Every test crate uses a different part, so some re-exports go unused in each.
#[allow(unused_imports)]
pub use netns::*;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use plugin::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use runtime::*;
#[allow(unused_imports)]
pub use util::*;
