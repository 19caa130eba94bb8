//! The read-only view of this node's free addresses that a policy's
//! `ohno:policy/host` imports ([`super::imports`]) answer from.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::PoolConf;
use crate::ip::cidr::{from_u128, to_u128};
use crate::ipam::block::Layout;
use crate::ipam::Allocator;
use crate::store::Kv;

/// This node's blocks of a pool with their used sets, as the view first read them.
type OwnBlocks = Vec<(crate::ip::cidr::Cidr, BTreeSet<u128>)>;

/// The read-only view of the store a policy's `host` imports answer from. Each
/// pool's blocks are read once per view (one ADD) and remembered: a policy that
/// walks the free addresses one call at a time costs no further store reads.
/// The allocation transaction, not the view, has the final word on freedom.
#[derive(Clone)]
pub struct HostView {
    kv: Arc<dyn Kv>,
    prefix: String,
    node: String,
    pools: Vec<PoolConf>,
    seen: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<OwnBlocks>>>>,
}

impl HostView {
    /// Forget what this view has read: a store prepared ahead of its ADD (the
    /// agent) sees the node as it is when the ADD arrives.
    pub fn forget(&self) {
        match self.seen.lock() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }

    pub fn new(kv: Arc<dyn Kv>, prefix: &str, node: &str, pools: Vec<PoolConf>) -> HostView {
        HostView {
            kv,
            prefix: prefix.to_string(),
            node: node.to_string(),
            pools,
            seen: Default::default(),
        }
    }

    fn pool(&self, name: &str) -> Option<&PoolConf> {
        self.pools.iter().find(|p| p.name == name)
    }

    fn allocator(&self) -> Allocator<'_> {
        Allocator::new(&*self.kv, &self.prefix, &self.node)
    }

    /// This node's blocks of `pool` with their used sets (read once per view).
    fn own(&self, pool: &PoolConf) -> Arc<OwnBlocks> {
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(own) = seen.get(&pool.name) {
            return own.clone();
        }
        let alloc = self.allocator();
        let mut blocks: Vec<_> = match alloc.own_blocks(pool) {
            Ok(b) => b.into_iter().map(|(b, _)| b).collect(),
            Err(e) => {
                // Not remembered: the next call tries the store again.
                log::warn!("policy view: read blocks of {}: {e}", pool.name);
                return Arc::new(Vec::new());
            }
        };
        blocks.sort();
        let own: Arc<OwnBlocks> = Arc::new(
            blocks
                .into_iter()
                .filter_map(|b| alloc.used(pool, &b).ok().map(|u| (b, u)))
                .collect(),
        );
        seen.insert(pool.name.clone(), own.clone());
        own
    }

    pub fn next_free(&self, pool: &str, after: Option<IpAddr>) -> Option<IpAddr> {
        let pool = self.pool(pool)?;
        let layout = Layout::new(pool);
        let after = after
            .filter(|a| a.is_ipv4() == pool.subnet.is_ipv4())
            .map(to_u128);
        self.own(pool)
            .iter()
            .filter_map(|(b, used)| {
                // Blocks wholly below `after` have nothing for us.
                if after.is_some_and(|a| b.last() <= a) {
                    return None;
                }
                layout.first_free(b, used, after)
            })
            .min()
            .map(|n| from_u128(n, pool.subnet.is_ipv4()))
    }

    pub fn is_free(&self, pool: &str, addr: IpAddr) -> bool {
        let Some(pool) = self.pool(pool) else {
            return false;
        };
        let Ok(block) = Layout::new(pool).check_usable(addr) else {
            return false;
        };
        let key = self.allocator().keys().ip(&pool.name, &block, addr);
        matches!(self.kv.get(&key), Ok(None))
    }

    pub fn free_count(&self, pool: &str) -> u64 {
        let Some(pool) = self.pool(pool) else {
            return 0;
        };
        let layout = Layout::new(pool);
        self.own(pool)
            .iter()
            .map(|(b, used)| {
                let usable = layout.usable_count(b);
                let taken = used
                    .iter()
                    .filter(|n| layout.check_usable(from_u128(**n, b.is_ipv4())).is_ok())
                    .count();
                usable.saturating_sub(taken as u128) as u64
            })
            .sum()
    }
}
