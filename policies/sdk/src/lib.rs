//! The SDK for Ohno policy components: the generated bindings of the
//! `ohno:policy@0.1.0` world, plus the helpers every policy needs — address
//! arithmetic that matches the host's block rules ([`addr`]), legal interface
//! names ([`ifname()`]), config parsing ([`parse_config`], [`Configured`]) and the
//! host imports ([`host`]), which run against in-memory mocks ([`mock`]) when
//! the policy is compiled natively for its unit tests.
//!
//! A policy is a `cdylib` + `rlib` crate that implements [`Guest`] and exports it
//! with one line:
//!
//! ```
//! use ohno_policy_sdk::{Allocation, Error, Family, Guest, Naming, Pod, Pool};
//!
//! struct MyPolicy;
//!
//! impl Guest for MyPolicy {
//!     fn configure(_config: String) -> Result<(), Error> { Ok(()) }
//!     fn allocate(_pod: Pod, _family: Family, _pools: Vec<Pool>) -> Result<Allocation, Error> {
//!         Ok(Allocation::Default)
//!     }
//!     fn name_interface(_pod: Pod) -> Result<Naming, Error> { Ok(Naming::Default) }
//! }
//!
//! ohno_policy_sdk::export!(MyPolicy);
//! # fn main() {}
//! ```
//!
//! `cargo build --release --target wasm32-wasip2` then produces the component
//! (`target/wasm32-wasip2/release/<crate>.wasm`); `cargo test` runs the same
//! code natively, with [`host`] answered by [`mock`].
//!
//! Policies call the host only through [`host`], never through
//! [`bindings`] directly, so that the native tests see the mocks.

// Lets the generated `export!` macro name this crate by its absolute path, from
// policy crates and from this crate's own doc tests alike.
extern crate self as ohno_policy_sdk;

pub mod addr;
mod config;
pub mod host;
mod ifname;
#[cfg(not(target_arch = "wasm32"))]
pub mod mock;

#[doc(hidden)]
pub use wit_bindgen;

/// The bindings generated from `wit/policy.wit` (world `policy`).
///
/// Policies normally use the re-exports at the crate root instead.
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "::ohno_policy_sdk::bindings",
        runtime_path: "::ohno_policy_sdk::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq, Hash],
    });
}

/// Exports a type implementing [`Guest`] as the component's `decisions`
/// interface (`ohno:policy/decisions@0.1.0`): `ohno_policy_sdk::export!(MyPolicy);`.
/// Use it once per policy crate, at its root.
///
/// It expands to nothing when compiled natively: the export symbols' names
/// (`ohno:policy/decisions@0.1.0#allocate`) are not legal in a native linker's
/// version script, and native builds exist only for the unit tests, which call
/// the [`Guest`] methods directly.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export!($ty with_types_in $crate::bindings);
    };
}

pub use bindings::exports::ohno::policy::decisions::Guest;
pub use bindings::ohno::policy::types::{
    Allocation, Error, Family, IpAddress, Level, Naming, Pod, Pool,
};

pub use config::{parse_config, Configured};

/// The README's example policy, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use ifname::{ifname, stable_hash, IFNAME_MAX};
