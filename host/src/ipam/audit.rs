//! Operator-facing whole-store views: garbage collection of stale attachments and
//! the consistency check behind `ohnoctl ipam check`. These read every key of a
//! kind (they are admin tools, not the ADD path).

use std::collections::{BTreeMap, HashSet};

use super::allocator::{Allocator, BlockRecord};
use super::keys::{last_segment, parse_block_id};
use super::model::{AttachmentRecord, Owner};
use crate::error::{Error, Result};

/// What a GC pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub released: Vec<String>,
    pub kept: usize,
}

/// One inconsistency found by [`Allocator::audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// An address key whose owner has no attachment listing that address.
    AddressWithoutAttachment { key: String, owner: String },
    /// An attachment listing an address whose key is missing or held by another.
    AttachmentWithoutAddress { attachment: String, address: String },
    /// A block claim without its affinity index entry, or the reverse.
    BlockIndexMismatch { block: String, detail: String },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::AddressWithoutAttachment { key, owner } => {
                write!(f, "address without attachment: {key} (owner {owner})")
            }
            Finding::AttachmentWithoutAddress {
                attachment,
                address,
            } => {
                write!(
                    f,
                    "attachment without address: {attachment} lists {address}"
                )
            }
            Finding::BlockIndexMismatch { block, detail } => {
                write!(f, "block index mismatch: {block}: {detail}")
            }
        }
    }
}

fn decode<T: for<'de> serde::Deserialize<'de>>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| Error::Store(format!("decode {key}: {e}")))
}

impl Allocator<'_> {
    /// Release `node`'s attachments on `network` whose (container id, ifname) is not
    /// in `valid`. Never touches another node's attachments.
    pub fn gc(
        &self,
        network: &str,
        node: &str,
        valid: &HashSet<(String, String)>,
    ) -> Result<GcReport> {
        let mut report = GcReport::default();
        for att in self.attachments(Some(network))? {
            let o = &att.owner;
            if o.node != node {
                continue;
            }
            if valid.contains(&(o.container_id.clone(), o.ifname.clone())) {
                report.kept += 1;
                continue;
            }
            log::info!(
                "gc: releasing stale attachment {}/{} on {node}",
                o.container_id,
                o.ifname
            );
            self.release(&o.id())?;
            report
                .released
                .push(format!("{}/{}", o.container_id, o.ifname));
        }
        Ok(report)
    }

    /// Cross-check address keys, attachment keys and block indexes.
    pub fn audit(&self) -> Result<Vec<Finding>> {
        let mut findings = Vec::new();
        let atts: Vec<(String, AttachmentRecord)> = self
            .kv()
            .range(&self.keys().all_attachments(), false)?
            .into_iter()
            .map(|kv| decode(&kv.key, &kv.value).map(|a| (kv.key, a)))
            .collect::<Result<_>>()?;
        // (pool, ip) → attachment key, from the attachments' side.
        let mut listed: BTreeMap<(String, String), String> = BTreeMap::new();
        for (key, a) in &atts {
            for ip in &a.ips {
                let addr = ip.address.split('/').next().unwrap_or_default().to_string();
                listed.insert((ip.pool.clone(), addr), key.clone());
            }
        }
        let mut held: HashSet<(String, String)> = HashSet::new();
        for kv in self.kv().range(&self.keys().all_ips(), false)? {
            // <prefix>/ips/<pool>/<block>/<ip>
            let rest = kv
                .key
                .strip_prefix(&self.keys().all_ips())
                .unwrap_or(&kv.key);
            let pool = rest.split('/').next().unwrap_or_default().to_string();
            let addr = last_segment(&kv.key).to_string();
            let owner: Owner = decode(&kv.key, &kv.value)?;
            let own_key =
                self.keys()
                    .attachment(&owner.network, &owner.container_id, &owner.ifname);
            match listed.get(&(pool.clone(), addr.clone())) {
                Some(att_key) if *att_key == own_key => {
                    held.insert((pool, addr));
                }
                _ => findings.push(Finding::AddressWithoutAttachment {
                    key: kv.key.clone(),
                    owner: format!(
                        "{}/{}/{} on {}",
                        owner.network, owner.container_id, owner.ifname, owner.node
                    ),
                }),
            }
        }
        for ((pool, addr), att_key) in &listed {
            if !held.contains(&(pool.clone(), addr.clone())) {
                findings.push(Finding::AttachmentWithoutAddress {
                    attachment: att_key.clone(),
                    address: format!("{addr} (pool {pool})"),
                });
            }
        }
        // Block claims and the per-node affinity index must agree.
        let mut claims: BTreeMap<(String, String), String> = BTreeMap::new();
        let blocks_prefix = format!("{}/blocks/", self.keys().prefix());
        for kv in self.kv().range(&blocks_prefix, false)? {
            let rest = kv.key.strip_prefix(&blocks_prefix).unwrap_or(&kv.key);
            let pool = rest.split('/').next().unwrap_or_default().to_string();
            let rec: BlockRecord = decode(&kv.key, &kv.value)?;
            claims.insert((pool, last_segment(&kv.key).to_string()), rec.node);
        }
        let mut indexed: HashSet<(String, String)> = HashSet::new();
        for kv in self.kv().range(&self.keys().all_affinities(), true)? {
            // <prefix>/affinity/<node>/<pool>/<block>
            let rest = kv
                .key
                .strip_prefix(&self.keys().all_affinities())
                .unwrap_or(&kv.key);
            let parts: Vec<&str> = rest.split('/').collect();
            if parts.len() != 3 || parse_block_id(parts[2]).is_none() {
                continue;
            }
            let (node, pool, block) = (parts[0], parts[1], parts[2]);
            match claims.get(&(pool.to_string(), block.to_string())) {
                Some(n) if n == node => {
                    indexed.insert((pool.to_string(), block.to_string()));
                }
                other => findings.push(Finding::BlockIndexMismatch {
                    block: format!("{pool}/{block}"),
                    detail: format!("index says node {node}, claim says {other:?}"),
                }),
            }
        }
        for ((pool, block), node) in &claims {
            if !indexed.contains(&(pool.clone(), block.clone())) {
                findings.push(Finding::BlockIndexMismatch {
                    block: format!("{pool}/{block}"),
                    detail: format!("claimed by {node} but missing from its index"),
                });
            }
        }
        Ok(findings)
    }
}

/// One claimed block and how much of it is in use (`ohnoctl ipam blocks`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockUsage {
    pub pool: String,
    pub block: String,
    pub node: String,
    pub used: usize,
    pub usable: u128,
}

/// A pool's usage, by node (the agent's metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolUsage {
    pub pool: String,
    pub blocks_by_node: BTreeMap<String, usize>,
    pub used_by_node: BTreeMap<String, usize>,
    /// Usable addresses of the pool, in claimed blocks or not, not in use.
    pub free: u128,
}

impl Allocator<'_> {
    /// Every claimed block of `pools` with its owner and use.
    pub fn block_usage(&self, pools: &[crate::config::PoolConf]) -> Result<Vec<BlockUsage>> {
        let mut rows = Vec::new();
        for pool in pools {
            let layout = super::block::Layout::new(pool);
            for kv in self
                .kv()
                .range(&self.keys().blocks_of_pool(&pool.name), false)?
            {
                let Some(block) = parse_block_id(last_segment(&kv.key)) else {
                    continue;
                };
                let rec: BlockRecord = decode(&kv.key, &kv.value)?;
                let used = self.used(pool, &block)?.len();
                rows.push(BlockUsage {
                    pool: pool.name.clone(),
                    block: block.to_string(),
                    node: rec.node,
                    used,
                    usable: layout.usable_count(&block),
                });
            }
        }
        Ok(rows)
    }

    /// Per pool: blocks and addresses in use by node, and free addresses.
    pub fn pool_usage(&self, pools: &[crate::config::PoolConf]) -> Result<Vec<PoolUsage>> {
        let rows = self.block_usage(pools)?;
        Ok(pools
            .iter()
            .map(|pool| {
                let layout = super::block::Layout::new(pool);
                // Exact up to 65536 blocks (every IPv4 pool of /16 blocks or
                // more); beyond, the first block's count times the blocks.
                let count = layout.block_count();
                let total = if count <= 1 << 16 {
                    (0..count)
                        .map(|i| layout.usable_count(&layout.block_at(i)))
                        .sum()
                } else {
                    layout
                        .usable_count(&layout.block_at(0))
                        .saturating_mul(count)
                };
                let mut usage = PoolUsage {
                    pool: pool.name.clone(),
                    ..PoolUsage::default()
                };
                let mut used = 0u128;
                for r in rows.iter().filter(|r| r.pool == pool.name) {
                    *usage.blocks_by_node.entry(r.node.clone()).or_default() += 1;
                    *usage.used_by_node.entry(r.node.clone()).or_default() += r.used;
                    used += r.used as u128;
                }
                usage.free = total.saturating_sub(used);
                usage
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::suite::{owner, pool};
    use crate::ipam::Want;
    use crate::store::memory::MemoryStore;
    use crate::store::{Kv, Txn};

    #[test]
    fn gc_releases_only_this_nodes_stale_attachments() {
        let m = MemoryStore::new();
        let p = pool("default", "10.85.0.0/16", 26);
        let a = Allocator::new(&m, "/ohno", "node-a");
        let b = Allocator::new(&m, "/ohno", "node-b");
        for c in ["keep", "stale"] {
            a.allocate(&owner(c, "node-a"), &[Want::any(&p)]).unwrap();
        }
        b.allocate(&owner("other-node", "node-b"), &[Want::any(&p)])
            .unwrap();
        let valid: HashSet<(String, String)> = [("keep".to_string(), "eth0".to_string())].into();
        let r = a.gc("podnet", "node-a", &valid).unwrap();
        assert_eq!(r.released, vec!["stale/eth0"]);
        assert_eq!(r.kept, 1);
        assert!(a
            .find(&owner("other-node", "node-b").id())
            .unwrap()
            .is_some());
        assert!(a.find(&owner("stale", "node-a").id()).unwrap().is_none());
        assert!(a.audit().unwrap().is_empty());
    }

    #[test]
    fn audit_finds_orphans_on_both_sides() {
        let m = MemoryStore::new();
        let p = pool("default", "10.85.0.0/16", 26);
        let a = Allocator::new(&m, "/ohno", "node-a");
        let r1 = a
            .allocate(&owner("one", "node-a"), &[Want::any(&p)])
            .unwrap();
        let r2 = a
            .allocate(&owner("two", "node-a"), &[Want::any(&p)])
            .unwrap();
        assert!(a.audit().unwrap().is_empty());
        // Orphan an address: drop one's attachment key. Orphan an attachment: drop two's address key.
        m.txn(Txn::new().delete(a.keys().attachment("podnet", "one", "eth0")))
            .unwrap();
        let block = crate::ip::cidr::Cidr::parse(&r2.ips[0].block).unwrap();
        let ip2 = r2.ips[0]
            .address
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        m.txn(Txn::new().delete(a.keys().ip("default", &block, ip2)))
            .unwrap();
        let f = a.audit().unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().any(|x| matches!(x, Finding::AddressWithoutAttachment { owner, .. } if owner.contains("one"))));
        assert!(f.iter().any(|x| matches!(x, Finding::AttachmentWithoutAddress { attachment, .. } if attachment.contains("two"))));
        let _ = r1;
    }
}
