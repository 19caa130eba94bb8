//! [`Session::open`]: the one place a plugin call decides where its work
//! runs.
//!
//! For each service — the store, the policy, reaping a retired veth — in
//! this order:
//! 1. the agent (`ohnod run`) on `<ipam.lockDir>/ohnod.sock`, when it
//!    answers;
//! 2. else an on-demand server (`ohnod on-demand`) for this configuration,
//!    when `persistMs` > 0: through it when one runs, otherwise in-process
//!    this time and one is started for the next calls;
//! 3. else in-process.
//!
//! Whatever a server fails (refuses, closes, is slow, answers nonsense), the
//! fallback clients finish in-process with the same result and code
//! ([`crate::agent::client`]). The embedded local store is always opened
//! in-process: SQLite on the node's own disk needs no warm connection.

use std::sync::Arc;

use crate::agent::client;
#[cfg(any(feature = "etcd", feature = "wasm"))]
use crate::agent::client::Conn;
use crate::config::NetConf;
use crate::error::Result;
use crate::ipam::Allocator;
use crate::net::netns::NetNs;
use crate::policy::Policy;
use crate::store::Kv;

/// Where one call's work runs, and its store.
pub struct Session<'c> {
    conf: &'c NetConf,
    pub kv: Arc<dyn Kv>,
}

impl<'c> Session<'c> {
    /// Open the call's store: through the agent or an on-demand server when
    /// one answers, else in-process.
    pub fn open(conf: &'c NetConf) -> Result<Session<'c>> {
        Ok(Session {
            conf,
            kv: open_store(conf)?,
        })
    }

    /// The allocator on this call's store.
    pub fn allocator(&self) -> Allocator<'_> {
        Allocator::from_conf(&*self.kv, self.conf)
    }

    /// The call's policy: the built-in one, or the configured component —
    /// decided in the agent or an on-demand server when one answers, else
    /// loaded here.
    pub fn policy(&self) -> Result<Box<dyn Policy>> {
        let conf = self.conf;
        let Some(pc) = &conf.policy else {
            return crate::policy::load(conf, self.kv.clone());
        };
        #[cfg(feature = "wasm")]
        if let Some(conn) = policy_conn(conf, pc) {
            return Ok(Box::new(client::policy::FallbackPolicy::new(
                conn,
                conf,
                pc,
                self.kv.clone(),
            )));
        }
        let _ = pc;
        crate::policy::load(conf, self.kv.clone())
    }
}

/// Hand the retired link `index` in `ns` to the agent or an on-demand reaper
/// to delete; `false` when neither could take it (delete it now).
pub fn reap(conf: &NetConf, ns: &NetNs, index: u32) -> bool {
    {
        let socket = client::agent_socket(&conf.ipam.lock_dir);
        match client::reap(&socket, ns, index) {
            Ok(()) => {
                client::note_agent(&socket);
                return true;
            }
            Err(e) => log::debug!("reaper: no agent at {} ({e})", socket.display()),
        }
        match crate::agent::spawn::reaper(ns, index) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("start the on-demand reaper: {e}");
                false
            }
        }
    }
}

#[cfg(any(feature = "etcd", feature = "wasm"))]
/// A connection for `service` to the agent, or to the on-demand server on
/// `on_demand` (started for the next calls when none answers).
fn connect(
    lock_dir: &std::path::Path,
    service: crate::agent::protocol::Service,
    budget: std::time::Duration,
    on_demand: Option<(std::path::PathBuf, u64)>,
) -> Option<Conn> {
    let agent = client::agent_socket(lock_dir);
    match Conn::open(&agent, service.clone(), budget) {
        Ok(conn) => {
            client::note_agent(&agent);
            log::debug!(
                "{}: through the agent at {}",
                service.kind(),
                agent.display()
            );
            return Some(conn);
        }
        Err(e) => log::debug!("{}: no agent at {} ({e})", service.kind(), agent.display()),
    }
    let (socket, persist_ms) = on_demand?;
    match Conn::open(&socket, service.clone(), budget) {
        Ok(conn) => {
            log::debug!("{}: through {}", service.kind(), socket.display());
            Some(conn)
        }
        Err(e) => {
            log::debug!(
                "{}: no server at {} ({e})",
                service.kind(),
                socket.display()
            );
            let kind = service.kind();
            let start = crate::agent::run::OnDemandStart {
                socket: socket.clone(),
                persist_ms,
                service,
            };
            if let Ok(doc) = serde_json::to_string(&start) {
                crate::agent::spawn::on_demand(kind, &doc, &socket);
            }
            None
        }
    }
}

fn open_store(conf: &NetConf) -> Result<Arc<dyn Kv>> {
    #[cfg(feature = "etcd")]
    if let crate::config::StoreConf::Etcd(e) = &conf.ipam.store {
        use crate::agent::protocol::{socket_path, store_key, Service};
        if let Some(key) = store_key(e) {
            let on_demand = (e.persist_ms > 0)
                .then_some(e.helper_dir.as_ref())
                .flatten()
                .map(|dir| (socket_path(dir, "etcd", &key), e.persist_ms));
            let service = Service::Store {
                conf: e.clone(),
                identity: key,
            };
            let budget = client::store::budget(e);
            if let Some(conn) = connect(&conf.ipam.lock_dir, service, budget, on_demand) {
                let direct = e.clone();
                return Ok(Arc::new(client::store::FallbackKv::new(
                    conn,
                    Box::new(move || {
                        Ok(Arc::new(crate::store::etcd::EtcdStore::open(&direct)?) as Arc<dyn Kv>)
                    }),
                )));
            }
        }
    }
    crate::store::open(&conf.ipam.store)
}

#[cfg(feature = "wasm")]
fn policy_conn(conf: &NetConf, pc: &crate::config::policy::PolicyConf) -> Option<Conn> {
    use crate::agent::protocol::{socket_path, PolicyIdentity, Service};
    let identity = PolicyIdentity::of(conf, pc);
    let key = identity.key()?;
    let on_demand = (pc.persist_ms > 0).then(|| {
        (
            socket_path(&conf.ipam.lock_dir, "policy", &key),
            pc.persist_ms,
        )
    });
    // Each call is bounded by timeoutMs in the server; configure and a
    // decision, plus a margin for a loaded machine.
    let budget = std::time::Duration::from_millis(2 * pc.timeout_ms + 2000);
    let service = Service::Policy {
        identity,
        level: log::max_level().to_string(),
    };
    connect(&conf.ipam.lock_dir, service, budget, on_demand)
}
