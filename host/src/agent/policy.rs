//! The policy helper: a node-local process (see [`crate::helper`]) that keeps
//! a policy component loaded between ADDs.
//!
//! A policy ADD in a fresh process maps the precompiled component, builds the
//! engine and the linker, and pages in the runtime's code before the first
//! decision: most of what a policy adds to an ADD (docs/bench). The helper does that once; each ADD then
//! connects to its socket (`<ipam.lockDir>/policy-<hash>.sock`) and gets what it
//! got before — a **fresh store** with the sandbox's limits, the component
//! instantiated in it and `configure`d, its decisions — over the socket. One
//! connection is one ADD's store, so an ADD's calls see the same instance, and
//! no two ADDs share one.
//!
//! - The hash covers the `policy` section (file, config, limits), the identity
//!   of the component file, the pools, the store and the node: a rebuilt or
//!   reconfigured policy gets a helper of its own, and the helper leaves when
//!   its component file changes.
//! - The host imports answer from the helper's own connection to the store
//!   (the same read-only view of this node's blocks); the allocation
//!   transaction, in the plugin, still has the final word.
//! - What the policy and the host log during a call (guest log lines, its
//!   stdout/stderr, faults) travels back with the answer and is written to the
//!   plugin's log at the plugin's level.
//! - Calls of different ADDs run at once, each in its own store against its
//!   own deadline (the engine's epoch only ticks; each store compares the time
//!   with its call's deadline), so one slow or sleeping policy call delays no
//!   other ADD.
//! - The next ADD's store is made ready (instantiated, configured) after each
//!   ADD and at start, so an ADD does not wait for it; each store still serves
//!   exactly one ADD, and its view of the node is read when the ADD asks.
//! - The plugin validates every answer exactly as it does an in-process
//!   policy's, and applies `failurePolicy` itself; a helper that is missing,
//!   dies or does not answer in time is replaced by loading the component
//!   in-process.

use std::cell::RefCell;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::protocol::{receive, send, WireError};
use crate::config::{NetConf, PoolConf, StoreConf};
use crate::error::{Error, Result};
use crate::policy::wasm::{HostView, Loaded, PolicyConf, WasmPolicy};
use crate::policy::{Allocation, Family, Naming, Pod, Policy};
use crate::store::Kv;

/// The environment variable that makes `ohno` the policy helper.
pub const ENV: &str = "OHNO_POLICY_HELPER";
/// The helper kind: `ohno --helper policy`, and its sockets' names.
const KIND: &str = "policy";
/// The helper's name in `ps`.
const NAME: &str = "ohno-policy-helper";
/// Bumped when the wire format changes (part of the socket's hash).
const PROTOCOL: &str = "ohno-policy-helper/1";

/// Everything the helper's state depends on (and what it is started with).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    policy: PolicyConf,
    pools: Vec<PoolConf>,
    store: StoreConf,
    node: String,
    lock_dir: PathBuf,
}

impl Identity {
    fn of(conf: &NetConf, policy: &PolicyConf) -> Identity {
        Identity {
            policy: policy.clone(),
            pools: conf.ipam.pools.clone(),
            store: conf.ipam.store.clone(),
            node: conf.node.clone(),
            lock_dir: conf.ipam.lock_dir.clone(),
        }
    }

    /// The helper's socket; `None` when `persistMs` is 0 or the component file
    /// cannot be seen (the in-process load reports why).
    fn socket(&self) -> Option<PathBuf> {
        if self.policy.persist_ms == 0 {
            return None;
        }
        let id = format!(
            "{PROTOCOL}\n{:?}\n{}\n{}",
            self,
            crate::file_identity(&self.policy.path).ok()?,
            crate::agent::protocol::netns_identity()?
        );
        Some(crate::agent::protocol::socket_path(
            &self.lock_dir,
            KIND,
            &id,
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct Start {
    identity: Identity,
    socket: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Open this ADD's store; lines at `level` and above come back.
    Hello {
        level: String,
    },
    NameInterface(Pod),
    /// The pools by name (the helper has their definitions).
    Allocate(Pod, Family, Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Ready,
    Naming(Naming),
    Allocation(Allocation),
    Failed(WireError),
}

/// Log lines: (level, message).
type Lines = Vec<(String, String)>;

/// A reply and the log lines written while it was made.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    logs: Lines,
    reply: Reply,
}

/// The helper for `policy` under `conf`: a [`Remote`] when one is running;
/// `None` otherwise (one is started for the next ADDs, when allowed).
pub fn connect(conf: &NetConf, policy: &PolicyConf, kv: &Arc<dyn Kv>) -> Option<Remote> {
    let identity = Identity::of(conf, policy);
    let socket = identity.socket()?;
    // Each call is bounded by timeoutMs in the helper; configure and a
    // decision, plus a margin for a loaded machine.
    let budget = Duration::from_millis(2 * policy.timeout_ms + 2000);
    match crate::agent::protocol::connect(&socket, budget) {
        Ok(mut stream) => {
            let hello = Request::Hello {
                level: log::max_level().to_string(),
            };
            if let Err(e) = send(&mut stream, &hello) {
                log::debug!("policy helper at {}: {e}", socket.display());
                return None;
            }
            log::debug!(
                "policy {}: through the helper at {}",
                policy.path.display(),
                socket.display()
            );
            Some(Remote {
                name: policy.path.display().to_string(),
                stream: Some(stream),
                opened: false,
                conf: conf.clone(),
                kv: kv.clone(),
                local: None,
            })
        }
        Err(e) => {
            log::debug!("policy: no helper at {} ({e})", socket.display());
            let start = Start { identity, socket };
            if let Ok(doc) = serde_json::to_string(&start) {
                crate::agent::protocol::spawn(KIND, ENV, NAME, &doc, &start.socket);
            }
            None
        }
    }
}

/// One ADD's policy, run by the helper. Its store was opened by the first
/// message; the reply to it is read with the first decision's.
pub struct Remote {
    name: String,
    stream: Option<UnixStream>,
    opened: bool,
    conf: NetConf,
    kv: Arc<dyn Kv>,
    /// The in-process policy, once the helper failed us (or told us to use
    /// the built-in one).
    local: Option<Box<dyn Policy>>,
}

impl Remote {
    fn policy_conf(&self) -> Result<&PolicyConf> {
        self.conf
            .policy
            .as_ref()
            .ok_or_else(|| Error::Store("policy helper without a policy".into()))
    }

    /// The in-process policy, loaded now if need be.
    fn local(&mut self) -> Result<&mut Box<dyn Policy>> {
        if self.local.is_none() {
            let pc = self.policy_conf()?;
            self.local = Some(crate::policy::load_wasm_in_process(
                &self.conf,
                pc,
                self.kv.clone(),
            )?);
        }
        self.local
            .as_mut()
            .ok_or_else(|| Error::Store("policy helper: no local policy".into()))
    }

    /// One answer from the helper, its log lines written to our log; `None`
    /// when the helper is gone or silent.
    fn answer(&mut self) -> Option<Reply> {
        let stream = self.stream.as_mut()?;
        match receive::<Answer>(stream) {
            Ok(a) => {
                for (level, line) in a.logs {
                    let level = level.parse().unwrap_or(log::Level::Info);
                    log::log!(level, "{line}");
                }
                Some(a.reply)
            }
            Err(e) => {
                log::warn!(
                    "policy {}: the policy helper failed ({e}); loading the policy here",
                    self.name
                );
                self.stream = None;
                None
            }
        }
    }

    /// Send `req` and read its reply (after the store-opening reply, the
    /// first time). `Ok(None)`: decide in-process instead.
    fn ask(&mut self, req: Request) -> Result<Option<Reply>> {
        if self.local.is_some() {
            return Ok(None);
        }
        if !self.opened {
            self.opened = true;
            match self.answer() {
                Some(Reply::Ready) => {}
                Some(Reply::Failed(e)) => {
                    // The component could not be instantiated or configured:
                    // as an in-process load would have said.
                    let pc = self.policy_conf()?.clone();
                    crate::policy::wasm::tolerate(&pc, Err(e.into()), ())?;
                    self.local = Some(Box::new(crate::policy::DefaultPolicy));
                    return Ok(None);
                }
                Some(other) => {
                    return Err(Error::Store(format!(
                        "the policy helper opened with {}",
                        crate::agent::protocol::bounded_debug(&other)
                    )))
                }
                None => return Ok(None),
            }
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        if let Err(e) = send(stream, &req) {
            log::warn!(
                "policy {}: the policy helper failed ({e}); loading the policy here",
                self.name
            );
            self.stream = None;
            return Ok(None);
        }
        Ok(self.answer())
    }
}

impl Policy for Remote {
    fn name(&self) -> &str {
        &self.name
    }

    fn allocate(&mut self, pod: &Pod, family: Family, pools: &[&PoolConf]) -> Result<Allocation> {
        let names = pools.iter().map(|p| p.name.clone()).collect();
        match self.ask(Request::Allocate(pod.clone(), family, names))? {
            Some(Reply::Allocation(a)) => Ok(a),
            Some(Reply::Failed(e)) => Err(e.into()),
            Some(other) => Err(Error::Store(format!(
                "the policy helper answered allocate with {}",
                crate::agent::protocol::bounded_debug(&other)
            ))),
            None => self.local()?.allocate(pod, family, pools),
        }
    }

    fn name_interface(&mut self, pod: &Pod) -> Result<Naming> {
        match self.ask(Request::NameInterface(pod.clone()))? {
            Some(Reply::Naming(n)) => Ok(n),
            Some(Reply::Failed(e)) => Err(e.into()),
            Some(other) => Err(Error::Store(format!(
                "the policy helper answered name-interface with {}",
                crate::agent::protocol::bounded_debug(&other)
            ))),
            None => self.local()?.name_interface(pod),
        }
    }

    fn reject(&mut self, err: Error) -> Result<()> {
        if let Some(local) = self.local.as_mut() {
            return local.reject(err);
        }
        crate::policy::wasm::tolerate(self.policy_conf()?, Err(err), ())
    }
}

// ------------------------------------------------------------------ the helper

/// Lines collected on one thread, with their levels.
type Captured = Vec<(log::Level, String)>;

thread_local! {
    /// The level and lines being collected on this thread.
    static CAPTURED: RefCell<Option<(log::LevelFilter, Captured)>> = const { RefCell::new(None) };
}

/// Collect this thread's lines at `level` and above from now on.
fn capture(level: log::LevelFilter) {
    CAPTURED.with(|c| *c.borrow_mut() = Some((level, Vec::new())));
}

/// The helper's logger: each connection's thread collects its own lines, at
/// the level its plugin logs at, to send back with the answer.
struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("ohno")
            && CAPTURED.with(|c| {
                c.borrow()
                    .as_ref()
                    .is_some_and(|(level, _)| m.level() <= *level)
            })
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            CAPTURED.with(|c| {
                if let Some((_, lines)) = c.borrow_mut().as_mut() {
                    lines.push((r.level(), r.args().to_string()));
                }
            });
        }
    }

    fn flush(&self) {}
}

fn captured() -> Captured {
    CAPTURED.with(|c| {
        c.borrow_mut()
            .as_mut()
            .map(|(_, lines)| std::mem::take(lines))
            .unwrap_or_default()
    })
}

/// `lines` at `level` and above, for the wire.
fn at(level: log::LevelFilter, lines: Captured) -> Lines {
    lines
        .into_iter()
        .filter(|(l, _)| *l <= level)
        .map(|(l, m)| (l.to_string(), m))
        .collect()
}

struct Served {
    identity: Identity,
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

fn reply<T>(r: Result<T>, ok: impl FnOnce(T) -> Reply) -> Reply {
    match r {
        Ok(v) => ok(v),
        Err(e) => Reply::Failed(e.into()),
    }
}

/// One ADD on a connection; then the next ADD's store is made ready.
fn serve_connection(served: &Served, stream: UnixStream) {
    converse(served, stream);
    served.refill();
}

/// One ADD: its fresh store (prepared ahead, or made now), then its calls.
fn converse(served: &Served, mut stream: UnixStream) {
    let Ok(Request::Hello { level }) = receive::<Request>(&mut stream) else {
        return;
    };
    let level = level.parse().unwrap_or(log::LevelFilter::Info);
    let Prepared {
        policy: opened,
        view,
        logs,
    } = served.take();
    view.forget();
    capture(level);
    let (mut policy, first) = match opened {
        Ok(p) => (Some(p), Reply::Ready),
        Err(e) => (None, Reply::Failed(e.into())),
    };
    let id = &served.identity;
    let mut out = Answer {
        logs: at(level, logs),
        reply: first,
    };
    loop {
        if send(&mut stream, &out).is_err() {
            return;
        }
        let (Some(p), Ok(req)) = (policy.as_mut(), receive::<Request>(&mut stream)) else {
            return;
        };
        let r = match req {
            Request::Hello { .. } => Reply::Failed(WireError::Store("hello twice".into())),
            Request::NameInterface(pod) => reply(p.name_interface(&pod), Reply::Naming),
            Request::Allocate(pod, family, names) => {
                let pools: Option<Vec<&PoolConf>> = names
                    .iter()
                    .map(|n| id.pools.iter().find(|p| &p.name == n))
                    .collect();
                match pools {
                    Some(pools) => reply(p.allocate(&pod, family, &pools), Reply::Allocation),
                    None => Reply::Failed(WireError::Store(format!(
                        "the policy helper does not know pools {names:?}"
                    ))),
                }
            }
        };
        out = Answer {
            logs: at(level, captured()),
            reply: r,
        };
    }
}

/// `ohno`'s entry point when started as the policy helper: `Some(exit code)`,
/// or `None` when this process is not one.
pub fn main_if_helper() -> Option<i32> {
    if crate::agent::protocol::role().as_deref() != Some(KIND) {
        return None;
    }
    let doc = std::env::var(ENV).ok()?;
    crate::agent::protocol::close_inherited_descriptors();
    let start: Start = serde_json::from_str(&doc).ok()?;
    if log::set_boxed_logger(Box::new(Capture)).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    let identity = start.identity;
    let still = identity.clone();
    let socket: &Path = &start.socket;
    let served = crate::agent::protocol::serve(
        socket,
        Duration::from_millis(identity.policy.persist_ms),
        move || {
            let loaded = Loaded::load(&identity.policy).map_err(std::io::Error::other)?;
            let kv = crate::store::open(&identity.store).map_err(std::io::Error::other)?;
            let served = Served {
                identity,
                loaded,
                kv,
                next: Mutex::new(None),
            };
            served.refill();
            Ok(move |stream| serve_connection(&served, stream))
        },
        // A rebuilt component (or any change of identity): the helper is stale.
        || still.socket().as_deref() == Some(socket),
    );
    Some(i32::from(served.is_err()))
}
