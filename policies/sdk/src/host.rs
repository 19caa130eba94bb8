//! The host's imports, with std types. In a component (`target_arch =
//! "wasm32"`) these call `ohno:policy/host@0.1.0`; compiled natively they are
//! answered by [`crate::mock`], so a policy's unit tests run with `cargo test`.
//!
//! The free-address view is answered from the store during this ADD and is
//! read-only: nothing is reserved by asking, and the store's transaction has
//! the final word on the address a policy returns.

use std::net::IpAddr;

use crate::Level;

#[cfg(target_arch = "wasm32")]
use crate::bindings::ohno::policy::host as imports;
#[cfg(not(target_arch = "wasm32"))]
use crate::mock as imports;

/// Writes a line to the plugin's log (stderr / its log file, never stdout),
/// tagged by the host with the policy's file name.
pub fn log(level: Level, message: &str) {
    imports::log(level, message);
}

/// The first free address of `pool` in this node's blocks that is greater
/// than `after` (the lowest when `after` is `None`). `None` when the node's
/// blocks of that pool are full, the node has none yet, or the pool is unknown.
pub fn next_free(pool: &str, after: Option<IpAddr>) -> Option<IpAddr> {
    imports::next_free(pool, after.map(Into::into)).map(Into::into)
}

/// Whether `address` could be handed out from `pool` right now: in the pool,
/// not excluded, not reserved, not allocated. Works for any block of the pool.
pub fn is_free(pool: &str, address: IpAddr) -> bool {
    imports::is_free(pool, address.into())
}

/// How many addresses are free in this node's blocks of `pool`.
pub fn free_count(pool: &str) -> u64 {
    imports::free_count(pool)
}

/// Up to `limit` free addresses of `pool` in this node's blocks, lowest first
/// (successive [`next_free`] calls: one host call per address).
pub fn free_addresses(pool: &str, limit: usize) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut after = None;
    while out.len() < limit {
        match next_free(pool, after) {
            // A host that does not move forward would loop us forever.
            Some(ip) if after.is_none_or(|a| ip > a) => {
                out.push(ip);
                after = Some(ip);
            }
            _ => break,
        }
    }
    out
}
