//! The policy service: a policy component kept loaded between ADDs.
//!
//! A policy ADD in a fresh process maps the precompiled component, builds the
//! engine and the linker, and pages in the runtime's code before the first
//! decision: most of what a policy adds to an ADD. The service does that once
//! per component; each ADD then gets what it got in-process — a **fresh
//! store** with the sandbox's limits, the component instantiated in it and
//! `configure`d, its decisions — over the socket. One connection is one ADD's
//! store, so an ADD's calls see the same instance, and no two ADDs share one.
//!
//! - Loaded components are keyed by [`PolicyIdentity::key`] (the `policy`
//!   section, the component file's identity, the pools, the store, the node,
//!   the network namespace): a rebuilt or reconfigured policy is loaded anew.
//! - The host imports answer from the server's own store connection (the same
//!   read-only view of this node's blocks); the allocation transaction, in the
//!   plugin, still has the final word.
//! - What the policy and the host log during a call travels back with the
//!   answer and is written to the plugin's log at the plugin's level.
//! - Calls of different ADDs run at once, each in its own store against its
//!   own deadline, so one slow policy call delays no other ADD.
//! - The next ADD's store is made ready after each ADD and at load, so an ADD
//!   does not wait for it; each store still serves exactly one ADD, and its
//!   view of the node is read when the ADD asks.
//! - The plugin validates every answer exactly as it does an in-process
//!   policy's, and applies `failurePolicy` itself.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::agent::logs::{capture, captured, Captured};
use crate::agent::metrics::Metrics;
use crate::agent::protocol::{
    receive, send, PolicyAnswer, PolicyIdentity, PolicyReply, PolicyRequest, WireError,
};
use crate::config::PoolConf;
use crate::error::Result;
use crate::policy::wasm::{HostView, Loaded, WasmPolicy};
use crate::policy::Policy as _;
use crate::store::Kv;

/// At most this many components are kept loaded (the oldest goes first).
const MAX_LOADED: usize = 4;

pub struct PolicyService {
    loaded: Mutex<Vec<(String, Arc<Served>)>>,
    /// On demand: the one key served.
    only: Option<String>,
    metrics: Arc<Metrics>,
}

/// Opens the store a policy's host imports read.
pub type OpenStore<'a> = &'a dyn Fn(&crate::config::StoreConf) -> Result<Arc<dyn Kv>>;

impl PolicyService {
    pub fn new(only: Option<String>, metrics: Arc<Metrics>) -> PolicyService {
        PolicyService {
            loaded: Mutex::new(Vec::new()),
            only,
            metrics,
        }
    }

    /// The loaded component for `identity`, loaded now if need be.
    pub fn served(
        &self,
        identity: &PolicyIdentity,
        key: &str,
        open_store: OpenStore<'_>,
    ) -> std::result::Result<Arc<Served>, WireError> {
        if identity.key().as_deref() != Some(key) {
            return Err(WireError::Refused(
                "the agent sees another policy component or network namespace".into(),
            ));
        }
        if self.only.as_deref().is_some_and(|only| only != key) {
            return Err(WireError::Refused(
                "this on-demand server serves another policy".into(),
            ));
        }
        if let Some(s) = self.find(key) {
            return Ok(s);
        }
        // Loaded outside the lock: another policy's ADDs need not wait.
        let served = Arc::new(Served::load(identity.clone(), open_store)?);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = loaded.iter().find(|(k, _)| k == key) {
            return Ok(s.clone());
        }
        if loaded.len() >= MAX_LOADED {
            loaded.remove(0);
        }
        loaded.push((key.to_string(), served.clone()));
        Ok(served)
    }

    fn find(&self, key: &str) -> Option<Arc<Served>> {
        let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.clone())
    }

    /// The components loaded now, by path.
    pub fn names(&self) -> Vec<String> {
        let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded
            .iter()
            .map(|(_, s)| s.identity.policy.path.display().to_string())
            .collect()
    }

    /// One ADD on a connection; then the next ADD's store is made ready.
    pub fn serve(&self, served: &Served, level: &str, stream: UnixStream) {
        converse(served, &self.metrics, level, stream);
        served.refill();
    }
}

pub struct Served {
    identity: PolicyIdentity,
    loaded: Loaded,
    kv: Arc<dyn Kv>,
    /// The next ADD's store, made ready before it arrives.
    next: Mutex<Option<Prepared>>,
}

/// A fresh store with the component instantiated and configured (or why it
/// could not be), its view, and what it logged meanwhile. Made ahead of the
/// ADD that gets it, never used by another.
struct Prepared {
    policy: Result<WasmPolicy>,
    view: HostView,
    logs: Captured,
}

impl Served {
    fn load(
        identity: PolicyIdentity,
        open_store: OpenStore<'_>,
    ) -> std::result::Result<Served, WireError> {
        let loaded = Loaded::load(&identity.policy).map_err(WireError::from)?;
        let kv = open_store(&identity.store).map_err(WireError::from)?;
        let served = Served {
            identity,
            loaded,
            kv,
            next: Mutex::new(None),
        };
        served.refill();
        Ok(served)
    }

    fn prepare(&self) -> Prepared {
        let id = &self.identity;
        let view = HostView::new(
            self.kv.clone(),
            id.store.prefix(),
            &id.node,
            id.pools.clone(),
        );
        capture(log::LevelFilter::Trace);
        let policy = WasmPolicy::instantiate(&self.loaded, &id.policy, view.clone());
        Prepared {
            policy,
            view,
            logs: captured(),
        }
    }

    /// The prepared store, or one made now.
    fn take(&self) -> Prepared {
        let ready = self.next.lock().unwrap_or_else(|p| p.into_inner()).take();
        ready.unwrap_or_else(|| self.prepare())
    }

    /// Make the next ADD's store, unless one is waiting.
    fn refill(&self) {
        if self
            .next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let p = self.prepare();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if next.is_none() {
            *next = Some(p);
        }
    }
}

fn reply<T>(r: Result<T>, ok: impl FnOnce(T) -> PolicyReply) -> PolicyReply {
    match r {
        Ok(v) => ok(v),
        Err(e) => PolicyReply::Failed(e.into()),
    }
}

/// `lines` at `level` and above, for the wire.
fn at(level: log::LevelFilter, lines: Captured) -> crate::agent::protocol::Lines {
    lines
        .into_iter()
        .filter(|(l, _)| *l <= level)
        .map(|(l, m)| (l.to_string(), m))
        .collect()
}

/// One ADD: its fresh store (prepared ahead, or made now), then its calls.
fn converse(served: &Served, metrics: &Metrics, level: &str, mut stream: UnixStream) {
    let level = level.parse().unwrap_or(log::LevelFilter::Info);
    let Prepared {
        policy: opened,
        view,
        logs,
    } = served.take();
    view.forget();
    capture(level);
    let name = served.identity.policy.path.display().to_string();
    let (mut policy, first) = match opened {
        Ok(p) => (Some(p), PolicyReply::Ready),
        Err(e) => {
            metrics.policy_fault(&name, &e);
            (None, PolicyReply::Failed(e.into()))
        }
    };
    let pools = &served.identity.pools;
    let mut out = PolicyAnswer {
        logs: at(level, logs),
        reply: first,
    };
    loop {
        if send(&mut stream, &out).is_err() {
            return;
        }
        let (Some(p), Ok(req)) = (policy.as_mut(), receive::<PolicyRequest>(&mut stream)) else {
            return;
        };
        let started = Instant::now();
        let (decision, r) = match req {
            PolicyRequest::NameInterface(pod) => (
                "name-interface",
                p.name_interface(&pod)
                    .inspect_err(|e| metrics.policy_fault(&name, e)),
            )
                .map_reply(PolicyReply::Naming),
            PolicyRequest::Allocate(pod, family, names) => {
                let chosen: Option<Vec<&PoolConf>> = names
                    .iter()
                    .map(|n| pools.iter().find(|p| &p.name == n))
                    .collect();
                match chosen {
                    Some(chosen) => (
                        "allocate",
                        p.allocate(&pod, family, &chosen)
                            .inspect_err(|e| metrics.policy_fault(&name, e)),
                    )
                        .map_reply(PolicyReply::Allocation),
                    None => (
                        "allocate",
                        PolicyReply::Failed(WireError::Refused(format!(
                            "the agent does not know pools {names:?}"
                        ))),
                    ),
                }
            }
        };
        metrics.policy_decision(&name, decision, &r, started.elapsed());
        out = PolicyAnswer {
            logs: at(level, captured()),
            reply: r,
        };
    }
}

/// `(decision, result)` into `(decision, reply)`.
trait MapReply<T> {
    fn map_reply(self, ok: impl FnOnce(T) -> PolicyReply) -> (&'static str, PolicyReply);
}

impl<T> MapReply<T> for (&'static str, Result<T>) {
    fn map_reply(self, ok: impl FnOnce(T) -> PolicyReply) -> (&'static str, PolicyReply) {
        (self.0, reply(self.1, ok))
    }
}
