//! The allocator's behaviour suite: every store backend (and the agent's
//! socket) must pass it.

use std::collections::HashSet;
use std::net::IpAddr;

use super::allocator::*;
use super::hints::Hint;
use super::model::*;
use crate::config::PoolConf;
use crate::error::Result;
use crate::ip::cidr::{from_u128, Cidr};
use crate::store::{Compare, Freshness, KeyValue, Kv, Read, Txn};

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
    let dir = std::env::temp_dir().join(format!("ohno-{tag}-{}-{n}-{}", std::process::id(), now()));
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
