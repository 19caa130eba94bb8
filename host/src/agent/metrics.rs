//! The agent's metrics, in the Prometheus text exposition format
//! (`prometheus-client`), served on `/metrics`. Names follow Prometheus'
//! conventions: the `ohno_` prefix, `_total` for counters, `_seconds` for
//! durations. The list and the meaning of each is in the README.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::agent::protocol::{CallReport, PolicyReply};
use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    verb: String,
    result: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    decision: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyDecisionLabels {
    policy: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    policy: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolNodeLabels {
    pool: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    backend: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReachLabels {
    reachability: String,
}

/// Buckets from 0.5 ms to ~4 s: a CNI call, a policy decision or an etcd
/// request is in there.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    started: Instant,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<VerbLabels, Histogram, fn() -> Histogram>,
    fallbacks: Family<ServiceLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    decision_seconds: Family<PolicyDecisionLabels, Histogram, fn() -> Histogram>,
    faults: Family<FaultLabels, Counter>,
    etcd_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    etcd_errors: Family<OpLabels, Counter>,
    allocations: Family<PoolNodeLabels, Gauge>,
    blocks: Family<PoolNodeLabels, Gauge>,
    free: Family<PoolLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    reaped: Family<ResultLabels, Counter>,
    ready: Gauge,
    uptime: Gauge,
    routes: Family<RouteLabels, Gauge>,
    peers: Family<ReachLabels, Gauge>,
    reconcile_seconds: Histogram,
    reconcile_changes: Counter,
    watch_restarts: Counter,
    last_sync: Gauge,
    cleanup_leader: Gauge,
    cleanup_released: Counter,
    /// When the pool gauges were last read from the store.
    pools_read: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ohno");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "cni_calls",
            "CNI calls on this node by verb and result (reported by the plugin)",
            calls.clone(),
        );
        let call_seconds: Family<VerbLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency);
        registry.register_with_unit(
            "cni_call_duration",
            "Duration of CNI calls on this node, by verb",
            Unit::Seconds,
            call_seconds.clone(),
        );
        let fallbacks = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "agent_fallbacks",
            "Plugin calls that did a service in-process after the agent failed them",
            fallbacks.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Policy decisions made in the agent, by policy, decision and outcome",
            decisions.clone(),
        );
        let decision_seconds: Family<PolicyDecisionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency);
        registry.register_with_unit(
            "policy_decision_duration",
            "Duration of policy decisions made in the agent",
            Unit::Seconds,
            decision_seconds.clone(),
        );
        let faults = Family::<FaultLabels, Counter>::default();
        registry.register(
            "policy_faults",
            "Policy faults in the agent by kind (trap, timeout, fuel, memory, load, other)",
            faults.clone(),
        );
        let etcd_seconds: Family<OpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency);
        registry.register_with_unit(
            "etcd_request_duration",
            "Duration of etcd requests the agent ran for plugin calls, by operation",
            Unit::Seconds,
            etcd_seconds.clone(),
        );
        let etcd_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "etcd_request_errors",
            "etcd requests that failed, by operation",
            etcd_errors.clone(),
        );
        let allocations = Family::<PoolNodeLabels, Gauge>::default();
        registry.register(
            "ipam_allocations",
            "Addresses in use, by pool and the node whose block holds them",
            allocations.clone(),
        );
        let blocks = Family::<PoolNodeLabels, Gauge>::default();
        registry.register(
            "ipam_blocks",
            "Blocks claimed, by pool and node",
            blocks.clone(),
        );
        let free = Family::<PoolLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "ipam_pool_free_addresses",
            "Usable addresses of a pool not in use (claimed blocks or not)",
            free.clone(),
        );
        let reaped = Family::<ResultLabels, Counter>::default();
        registry.register(
            "links_reaped",
            "Retired veth pairs the agent deleted, by result",
            reaped.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "agent_ready",
            "1 when the agent's store answers and its policy is loaded",
            ready.clone(),
        );
        let uptime = Gauge::default();
        registry.register_with_unit(
            "agent_uptime",
            "Seconds since the agent started",
            Unit::Seconds,
            uptime.clone(),
        );
        let routes = Family::<RouteLabels, Gauge>::default();
        registry.register(
            "routes",
            "Cross-node routes the agent wants, by backend (host-gw, vxlan, blackhole) and state \
             (installed, failed)",
            routes.clone(),
        );
        let peers = Family::<ReachLabels, Gauge>::default();
        registry.register(
            "peers",
            "Other nodes, by reachability (reachable: every block routed; unreachable)",
            peers.clone(),
        );
        let reconcile_seconds = latency();
        registry.register_with_unit(
            "routes_reconcile_duration",
            "Duration of one pass making the kernel match the store",
            Unit::Seconds,
            reconcile_seconds.clone(),
        );
        let reconcile_changes = Counter::default();
        registry.register(
            "routes_changes",
            "Routes, neighbour and FDB entries added or removed by the agent",
            reconcile_changes.clone(),
        );
        let watch_restarts = Counter::default();
        registry.register(
            "routes_watch_restarts",
            "Times the agent listed the store again (a compacted revision, a failed watch)",
            watch_restarts.clone(),
        );
        let last_sync = Gauge::default();
        registry.register_with_unit(
            "routes_last_sync_timestamp",
            "Unix time of the last pass that left the kernel matching the store",
            Unit::Seconds,
            last_sync.clone(),
        );
        let cleanup_leader = Gauge::default();
        registry.register(
            "node_cleanup_leader",
            "1 while this agent holds the node clean-up lease (watches Kubernetes Nodes)",
            cleanup_leader.clone(),
        );
        let cleanup_released = Counter::default();
        registry.register(
            "node_cleanup_released_nodes",
            "Nodes deleted from Kubernetes whose blocks and record this agent released",
            cleanup_released.clone(),
        );
        Metrics {
            registry,
            cleanup_leader,
            cleanup_released,
            started: Instant::now(),
            routes,
            peers,
            reconcile_seconds,
            reconcile_changes,
            watch_restarts,
            last_sync,
            calls,
            call_seconds,
            fallbacks,
            decisions,
            decision_seconds,
            faults,
            etcd_seconds,
            etcd_errors,
            allocations,
            blocks,
            free,
            reaped,
            ready,
            uptime,
            pools_read: Mutex::new(None),
        }
    }

    /// A finished CNI call, as the plugin reported it.
    /// One routing pass: how long, how many changes, whether it all applied.
    pub fn reconciled(&self, took: Duration, changes: usize, _ok: bool) {
        self.reconcile_seconds.observe(took.as_secs_f64());
        self.reconcile_changes.inc_by(changes as u64);
    }

    /// Routes wanted per path, and how many of them failed to install.
    pub fn set_routes(&self, by_path: &[(&str, usize)], failed: usize) {
        for (path, n) in by_path {
            self.routes
                .get_or_create(&RouteLabels {
                    backend: (*path).into(),
                    state: "installed".into(),
                })
                .set(*n as i64);
        }
        self.routes
            .get_or_create(&RouteLabels {
                backend: "any".into(),
                state: "failed".into(),
            })
            .set(failed as i64);
    }

    pub fn set_peers(&self, reachable: usize, unreachable: usize) {
        for (k, n) in [("reachable", reachable), ("unreachable", unreachable)] {
            self.peers
                .get_or_create(&ReachLabels {
                    reachability: k.into(),
                })
                .set(n as i64);
        }
    }

    pub fn set_cleanup_leader(&self, leader: bool) {
        self.cleanup_leader.set(i64::from(leader));
    }

    pub fn node_released(&self) {
        self.cleanup_released.inc();
    }

    pub fn watch_restarted(&self) {
        self.watch_restarts.inc();
    }

    pub fn synced(&self) {
        self.last_sync.set(crate::ipam::model::now() as i64);
    }

    pub fn call(&self, r: &CallReport) {
        let verb = bounded_label(&r.verb);
        let result = if r.code == 0 { "ok" } else { "error" };
        self.calls
            .get_or_create(&CallLabels {
                verb: verb.clone(),
                result: result.into(),
                code: r.code.to_string(),
            })
            .inc();
        if r.seconds.is_finite() && r.seconds >= 0.0 {
            self.call_seconds
                .get_or_create(&VerbLabels { verb })
                .observe(r.seconds);
        }
        for service in r.fallbacks.iter().take(4) {
            self.fallbacks
                .get_or_create(&ServiceLabels {
                    service: bounded_label(service),
                })
                .inc();
        }
    }

    pub fn policy_decision(
        &self,
        policy: &str,
        decision: &str,
        reply: &PolicyReply,
        took: Duration,
    ) {
        let outcome = match reply {
            PolicyReply::Failed(crate::agent::protocol::WireError::PolicyDenied { .. }) => "denied",
            PolicyReply::Failed(_) => "fault",
            _ => "ok",
        };
        self.decisions
            .get_or_create(&DecisionLabels {
                policy: policy.into(),
                decision: decision.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.decision_seconds
            .get_or_create(&PolicyDecisionLabels {
                policy: policy.into(),
                decision: decision.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// A policy fault (not a denial), by kind.
    pub fn policy_fault(&self, policy: &str, e: &Error) {
        let Error::PolicyFault { reason, .. } = e else {
            return;
        };
        self.faults
            .get_or_create(&FaultLabels {
                policy: policy.into(),
                kind: fault_kind(reason).into(),
            })
            .inc();
    }

    pub fn etcd_request(&self, op: &str, took: Duration, failed: bool) {
        let labels = OpLabels { op: op.into() };
        self.etcd_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.etcd_errors.get_or_create(&labels).inc();
        }
    }

    pub fn link_reaped(&self, ok: bool) {
        self.reaped
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Whether the pool gauges are older than `max_age`.
    pub fn pools_stale(&self, max_age: Duration) -> bool {
        let read = self.pools_read.lock().unwrap_or_else(|p| p.into_inner());
        read.is_none_or(|t| t.elapsed() >= max_age)
    }

    /// Replace the pool gauges with `usage`.
    pub fn set_pools(&self, usage: &[crate::ipam::audit::PoolUsage]) {
        self.allocations.clear();
        self.blocks.clear();
        self.free.clear();
        for pool in usage {
            for (node, n) in &pool.blocks_by_node {
                self.blocks
                    .get_or_create(&PoolNodeLabels {
                        pool: pool.pool.clone(),
                        node: node.clone(),
                    })
                    .set(*n as i64);
            }
            for (node, n) in &pool.used_by_node {
                self.allocations
                    .get_or_create(&PoolNodeLabels {
                        pool: pool.pool.clone(),
                        node: node.clone(),
                    })
                    .set(*n as i64);
            }
            self.free
                .get_or_create(&PoolLabels {
                    pool: pool.pool.clone(),
                })
                .set(pool.free as f64);
        }
        *self.pools_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs() as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What kind of fault a policy fault's reason describes.
pub fn fault_kind(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("deadline") || r.contains("timed out") || r.contains("timeout") {
        "timeout"
    } else if r.contains("fuel") {
        "fuel"
    } else if r.contains("memory") {
        "memory"
    } else if r.contains("trap") || r.contains("wasm backtrace") || r.contains("unreachable") {
        "trap"
    } else if r.contains("load") || r.contains("compile") || r.contains("instantiate") {
        "load"
    } else {
        "other"
    }
}

/// A label value from a report: short and printable.
fn bounded_label(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(16)
        .collect()
}
