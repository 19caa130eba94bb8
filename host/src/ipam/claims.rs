//! Block claims: a node takes a free block with a create-if-absent
//! transaction (the block key and the node's affinity key together), and a
//! node-local lock serializes claims on one node, so a burst of ADDs that
//! finds the node's blocks full claims one new block, not one each.

use std::collections::HashSet;

use super::allocator::{block_of_key, encode, Allocator, BlockRecord};
use super::block::Layout;
use super::model::now;
use crate::config::PoolConf;
use crate::error::Result;
use crate::ip::cidr::Cidr;
use crate::store::{Compare, KeyValue, Txn};

impl Allocator<'_> {
    /// Serialize block claims of this node's processes through `path` (flock).
    pub fn with_claim_lock(mut self, path: std::path::PathBuf) -> Self {
        self.claim_lock = Some(path);
        self
    }

    /// Take the node-local claim lock (released on drop). A lock that cannot be
    /// taken is logged and skipped: it only prevents over-claiming, never duplicates
    /// (the transactions do that).
    pub(super) fn lock_claims(&self) -> Option<nix::fcntl::Flock<std::fs::File>> {
        let path = self.claim_lock.as_ref()?;
        let file = crate::nodefs::open_file(path, crate::nodefs::Access::ReadWriteCreate)
            .inspect_err(|e| log::warn!("open claim lock {}: {e}", path.display()))
            .ok()?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive) {
            Ok(g) => Some(g),
            Err((_, e)) => {
                log::warn!("lock {}: {e}", path.display());
                None
            }
        }
    }

    /// This node's blocks of `pool`, each with the compare that proves it still is.
    pub fn own_blocks(&self, pool: &PoolConf) -> Result<Vec<(Cidr, Compare)>> {
        let affinities = self
            .kv
            .range(&self.keys.affinities(&self.node, &pool.name), true)?;
        Ok(self.blocks_of(&Layout::new(pool), &affinities))
    }

    /// The blocks named by affinity keys, each with its compare.
    pub(super) fn blocks_of(
        &self,
        layout: &Layout,
        affinities: &[KeyValue],
    ) -> Vec<(Cidr, Compare)> {
        affinities
            .iter()
            .filter_map(|kv| {
                let b = block_of_key(layout, kv)?;
                Some((
                    b,
                    Compare::CreateRevision(kv.key.clone(), kv.create_revision),
                ))
            })
            .collect()
    }

    /// Claim `block` for this node. Ok(false) if someone else holds it.
    pub(super) fn claim(&self, pool: &PoolConf, block: &Cidr) -> Result<bool> {
        let key = self.keys.block(&pool.name, block);
        let rec = BlockRecord {
            node: self.node.clone(),
            claimed: now(),
        };
        let ok = self.kv.txn(
            Txn::new()
                .when(Compare::absent(&key))
                .put(key, encode(&rec))
                .put(
                    self.keys.affinity(&self.node, &pool.name, block),
                    Vec::new(),
                ),
        )?;
        if ok {
            log::info!(
                "node {} claimed block {block} of pool {:?}",
                self.node,
                pool.name
            );
        }
        Ok(ok)
    }

    /// Claim a free block, starting at a position seeded by the node name so nodes
    /// do not race for the same one. Ok(false) when every block is taken.
    pub(super) fn claim_new_block(&self, pool: &PoolConf) -> Result<bool> {
        let layout = Layout::new(pool);
        let claimed: HashSet<u128> = self
            .kv
            .range(&self.keys.blocks_of_pool(&pool.name), true)?
            .iter()
            .filter_map(|kv| block_of_key(&layout, kv))
            .map(|b| layout.block_index(&b))
            .collect();
        let (lo, hi) = layout.candidate_blocks();
        let n = hi - lo + 1;
        let seed = crate::ip::fnv1a64(&[self.node.as_bytes(), pool.name.as_bytes()]) as u128 % n;
        let tries = n.min(claimed.len() as u128 + 4096);
        let mut k = 0u128;
        while k < tries {
            let idx = lo + (seed + k) % n;
            k += 1;
            if claimed.contains(&idx) {
                continue;
            }
            let block = layout.block_at(idx);
            if layout.usable_count(&block) == 0 {
                continue;
            }
            if self.claim(pool, &block)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
