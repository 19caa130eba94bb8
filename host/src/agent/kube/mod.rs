//! Node clean-up in a Kubernetes cluster: when a Node is deleted, release
//! its blocks, its pods' addresses and its record, so its share of the pools
//! returns to the cluster (`nodeCleanup` in the agent's config).
//!
//! One agent of the cluster does it at a time: the holder of the lease
//! `<prefix>/leases/node-cleanup` ([`crate::store::lease`]). The holder lists
//! Nodes, watches them from the list's resource version
//! ([`api`]), and every few seconds compares the Nodes with the nodes Ohno
//! knows in the store (node records and block affinities). The decision is
//! [`view::due`]'s: absent from a *whole* view for the grace period, agent
//! silent as long, not this node. A due node is then asked for by name, and
//! only a 404 releases it (Calico's rule: never release on a partial view),
//! with [`crate::ipam::nodes::remove`] — every write a compare transaction.
//! Losing the lease, the watch falling behind (410) or the API failing all
//! drop back to "no view": nothing is released until a complete list has
//! been read again.

pub mod api;
pub mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::api::{Api, ApiError, Watch};
use self::view::{Absences, Clock, NodeView, OhnoNode};
use super::metrics::Metrics;
use crate::config::agent::{AgentConf, NodeCleanupConf};
use crate::config::NetConf;
use crate::ipam::keys::Keys;
use crate::ipam::nodes;
use crate::ipam::Allocator;
use crate::store::lease::Lease;
use crate::store::Kv;

/// How often the view is compared with the store.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// The longest pause between two attempts after an API or store error.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The lease's name under `<prefix>/leases/`.
const LEASE: &str = "node-cleanup";

/// The nodes Ohno knows: records (with `seen`) and nodes with affinities.
fn ohno_nodes(kv: &dyn Kv, keys: &Keys) -> crate::Result<Vec<OhnoNode>> {
    let mut out: Vec<OhnoNode> = nodes::list(kv, keys.prefix())?
        .into_iter()
        .map(|r| OhnoNode {
            name: r.node,
            seen: Some(r.seen),
        })
        .collect();
    let aff = keys.all_affinities();
    for kv in kv.range(&aff, true)? {
        let Some(node) = kv.key[aff.len()..].split('/').next() else {
            continue;
        };
        if !node.is_empty() && !out.iter().any(|n| n.name == node) {
            out.push(OhnoNode {
                name: node.to_string(),
                seen: None,
            });
        }
    }
    Ok(out)
}

/// What the lease holder keeps between rounds.
struct Following {
    view: NodeView,
    watch: Option<Watch>,
    absences: Absences,
    last_sweep: Option<Instant>,
}

struct Cleanup {
    conf: NodeCleanupConf,
    network: NetConf,
    keys: Keys,
    kv: Arc<dyn Kv>,
    metrics: Arc<Metrics>,
    lease: Lease,
    api: Option<Api>,
    following: Option<Following>,
    /// The pause after the last failure.
    backoff: Duration,
}

/// The pause after another failure (doubles up to [`RETRY_MAX`]).
fn pause_after_error(backoff: &mut Duration) -> Duration {
    *backoff = (*backoff * 2).clamp(Duration::from_millis(500), RETRY_MAX);
    *backoff
}

impl Cleanup {
    /// One round; returns how long to wait before the next.
    fn round(&mut self) -> Duration {
        let now = Instant::now();
        let held = match self.lease.hold(&*self.kv, now) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("node clean-up: lease {}: {e}", self.lease.key());
                self.lease.is_held(now)
            }
        };
        self.metrics.set_cleanup_leader(held);
        if !held {
            if self.following.take().is_some() {
                log::info!("node clean-up: lease lost; no longer watching Nodes");
            }
            return (self.conf.lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(5));
        }
        if let Some(pause) = self.follow() {
            return pause;
        }
        self.backoff = Duration::ZERO;
        self.sweep();
        Duration::ZERO
    }

    /// Hold a whole view: list when there is none, watch from it, read
    /// events until the next sweep is due. `Some(pause)` when there is no
    /// whole view to sweep with now.
    fn follow(&mut self) -> Option<Duration> {
        let Cleanup {
            conf,
            api,
            following,
            backoff,
            ..
        } = self;
        let client = match api {
            Some(a) => a,
            None => match Api::new(conf) {
                Ok(a) => api.insert(a),
                Err(e) => {
                    log::warn!("node clean-up: {}: {e}", conf.api_server);
                    return Some(pause_after_error(backoff));
                }
            },
        };
        let f = match following {
            Some(f) => f,
            None => match client.list_nodes() {
                Ok((names, rv)) => {
                    log::info!(
                        "node clean-up: lease held; {} Nodes at resource version {rv}",
                        names.len()
                    );
                    following.insert(Following {
                        view: NodeView::listed(names, rv),
                        watch: None,
                        absences: Absences::default(),
                        last_sweep: None,
                    })
                }
                Err(e) => {
                    log::warn!("node clean-up: list Nodes: {e}");
                    if matches!(e, ApiError::Other(_)) {
                        // Connect again from scratch (a rotated CA, say).
                        *api = None;
                    }
                    return Some(pause_after_error(backoff));
                }
            },
        };
        let watch = match &mut f.watch {
            Some(w) => w,
            None => match client.watch_nodes(&f.view.resource_version) {
                Ok(w) => f.watch.insert(w),
                Err(e) => {
                    // Until a watch follows the view again it may miss
                    // changes: no sweep; list again on 410.
                    log::warn!("node clean-up: watch Nodes: {e}");
                    if e.is_expired() {
                        *following = None;
                    }
                    if matches!(e, ApiError::Other(_)) {
                        *api = None;
                    }
                    return Some(pause_after_error(backoff));
                }
            },
        };
        // Read until the next sweep, but come back in time to renew the
        // lease (a third of it).
        let sweep_at = match f.last_sweep {
            Some(t) => t + SWEEP_EVERY,
            None => Instant::now(),
        };
        let until = sweep_at.min(Instant::now() + conf.lease / 4);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match client.next_event(watch, left.max(Duration::from_millis(1))) {
                Ok(Some(ev)) => {
                    log::debug!("node clean-up: {ev:?}");
                    if !f.view.apply(&ev) {
                        log::info!("node clean-up: watch expired; listing Nodes again");
                        *following = None;
                        return Some(Duration::ZERO);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // Resumed from the last resource version seen: no gap.
                    log::debug!("node clean-up: watch ended: {e}");
                    f.watch = None;
                    return Some(Duration::ZERO);
                }
            }
            if Instant::now() >= until {
                break;
            }
        }
        if Instant::now() < sweep_at {
            return Some(Duration::ZERO);
        }
        f.last_sweep = Some(Instant::now());
        None
    }

    /// Compare the view with the store; re-check and release what is due.
    fn sweep(&mut self) {
        let Some(following) = self.following.as_mut() else {
            return;
        };
        let Some(api) = self.api.as_ref() else {
            return;
        };
        let known = match ohno_nodes(&*self.kv, &self.keys) {
            Ok(k) => k,
            Err(e) => return log::warn!("node clean-up: read nodes from the store: {e}"),
        };
        let clock = Clock {
            now: Instant::now(),
            unix: crate::ipam::model::now(),
        };
        let due = view::due(
            &following.view,
            &mut following.absences,
            &known,
            &self.network.node,
            clock,
            self.conf.grace,
        );
        for name in due {
            // Ask for the node by name: only a 404 releases.
            match api.node_exists(&name) {
                Ok(true) => {
                    log::info!("node clean-up: node {name} exists after all; kept");
                    following.view.insert(&name);
                    following.absences.forget(&name);
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    log::warn!("node clean-up: get node {name}: {e}; not released");
                    continue;
                }
            }
            if !self.lease.is_held(Instant::now()) {
                return;
            }
            let alloc = Allocator::from_conf(&*self.kv, &self.network);
            match nodes::remove(&alloc, &name, true) {
                Ok(r) => {
                    log::info!(
                        "node clean-up: node {name} is gone from Kubernetes: released {} block(s), \
                         {} attachment(s){}",
                        r.blocks.len(),
                        r.attachments.len(),
                        if r.record { ", its record" } else { "" }
                    );
                    self.metrics.node_released();
                    following.absences.forget(&name);
                }
                Err(e) => log::warn!("node clean-up: release node {name}: {e}"),
            }
        }
    }
}

/// Start the clean-up thread when the config asks for it; join it after
/// `stop` to hand the lease on.
pub fn start(
    conf: &AgentConf,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> Result<Option<std::thread::JoinHandle<()>>, String> {
    let Some(nc) = conf.node_cleanup.clone() else {
        return Ok(None);
    };
    let network = conf.network.clone();
    let kv = crate::store::open(&network.ipam.store).map_err(|e| e.to_string())?;
    let keys = Keys::new(network.ipam.store.prefix());
    log::info!(
        "node clean-up: Nodes from {}, grace {} s, lease {} ({} s)",
        nc.api_server,
        nc.grace.as_secs(),
        keys.lease(LEASE),
        nc.lease.as_secs()
    );
    let mut cleanup = Cleanup {
        lease: Lease::new(keys.lease(LEASE), network.node.clone(), nc.lease),
        conf: nc,
        network,
        keys,
        kv,
        metrics,
        api: None,
        following: None,
        backoff: Duration::ZERO,
    };
    std::thread::Builder::new()
        .name("ohnod-nodes".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let pause = cleanup.round();
                let until = Instant::now() + pause;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // A clean stop hands the lease on at once.
            match cleanup.lease.release(&*cleanup.kv) {
                Ok(true) => log::info!("node clean-up: lease released"),
                Ok(false) => {}
                Err(e) => log::warn!("node clean-up: release the lease: {e}"),
            }
        })
        .map(Some)
        .map_err(|e| format!("start the node clean-up thread: {e}"))
}
