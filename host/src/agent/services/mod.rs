//! What the agent serves, behind one dispatcher: each connection's first
//! message ([`Hello`]) names its service, and the connection is that
//! service's until it closes.
//!
//! - `store`: etcd operations on a warm connection ([`store`]);
//! - `policy`: one ADD's policy store ([`policy`]);
//! - `reaper`: finishing the deletion of a retired veth pair ([`reaper`]);
//! - `report`: a finished CNI call, for the metrics;
//! - `status`: the agent's state, for `ohnoctl status`.

#[cfg(feature = "wasm")]
pub mod policy;
pub mod reaper;
#[cfg(feature = "etcd")]
pub mod store;

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::agent::metrics::Metrics;
use crate::agent::protocol::{
    receive, send, AgentStatus, Greeting, Hello, Service, WireError, PROTOCOL,
};
use crate::store::Kv;

/// How many recent errors `ohnoctl status` shows.
const RECENT_ERRORS: usize = 16;

/// Which server this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `ohnod run`: every service, for any network of this node.
    Run,
    /// `ohnod on-demand`: the one service (and key) it was started for.
    OnDemand,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::OnDemand => "on-demand",
        }
    }
}

/// What `ohnoctl status` shows, besides what the services hold.
pub struct State {
    pub mode: Mode,
    pub started: Instant,
    pub socket: PathBuf,
    pub network: Option<String>,
    pub metrics_address: Option<String>,
    pub ready: AtomicBool,
    errors: Mutex<VecDeque<(u64, String)>>,
    /// What the routing loop last did (`ohnod run`).
    pub routes: std::sync::Arc<Mutex<Option<crate::agent::routes::RoutesStatus>>>,
}

impl State {
    pub fn new(mode: Mode, socket: PathBuf) -> State {
        State {
            mode,
            started: Instant::now(),
            socket,
            network: None,
            metrics_address: None,
            ready: AtomicBool::new(false),
            errors: Mutex::new(VecDeque::new()),
            routes: Default::default(),
        }
    }

    /// Remember `e` among the recent errors (and log it).
    pub fn error(&self, e: impl std::fmt::Display) {
        let msg = e.to_string();
        log::warn!("{msg}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() >= RECENT_ERRORS {
            errors.pop_front();
        }
        errors.push_back((now, msg));
    }

    fn recent_errors(&self) -> Vec<(u64, String)> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.iter().cloned().collect()
    }
}

pub struct Services {
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    /// On demand: the one kind of service offered.
    only_kind: Option<&'static str>,
    #[cfg(feature = "etcd")]
    pub store: store::StoreService,
    #[cfg(feature = "wasm")]
    pub policy: policy::PolicyService,
}

impl Services {
    /// Every service, as `ohnod run` offers them.
    pub fn all(state: Arc<State>, metrics: Arc<Metrics>) -> Services {
        Services {
            state,
            only_kind: None,
            #[cfg(feature = "etcd")]
            store: store::StoreService::new(None, metrics.clone()),
            #[cfg(feature = "wasm")]
            policy: policy::PolicyService::new(None, metrics.clone()),
            metrics,
        }
    }

    /// One service for one key, as `ohnod on-demand` offers it.
    pub fn only(state: Arc<State>, kind: &'static str, key: String) -> Services {
        let metrics = Arc::new(Metrics::new());
        let key_for = |k: &str| (kind == k).then(|| key.clone());
        #[cfg(not(all(feature = "etcd", feature = "wasm")))]
        let _ = &key_for;
        Services {
            state,
            only_kind: Some(kind),
            #[cfg(feature = "etcd")]
            store: store::StoreService::new(
                Some(key_for("store").unwrap_or_default()),
                metrics.clone(),
            ),
            #[cfg(feature = "wasm")]
            policy: policy::PolicyService::new(
                Some(key_for("policy").unwrap_or_default()),
                metrics.clone(),
            ),
            metrics,
        }
    }

    /// The store a policy's host imports read: the store service's warm
    /// connection for etcd, the local store otherwise.
    pub fn open_store(&self, conf: &crate::config::StoreConf) -> crate::Result<Arc<dyn Kv>> {
        match conf {
            #[cfg(feature = "etcd")]
            crate::config::StoreConf::Etcd(e) => match crate::agent::protocol::store_key(e) {
                Some(key) => self
                    .store
                    .connection(e, &key)
                    .map(|s| s as Arc<dyn Kv>)
                    .map_err(crate::Error::from),
                None => crate::store::open(conf),
            },
            _ => crate::store::open(conf),
        }
    }

    /// Load what `service` needs before the first caller (on demand).
    pub fn preload(&self, service: &Service) -> Result<(), String> {
        match service {
            #[cfg(feature = "etcd")]
            Service::Store { conf, identity } => self
                .store
                .connection(conf, identity)
                .map(drop)
                .map_err(|e| crate::Error::from(e).to_string()),
            #[cfg(feature = "wasm")]
            Service::Policy { identity, .. } => {
                let key = identity.key().unwrap_or_default();
                self.policy
                    .served(identity, &key, &|c| self.open_store(c))
                    .map(drop)
                    .map_err(|e| crate::Error::from(e).to_string())
            }
            _ => Ok(()),
        }
    }

    /// Serve one connection: its greeting, then its service.
    pub fn handle(&self, mut stream: UnixStream) {
        let Ok(hello) = receive::<Hello>(&mut stream) else {
            return;
        };
        if hello.protocol != PROTOCOL {
            let _ = send(
                &mut stream,
                &Greeting::Refused(WireError::Refused(format!(
                    "this agent speaks protocol {PROTOCOL}, not {}",
                    hello.protocol
                ))),
            );
            return;
        }
        let kind = hello.service.kind();
        if self.only_kind.is_some_and(|k| k != kind) {
            let _ = send(
                &mut stream,
                &Greeting::Refused(WireError::Refused(format!(
                    "this on-demand server does not serve {kind}"
                ))),
            );
            return;
        }
        if let Err(refused) = self.dispatch(hello.service, &mut stream) {
            let _ = send(&mut stream, &Greeting::Refused(refused));
        }
    }

    fn welcome(stream: &mut UnixStream) -> bool {
        send(
            stream,
            &Greeting::Welcome {
                protocol: PROTOCOL,
                agent: env!("CARGO_PKG_VERSION").into(),
            },
        )
        .is_ok()
    }

    /// Run `service` on `stream`; `Err` (before the welcome) refuses it.
    fn dispatch(&self, service: Service, stream: &mut UnixStream) -> Result<(), WireError> {
        match service {
            #[cfg(feature = "etcd")]
            Service::Store { conf, identity } => {
                let kv = self.store.connection(&conf, &identity).inspect_err(|e| {
                    self.state
                        .error(format!("store: {}", crate::Error::from(e.clone())))
                })?;
                if Self::welcome(stream) {
                    let s = stream.try_clone().map_err(io_refused)?;
                    self.store.serve(&*kv, &conf.prefix, s);
                }
            }
            #[cfg(feature = "wasm")]
            Service::Policy { identity, level } => {
                let key = identity.key().unwrap_or_default();
                let served = self
                    .policy
                    .served(&identity, &key, &|c| self.open_store(c))
                    .inspect_err(|e| {
                        self.state
                            .error(format!("policy: {}", crate::Error::from(e.clone())))
                    })?;
                if Self::welcome(stream) {
                    let s = stream.try_clone().map_err(io_refused)?;
                    self.policy.serve(&served, &level, s);
                }
            }
            Service::Reap { index } => {
                if self.state.mode != Mode::Run {
                    return Err(WireError::Refused("reaping is the agent's".into()));
                }
                if Self::welcome(stream) {
                    let s = stream.try_clone().map_err(io_refused)?;
                    reaper::serve(&self.metrics, index, s);
                }
            }
            Service::Report(r) => self.metrics.call(&r),
            Service::Status => {
                if Self::welcome(stream) {
                    let _ = send(stream, &self.status());
                }
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(WireError::Refused(format!(
                    "this build of ohnod does not serve {}",
                    other.kind()
                )))
            }
        }
        Ok(())
    }

    pub fn status(&self) -> AgentStatus {
        #[cfg(feature = "etcd")]
        let (etcd_endpoints, etcd_endpoint_in_use) = self.store.endpoints();
        #[cfg(not(feature = "etcd"))]
        let (etcd_endpoints, etcd_endpoint_in_use) = (Vec::new(), None);
        #[cfg(feature = "wasm")]
        let policies = self.policy.names();
        #[cfg(not(feature = "wasm"))]
        let policies = Vec::new();
        let s = &self.state;
        AgentStatus {
            mode: s.mode.as_str().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_seconds: s.started.elapsed().as_secs(),
            socket: s.socket.clone(),
            ready: s.ready.load(Ordering::SeqCst),
            network: s.network.clone(),
            policies,
            etcd_endpoints,
            etcd_endpoint_in_use,
            metrics_address: s.metrics_address.clone(),
            recent_errors: s.recent_errors(),
            routes: s.routes.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

fn io_refused(e: std::io::Error) -> WireError {
    WireError::Refused(e.to_string())
}
