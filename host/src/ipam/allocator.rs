//! The allocator: claims blocks for this node, picks free addresses in them, and
//! writes address keys and the attachment key in one transaction with compares.
//! Conflicts (another process won a race) are retried a bounded number of times;
//! there is never a read-then-write without a compare guarding it.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::block::Layout;
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

/// The most of a hint file that is read: far more than the lines of every
/// block a node can hold, and a bound on what a planted file costs.
const MAX_HINT_BYTES: u64 = 1 << 20;

/// What a node-local hint file says about this node's blocks of one pool. Only a
/// hint: every use of it is guarded by a transaction's compares, so a stale,
/// wrong or foreign hint costs a round trip, never a wrong write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Hint {
    /// This node's blocks, each with its affinity key's create revision (0 when
    /// unknown: such a block is read, never written to on the hint's word).
    blocks: Vec<(Cidr, i64)>,
    /// The address to try first on the next ADD: the first after the last one
    /// allocated that was free then.
    next: Option<IpAddr>,
}

impl Hint {
    /// `<block-id> <revision>` lines and a `next <address>` line.
    fn parse(text: &str) -> Hint {
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

    fn render(&self) -> String {
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

/// IPAM for one node against one store.
pub struct Allocator<'a> {
    kv: &'a dyn Kv,
    keys: Keys,
    node: String,
    /// When false, a node whose blocks are full and finds no free block may borrow
    /// an address from another node's block.
    strict_affinity: bool,
    /// A node-local lock file taken around block claims, so a burst of ADDs on one
    /// node that finds its blocks full claims one new block, not one each.
    claim_lock: Option<std::path::PathBuf>,
    /// Node-local hint files (one per store, node and pool) naming this node's
    /// blocks as last seen, so the first read can fetch their addresses too.
    hint_dir: Option<(std::path::PathBuf, u64)>,
}

/// What the first batched read fetched for one wanted pool.
struct Prefetched<'s> {
    affinities: &'s [KeyValue],
    /// Addresses in use per hinted block.
    used: Vec<(Cidr, &'s [KeyValue])>,
}

fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::Store(format!("decode {}: {e}", kv.key)))
}

fn pool_record(pool: &PoolConf) -> PoolRecord {
    PoolRecord {
        subnet: pool.subnet.to_string(),
        block_size: pool.block_size,
    }
}

/// The stored definition `kv` of `pool` agrees with this node's config (code 7 if not).
fn check_pool(pool: &PoolConf, kv: &KeyValue) -> Result<()> {
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
fn block_of_key(layout: &Layout, kv: &KeyValue) -> Option<Cidr> {
    parse_block_id(last_segment(&kv.key)).filter(|b| layout.owns_block(b))
}

/// The addresses named by the keys of an `ips_of_block` range, as numbers.
fn addresses_of(kvs: &[KeyValue]) -> BTreeSet<u128> {
    kvs.iter()
        .filter_map(|kv| last_segment(&kv.key).parse::<IpAddr>().ok().map(to_u128))
        .collect()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
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

    /// Keep node-local hints of this node's blocks in `dir`, in files named by
    /// `scope` (one per store and node) and the pool.
    pub fn with_block_hints(mut self, dir: std::path::PathBuf, scope: u64) -> Self {
        self.hint_dir = Some((dir, scope));
        self
    }

    /// The hint file of `pool`, if this allocator keeps hints.
    fn hint_path(&self, pool: &str) -> Option<std::path::PathBuf> {
        let (dir, scope) = self.hint_dir.as_ref()?;
        Some(dir.join(format!(
            "blocks-{:016x}",
            crate::ip::fnv1a64(&[&scope.to_le_bytes(), pool.as_bytes()])
        )))
    }

    /// This node's blocks of `pool` as last seen (empty when unknown).
    fn read_hint(&self, pool: &str) -> Hint {
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
    fn write_hint(&self, pool: &str, hint: &Hint) {
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
    fn hint_freed(&self, pool: &str, addr: IpAddr) {
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

    /// Serialize block claims of this node's processes through `path` (flock).
    pub fn with_claim_lock(mut self, path: std::path::PathBuf) -> Self {
        self.claim_lock = Some(path);
        self
    }

    /// Take the node-local claim lock (released on drop). A lock that cannot be
    /// taken is logged and skipped: it only prevents over-claiming, never duplicates
    /// (the transactions do that).
    fn lock_claims(&self) -> Option<nix::fcntl::Flock<std::fs::File>> {
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

    /// This node's blocks of `pool`, each with the compare that proves it still is.
    pub fn own_blocks(&self, pool: &PoolConf) -> Result<Vec<(Cidr, Compare)>> {
        let affinities = self
            .kv
            .range(&self.keys.affinities(&self.node, &pool.name), true)?;
        Ok(self.blocks_of(&Layout::new(pool), &affinities))
    }

    /// The blocks named by affinity keys, each with its compare.
    fn blocks_of(&self, layout: &Layout, affinities: &[KeyValue]) -> Vec<(Cidr, Compare)> {
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

    /// Claim `block` for this node. Ok(false) if someone else holds it.
    fn claim(&self, pool: &PoolConf, block: &Cidr) -> Result<bool> {
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
    fn claim_new_block(&self, pool: &PoolConf) -> Result<bool> {
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
fn backoff(attempt: usize) {
    let micros = (200u64 << attempt.min(5)).min(5_000);
    // Jitter from the clock's low bits, so racing processes spread out.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % micros.max(1))
        .unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_micros(micros / 2 + jitter / 2));
}

/// The allocator behaviour every backend must show; run by each backend's tests.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;
    use crate::store::Kv;

    pub fn pool(name: &str, subnet: &str, block: u8) -> PoolConf {
        PoolConf {
            name: name.into(),
            subnet: Cidr::parse(subnet).unwrap(),
            block_size: block,
            exclude: vec![],
            range_start: None,
            range_end: None,
        }
    }

    pub fn owner(cid: &str, node: &str) -> Owner {
        Owner {
            network: "podnet".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            node: node.into(),
            pod_namespace: Some("default".into()),
            pod_name: Some(cid.into()),
            pod_uid: None,
            created: 0,
        }
    }

    fn addr(r: &AttachmentRecord) -> String {
        r.ips[0].address.clone()
    }

    pub fn allocates_distinct_addresses_from_own_block(kv: &dyn Kv) {
        let p = pool("default", "10.85.0.0/16", 26);
        let a = Allocator::new(kv, "/ohno", "node-a");
        let mut seen = HashSet::new();
        for i in 0..70 {
            let r = a
                .allocate(&owner(&format!("c{i}"), "node-a"), &[Want::any(&p)])
                .unwrap();
            assert!(seen.insert(addr(&r)), "duplicate {}", addr(&r));
            assert!(r.ips[0].address.ends_with("/26"));
            let block = Cidr::parse(&r.ips[0].block).unwrap();
            assert_eq!(
                r.ips[0].gateway,
                from_u128(block.first() + 1, true).to_string()
            );
        }
        // 61 usable per /26: 70 addresses need exactly two blocks, both this node's.
        assert_eq!(a.own_blocks(&p).unwrap().len(), 2);
        for kv in kv.range("/ohno/blocks/default/", false).unwrap() {
            let b: BlockRecord = serde_json::from_slice(&kv.value).unwrap();
            assert_eq!(b.node, "node-a");
        }
        // One address key and one attachment key per allocation.
        assert_eq!(kv.range("/ohno/ips/", true).unwrap().len(), 70);
        assert_eq!(
            kv.range("/ohno/attachments/podnet/", true).unwrap().len(),
            70
        );
    }

    pub fn repeated_add_returns_same_addresses(kv: &dyn Kv) {
        let p = pool("default", "10.85.0.0/16", 26);
        let a = Allocator::new(kv, "/ohno", "node-a");
        let o = owner("same", "node-a");
        let r1 = a.allocate(&o, &[Want::any(&p)]).unwrap();
        let r2 = a.allocate(&o, &[Want::any(&p)]).unwrap();
        assert_eq!(r1.ips, r2.ips);
        assert_eq!(kv.range("/ohno/ips/", true).unwrap().len(), 1);
    }

    pub fn release_deletes_both_keys_and_is_idempotent(kv: &dyn Kv) {
        let p = pool("default", "10.85.0.0/16", 26);
        let counting = Counting {
            kv,
            calls: Default::default(),
        };
        let a = Allocator::new(&counting, "/ohno", "node-a");
        let o = owner("rel", "node-a");
        let r = a.allocate(&o, &[Want::any(&p)]).unwrap();
        counting.take();
        assert_eq!(a.release(&o.id()).unwrap().unwrap().ips, r.ips);
        // The attachment is read; the address keys are compared by value.
        assert_eq!(counting.take(), ["get", "txn"]);
        assert!(a.release(&o.id()).unwrap().is_none());
        assert!(kv.range("/ohno/ips/", true).unwrap().is_empty());
        assert!(kv.range("/ohno/attachments/", true).unwrap().is_empty());
        // The freed address is handed out again (lowest free first).
        let r2 = a
            .allocate(&owner("next", "node-a"), &[Want::any(&p)])
            .unwrap();
        assert_eq!(r2.ips[0].address, r.ips[0].address);

        // An address key that another attachment holds (an operator's repair,
        // a bug elsewhere) is left to it; the attachment goes.
        let o3 = owner("third", "node-a");
        let r3 = a.allocate(&o3, &[Want::any(&p)]).unwrap();
        let block = Cidr::parse(&r3.ips[0].block).unwrap();
        let ip = Cidr::parse(&r3.ips[0].address).unwrap().addr();
        let key = a.keys().ip("default", &block, ip);
        let other = owner("other", "node-b");
        assert!(kv.txn(Txn::new().put(&key, encode(&other))).unwrap());
        assert_eq!(a.release(&o3.id()).unwrap().unwrap().ips, r3.ips);
        assert!(a.find(&o3.id()).unwrap().is_none());
        let held: Owner = decode(&kv.get(&key).unwrap().unwrap()).unwrap();
        assert_eq!(held.container_id, "other");
    }

    pub fn exhaustion_names_the_pool_and_writes_nothing(kv: &dyn Kv) {
        // A /29 pool with /30 blocks: 2 blocks, 1 usable address each.
        let p = pool("tiny", "192.168.7.0/29", 30);
        let a = Allocator::new(kv, "/ohno", "node-a");
        a.allocate(&owner("t1", "node-a"), &[Want::any(&p)])
            .unwrap();
        a.allocate(&owner("t2", "node-a"), &[Want::any(&p)])
            .unwrap();
        let e = a
            .allocate(&owner("t3", "node-a"), &[Want::any(&p)])
            .unwrap_err();
        assert_eq!(e.code(), 100);
        assert!(e.to_string().contains("tiny"), "{e}");
        assert!(a.find(&owner("t3", "node-a").id()).unwrap().is_none());
        assert_eq!(kv.range("/ohno/ips/tiny/", true).unwrap().len(), 2);
    }

    pub fn dual_stack_allocates_one_per_family_atomically(kv: &dyn Kv) {
        let v4 = pool("v4", "10.9.0.0/24", 26);
        let v6 = pool("v6", "fd00:9::/64", 122);
        let a = Allocator::new(kv, "/ohno", "node-a");
        let r = a
            .allocate(&owner("ds", "node-a"), &[Want::any(&v4), Want::any(&v6)])
            .unwrap();
        assert_eq!(r.ips.len(), 2);
        assert!(r.ips[1].address.starts_with("fd00:9:"), "{:?}", r.ips[1]);
        assert!(r.ips[1].address.ends_with("/122"));
        // A v6 address key, under its block.
        assert_eq!(kv.range("/ohno/ips/v6/", true).unwrap().len(), 1);
        // If one family cannot be served, neither is written.
        let tiny = pool("tiny6", "192.168.8.0/30", 30);
        a.allocate(&owner("x", "node-a"), &[Want::any(&tiny)])
            .unwrap();
        let e = a
            .allocate(&owner("y", "node-a"), &[Want::any(&v6), Want::any(&tiny)])
            .unwrap_err();
        assert_eq!(e.code(), 100);
        assert_eq!(kv.range("/ohno/ips/v6/", true).unwrap().len(), 1);
    }

    pub fn requested_address_is_honoured_or_refused(kv: &dyn Kv) {
        let mut p = pool("default", "10.85.0.0/16", 26);
        p.exclude = vec![Cidr::parse("10.85.255.0/24").unwrap()];
        let a = Allocator::new(kv, "/ohno", "node-a");
        let want = |ip: &str| Want {
            pool: &p,
            address: Some(ip.parse().unwrap()),
        };
        let r = a
            .allocate(&owner("r1", "node-a"), &[want("10.85.77.9")])
            .unwrap();
        assert_eq!(r.ips[0].address, "10.85.77.9/26");
        assert_eq!(r.ips[0].gateway, "10.85.77.1");
        let e = a
            .allocate(&owner("r2", "node-a"), &[want("10.85.77.9")])
            .unwrap_err();
        assert_eq!(e.code(), 101);
        assert!(e.to_string().contains("r1"), "{e}");
        for bad in [
            "10.85.255.4",
            "10.85.77.1",
            "10.85.77.0",
            "10.85.77.63",
            "10.86.0.5",
        ] {
            let e = a
                .allocate(&owner("r3", "node-a"), &[want(bad)])
                .unwrap_err();
            assert_eq!(e.code(), 101, "{bad}: {e}");
        }
        assert!(a.find(&owner("r3", "node-a").id()).unwrap().is_none());
    }

    pub fn pool_mismatch_between_nodes_is_code_7(kv: &dyn Kv) {
        let p = pool("shared", "10.50.0.0/16", 26);
        Allocator::new(kv, "/ohno", "node-a")
            .allocate(&owner("m1", "node-a"), &[Want::any(&p)])
            .unwrap();
        let other = pool("shared", "10.50.0.0/16", 24);
        let e = Allocator::new(kv, "/ohno", "node-b")
            .allocate(&owner("m2", "node-b"), &[Want::any(&other)])
            .unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("shared"), "{e}");
    }

    pub fn nodes_get_separate_blocks(kv: &dyn Kv) {
        let p = pool("default", "10.85.0.0/16", 26);
        let a = Allocator::new(kv, "/ohno", "node-a");
        let b = Allocator::new(kv, "/ohno", "node-b");
        let ra = a
            .allocate(&owner("na", "node-a"), &[Want::any(&p)])
            .unwrap();
        let rb = b
            .allocate(&owner("nb", "node-b"), &[Want::any(&p)])
            .unwrap();
        assert_ne!(ra.ips[0].block, rb.ips[0].block);
    }

    /// Counts the store calls an allocator makes (each is one round trip on etcd).
    struct Counting<'k> {
        kv: &'k dyn Kv,
        calls: std::sync::Mutex<Vec<&'static str>>,
    }

    impl Counting<'_> {
        fn note(&self, what: &'static str) {
            self.calls.lock().unwrap().push(what);
        }
        fn take(&self) -> Vec<&'static str> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    impl Kv for Counting<'_> {
        fn get(&self, key: &str) -> Result<Option<KeyValue>> {
            self.note("get");
            self.kv.get(key)
        }
        fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>> {
            self.note("range");
            self.kv.range(prefix, keys_only)
        }
        fn read_batch(&self, reads: &[Read], f: Freshness) -> Result<Vec<Vec<KeyValue>>> {
            self.note("read_batch");
            self.kv.read_batch(reads, f)
        }
        fn txn(&self, txn: Txn) -> Result<bool> {
            self.note("txn");
            self.kv.txn(txn)
        }
        fn txn_or_read(&self, txn: Txn, reads: &[Read]) -> Result<Option<Vec<Vec<KeyValue>>>> {
            self.note("txn_or_read");
            self.kv.txn_or_read(txn, reads)
        }
    }

    pub fn block_hints_are_kept_and_a_wrong_hint_is_harmless(kv: &dyn Kv) {
        let p = pool("default", "10.85.0.0/16", 26);
        let dir = scratch_dir("hints");
        let counting = Counting {
            kv,
            calls: Default::default(),
        };
        let a = Allocator::new(&counting, "/ohno", "node-a").with_block_hints(dir.clone(), 7);
        let b = Allocator::new(kv, "/ohno", "node-b");
        let mut seen = HashSet::new();
        let mut got = Vec::new();
        for i in 0..3 {
            let r = a
                .allocate(&owner(&format!("h{i}"), "node-a"), &[Want::any(&p)])
                .unwrap();
            assert!(seen.insert(addr(&r)), "duplicate {}", addr(&r));
            got.push(Cidr::parse(&r.ips[0].address).unwrap().addr());
            let calls = counting.take();
            if i > 0 {
                // Warm hint: the whole allocation is one store call.
                assert_eq!(calls, ["txn_or_read"], "allocation {i}");
            }
        }
        // The first free addresses of the block, in order (.0 network, .1 gateway).
        let own = a.own_blocks(&p).unwrap();
        assert_eq!(own.len(), 1);
        let block = own[0].0;
        let expect: Vec<IpAddr> = (2..5).map(|k| from_u128(block.first() + k, true)).collect();
        assert_eq!(got, expect);
        let Compare::CreateRevision(_, rev) = own[0].1 else {
            panic!("own block guard {:?}", own[0].1)
        };
        let hint_file = a.hint_path("default").unwrap();
        let read = || Hint::parse(&std::fs::read_to_string(&hint_file).unwrap());
        assert_eq!(
            read(),
            Hint {
                blocks: vec![(block, rev)],
                next: Some(from_u128(block.first() + 5, true)),
            }
        );

        // Wrong hints change nothing but the round trips: another node's block
        // (with that node's revision), an address already taken, an unknown
        // revision, garbage.
        let rb = b
            .allocate(&owner("hb", "node-b"), &[Want::any(&p)])
            .unwrap();
        let b_block = Cidr::parse(&rb.ips[0].block).unwrap();
        let b_rev = match &b.own_blocks(&p).unwrap()[0].1 {
            Compare::CreateRevision(_, r) => *r,
            other => panic!("{other:?}"),
        };
        let b_next = from_u128(b_block.first() + 3, true);
        let wrong = [
            format!(
                "{} {b_rev}\nnext {b_next}\n",
                crate::ipam::keys::block_id(&b_block)
            ),
            format!(
                "{} {rev}\nnext {}\n",
                crate::ipam::keys::block_id(&block),
                got[0]
            ),
            format!(
                "{} 0\nnext {}\n",
                crate::ipam::keys::block_id(&block),
                from_u128(block.first() + 9, true)
            ),
            format!(
                "{} {rev}\nnot-a-block\nnext 999.1.1.1\n",
                crate::ipam::keys::block_id(&block)
            ),
        ];
        for (i, text) in wrong.iter().enumerate() {
            std::fs::write(&hint_file, text).unwrap();
            let r = a
                .allocate(&owner(&format!("w{i}"), "node-a"), &[Want::any(&p)])
                .unwrap();
            assert_eq!(r.ips[0].block, block.to_string(), "hint {text:?}");
            assert!(
                seen.insert(addr(&r)),
                "duplicate {} after hint {text:?}",
                addr(&r)
            );
            assert_ne!(addr(&r), addr(&rb));
            // Mended: this node's block with its revision, and a next address.
            let mended = read();
            assert_eq!(mended.blocks, vec![(block, rev)], "after hint {text:?}");
            assert!(mended.next.is_some());
        }
        counting.take();

        // A repeated ADD with a warm hint: the same record, in one call.
        let again = a
            .allocate_or_find(&owner("h2", "node-a"), &[Want::any(&p)])
            .unwrap();
        assert!(again.1);
        assert_eq!(Cidr::parse(&again.0.ips[0].address).unwrap().addr(), got[2]);
        assert_eq!(counting.take(), ["txn_or_read"]);

        // A release below the hinted next address makes it the next one (the
        // lowest free address first), still in one call.
        a.release(&owner("h0", "node-a").id()).unwrap().unwrap();
        assert_eq!(read().next, Some(got[0]));
        counting.take();
        let r = a
            .allocate(&owner("h0-again", "node-a"), &[Want::any(&p)])
            .unwrap();
        assert_eq!(Cidr::parse(&r.ips[0].address).unwrap().addr(), got[0]);
        assert_eq!(counting.take(), ["txn_or_read"]);

        // A config that disagrees with the stored pool is refused (code 7) even
        // when the hint's block and address fit it.
        let half = Cidr::new(block.addr(), 17).unwrap().canonical();
        let narrower = pool("default", &half.to_string(), 26);
        let e = a
            .allocate(&owner("mismatch", "node-a"), &[Want::any(&narrower)])
            .unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        assert_eq!(counting.take()[0], "txn_or_read");
        assert!(a.find(&owner("mismatch", "node-a").id()).unwrap().is_none());
        std::fs::remove_dir_all(dir).ok();
    }

    /// A directory of its own for one suite case: the suite runs on several
    /// stores at once in one test process.
    fn scratch_dir(tag: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ohno-{tag}-{}-{n}-{}", std::process::id(), now()));
        // As a verb finds it: checked and made by nodefs before the allocator runs.
        crate::nodefs::private_dir("ipam.lockDir", &dir).unwrap();
        dir
    }

    /// A node holding more blocks than one etcd transaction may read (128
    /// operations) still allocates with hints: the first look fetches a bounded
    /// number of blocks.
    pub fn many_blocks_on_one_node(kv: &dyn Kv) {
        // /30 blocks hold one usable address each: every ADD claims a block.
        let p = pool("tiny", "10.99.0.0/22", 30);
        let dir = scratch_dir("many");
        let a = Allocator::new(kv, "/ohno", "node-a").with_block_hints(dir.clone(), 9);
        let mut seen = HashSet::new();
        for i in 0..140 {
            let r = a
                .allocate(&owner(&format!("m{i}"), "node-a"), &[Want::any(&p)])
                .unwrap_or_else(|e| panic!("allocation {i}: {e}"));
            assert!(seen.insert(addr(&r)), "duplicate {}", addr(&r));
        }
        assert_eq!(a.own_blocks(&p).unwrap().len(), 140);
        assert_eq!(a.read_hint("tiny").blocks.len(), 140);
        std::fs::remove_dir_all(dir).ok();
    }

    pub fn conflicts_are_retried(kv: &dyn Kv, inject: &dyn Fn(u32)) {
        let p = pool("default", "10.85.0.0/16", 26);
        let a = Allocator::new(kv, "/ohno", "node-a");
        a.allocate(&owner("warm", "node-a"), &[Want::any(&p)])
            .unwrap();
        inject(5);
        let r = a
            .allocate(&owner("retry", "node-a"), &[Want::any(&p)])
            .unwrap();
        assert_eq!(r.ips.len(), 1);
        inject(MAX_ATTEMPTS as u32 + 5);
        let e = a
            .allocate(&owner("gives-up", "node-a"), &[Want::any(&p)])
            .unwrap_err();
        assert_eq!(e.code(), 11);
        inject(0);
        assert!(a.find(&owner("gives-up", "node-a").id()).unwrap().is_none());
    }

    pub fn borrowing_only_without_strict_affinity(kv: &dyn Kv) {
        // Two /30 blocks, one usable address each. node-a takes one block, node-b the other.
        let p = pool("small", "192.168.9.0/29", 30);
        let a = Allocator::new(kv, "/ohno", "node-a");
        let b = Allocator::new(kv, "/ohno", "node-b");
        a.allocate(&owner("a1", "node-a"), &[Want::any(&p)])
            .unwrap();
        let e = a.allocate(&owner("a2", "node-a"), &[Want::any(&p)]);
        // node-a's second ADD claims the other block (the pool has two).
        assert!(e.is_ok());
        let e = b
            .allocate(&owner("b1", "node-b"), &[Want::any(&p)])
            .unwrap_err();
        assert_eq!(e.code(), 100);
        assert!(e.to_string().contains("small"));
        // Free one of node-a's addresses: node-b may borrow it only without strict affinity.
        a.release(&owner("a1", "node-a").id()).unwrap();
        let e = b
            .allocate(&owner("b1", "node-b"), &[Want::any(&p)])
            .unwrap_err();
        assert_eq!(e.code(), 100);
        let lax = Allocator::new(kv, "/ohno", "node-b").with_strict_affinity(false);
        let r = lax
            .allocate(&owner("b1", "node-b"), &[Want::any(&p)])
            .unwrap();
        assert_eq!(r.owner.node, "node-b");
        // Borrowing never takes the block: it still belongs to node-a.
        assert!(lax.own_blocks(&p).unwrap().is_empty());
    }

    pub fn requested_address_in_another_nodes_block_needs_lax_affinity(kv: &dyn Kv) {
        let p = pool("default", "10.85.0.0/16", 26);
        let a = Allocator::new(kv, "/ohno", "node-a");
        let ra = a
            .allocate(&owner("a1", "node-a"), &[Want::any(&p)])
            .unwrap();
        let block = ra.ips[0].block.clone();
        let base: std::net::Ipv4Addr = block.split('/').next().unwrap().parse().unwrap();
        let free = IpAddr::from(std::net::Ipv4Addr::from(u32::from(base) + 20));
        // node-b asks for a free address of node-a's block: refused (101), naming
        // the block and its node, and nothing written.
        let b = Allocator::new(kv, "/ohno", "node-b");
        let e = b
            .allocate(&owner("b1", "node-b"), &[Want::exact(&p, free)])
            .unwrap_err();
        assert_eq!(e.code(), 101, "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("block {block}")) && text.contains("node node-a"),
            "{text}"
        );
        assert!(b.find(&owner("b1", "node-b").id()).unwrap().is_none());
        assert!(b.own_blocks(&p).unwrap().is_empty());
        // node-a itself may have it; without strict affinity node-b may borrow
        // the next one (the block stays node-a's).
        let next = IpAddr::from(std::net::Ipv4Addr::from(u32::from(base) + 21));
        a.allocate(&owner("a2", "node-a"), &[Want::exact(&p, free)])
            .unwrap();
        let lax = Allocator::new(kv, "/ohno", "node-b").with_strict_affinity(false);
        let rb = lax
            .allocate(&owner("b1", "node-b"), &[Want::exact(&p, next)])
            .unwrap();
        assert_eq!(rb.ips[0].block, block);
        assert!(lax.own_blocks(&p).unwrap().is_empty());
    }

    pub fn run_all(kv_factory: &dyn Fn() -> Box<dyn Kv>) {
        requested_address_in_another_nodes_block_needs_lax_affinity(&*kv_factory());
        borrowing_only_without_strict_affinity(&*kv_factory());
        allocates_distinct_addresses_from_own_block(&*kv_factory());
        repeated_add_returns_same_addresses(&*kv_factory());
        release_deletes_both_keys_and_is_idempotent(&*kv_factory());
        exhaustion_names_the_pool_and_writes_nothing(&*kv_factory());
        dual_stack_allocates_one_per_family_atomically(&*kv_factory());
        requested_address_is_honoured_or_refused(&*kv_factory());
        pool_mismatch_between_nodes_is_code_7(&*kv_factory());
        nodes_get_separate_blocks(&*kv_factory());
        block_hints_are_kept_and_a_wrong_hint_is_harmless(&*kv_factory());
        many_blocks_on_one_node(&*kv_factory());
    }
}

#[cfg(test)]
mod tests {
    use super::suite::*;
    use super::*;
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
