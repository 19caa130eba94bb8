//! The allocator: claims blocks for this node, picks free addresses in them, and
//! writes address keys and the attachment key in one transaction with compares.
//! Conflicts (another process won a race) are retried a bounded number of times;
//! there is never a read-then-write without a compare guarding it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::block::Layout;
use super::hints::Hint;
use super::keys::{last_segment, parse_block_id, Keys};
use super::model::{now, AttachmentId, AttachmentRecord, IpRecord, Owner};
use crate::config::{NetConf, PoolConf};
use crate::error::{Error, Result};
use crate::ip::cidr::{from_u128, to_u128, Cidr};
use crate::store::{Compare, Freshness, KeyValue, Kv, Read, Txn};

/// How many times a transaction that lost a race is retried before code 11.
pub const MAX_ATTEMPTS: usize = 64;

/// Hinted blocks per pool whose addresses the first look fetches (the rest are
/// read when needed): a batch stays well inside etcd's 128 operations per
/// transaction however many blocks a node holds.
const PREFETCH_BLOCKS: usize = 32;

/// One address to allocate: from `pool`, a specific `address` or any free one.
#[derive(Debug, Clone, Copy)]
pub struct Want<'p> {
    pub pool: &'p PoolConf,
    pub address: Option<IpAddr>,
}

impl<'p> Want<'p> {
    /// Any free address of `pool`.
    pub fn any(pool: &'p PoolConf) -> Want<'p> {
        Want {
            pool,
            address: None,
        }
    }

    /// Exactly `address` of `pool`.
    pub fn exact(pool: &'p PoolConf, address: IpAddr) -> Want<'p> {
        Want {
            pool,
            address: Some(address),
        }
    }
}

/// The stored pool definition; a node whose config disagrees gets code 7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolRecord {
    pub subnet: String,
    pub block_size: u8,
}

/// The stored block claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockRecord {
    pub node: String,
    pub claimed: u64,
}

/// A chosen address, with the compare that guards the block it came from.
struct Pick {
    pool: String,
    block: Cidr,
    ip: IpAddr,
    guard: Option<Compare>,
    /// When the block is one of this node's: its affinity's create revision, and
    /// the next address to try after this one (the first free after it, as seen).
    own: Option<(i64, Option<u128>)>,
}

/// IPAM for one node against one store.
pub struct Allocator<'a> {
    pub(super) kv: &'a dyn Kv,
    pub(super) keys: Keys,
    pub(super) node: String,
    /// When false, a node whose blocks are full and finds no free block may borrow
    /// an address from another node's block.
    pub(super) strict_affinity: bool,
    /// A node-local lock file taken around block claims, so a burst of ADDs on one
    /// node that finds its blocks full claims one new block, not one each.
    pub(super) claim_lock: Option<std::path::PathBuf>,
    /// Node-local hint files (one per store, node and pool) naming this node's
    /// blocks as last seen, so the first read can fetch their addresses too.
    pub(super) hint_dir: Option<(std::path::PathBuf, u64)>,
}

/// What the first batched read fetched for one wanted pool.
struct Prefetched<'s> {
    affinities: &'s [KeyValue],
    /// Addresses in use per hinted block.
    used: Vec<(Cidr, &'s [KeyValue])>,
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::Store(format!("decode {}: {e}", kv.key)))
}

pub(super) fn pool_record(pool: &PoolConf) -> PoolRecord {
    PoolRecord {
        subnet: pool.subnet.to_string(),
        block_size: pool.block_size,
    }
}

/// The stored definition `kv` of `pool` agrees with this node's config (code 7 if not).
pub(super) fn check_pool(pool: &PoolConf, kv: &KeyValue) -> Result<()> {
    let (have, want): (PoolRecord, PoolRecord) = (decode(kv)?, pool_record(pool));
    if have == want {
        return Ok(());
    }
    Err(Error::config(
        format!("ipam.pools[{}]", pool.name),
        format!(
            "pool {:?} is stored as subnet {} blockSize {} but this node's config says subnet {} blockSize {}; \
             fix the config (pools are cluster-wide and cannot be split)",
            pool.name, have.subnet, have.block_size, want.subnet, want.block_size
        ),
    ))
}

/// The block a block or affinity key names, when it is a block of `layout`'s pool.
pub(super) fn block_of_key(layout: &Layout, kv: &KeyValue) -> Option<Cidr> {
    parse_block_id(last_segment(&kv.key)).filter(|b| layout.owns_block(b))
}

/// The addresses named by the keys of an `ips_of_block` range, as numbers.
pub(super) fn addresses_of(kvs: &[KeyValue]) -> BTreeSet<u128> {
    kvs.iter()
        .filter_map(|kv| last_segment(&kv.key).parse::<IpAddr>().ok().map(to_u128))
        .collect()
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}
impl<'a> Allocator<'a> {
    pub fn new(kv: &'a dyn Kv, prefix: &str, node: &str) -> Allocator<'a> {
        Allocator {
            kv,
            keys: Keys::new(prefix),
            node: node.to_string(),
            strict_affinity: true,
            claim_lock: None,
            hint_dir: None,
        }
    }

    /// The allocator a network config describes: its store prefix, node and
    /// affinity rule.
    pub fn from_conf(kv: &'a dyn Kv, conf: &NetConf) -> Allocator<'a> {
        // One lock per store and node: unrelated stores never wait on each other.
        let store_id = format!("{:?}", conf.ipam.store);
        let scope = crate::ip::fnv1a64(&[store_id.as_bytes(), conf.node.as_bytes()]);
        let lock = conf.ipam.lock_dir.join(format!("claim-{scope:016x}.lock"));
        Allocator::new(kv, conf.ipam.store.prefix(), &conf.node)
            .with_strict_affinity(conf.ipam.strict_affinity)
            .with_claim_lock(lock)
            .with_block_hints(conf.ipam.lock_dir.clone(), scope)
    }

    /// Allow (false) or forbid (true, the default) borrowing from other nodes' blocks.
    pub fn with_strict_affinity(mut self, strict: bool) -> Self {
        self.strict_affinity = strict;
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn kv(&self) -> &dyn Kv {
        self.kv
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Store the pool definition on first use; refuse a config that disagrees.
    pub fn ensure_pool(&self, pool: &PoolConf) -> Result<()> {
        let want = pool_record(pool);
        let key = self.keys.pool(&pool.name);
        for _ in 0..MAX_ATTEMPTS {
            if let Some(kv) = self.kv.get(&key)? {
                return check_pool(pool, &kv);
            }
            if self.kv.txn(
                Txn::new()
                    .when(Compare::absent(&key))
                    .put(&key, encode(&want)),
            )? {
                return Ok(());
            }
        }
        Err(Error::TryAgainLater(format!(
            "store contention writing pool {:?}",
            pool.name
        )))
    }

    /// The attachment, if recorded.
    pub fn find(&self, id: &AttachmentId) -> Result<Option<AttachmentRecord>> {
        let key = self
            .keys
            .attachment(&id.network, &id.container_id, &id.ifname);
        self.kv.get(&key)?.map(|kv| decode(&kv)).transpose()
    }

    /// Allocate one address per `want` for `owner`, or return the addresses already
    /// recorded for this attachment (a repeated ADD).
    pub fn allocate(&self, owner: &Owner, wants: &[Want<'_>]) -> Result<AttachmentRecord> {
        self.allocate_or_find(owner, wants)
            .map(|(record, _)| record)
    }

    /// [`Allocator::allocate`], also saying whether the attachment was already
    /// recorded (a repeated ADD: `true`, nothing written).
    ///
    /// Round trips on the common path: one. The node-local hint of each pool
    /// names this node's blocks (with their affinities' revisions) and the
    /// address to try next; the allocation transaction is sent at once, guarded
    /// by the attachment being absent, the address being free, the affinity
    /// being unchanged and the pool definition agreeing. If any of that fails,
    /// the same transaction's failure branch reads what the careful path needs
    /// (the attachment, each pool's definition, this node's affinities, the
    /// addresses of the hinted blocks), and it goes on from there: one more
    /// transaction, whose compares guard every answer again. Without a usable
    /// hint the first look is one batched read that may lag, then the
    /// transaction. After a lost race the retries read the latest state.
    pub fn allocate_or_find(
        &self,
        owner: &Owner,
        wants: &[Want<'_>],
    ) -> Result<(AttachmentRecord, bool)> {
        let id = owner.id();
        let att_key = self
            .keys
            .attachment(&id.network, &id.container_id, &id.ifname);
        let hints: Vec<Hint> = wants
            .iter()
            .map(|w| match w.address {
                None => self.read_hint(&w.pool.name),
                Some(_) => Hint::default(),
            })
            .collect();
        let mut reads = vec![Read::Get(att_key.clone())];
        for (w, hint) in wants.iter().zip(&hints) {
            reads.push(Read::Get(self.keys.pool(&w.pool.name)));
            reads.push(Read::Range {
                prefix: self.keys.affinities(&self.node, &w.pool.name),
                keys_only: true,
            });
            for (b, _) in hint.blocks.iter().take(PREFETCH_BLOCKS) {
                reads.push(Read::Range {
                    prefix: self.keys.ips_of_block(&w.pool.name, b),
                    keys_only: true,
                });
            }
        }
        let (snapshot, fresh) = match self.hinted_picks(wants, &hints) {
            Some(picks) => {
                let (mut txn, record) = self.allocation_txn(owner, &att_key, &picks);
                for w in wants {
                    txn = txn.when(Compare::Value(
                        self.keys.pool(&w.pool.name),
                        encode(&pool_record(w.pool)),
                    ));
                }
                match self.kv.txn_or_read(txn, &reads)? {
                    None => {
                        self.allocated(&id, &record, 0, "the hinted address");
                        self.update_hints(wants, &hints, &picks, None);
                        return Ok((record, false));
                    }
                    Some(snapshot) => {
                        log::debug!(
                            "the hinted address was not free or the hint is stale; reading"
                        );
                        (snapshot, true)
                    }
                }
            }
            None => (self.kv.read_batch(&reads, Freshness::MayLag)?, false),
        };
        // Recorded (or was, a moment ago): confirm against the latest state.
        if let Some(kv) = snapshot[0].first() {
            if fresh {
                return Ok((decode(kv)?, true));
            }
            if let Some(existing) = self.find(&id)? {
                return Ok((existing, true));
            }
        }
        let mut prefetched: Vec<Option<Prefetched<'_>>> = Vec::with_capacity(wants.len());
        // This node's blocks of each pool as this read saw them, for the hints.
        let mut own_seen: Vec<Vec<(Cidr, i64)>> = Vec::with_capacity(wants.len());
        let mut at = 1;
        for (w, hint) in wants.iter().zip(&hints) {
            match snapshot[at].first() {
                Some(kv) => check_pool(w.pool, kv)?,
                None => self.ensure_pool(w.pool)?,
            }
            let affinities = &snapshot[at + 1];
            let layout = Layout::new(w.pool);
            own_seen.push(
                affinities
                    .iter()
                    .filter_map(|kv| Some((block_of_key(&layout, kv)?, kv.create_revision)))
                    .collect(),
            );
            let n = hint.blocks.len().min(PREFETCH_BLOCKS);
            let used: Vec<(Cidr, &[KeyValue])> = hint
                .blocks
                .iter()
                .zip(&snapshot[at + 2..at + 2 + n])
                .map(|((b, _), kvs)| (*b, kvs.as_slice()))
                .collect();
            at += 2 + n;
            prefetched.push(Some(Prefetched { affinities, used }));
        }
        for attempt in 0..MAX_ATTEMPTS {
            let mut picks: Vec<Pick> = Vec::with_capacity(wants.len());
            for (w, prefetched) in wants.iter().zip(prefetched.iter_mut()) {
                let pick = match w.address {
                    Some(ip) => self.pick_requested(w.pool, ip)?,
                    None => self.pick_free(w.pool, attempt, prefetched.take())?,
                };
                picks.push(pick);
            }
            let (txn, record) = self.allocation_txn(owner, &att_key, &picks);
            if self.kv.txn(txn)? {
                self.allocated(&id, &record, attempt + 1, "attempt");
                self.update_hints(wants, &hints, &picks, Some(&own_seen));
                return Ok((record, false));
            }
            // Lost a race. A concurrent ADD of the same attachment may have won it.
            if let Some(existing) = self.find(&id)? {
                return Ok((existing, true));
            }
            log::debug!(
                "allocation transaction conflicted (attempt {}), retrying",
                attempt + 1
            );
            backoff(attempt);
        }
        Err(Error::TryAgainLater(format!(
            "gave up after {MAX_ATTEMPTS} conflicting transactions allocating for {}",
            id.container_id
        )))
    }

    /// The addresses the hints say to try, when every wanted address may come
    /// from one: any address (not a requested one), and a hinted next address
    /// that is usable in a hinted block of known revision.
    fn hinted_picks(&self, wants: &[Want<'_>], hints: &[Hint]) -> Option<Vec<Pick>> {
        wants
            .iter()
            .zip(hints)
            .map(|(w, hint)| {
                if w.address.is_some() {
                    return None;
                }
                let ip = hint.next?;
                let layout = Layout::new(w.pool);
                let block = layout.check_usable(ip).ok()?;
                let rev = hint
                    .blocks
                    .iter()
                    .find(|(b, rev)| *b == block && *rev > 0)
                    .map(|(_, rev)| *rev)?;
                Some(Pick {
                    pool: w.pool.name.clone(),
                    block,
                    ip,
                    guard: Some(Compare::CreateRevision(
                        self.keys.affinity(&self.node, &w.pool.name, &block),
                        rev,
                    )),
                    // Unknown beyond this one: the next address is a guess.
                    own: Some((
                        rev,
                        layout.first_free(&block, &BTreeSet::new(), Some(to_u128(ip))),
                    )),
                })
            })
            .collect()
    }

    /// The transaction that records `picks` for `owner`, and the record it writes.
    fn allocation_txn(
        &self,
        owner: &Owner,
        att_key: &str,
        picks: &[Pick],
    ) -> (Txn, AttachmentRecord) {
        let mut record = AttachmentRecord {
            owner: Owner {
                created: now(),
                ..owner.clone()
            },
            ips: Vec::with_capacity(picks.len()),
        };
        let mut txn = Txn::new().when(Compare::absent(att_key));
        for p in picks {
            let key = self.keys.ip(&p.pool, &p.block, p.ip);
            txn = txn
                .when(Compare::absent(&key))
                .put(key, encode(&record.owner));
            if let Some(g) = &p.guard {
                txn = txn.when(g.clone());
            }
            let gateway = super::block::gateway_of(&p.block);
            record.ips.push(IpRecord {
                pool: p.pool.clone(),
                address: format!("{}/{}", p.ip, p.block.prefix()),
                block: p.block.to_string(),
                gateway: gateway.to_string(),
            });
        }
        (txn.put(att_key, encode(&record)), record)
    }

    fn allocated(&self, id: &AttachmentId, record: &AttachmentRecord, attempt: usize, how: &str) {
        log::debug!(
            "allocated {} to {}/{}/{} ({how}{})",
            record
                .ips
                .iter()
                .map(|i| i.address.as_str())
                .collect::<Vec<_>>()
                .join(","),
            id.network,
            id.container_id,
            id.ifname,
            if attempt > 0 {
                format!(" {attempt}")
            } else {
                String::new()
            }
        );
    }

    /// Keep each pool's hint: this node's blocks (as `seen` by the careful path,
    /// else as hinted) plus the block of the pick, and the next address to try.
    fn update_hints(
        &self,
        wants: &[Want<'_>],
        hints: &[Hint],
        picks: &[Pick],
        seen: Option<&[Vec<(Cidr, i64)>]>,
    ) {
        for (i, ((w, old), pick)) in wants.iter().zip(hints).zip(picks).enumerate() {
            if w.address.is_some() {
                continue;
            }
            let mut hint = Hint {
                blocks: seen.map_or_else(|| old.blocks.clone(), |s| s[i].clone()),
                next: None,
            };
            if let Some((rev, next)) = pick.own {
                if !hint.blocks.iter().any(|(b, _)| *b == pick.block) {
                    hint.blocks.push((pick.block, rev));
                }
                hint.next = next.map(|n| from_u128(n, pick.block.is_ipv4()));
            }
            if hint != *old {
                self.write_hint(&w.pool.name, &hint);
            }
        }
    }

    /// A specific address: usable in the pool, and not owned by someone else. Its
    /// block is claimed for this node when nobody holds it yet.
    fn pick_requested(&self, pool: &PoolConf, ip: IpAddr) -> Result<Pick> {
        let layout = Layout::new(pool);
        let block = layout
            .check_usable(ip)
            .map_err(|msg| Error::AddressUnavailable {
                address: ip.to_string(),
                msg,
            })?;
        let key = self.keys.ip(&pool.name, &block, ip);
        if let Some(kv) = self.kv.get(&key)? {
            let holder: Owner = decode(&kv)?;
            return Err(Error::AddressUnavailable {
                address: ip.to_string(),
                msg: format!(
                    "already allocated to container {} ifname {} on node {} (network {})",
                    holder.container_id, holder.ifname, holder.node, holder.network
                ),
            });
        }
        let block_key = self.keys.block(&pool.name, &block);
        let claimed = match self.kv.get(&block_key)? {
            Some(kv) => kv,
            None => {
                self.claim(pool, &block)?;
                self.kv.get(&block_key)?.ok_or_else(|| {
                    Error::TryAgainLater(format!("block {block} vanished while claiming it"))
                })?
            }
        };
        // Under strict affinity a node hands out addresses of its own blocks only:
        // an address of another node's block would put that block's gateway on
        // this node's bridge too. The guard below holds the block's owner to what
        // was read here.
        if self.strict_affinity {
            let holder: BlockRecord = decode(&claimed)?;
            if holder.node != self.node {
                return Err(Error::AddressUnavailable {
                    address: ip.to_string(),
                    msg: format!(
                        "it lies in block {block} of pool {:?}, which belongs to node {}; \
                         with strictAffinity node {} hands out addresses of its own blocks only",
                        pool.name, holder.node, self.node
                    ),
                });
            }
        }
        let guard = Compare::ModRevision(block_key, claimed.mod_revision);
        Ok(Pick {
            pool: pool.name.clone(),
            block,
            ip,
            guard: Some(guard),
            own: None,
        })
    }

    /// Any free address from this node's blocks, claiming a new block only when
    /// they are full. `attempt` spreads concurrent allocators over the free addresses.
    /// `prefetched`: what the first batched read (which may lag) saw of this
    /// node's blocks; used, with further reads that may lag, for the first look.
    fn pick_free(
        &self,
        pool: &PoolConf,
        attempt: usize,
        mut prefetched: Option<Prefetched<'_>>,
    ) -> Result<Pick> {
        let layout = Layout::new(pool);
        let mut claim_guard = None;
        for _ in 0..MAX_ATTEMPTS {
            let first_look = prefetched.take();
            let (own, freshness) = match &first_look {
                Some(p) => (self.blocks_of(&layout, p.affinities), Freshness::MayLag),
                None => (self.own_blocks(pool)?, Freshness::Latest),
            };
            for (block, guard) in own {
                let fetched = first_look
                    .as_ref()
                    .and_then(|p| p.used.iter().find(|(b, _)| *b == block));
                let used = match fetched {
                    Some((_, kvs)) => addresses_of(kvs),
                    None => self.used_as_of(pool, &block, freshness)?,
                };
                if let Some(ip) = layout.nth_free(&block, &used, attempt) {
                    let own = match &guard {
                        Compare::CreateRevision(_, rev) => {
                            Some((*rev, layout.first_free(&block, &used, Some(ip))))
                        }
                        _ => None,
                    };
                    return Ok(Pick {
                        pool: pool.name.clone(),
                        block,
                        ip: from_u128(ip, block.is_ipv4()),
                        guard: Some(guard),
                        own,
                    });
                }
            }
            // Every block of ours is full. Claim a new one under the node's claim
            // lock, after looking again: another ADD on this node may have just
            // claimed one, which we should fill first.
            if claim_guard.is_none() && self.claim_lock.is_some() {
                claim_guard = self.lock_claims();
                if claim_guard.is_some() {
                    continue;
                }
            }
            if !self.claim_new_block(pool)? {
                if !self.strict_affinity {
                    if let Some(p) = self.borrow(pool, attempt)? {
                        return Ok(p);
                    }
                }
                return Err(Error::PoolExhausted {
                    pool: pool.name.clone(),
                    msg: format!(
                        "no free address in node {}'s blocks and no unclaimed block left in {}",
                        self.node, pool.subnet
                    ),
                });
            }
        }
        Err(Error::TryAgainLater(format!(
            "could not claim a block in pool {:?}",
            pool.name
        )))
    }

    /// A free address in another node's block (only when every block is claimed and
    /// `strictAffinity` is off). Reads every block of the pool: the pool is full, so
    /// this is the slow path by definition.
    fn borrow(&self, pool: &PoolConf, attempt: usize) -> Result<Option<Pick>> {
        let layout = Layout::new(pool);
        for kv in self.kv.range(&self.keys.blocks_of_pool(&pool.name), true)? {
            let Some(block) = block_of_key(&layout, &kv) else {
                continue;
            };
            let used = self.used(pool, &block)?;
            if let Some(ip) = layout.nth_free(&block, &used, attempt) {
                log::info!(
                    "node {} borrows from block {block} of pool {:?}",
                    self.node,
                    pool.name
                );
                return Ok(Some(Pick {
                    pool: pool.name.clone(),
                    block,
                    ip: from_u128(ip, block.is_ipv4()),
                    guard: Some(Compare::ModRevision(kv.key.clone(), kv.mod_revision)),
                    own: None,
                }));
            }
        }
        Ok(None)
    }

    /// Addresses in use in `block`, as numbers.
    pub fn used(&self, pool: &PoolConf, block: &Cidr) -> Result<BTreeSet<u128>> {
        self.used_as_of(pool, block, Freshness::Latest)
    }

    fn used_as_of(
        &self,
        pool: &PoolConf,
        block: &Cidr,
        freshness: Freshness,
    ) -> Result<BTreeSet<u128>> {
        let read = Read::Range {
            prefix: self.keys.ips_of_block(&pool.name, block),
            keys_only: true,
        };
        let answers = self.kv.read_batch(std::slice::from_ref(&read), freshness)?;
        Ok(answers.iter().flat_map(|kvs| addresses_of(kvs)).collect())
    }

    /// Release an attachment: delete its address keys (only those it owns) and its
    /// attachment key in one transaction. Ok(None) when nothing was recorded.
    pub fn release(&self, id: &AttachmentId) -> Result<Option<AttachmentRecord>> {
        let att_key = self
            .keys
            .attachment(&id.network, &id.container_id, &id.ifname);
        for attempt in 0..MAX_ATTEMPTS {
            let Some(att) = self.kv.get(&att_key)? else {
                return Ok(None);
            };
            let record: AttachmentRecord = decode(&att)?;
            let addresses = self.address_keys(&att_key, &record)?;
            let mut txn = Txn::new()
                .when(Compare::ModRevision(att_key.clone(), att.mod_revision))
                .delete(&att_key);
            let mut freed: Vec<(&str, IpAddr)> = Vec::new();
            if attempt == 0 {
                // Each address key still holds what the ADD wrote there: this
                // attachment's owner record. Compared by value, it needs no read
                // of its own; anything else (a key gone, or another holder) fails
                // the compare and takes the careful way below.
                let owner = encode(&record.owner);
                let mut fast = txn.clone();
                for (pool, addr, key) in &addresses {
                    fast = fast
                        .when(Compare::Value(key.clone(), owner.clone()))
                        .delete(key);
                    freed.push((pool, *addr));
                }
                if self.kv.txn(fast)? {
                    self.released(id, &freed);
                    return Ok(Some(record));
                }
                freed.clear();
            }
            for (pool, addr, key) in &addresses {
                if let Some(kv) = self.kv.get(key)? {
                    let holder: Owner = decode(&kv)?;
                    if holder.id() == *id {
                        txn = txn
                            .when(Compare::ModRevision(key.clone(), kv.mod_revision))
                            .delete(key);
                        freed.push((pool, *addr));
                    } else {
                        log::warn!(
                            "{key} is held by {}, not by {}; leaving it",
                            holder.container_id,
                            id.container_id
                        );
                    }
                }
            }
            if self.kv.txn(txn)? {
                self.released(id, &freed);
                return Ok(Some(record));
            }
            backoff(attempt);
        }
        Err(Error::TryAgainLater(format!(
            "store contention releasing {}",
            id.container_id
        )))
    }

    /// The pool, address and address key of each of the record's addresses.
    fn address_keys<'r>(
        &self,
        att_key: &str,
        record: &'r AttachmentRecord,
    ) -> Result<Vec<(&'r str, IpAddr, String)>> {
        record
            .ips
            .iter()
            .map(|ip| {
                let (Ok(addr), Ok(block)) = (
                    ip.address.split('/').next().unwrap_or("").parse::<IpAddr>(),
                    Cidr::parse(&ip.block),
                ) else {
                    return Err(Error::Store(format!(
                        "attachment {att_key} holds a malformed address {ip:?}"
                    )));
                };
                Ok((ip.pool.as_str(), addr, self.keys.ip(&ip.pool, &block, addr)))
            })
            .collect()
    }

    /// After a release: log it and move the hints' next addresses down.
    fn released(&self, id: &AttachmentId, freed: &[(&str, IpAddr)]) {
        log::debug!("released {}/{}/{}", id.network, id.container_id, id.ifname);
        for (pool, addr) in freed {
            self.hint_freed(pool, *addr);
        }
    }

    /// Every attachment recorded for `network` (or all networks).
    pub fn attachments(&self, network: Option<&str>) -> Result<Vec<AttachmentRecord>> {
        let prefix = match network {
            Some(n) => self.keys.attachments_of_network(n),
            None => self.keys.all_attachments(),
        };
        self.kv.range(&prefix, false)?.iter().map(decode).collect()
    }

    /// Could an ADD get an address from `pool` now? Free space in this node's
    /// blocks, or an unclaimed block.
    pub fn has_capacity(&self, pool: &PoolConf) -> Result<bool> {
        let layout = Layout::new(pool);
        for (block, _) in self.own_blocks(pool)? {
            if layout
                .first_free(&block, &self.used(pool, &block)?, None)
                .is_some()
            {
                return Ok(true);
            }
        }
        let claimed = self
            .kv
            .range(&self.keys.blocks_of_pool(&pool.name), true)?
            .len() as u128;
        let (lo, hi) = layout.candidate_blocks();
        Ok(claimed < hi - lo + 1)
    }
}

/// A short, growing pause between conflicting transactions (0.2 ms .. 5 ms).
pub(super) fn backoff(attempt: usize) {
    let micros = (200u64 << attempt.min(5)).min(5_000);
    // Jitter from the clock's low bits, so racing processes spread out.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % micros.max(1))
        .unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_micros(micros / 2 + jitter / 2));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::suite::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn allocator_suite_on_memory_store() {
        run_all(&|| Box::new(MemoryStore::new()));
    }

    #[test]
    fn allocator_suite_on_local_store() {
        let base = std::env::temp_dir().join(format!("ohno-alloc-suite-{}", std::process::id()));
        let counter = std::cell::Cell::new(0);
        run_all(&|| {
            counter.set(counter.get() + 1);
            let d = base.join(counter.get().to_string());
            Box::new(crate::store::local::LocalStore::open(&d).unwrap())
        });
        std::fs::remove_dir_all(base).ok();
    }

    #[test]
    fn injected_conflicts_are_retried_then_reported_as_try_again() {
        let m = MemoryStore::new();
        conflicts_are_retried(&m, &|n| m.inject_conflicts(n));
    }

    #[test]
    fn a_race_lost_to_an_interloper_picks_another_address() {
        let m = MemoryStore::new();
        let p = pool("default", "10.85.0.0/16", 26);
        let a = Allocator::new(&m, "/ohno", "node-a");
        let first = a
            .allocate(&owner("first", "node-a"), &[Want::any(&p)])
            .unwrap();
        let block = Cidr::parse(&first.ips[0].block).unwrap();
        // Someone takes the next free address between our read and our write.
        let next = from_u128(
            to_u128(
                first.ips[0]
                    .address
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap(),
            ) + 1,
            true,
        );
        m.inject_interloper(&a.keys().ip("default", &block, next), b"{}");
        let r = a
            .allocate(&owner("second", "node-a"), &[Want::any(&p)])
            .unwrap();
        assert_ne!(
            r.ips[0].address.split('/').next().unwrap(),
            next.to_string()
        );
        assert_ne!(r.ips[0].address, first.ips[0].address);
    }

    #[test]
    fn store_outage_is_code_11() {
        let m = MemoryStore::new();
        m.inject_outage(1);
        let p = pool("default", "10.85.0.0/16", 26);
        let e = Allocator::new(&m, "/ohno", "n")
            .allocate(&owner("o", "n"), &[Want::any(&p)])
            .unwrap_err();
        assert_eq!(e.code(), 11);
    }

    #[test]
    fn ipv6_slash64_pool_allocates_without_overflow() {
        let m = MemoryStore::new();
        let p = pool("v6", "2001:db8:1::/64", 122);
        let a = Allocator::new(&m, "/ohno", "node-a");
        let r = a
            .allocate(&owner("v6", "node-a"), &[Want::any(&p)])
            .unwrap();
        let ip: IpAddr = r.ips[0].address.split('/').next().unwrap().parse().unwrap();
        assert!(p.subnet.contains(ip));
        assert!(a.has_capacity(&p).unwrap());
    }

    #[test]
    fn capacity_reflects_exhaustion() {
        let m = MemoryStore::new();
        let p = pool("tiny", "192.168.7.0/30", 30);
        let a = Allocator::new(&m, "/ohno", "node-a");
        assert!(a.has_capacity(&p).unwrap());
        a.allocate(&owner("t1", "node-a"), &[Want::any(&p)])
            .unwrap();
        assert!(!a.has_capacity(&p).unwrap());
    }
}
