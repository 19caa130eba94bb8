//! Ohno: a CNI plugin that wires pods into a node (bridge + veth), manages
//! addresses in a transactional key-value store (embedded local store or etcd),
//! and delegates allocation and naming decisions to a policy.
//!
//! Module map, lowest layer first (a module never imports one above it; see
//! host/README.md): `ip` (address math), `cni` (spec types), `config` (the
//! network configuration), `nodefs` (the node-local directories and files root
//! trusts), `store` (the Kv trait and its backends), `ipam` (allocation on
//! `store::Kv`), `net` (netlink plumbing), `policy` (the decision seam, the
//! built-in default, the WebAssembly host), `agent` (the node agent `ohnod`:
//! protocol, server, clients), `plugin` (the CNI verbs).

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
