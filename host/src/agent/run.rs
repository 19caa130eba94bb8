//! `ohnod run` and `ohnod on-demand`: what each mode sets up around the one
//! server ([`super::server`]) and the one dispatcher ([`super::services`]).
//!
//! `run` is the node's long-running agent (a DaemonSet pod or a systemd
//! unit). It logs to stderr; starts whether or not etcd answers, and keeps
//! trying (readiness false meanwhile); serves until SIGTERM or SIGINT, then
//! stops accepting, removes its socket — new plugin calls work in-process at
//! once — and waits up to `drainSeconds` for the calls it is serving.
//!
//! `on-demand` is what the plugin starts when no agent answers: one service
//! for one configuration, on a socket named by that configuration's hash,
//! leaving after `persistMs` without a caller.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::health::Health;
use super::metrics::Metrics;
use super::protocol::Service;
use super::server::{self, Ended, Lifetime};
use super::services::{Mode, Services, State};
use crate::config::agent::AgentConf;
use crate::config::{NetConf, StoreConf};
use crate::ipam::Allocator;

/// How often the agent checks its own readiness (and refreshes what it
/// holds warm).
const READY_EVERY: Duration = Duration::from_secs(2);
/// The longest wait between two attempts to reach etcd at start.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// The pool gauges are read from the store at most this often.
const POOLS_EVERY: Duration = Duration::from_secs(5);

/// What `ohnod on-demand store|policy` reads on stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct OnDemandStart {
    pub socket: PathBuf,
    pub persist_ms: u64,
    pub service: Service,
}

/// Block SIGTERM and SIGINT in every thread (threads inherit the mask) and
/// set `stop` when one arrives.
fn stop_on_signals(stop: Arc<AtomicBool>) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("ohnod-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                log::info!("{sig}: draining");
            }
            stop.store(true, Ordering::SeqCst);
        })?;
    Ok(())
}

struct Agent {
    services: Arc<Services>,
    network: NetConf,
}

impl Agent {
    /// Whether the network's store answers and its policy is loaded, loading
    /// and connecting what is not yet.
    fn check(&self) -> Result<(), String> {
        let conf = &self.network;
        if let StoreConf::Etcd(_) = &conf.ipam.store {
            let kv = self
                .services
                .open_store(&conf.ipam.store)
                .map_err(|e| e.to_string())?;
            kv.ping().map_err(|e| format!("etcd: {e}"))?;
        }
        #[cfg(feature = "wasm")]
        if let Some(pc) = &conf.policy {
            let identity = super::protocol::PolicyIdentity::of(conf, pc);
            let key = identity
                .key()
                .ok_or_else(|| format!("policy {}: cannot be read", pc.path.display()))?;
            self.services
                .policy
                .served(&identity, &key, &|c| self.services.open_store(c))
                .map_err(|e| format!("policy: {}", crate::Error::from(e)))?;
        }
        Ok(())
    }

    fn refresh_pools(&self) {
        let conf = &self.network;
        let kv = match self.services.open_store(&conf.ipam.store) {
            Ok(kv) => kv,
            Err(e) => return log::debug!("pool metrics: {e}"),
        };
        match Allocator::from_conf(&*kv, conf).pool_usage(&conf.ipam.pools) {
            Ok(usage) => self.services.metrics.set_pools(&usage),
            Err(e) => log::debug!("pool metrics: {e}"),
        }
    }
}

impl Health for Agent {
    fn ready(&self) -> bool {
        self.services.state.ready.load(Ordering::SeqCst)
    }

    fn metrics(&self) -> String {
        if self.services.metrics.pools_stale(POOLS_EVERY) {
            self.refresh_pools();
        }
        self.services.metrics.encode()
    }
}

/// Keep the agent's readiness true to what answers: at start retry with
/// back-off until the store answers and the policy loads; then check again
/// every [`READY_EVERY`].
fn watch_readiness(agent: Arc<Agent>, stop: Arc<AtomicBool>) {
    let mut wait = Duration::from_millis(250);
    let mut was_ready = false;
    while !stop.load(Ordering::SeqCst) {
        let ready = match agent.check() {
            Ok(()) => true,
            Err(e) => {
                if was_ready || wait >= RETRY_MAX / 2 {
                    agent.services.state.error(format!("not ready: {e}"));
                } else {
                    log::info!("not ready yet: {e}");
                }
                false
            }
        };
        if ready != was_ready {
            log::info!("{}", if ready { "ready" } else { "not ready" });
        }
        agent.services.state.ready.store(ready, Ordering::SeqCst);
        agent.services.metrics.set_ready(ready);
        was_ready = ready;
        let pause = if ready {
            wait = Duration::from_millis(250);
            READY_EVERY
        } else {
            wait = (wait * 2).min(RETRY_MAX);
            wait
        };
        let until = std::time::Instant::now() + pause;
        while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `ohnod run`: returns the exit code.
pub fn run(conf: AgentConf) -> i32 {
    super::logs::init(conf.log_level, "ohnod");
    // What the server creates (its socket) is for its own uid only.
    // SAFETY: umask only sets this process's creation mask.
    unsafe { libc::umask(0o177) };
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = stop_on_signals(stop.clone()) {
        log::error!("signal handling: {e}");
        return 1;
    }
    if let Err(e) = crate::nodefs::check_conf(&conf.network) {
        log::error!("{e}");
        return 1;
    }
    let mut state = State::new(Mode::Run, conf.socket.clone());
    state.network = Some(format!(
        "{} ({})",
        conf.network.name,
        conf.network_file.display()
    ));
    state.metrics_address = conf.metrics_address.map(|a| a.to_string());
    let metrics = Arc::new(Metrics::new());
    let routes_status = state.routes.clone();
    let services = Arc::new(Services::all(Arc::new(state), metrics.clone()));
    let agent = Arc::new(Agent {
        services: services.clone(),
        network: conf.network.clone(),
    });
    if let Some(addr) = conf.metrics_address {
        match TcpListener::bind(addr) {
            Ok(listener) => {
                let (health, stop) = (agent.clone() as Arc<dyn Health>, stop.clone());
                let _ = std::thread::Builder::new()
                    .name("ohnod-http".into())
                    .spawn(move || super::health::serve(listener, health, stop));
                log::info!("metrics, healthz and readyz on http://{addr}");
            }
            Err(e) => {
                log::error!("listen on {addr} (metricsAddress): {e}");
                return 1;
            }
        }
    }
    {
        let (agent, stop) = (agent.clone(), stop.clone());
        let _ = std::thread::Builder::new()
            .name("ohnod-ready".into())
            .spawn(move || watch_readiness(agent, stop));
    }
    #[cfg(feature = "kubernetes")]
    let cleanup = match super::kube::start(&conf, stop.clone(), metrics.clone()) {
        Ok(handle) => handle,
        Err(e) => {
            log::error!("node clean-up: {e}");
            return 1;
        }
    };
    #[cfg(not(feature = "kubernetes"))]
    if conf.node_cleanup.is_some() {
        log::error!("nodeCleanup: this build of ohnod has no Kubernetes support");
        return 1;
    }
    if let Err(e) = super::routes::start(&conf, stop.clone(), metrics, routes_status) {
        log::error!("routes: {e}");
        return 1;
    }
    log::info!(
        "ohnod {} serving {} on {}",
        env!("CARGO_PKG_VERSION"),
        conf.network.name,
        conf.socket.display()
    );
    let ended = server::serve(
        &conf.socket,
        Lifetime::UntilStopped {
            stop: stop.clone(),
            drain: conf.drain,
        },
        move || Ok(move |stream| services.handle(stream)),
    );
    stop.store(true, Ordering::SeqCst);
    // The clean-up thread hands its lease on before the process ends.
    #[cfg(feature = "kubernetes")]
    if let Some(handle) = cleanup {
        let _ = handle.join();
    }
    match ended {
        Ok(Ended::Done) => {
            log::info!("stopped; every call drained");
            0
        }
        Ok(Ended::AlreadyServed) => {
            log::error!("another ohnod serves {}", conf.socket.display());
            1
        }
        Ok(Ended::SocketGone) => 1,
        Ok(Ended::DrainTimedOut(n)) => {
            log::warn!("stopped with {n} calls still open after the drain time");
            0
        }
        Err(e) => {
            log::error!("serve {}: {e}", conf.socket.display());
            1
        }
    }
}

/// `ohnod on-demand store|policy`: the start document on stdin; returns the
/// exit code.
pub fn on_demand(kind: &str) -> i32 {
    #[cfg(not(all(feature = "etcd", feature = "wasm")))]
    let _ = kind;
    let mut doc = Vec::new();
    if std::io::stdin()
        .take(1 << 20)
        .read_to_end(&mut doc)
        .is_err()
    {
        return 2;
    }
    super::server::detach_from_starter(None);
    super::logs::init(log::LevelFilter::Warn, "ohnod on-demand");
    let Ok(start) = serde_json::from_slice::<OnDemandStart>(&doc) else {
        return 2;
    };
    let key: Option<String> = match &start.service {
        #[cfg(feature = "etcd")]
        Service::Store { conf, .. } if kind == "store" => super::protocol::store_key(conf),
        #[cfg(feature = "wasm")]
        Service::Policy { identity, .. } if kind == "policy" => identity.key(),
        _ => None,
    };
    let Some(key) = key else {
        return 2;
    };
    let service_kind = start.service.kind();
    let state = Arc::new(State::new(Mode::OnDemand, start.socket.clone()));
    let services = Arc::new(Services::only(state, service_kind, key.clone()));
    let service = start.service;
    let still = service.clone();
    let ended = server::serve(
        &start.socket,
        Lifetime::OnDemand {
            persist: Duration::from_millis(start.persist_ms),
            // A certificate or component file that changed: stale.
            still_valid: Box::new(move || service_key(&still).as_deref() == Some(key.as_str())),
        },
        move || {
            services.preload(&service).map_err(std::io::Error::other)?;
            Ok(move |stream| services.handle(stream))
        },
    );
    i32::from(ended.is_err())
}

/// The key of what `service` needs loaded, as this process sees it now.
fn service_key(service: &Service) -> Option<String> {
    match service {
        #[cfg(feature = "etcd")]
        Service::Store { conf, .. } => super::protocol::store_key(conf),
        #[cfg(feature = "wasm")]
        Service::Policy { identity, .. } => identity.key(),
        _ => None,
    }
}

/// `ohnod on-demand reap --link INDEX --netns-fd FD`: delete the retired
/// link in the namespace open on the inherited descriptor.
pub fn reap(index: u32, fd: i32) -> i32 {
    use std::os::fd::FromRawFd;
    super::server::detach_from_starter(Some(fd));
    if fd < 3 {
        return 2;
    }
    // SAFETY: the descriptor was inherited for this purpose and is ours alone.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    i32::from(super::services::reaper::reap(owned, index).is_err())
}
