//! Node-local block hints: a file per store, node and pool naming this node's
//! blocks as last seen and the address to try next, so an ADD's first read can
//! fetch their addresses too (or its first write can be the allocation). Only
//! a hint: every use is guarded by a transaction's compares, so a stale, wrong
//! or planted hint costs a round trip, never a wrong write.

use std::net::IpAddr;

use super::allocator::Allocator;
use super::keys::parse_block_id;
use crate::ip::cidr::{to_u128, Cidr};

/// The most of a hint file that is read: far more than the lines of every
/// block a node can hold, and a bound on what a planted file costs.
const MAX_HINT_BYTES: u64 = 1 << 20;

/// What a node-local hint file says about this node's blocks of one pool. Only a
/// hint: every use of it is guarded by a transaction's compares, so a stale,
/// wrong or foreign hint costs a round trip, never a wrong write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Hint {
    /// This node's blocks, each with its affinity key's create revision (0 when
    /// unknown: such a block is read, never written to on the hint's word).
    pub(super) blocks: Vec<(Cidr, i64)>,
    /// The address to try first on the next ADD: the first after the last one
    /// allocated that was free then.
    pub(super) next: Option<IpAddr>,
}

impl Hint {
    /// `<block-id> <revision>` lines and a `next <address>` line.
    pub(super) fn parse(text: &str) -> Hint {
        let mut hint = Hint::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("next"), Some(ip)) => hint.next = ip.parse().ok(),
                (Some(id), rev) => {
                    if let Some(b) = parse_block_id(id) {
                        let rev = rev.and_then(|r| r.parse().ok()).unwrap_or(0);
                        hint.blocks.push((b, rev));
                    }
                }
                _ => {}
            }
        }
        hint
    }

    pub(super) fn render(&self) -> String {
        let mut text: String = self
            .blocks
            .iter()
            .map(|(b, rev)| format!("{} {rev}\n", super::keys::block_id(b)))
            .collect();
        if let Some(ip) = self.next {
            text.push_str(&format!("next {ip}\n"));
        }
        text
    }
}

impl Allocator<'_> {
    /// Keep node-local hints of this node's blocks in `dir`, in files named by
    /// `scope` (one per store and node) and the pool.
    pub fn with_block_hints(mut self, dir: std::path::PathBuf, scope: u64) -> Self {
        self.hint_dir = Some((dir, scope));
        self
    }

    /// The hint file of `pool`, if this allocator keeps hints.
    pub(super) fn hint_path(&self, pool: &str) -> Option<std::path::PathBuf> {
        let (dir, scope) = self.hint_dir.as_ref()?;
        Some(dir.join(format!(
            "blocks-{:016x}",
            crate::ip::fnv1a64(&[&scope.to_le_bytes(), pool.as_bytes()])
        )))
    }

    /// This node's blocks of `pool` as last seen (empty when unknown).
    pub(super) fn read_hint(&self, pool: &str) -> Hint {
        let Some(path) = self.hint_path(pool) else {
            return Hint::default();
        };
        match crate::nodefs::read_capped(&path, MAX_HINT_BYTES) {
            Ok(bytes) => Hint::parse(&String::from_utf8_lossy(&bytes)),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::debug!("block hint {}: {e}; not used", path.display());
                }
                Hint::default()
            }
        }
    }

    /// Record the hint of `pool` (failures only logged). Overwritten in place,
    /// not replaced by a rename, which costs a directory update on every ADD: a
    /// reader that catches it half-written reads less, or stale lines, and a
    /// wrong hint only costs a round trip.
    pub(super) fn write_hint(&self, pool: &str, hint: &Hint) {
        use std::os::unix::fs::FileExt;
        let Some(path) = self.hint_path(pool) else {
            return;
        };
        let text = hint.render();
        // The directory was checked (and made) before the verb began.
        let written = crate::nodefs::open_file(&path, crate::nodefs::Access::ReadWriteCreate)
            .and_then(|f| {
                f.write_all_at(text.as_bytes(), 0)?;
                f.set_len(text.len() as u64)
            });
        if let Err(e) = written {
            log::debug!("block hint {}: {e}", path.display());
        }
    }

    /// `addr` of `pool` was freed: when it lies in a hinted block below the
    /// hinted next address, it becomes the next one (the built-in rule hands out
    /// the lowest free address).
    pub(super) fn hint_freed(&self, pool: &str, addr: IpAddr) {
        let mut hint = self.read_hint(pool);
        let in_hinted = hint
            .blocks
            .iter()
            .any(|(b, rev)| *rev > 0 && b.contains(addr));
        let lower = hint
            .next
            .is_none_or(|n| n.is_ipv4() == addr.is_ipv4() && to_u128(addr) < to_u128(n));
        if in_hinted && lower {
            hint.next = Some(addr);
            self.write_hint(pool, &hint);
        }
    }
}
