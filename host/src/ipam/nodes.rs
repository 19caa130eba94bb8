//! Node records: what each node's agent tells every other node about how to
//! reach its blocks (`<prefix>/nodes/<node>`), and taking a node out of the
//! cluster (`ohnoctl node rm`): its attachments (only when forced), its blocks
//! and its record, each in transactions that compare what was read.
//!
//! A record has no lease: an agent that crashed must not cut its pods off.
//! It is rewritten when it changes (a new underlay address, a new VTEP MAC)
//! and its `seen` time is refreshed at every resync, so `ohnoctl node ls`
//! shows a node whose agent stopped long ago.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::allocator::{Allocator, BlockRecord};
use super::keys::{last_segment, parse_block_id};
use crate::error::{Error, Result};
use crate::ip::Family;
use crate::store::{Compare, KeyValue, Kv, Txn};

/// How a node's agent carries pod traffic to other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// A route per remote block via the peer's underlay address (peers on-link).
    HostGw,
    /// A vxlan device; per peer a neighbour and FDB entry, per block a route.
    Vxlan,
    /// host-gw to on-link peers, vxlan to the others.
    Auto,
}

impl Backend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
            Backend::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "host-gw" => Some(Backend::HostGw),
            "vxlan" => Some(Backend::Vxlan),
            "auto" => Some(Backend::Auto),
            _ => None,
        }
    }

    /// Whether nodes of this backend have vxlan devices.
    pub fn has_vxlan(&self) -> bool {
        matches!(self, Backend::Vxlan | Backend::Auto)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's vxlan endpoints: one device per underlay family it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VxlanRecord {
    pub vni: u32,
    pub port: u16,
    /// MAC of the device over the IPv4 underlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MAC of the device over the IPv6 underlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac6: Option<String>,
    /// The devices' MTU (the pods' MTU on this node).
    pub mtu: u32,
}

/// `<prefix>/nodes/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub backend: Backend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanRecord>,
    /// MTU of the underlay interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The agent's version.
    pub version: String,
    /// When the agent last confirmed this record (seconds since the epoch).
    pub seen: u64,
}

impl NodeRecord {
    /// The underlay address of `family`, if the node has one.
    pub fn underlay(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.ipv4.map(IpAddr::V4),
            Family::V6 => self.ipv6.map(IpAddr::V6),
        }
    }

    /// The record without `seen`: what peers act on.
    pub fn same_except_seen(&self, other: &NodeRecord) -> bool {
        let mut a = self.clone();
        a.seen = other.seen;
        a == *other
    }
}

/// Key of `node`'s record.
pub fn node_key(prefix: &str, node: &str) -> String {
    format!("{}{node}", nodes_prefix(prefix))
}

/// The prefix of every node record.
pub fn nodes_prefix(prefix: &str) -> String {
    format!("{}/nodes/", prefix.trim_end_matches('/'))
}

/// Decode one record; the node's name is the key's last segment.
pub fn decode_record(kv: &KeyValue) -> Result<NodeRecord> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| Error::Store(format!("decode node record {}: {e}", kv.key)))
}

/// Every node record, by node name; undecodable ones are skipped with a
/// warning (one bad record must not stop routing to every other node).
pub fn list(kv: &dyn Kv, prefix: &str) -> Result<Vec<NodeRecord>> {
    Ok(kv
        .range(&nodes_prefix(prefix), false)?
        .iter()
        .filter_map(|e| match decode_record(e) {
            Ok(r) => Some(r),
            Err(err) => {
                log::warn!("{err}");
                None
            }
        })
        .collect())
}

/// Write `record` unless the store already holds it (apart from `seen`, when
/// `refresh_seen` is false). Returns whether it wrote.
pub fn publish(kv: &dyn Kv, prefix: &str, record: &NodeRecord, refresh_seen: bool) -> Result<bool> {
    let key = node_key(prefix, &record.node);
    let current = kv.get(&key)?;
    let guard = match &current {
        Some(c) => {
            if let Ok(old) = decode_record(c) {
                if old == *record || (!refresh_seen && old.same_except_seen(record)) {
                    return Ok(false);
                }
            }
            Compare::ModRevision(key.clone(), c.mod_revision)
        }
        None => Compare::absent(key.clone()),
    };
    let value =
        serde_json::to_vec(record).map_err(|e| Error::Store(format!("encode node record: {e}")))?;
    // A lost race means someone else wrote the key just now (ohnoctl node rm,
    // or a second agent claiming this node's name): read again next time.
    kv.txn(Txn::new().when(guard).put(key, value))
}

/// What taking a node out released.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removal {
    pub node: String,
    /// Attachments released (only with `force`).
    pub attachments: Vec<String>,
    /// Blocks released (`pool/block`).
    pub blocks: Vec<String>,
    /// Whether a node record was deleted.
    pub record: bool,
}

/// Take `node` out of the cluster: refuse while it has attachments unless
/// `force` (then release them, as DEL would), release its blocks (claim and
/// affinity in one transaction comparing the claim), delete its record.
pub fn remove(alloc: &Allocator<'_>, node: &str, force: bool) -> Result<Removal> {
    let kv = alloc.kv();
    let keys = alloc.keys().clone();
    let mut out = Removal {
        node: node.to_string(),
        ..Removal::default()
    };
    let mine: Vec<_> = alloc
        .attachments(None)?
        .into_iter()
        .filter(|a| a.owner.node == node)
        .collect();
    if !mine.is_empty() && !force {
        return Err(Error::InvalidConfig {
            field: "node".into(),
            msg: format!(
                "node {node} still has {} attachment(s) (first: {}/{}/{}); \
                 delete its pods first, or pass --force to release them",
                mine.len(),
                mine[0].owner.network,
                mine[0].owner.container_id,
                mine[0].owner.ifname
            ),
        });
    }
    for a in &mine {
        let id = a.owner.id();
        if alloc.release(&id)?.is_some() {
            out.attachments
                .push(format!("{}/{}/{}", id.network, id.container_id, id.ifname));
        }
    }
    let aff_prefix = format!("{}/affinity/{node}/", keys.prefix());
    for aff in kv.range(&aff_prefix, true)? {
        let rest = &aff.key[aff_prefix.len()..];
        let Some((pool, block_id)) = rest.split_once('/') else {
            continue;
        };
        let Some(block) = parse_block_id(last_segment(block_id)) else {
            continue;
        };
        let block_key = keys.block(pool, &block);
        let mut txn = Txn::new().delete(aff.key.clone());
        if let Some(claim) = kv.get(&block_key)? {
            let rec: Option<BlockRecord> = serde_json::from_slice(&claim.value).ok();
            if rec.as_ref().is_some_and(|r| r.node == node) {
                txn = txn
                    .when(Compare::ModRevision(block_key.clone(), claim.mod_revision))
                    .delete(block_key.clone());
            }
        }
        // The block must hold no address any more (released above, or
        // never used): a claim is only given back empty.
        let ips = kv.range(&keys.ips_of_block(pool, &block), true)?;
        if !ips.is_empty() {
            return Err(Error::Store(format!(
                "block {pool}/{block} of node {node} still holds {} address(es) \
                 (first {}); not released",
                ips.len(),
                ips[0].key
            )));
        }
        if kv.txn(txn.when(Compare::ModRevision(aff.key.clone(), aff.mod_revision)))? {
            out.blocks.push(format!("{pool}/{block}"));
        }
    }
    // Claims without their affinity index (a crash between versions, or an
    // index removed by hand): found by the claim's owner.
    for claim in kv.range(&format!("{}/blocks/", keys.prefix()), false)? {
        let Ok(rec) = serde_json::from_slice::<BlockRecord>(&claim.value) else {
            continue;
        };
        if rec.node != node {
            continue;
        }
        let rest = &claim.key[keys.prefix().len() + "/blocks/".len()..];
        let Some((pool, id)) = rest.split_once('/') else {
            continue;
        };
        let Some(block) = parse_block_id(id) else {
            continue;
        };
        if !kv.range(&keys.ips_of_block(pool, &block), true)?.is_empty() {
            continue;
        }
        let txn = Txn::new()
            .when(Compare::ModRevision(claim.key.clone(), claim.mod_revision))
            .delete(claim.key.clone());
        if kv.txn(txn)? {
            out.blocks.push(format!("{pool}/{block}"));
        }
    }
    let key = node_key(keys.prefix(), node);
    if let Some(rec) = kv.get(&key)? {
        let txn = Txn::new()
            .when(Compare::ModRevision(key.clone(), rec.mod_revision))
            .delete(key);
        out.record = kv.txn(txn)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{suite, Want};
    use crate::store::memory::MemoryStore;

    fn record(node: &str, v4: &str) -> NodeRecord {
        NodeRecord {
            node: node.into(),
            ipv4: Some(v4.parse().unwrap()),
            ipv6: None,
            backend: Backend::Auto,
            vxlan: Some(VxlanRecord {
                vni: 4096,
                port: 4789,
                mac: Some("02:00:00:00:00:01".into()),
                mac6: None,
                mtu: 1450,
            }),
            mtu: Some(1500),
            version: "test".into(),
            seen: 1,
        }
    }

    #[test]
    fn records_are_written_once_and_rewritten_on_change() {
        let kv = MemoryStore::new();
        let r = record("n1", "192.0.2.10");
        assert!(publish(&kv, "/ohno", &r, false).unwrap());
        let mut later = r.clone();
        later.seen = 2;
        assert!(
            !publish(&kv, "/ohno", &later, false).unwrap(),
            "only seen changed"
        );
        assert!(publish(&kv, "/ohno", &later, true).unwrap());
        let mut moved = later.clone();
        moved.ipv4 = Some("192.0.2.77".parse().unwrap());
        assert!(publish(&kv, "/ohno", &moved, false).unwrap());
        assert_eq!(list(&kv, "/ohno").unwrap(), vec![moved]);
        let raw = kv.get("/ohno/nodes/n1").unwrap().unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&raw.value).unwrap();
        assert_eq!(doc["backend"], "auto");
        assert_eq!(doc["ipv4"], "192.0.2.77");
        assert_eq!(doc["vxlan"]["mac"], "02:00:00:00:00:01");
    }

    #[test]
    fn a_node_with_pods_is_removed_only_when_forced() {
        let kv = MemoryStore::new();
        let pool = suite::pool("default", "10.85.0.0/16", 26);
        let alloc = Allocator::new(&kv, "/ohno", "n1");
        alloc.ensure_pool(&pool).unwrap();
        let owner = suite::owner("c1", "n1");
        alloc.allocate(&owner, &[Want::any(&pool)]).unwrap();
        publish(&kv, "/ohno", &record("n1", "192.0.2.10"), false).unwrap();
        // Another node's block and record stay.
        let other = Allocator::new(&kv, "/ohno", "n2");
        let o2 = suite::owner("c2", "n2");
        other.allocate(&o2, &[Want::any(&pool)]).unwrap();
        publish(&kv, "/ohno", &record("n2", "192.0.2.11"), false).unwrap();

        let admin = Allocator::new(&kv, "/ohno", "admin");
        let err = remove(&admin, "n1", false).unwrap_err().to_string();
        assert!(err.contains("still has 1 attachment"), "{err}");
        assert!(kv.get("/ohno/nodes/n1").unwrap().is_some());

        let done = remove(&admin, "n1", true).unwrap();
        assert_eq!(done.attachments, vec!["podnet/c1/eth0".to_string()]);
        assert_eq!(done.blocks.len(), 1, "{done:?}");
        assert!(done.record);
        assert!(kv.get("/ohno/nodes/n1").unwrap().is_none());
        assert!(kv.range("/ohno/affinity/n1/", true).unwrap().is_empty());
        let claims = kv.range("/ohno/blocks/", false).unwrap();
        assert_eq!(claims.len(), 1);
        assert!(String::from_utf8_lossy(&claims[0].value).contains("\"n2\""));
        assert!(kv.get("/ohno/nodes/n2").unwrap().is_some());
        assert!(admin.audit().unwrap().is_empty());
        // Nothing left: a second removal releases nothing and succeeds.
        let again = remove(&admin, "n1", false).unwrap();
        assert!(again.blocks.is_empty() && !again.record);
    }
}
