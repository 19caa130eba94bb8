//! Small helpers: temporary directories, polling, file trees, IPv4 CIDRs,
//! and text tails.

use super::netns::unique_name;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

/// Python used for tiny TCP servers and clients inside namespaces.
pub const PYTHON: &str = "/usr/bin/python3";

/// A fresh directory, removed on drop; kept (and named) when the test failed.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique_name("dir"));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test failed: keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns
/// whether it held. For effects the kernel completes asynchronously, such as
/// destroying a deleted namespace's veth peers.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir` with its size: a store's footprint, to compare.
pub fn file_tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => walk(&path, out),
                Ok(m) => {
                    out.insert(path, m.len());
                }
                Err(_) => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// `"10.85.17.2/26"` → `(10.85.17.2, 26)`.
pub fn parse_cidr(s: &str) -> (Ipv4Addr, u8) {
    let (addr, len) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("{s:?} is not a CIDR"));
    let addr = addr
        .parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an IPv4 CIDR: {e}"));
    let len = len
        .parse()
        .unwrap_or_else(|e| panic!("{s:?} has a bad prefix length: {e}"));
    (addr, len)
}

/// Whether `addr` lies in `net/len`.
pub fn in_subnet(addr: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(addr) & mask == u32::from(net) & mask
}

/// The first IPv4 entry of a result's `ips`: (address, prefix length, gateway).
pub fn first_ipv4(result: &Value) -> (Ipv4Addr, u8, Option<Ipv4Addr>) {
    let ip = result["ips"]
        .as_array()
        .and_then(|ips| ips.first())
        .unwrap_or_else(|| panic!("result has no ips: {result}"));
    let (addr, len) = parse_cidr(ip["address"].as_str().unwrap_or_default());
    let gateway = ip["gateway"].as_str().and_then(|g| g.parse().ok());
    (addr, len, gateway)
}

/// A policy component `make policies` built:
/// `target/wasm32-wasip2/release/<crate_name>.wasm` (underscores), canonical.
pub fn policy_component(crate_name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release")
        .join(format!("{crate_name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the policies first (`make policies`)",
        path.display()
    );
    path.canonicalize().unwrap_or(path)
}
