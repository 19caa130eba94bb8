//! Ohno: a CNI plugin that wires pods into a node (bridge + veth), manages
//! addresses in a transactional key-value store (embedded local store or etcd),
//! and delegates allocation and naming decisions to a policy.
//!
//! Module map: `ip` (address math), `cni` (spec types), `config` (the network
//! configuration), `plugin` (one file per verb), `ipam` (pure
//! allocation logic on `store::Kv`), `store` (the Kv trait and its backends),
//! `net` (netlink plumbing), `policy` (the decision seam and the built-in default),
//! `nodefs` (the node-local directories and files root trusts), `agent` (the
//! node-local helper processes: socket, framing, bounds, what they serve).

pub mod agent;
pub mod cni;
pub mod config;
pub mod error;
pub mod ip;
pub mod ipam;
pub mod logging;
pub mod net;
pub mod nodefs;
pub mod plugin;
pub mod policy;
pub mod store;

pub use error::{Error, Result};

/// The identity of the file at `path` — device, inode, size, modification and
/// change times (a change time cannot be set back) — for what is remembered
/// against a file's content without reading it: a changed or replaced file has
/// another identity.
pub fn file_identity(path: &std::path::Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}
