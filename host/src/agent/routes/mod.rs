//! Cross-node routes, in `ohnod run`: this node's record in the store, and
//! the kernel kept to what every node's blocks need (README "Cross-node
//! networking").
//!
//! Three threads: the watcher lists block claims and node records at one
//! revision and follows them from the next (re-listing after a compaction
//! or an error, with bounded back-off); the kernel listener wakes the loop
//! on link, route and neighbour events (a deleted vxlan device, a removed
//! route); the loop holds the store's view in memory and, on every change
//! and every `resyncSeconds`, ensures the devices, computes the desired
//! state and applies it. Nothing is flushed when the agent stops: pods keep
//! their routes through an upgrade.

pub mod apply;
pub mod desired;
mod underlay;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::desired::{Desired, Device, Inputs, Path};
use super::metrics::Metrics;
use crate::config::agent::{AgentConf, RoutingConf};
use crate::ip::mac::{format_mac, stable_mac};
use crate::ip::{Cidr, Family};
use crate::ipam::keys::{last_segment, parse_block_id};
use crate::ipam::nodes::{self, Backend, NodeRecord, VxlanRecord};
use crate::net::events::Events;
use crate::net::link::Netlink;
use crate::net::vxlan::VxlanSpec;
use crate::store::watch::{Change, Listing, Watch, WatchEnd};
use crate::store::KeyValue;

/// Vxlan overhead: outer IPv4 (20) or IPv6 (40) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14).
const VXLAN_OVERHEAD_V4: u32 = 50;
const VXLAN_OVERHEAD_V6: u32 = 70;
/// The longest pause between two attempts to follow the store.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Changes closer together than this are applied in one pass (a burst of
/// ADDs on a peer claims blocks one by one).
const SETTLE: Duration = Duration::from_millis(5);
/// The file, in the node's lock directory, that tells the plugin the pods'
/// largest MTU on this node (the vxlan device's).
pub const POD_MTU_FILE: &str = "pod-mtu";

/// One peer, as `ohnoctl status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub node: String,
    pub reachable: bool,
    pub blocks: usize,
    /// Blocks routed, by path ("host-gw", "vxlan").
    pub routed: BTreeMap<String, usize>,
    pub errors: Vec<String>,
}

/// The routing part of the agent's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutesStatus {
    pub node: String,
    pub backend: String,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
    pub devices: Vec<String>,
    pub route_protocol: u8,
    /// Routes installed, by path ("host-gw", "vxlan", "blackhole").
    pub routes: BTreeMap<String, usize>,
    pub failed_routes: Vec<String>,
    pub peers: Vec<PeerStatus>,
    /// Unix time of the last pass that applied without errors.
    pub last_sync: Option<u64>,
    pub watch_restarts: u64,
}

/// What wakes the loop.
enum Wake {
    Listed(Listing),
    Changes(Vec<Change>),
    Restarted(String),
    Kernel,
}

/// The store's view the loop holds: block claims and node records.
#[derive(Default)]
struct View {
    blocks: BTreeMap<String, (Cidr, String)>,
    records: BTreeMap<String, NodeRecord>,
}

impl View {
    fn put(&mut self, prefix: &str, kv: &KeyValue) {
        let blocks = format!("{prefix}/blocks/");
        if kv.key.starts_with(&blocks) {
            let Some(block) = parse_block_id(last_segment(&kv.key)) else {
                return;
            };
            match serde_json::from_slice::<crate::ipam::allocator::BlockRecord>(&kv.value) {
                Ok(rec) => {
                    self.blocks.insert(kv.key.clone(), (block, rec.node));
                }
                Err(e) => log::warn!("block claim {}: {e}", kv.key),
            }
        } else if let Ok(rec) = nodes::decode_record(kv) {
            self.records.insert(kv.key.clone(), rec);
        } else {
            log::warn!("node record {}: not one", kv.key);
        }
    }

    fn delete(&mut self, key: &str) {
        self.blocks.remove(key);
        self.records.remove(key);
    }
}

/// The loop's state.
struct Router {
    conf: RoutingConf,
    node: String,
    prefix: String,
    lock_dir: std::path::PathBuf,
    nl: Netlink,
    /// This node's record as published (with detected addresses).
    me: NodeRecord,
    /// Underlay MTU per family.
    underlay_mtu: BTreeMap<&'static str, u32>,
    view: View,
    listed: bool,
    restarts: u64,
    status: Arc<Mutex<Option<RoutesStatus>>>,
    metrics: Arc<Metrics>,
}

impl Router {
    fn vxlan_specs(&self) -> Vec<(VxlanSpec, Family)> {
        if !self.conf.backend.has_vxlan() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (fam, name, overhead) in [
            (Family::V4, &self.conf.vxlan_name, VXLAN_OVERHEAD_V4),
            (Family::V6, &self.conf.vxlan_name6, VXLAN_OVERHEAD_V6),
        ] {
            let Some(local) = self.me.underlay(fam) else {
                continue;
            };
            let key = if fam == Family::V4 { "ipv4" } else { "ipv6" };
            let mtu = self.underlay_mtu.get(key).copied().unwrap_or(1500);
            out.push((
                VxlanSpec {
                    name: name.clone(),
                    vni: self.conf.vni,
                    port: self.conf.port,
                    local,
                    mac: stable_mac(&format!("{}/{name}", self.node)),
                    mtu: mtu.saturating_sub(overhead),
                },
                fam,
            ));
        }
        out
    }

    /// This node's record as it should be published.
    fn record(&self) -> NodeRecord {
        let specs = self.vxlan_specs();
        let mut rec = self.me.clone();
        rec.vxlan = (!specs.is_empty()).then(|| VxlanRecord {
            vni: self.conf.vni,
            port: self.conf.port,
            mac: specs
                .iter()
                .find(|(_, f)| *f == Family::V4)
                .map(|(s, _)| format_mac(&s.mac)),
            mac6: specs
                .iter()
                .find(|(_, f)| *f == Family::V6)
                .map(|(s, _)| format_mac(&s.mac)),
            mtu: pod_mtu(&specs).unwrap_or(1450),
        });
        rec.seen = crate::ipam::model::now();
        rec
    }

    /// Create or adopt the vxlan devices; delete ours that are no longer
    /// wanted (an underlay family gone, host-gw configured).
    fn ensure_devices(&mut self) -> Result<Vec<Device>, String> {
        let specs = self.vxlan_specs();
        let mut out = Vec::new();
        for (spec, fam) in &specs {
            let (link, created) = self.nl.ensure_vxlan(spec).map_err(|e| e.to_string())?;
            if created {
                log::info!(
                    "vxlan {} created: VNI {}, port {}, local {}, MAC {}, MTU {}",
                    spec.name,
                    spec.vni,
                    spec.port,
                    spec.local,
                    format_mac(&spec.mac),
                    spec.mtu
                );
            }
            out.push(Device {
                index: link.index,
                name: spec.name.clone(),
                underlay: *fam,
            });
        }
        for name in [&self.conf.vxlan_name, &self.conf.vxlan_name6] {
            if specs.iter().any(|(s, _)| &s.name == name) {
                continue;
            }
            if let Ok(Some(link)) = self.nl.link_by_name(name) {
                if link.kind.as_deref() == Some("vxlan") {
                    log::info!("vxlan {name}: no longer wanted; deleted");
                    let _ = self.nl.delete_link(link.index);
                }
            }
        }
        if let Some(mtu) = pod_mtu(&specs) {
            write_pod_mtu(&self.lock_dir, mtu);
        }
        Ok(out)
    }

    /// One pass: devices, desired state, kernel.
    fn reconcile(&mut self) {
        let started = Instant::now();
        let devices = match self.ensure_devices() {
            Ok(d) => d,
            Err(e) => {
                log::warn!("routes: {e}");
                self.metrics.reconciled(started.elapsed(), 0, false);
                return;
            }
        };
        let records: Vec<NodeRecord> = self.view.records.values().cloned().collect();
        let blocks: Vec<(Cidr, String)> = self.view.blocks.values().cloned().collect();
        let me = self.record();
        let want: Desired = {
            let nl = std::cell::RefCell::new(&mut self.nl);
            let route_to = |ip: IpAddr| nl.borrow_mut().lookup(ip).ok();
            desired::desired(&Inputs {
                me: &me,
                backend: self.conf.backend,
                records: &records,
                blocks: &blocks,
                devices: &devices,
                route_to: &route_to,
            })
        };
        let applied = apply::apply(&mut self.nl, &want, &devices, self.conf.route_protocol);
        let ok = match &applied {
            Ok(a) => a.failed.is_empty(),
            Err(_) => false,
        };
        let changes = applied.as_ref().map_or(0, |a| a.changes());
        self.metrics.reconciled(started.elapsed(), changes, ok);
        if changes > 0 {
            log::info!(
                "routes: {changes} change(s) in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        for p in want.peers.iter().filter(|p| !p.reachable()) {
            for e in &p.errors {
                log::warn!("peer {}: {e}", p.node);
            }
        }
        let applied = applied.unwrap_or_else(|e| apply::Applied {
            failed: vec![e.to_string()],
            not_installed: want.routes.keys().cloned().collect(),
            ..apply::Applied::default()
        });
        for f in &applied.failed {
            log::warn!("route: {f}");
        }
        self.publish_status(&want, &devices, &applied, ok);
    }

    fn publish_status(
        &self,
        want: &Desired,
        devices: &[Device],
        applied: &apply::Applied,
        ok: bool,
    ) {
        let failed = applied.failed.clone();
        let mut routes: BTreeMap<String, usize> = BTreeMap::new();
        for (r, p) in &want.routes {
            if !applied.not_installed.contains(r) {
                *routes.entry(p.as_str().to_string()).or_default() += 1;
            }
        }
        let peers: Vec<PeerStatus> = want
            .peers
            .iter()
            .map(|p| PeerStatus {
                node: p.node.clone(),
                reachable: p.reachable(),
                blocks: p.blocks,
                routed: p.routed.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                errors: p.errors.clone(),
            })
            .collect();
        self.metrics.set_routes(
            &[Path::HostGw, Path::Vxlan, Path::Blackhole]
                .iter()
                .map(|p| (p.as_str(), routes.get(p.as_str()).copied().unwrap_or(0)))
                .collect::<Vec<_>>(),
            applied.not_installed.len(),
        );
        let reachable = peers.iter().filter(|p| p.reachable).count();
        self.metrics.set_peers(reachable, peers.len() - reachable);
        let mut slot = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let last_sync = if ok {
            self.metrics.synced();
            Some(crate::ipam::model::now())
        } else {
            slot.as_ref().and_then(|s| s.last_sync)
        };
        *slot = Some(RoutesStatus {
            node: self.node.clone(),
            backend: self.conf.backend.to_string(),
            ipv4: self.me.ipv4.map(IpAddr::V4),
            ipv6: self.me.ipv6.map(IpAddr::V6),
            devices: devices.iter().map(|d| d.name.clone()).collect(),
            route_protocol: self.conf.route_protocol,
            routes,
            failed_routes: failed,
            peers,
            last_sync,
            watch_restarts: self.restarts,
        });
    }

    /// Take in one wake-up; whether a pass is due.
    fn take(&mut self, wake: Wake, store: &dyn crate::store::Kv) -> bool {
        match wake {
            Wake::Listed(listing) => {
                self.view = View::default();
                for kv in listing.keys.iter().flatten() {
                    self.view.put(&self.prefix, kv);
                }
                self.listed = true;
                true
            }
            Wake::Changes(changes) => {
                let own = nodes::node_key(&self.prefix, &self.node);
                for c in changes {
                    match c {
                        Change::Put(kv) => self.view.put(&self.prefix, &kv),
                        Change::Delete(key) => {
                            if key == own {
                                // Our record must not vanish while we run.
                                log::warn!("this node's record was deleted; writing it again");
                                self.publish(store, false);
                            }
                            self.view.delete(&key);
                        }
                    }
                }
                self.listed
            }
            Wake::Restarted(why) => {
                self.restarts += 1;
                self.metrics.watch_restarted();
                log::warn!("routes: following the store again ({why})");
                false
            }
            Wake::Kernel => self.listed,
        }
    }

    fn publish(&mut self, kv: &dyn crate::store::Kv, refresh_seen: bool) {
        let rec = self.record();
        match nodes::publish(kv, &self.prefix, &rec, refresh_seen) {
            Ok(true) => log::debug!("node record {} written", rec.node),
            Ok(false) => {}
            Err(e) => log::warn!("node record: {e}"),
        }
    }
}

/// The pods' MTU on a vxlan node: the device over the IPv4 underlay's when
/// there is one (the path to every peer with an IPv4 underlay), else the IPv6
/// one's. Traffic to a peer reached only over IPv6 is routed into the smaller
/// device, and the kernel answers oversized packets with ICMP "too big", so
/// path MTU discovery covers it without costing every pod 20 bytes.
fn pod_mtu(specs: &[(VxlanSpec, Family)]) -> Option<u32> {
    specs
        .iter()
        .find(|(_, f)| *f == Family::V4)
        .or(specs.first())
        .map(|(s, _)| s.mtu)
}

/// The pods' largest MTU on this node, as the agent wrote it; `None` on a
/// node whose agent never ran vxlan.
pub fn pod_mtu_limit(lock_dir: &std::path::Path) -> Option<u32> {
    use std::io::Read as _;
    let mut s = String::new();
    std::fs::File::open(lock_dir.join(POD_MTU_FILE))
        .ok()?
        .take(16)
        .read_to_string(&mut s)
        .ok()?;
    s.trim().parse().ok().filter(|m| (68..=65535).contains(m))
}

/// The pods' largest MTU on this node, for the plugin (atomically).
fn write_pod_mtu(dir: &std::path::Path, mtu: u32) {
    let path = dir.join(POD_MTU_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == mtu.to_string()) {
        return;
    }
    let tmp = dir.join(format!(".{POD_MTU_FILE}.{}", std::process::id()));
    let done = std::fs::write(&tmp, format!("{mtu}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = done {
        log::warn!("write {}: {e}", path.display());
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The watcher thread: list, follow, and again after any end but a stop.
fn follow(watch: Arc<dyn Watch>, prefixes: Vec<String>, tx: Sender<Wake>, stop: Arc<AtomicBool>) {
    let mut pause = Duration::from_millis(100);
    let stopped = || stop.load(Ordering::SeqCst);
    while !stopped() {
        let listing = match watch.list(&prefixes) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Wake::Restarted(format!("list: {e}")));
                sleep_unless(&stop, pause);
                pause = (pause * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        pause = Duration::from_millis(100);
        if tx.send(Wake::Listed(listing.clone())).is_err() {
            return;
        }
        let end = watch.watch(
            &prefixes,
            &listing,
            Duration::from_millis(200),
            &mut |changes| {
                let _ = tx.send(Wake::Changes(changes));
            },
            &stopped,
        );
        let why = match end {
            WatchEnd::Stopped => return,
            WatchEnd::Compacted(rev) => format!("revision compacted at {rev}"),
            WatchEnd::Failed(e) => e,
        };
        if tx.send(Wake::Restarted(why)).is_err() {
            return;
        }
        sleep_unless(&stop, pause);
        pause = (pause * 2).min(BACKOFF_MAX);
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}

/// The kernel listener thread.
fn listen(
    mut events: Events,
    watched: Vec<String>,
    protocol: u8,
    tx: Sender<Wake>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match events.wait() {
            Ok(evs) => {
                if evs.iter().any(|e| e.concerns(&watched, protocol))
                    && tx.send(Wake::Kernel).is_err()
                {
                    return;
                }
            }
            Err(e) => {
                log::warn!("kernel events: {e}");
                // Lost events (ENOBUFS): a full pass finds what changed.
                if tx.send(Wake::Kernel).is_err() {
                    return;
                }
                sleep_unless(&stop, Duration::from_millis(200));
            }
        }
    }
}

/// Start the routing threads of `ohnod run`; they end when `stop` is set.
pub fn start(
    conf: &AgentConf,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Option<RoutesStatus>>>,
) -> Result<(), String> {
    let routing = conf.routing.clone();
    let network = conf.network.clone();
    let prefix = network
        .ipam
        .store
        .prefix()
        .trim_end_matches('/')
        .to_string();
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let found = underlay::detect(&mut nl, &routing, &network.ipam.store)?;
    let me = NodeRecord {
        node: network.node.clone(),
        ipv4: found.ipv4,
        ipv6: found.ipv6,
        backend: routing.backend,
        vxlan: None,
        mtu: found.mtu.values().copied().min(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        seen: 0,
    };
    log::info!(
        "routes: node {}, backend {}, underlay {} {}, route protocol {}",
        me.node,
        routing.backend,
        me.ipv4.map_or("-".into(), |a| a.to_string()),
        me.ipv6.map_or("-".into(), |a| a.to_string()),
        routing.route_protocol
    );
    if routing.backend == Backend::HostGw && me.ipv4.is_none() && me.ipv6.is_none() {
        log::warn!("routes: no underlay address found; no route to other nodes can be made");
    }
    let kv = crate::store::open(&network.ipam.store).map_err(|e| e.to_string())?;
    let watch =
        crate::store::watch::open(&network.ipam.store, kv.clone()).map_err(|e| e.to_string())?;
    let events = Events::open().map_err(|e| e.to_string())?;
    let mut router = Router {
        conf: routing.clone(),
        node: me.node.clone(),
        prefix: prefix.clone(),
        lock_dir: network.ipam.lock_dir.clone(),
        nl,
        me,
        underlay_mtu: found.mtu,
        view: View::default(),
        listed: false,
        restarts: 0,
        status,
        metrics,
    };
    let (tx, rx) = mpsc::channel();
    let prefixes = vec![format!("{prefix}/blocks/"), nodes::nodes_prefix(&prefix)];
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::Builder::new()
            .name("ohnod-watch".into())
            .spawn(move || follow(watch, prefixes, tx, stop))
            .map_err(|e| e.to_string())?;
    }
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        let watched = vec![routing.vxlan_name.clone(), routing.vxlan_name6.clone()];
        let protocol = routing.route_protocol;
        std::thread::Builder::new()
            .name("ohnod-kernel".into())
            .spawn(move || listen(events, watched, protocol, tx, stop))
            .map_err(|e| e.to_string())?;
    }
    drop(tx);
    std::thread::Builder::new()
        .name("ohnod-routes".into())
        .spawn(move || run_loop(&mut router, &*kv, rx, stop))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn run_loop(
    router: &mut Router,
    kv: &dyn crate::store::Kv,
    rx: Receiver<Wake>,
    stop: Arc<AtomicBool>,
) {
    // The devices first, so the record carries what the kernel holds.
    if let Err(e) = router.ensure_devices() {
        log::warn!("routes: {e}");
    }
    router.publish(kv, true);
    let resync = router.conf.resync;
    let mut next_resync = Instant::now() + resync;
    let mut pending = false;
    while !stop.load(Ordering::SeqCst) {
        let wait = next_resync
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        let mut due = std::mem::take(&mut pending);
        match rx.recv_timeout(wait) {
            Ok(w) => due |= router.take(w, kv),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_resync {
            next_resync = Instant::now() + resync;
            router.publish(kv, true);
            due |= router.listed;
        }
        if !due {
            continue;
        }
        // Take whatever else arrived meanwhile, then apply once.
        std::thread::sleep(SETTLE);
        while let Ok(w) = rx.try_recv() {
            router.take(w, kv);
        }
        if router.listed {
            router.reconcile();
        }
        // Our own changes echo back as kernel events: drop those; a store
        // change that came meanwhile needs another pass.
        std::thread::sleep(SETTLE);
        while let Ok(w) = rx.try_recv() {
            if !matches!(w, Wake::Kernel) {
                pending |= router.take(w, kv);
            }
        }
    }
}
