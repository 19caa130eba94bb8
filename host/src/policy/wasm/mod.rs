//! The WebAssembly policy host: loads an admin's component (by path from the CNI
//! config), checks it against the `ohno:policy` contract, and runs it sandboxed.
//!
//! This file is what a policy call is: the per-ADD store ([`HostState`]), the
//! component shared by every ADD ([`Loaded`]), one call under its deadline
//! ([`WasmPolicy`], the [`Policy`] impl) and what a fault becomes
//! ([`tolerate`]). The rest, by concern:
//!
//! - [`bindings`]: the one `bindgen!`, over `wit/policy.wit`, and the
//!   conversions between WIT types and the crate's.
//! - [`engine`](mod@engine): the one engine configuration ([`engine()`]):
//!   Cranelift, fuel (the deterministic budget), epoch interruption (the
//!   wall-clock backstop for `timeoutMs`), a bounded wasm stack, GC and
//!   exceptions off. `ohnoctl policy compile` uses the same function, so its
//!   cache entries are the plugin's. Loading a component and checking its
//!   contract (version, imports).
//! - [`sandbox`]: the allow-list of imports, checked at load by name, and WASI
//!   with a deny-everything context: no preopened directories, no environment
//!   or arguments, no network, stdin empty.
//! - [`limits`]: a fresh `Store` per ADD with one memory of `memoryMB`, bounded
//!   tables, host resources, log volume and answers; host calls cost fuel.
//! - [`deadline`]: every wait ends at the call's deadline, in wasm and in the
//!   host; each store has its own, so calls of many stores run at once.
//! - [`output`]: the guest's stdout and stderr go to a capped buffer copied
//!   into the log, never to the plugin's stdout (which carries the CNI result).
//! - [`imports`]: Ohno's own imports, answered from the node's [`HostView`]
//!   ([`view`]).
//! - Precompiled components are cached by sha256 of the component and the
//!   engine's compatibility hash ([`cache`](super::cache)).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{Allocation, Family, Naming, Pod, Policy};
use crate::config::PoolConf;
use crate::error::{Error, Result};

mod bindings;
mod deadline;
mod engine;
mod imports;
mod limits;
mod output;
mod sandbox;
mod view;

pub use engine::{
    check_contract, describe, engine, load_component, CacheOutcome, WIT_PACKAGE, WIT_VERSION,
};
pub use sandbox::link_wasi;
pub use view::HostView;

use deadline::Ticker;

use bindings::ohno::policy::types as t;
use bindings::Policy as PolicyWorld;
use bindings::PolicyPre as PolicyWorldPre;
use bindings::{from_wit_allocation, to_wit_pod, to_wit_pool, wit_error};

pub use crate::config::policy::{
    FailurePolicy, PolicyConf, DEFAULT_CACHE_DIR, DEFAULT_FUEL, DEFAULT_MEMORY_MB,
    DEFAULT_PERSIST_MS, DEFAULT_TIMEOUT_MS,
};

/// Per-ADD store data.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    view: HostView,
    /// The policy's file name, for log lines.
    name: String,
    /// When the running call must end (`None` between calls).
    deadline: Option<Instant>,
    /// The log lines this ADD may still write.
    budget: limits::LogBudget,
}

impl deadline::HasDeadline for HostState {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A fault of the policy named `policy`.
fn fault(policy: &str, reason: impl Into<String>) -> Error {
    Error::PolicyFault {
        policy: policy.to_string(),
        reason: reason.into(),
    }
}

pub struct WasmPolicy {
    name: String,
    store: Store<HostState>,
    instance: PolicyWorld,
    conf: PolicyConf,
    stdout: output::GuestOutput,
    stderr: output::GuestOutput,
    /// Guest output already copied to the log.
    logged: (usize, usize),
    /// Set once a fault was tolerated under failurePolicy "default".
    degraded: bool,
    ticker: Arc<Ticker>,
    pub cache: CacheOutcome,
}

/// Run `f` on `store` before `timeout`: the store's deadline set (every wait
/// in wasm and in the host ends there) and the engine's ticker armed.
fn armed<R>(
    ticker: &Ticker,
    store: &mut Store<HostState>,
    timeout: Duration,
    f: impl FnOnce(&mut Store<HostState>) -> R,
) -> R {
    store.data_mut().deadline = Some(Instant::now() + timeout);
    store.set_epoch_deadline(1);
    let ticking = ticker.arm();
    let r = f(store);
    drop(ticking);
    store.data_mut().deadline = None;
    r
}

/// What every ADD of one policy shares: the engine, the component (from the
/// cache or compiled) and its imports resolved against the sandbox's linker.
/// Building it is most of a policy's start-up; the agent keeps one.
pub struct Loaded {
    engine: Engine,
    pre: PolicyWorldPre<HostState>,
    /// The engine's one ticker, for every store of this component (each
    /// store checks its own deadline at the ticks; their calls may overlap).
    ticker: Arc<Ticker>,
    pub cache: CacheOutcome,
}

impl Loaded {
    /// Load the component of `conf` through the cache in `policy.cacheDir`.
    pub fn load(conf: &PolicyConf) -> Result<Loaded> {
        Loaded::load_cached_in(conf, Some(&conf.cache_dir))
    }

    /// Load the component of `conf` through the cache in `cache_dir`, or
    /// through none (`ohnoctl` for a user without a private cache).
    pub fn load_cached_in(conf: &PolicyConf, cache_dir: Option<&Path>) -> Result<Loaded> {
        let name = conf.path.display().to_string();
        let engine = engine()?;
        let (component, cache) = load_component(&engine, &conf.path, cache_dir)?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        sandbox::link_wasi_with(
            &engine,
            &component,
            &mut linker,
            &deadline::bounded_waits::<HostState>(),
        )
        .map_err(|e| fault(&name, format!("link WASI: {e:#}")))?;
        imports::add_to_linker(&mut linker)
            .map_err(|e| fault(&name, format!("link host imports: {e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(PolicyWorldPre::new)
            .map_err(|e| fault(&name, format!("instantiate: {e:#}")))?;
        Ok(Loaded {
            ticker: Arc::new(Ticker::start(engine.clone())),
            engine,
            pre,
            cache,
        })
    }
}

impl WasmPolicy {
    /// Load (cache or compile), instantiate in a fresh store and `configure`.
    pub fn load(conf: &PolicyConf, view: HostView) -> Result<WasmPolicy> {
        WasmPolicy::instantiate(&Loaded::load(conf)?, conf, view)
    }

    /// A fresh store for one ADD: instantiate the loaded component in it and
    /// `configure` it.
    pub fn instantiate(loaded: &Loaded, conf: &PolicyConf, view: HostView) -> Result<WasmPolicy> {
        let name = conf.path.display().to_string();
        let engine = &loaded.engine;
        let stdout = output::GuestOutput::new();
        let stderr = output::GuestOutput::new();
        let wasi = sandbox::wasi_ctx(&stdout, &stderr);
        let file = conf
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.clone());
        let mut store = Store::new(
            engine,
            HostState {
                wasi,
                table: limits::resource_table(),
                limits: limits::store_limits(conf.memory_mb),
                view,
                name: file,
                deadline: None,
                budget: limits::LogBudget::default(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(conf.fuel)
            .map_err(|e| fault(&name, format!("set fuel: {e:#}")))?;
        limits::charge_host_calls(&mut store);
        deadline::watch(&mut store);
        // Start functions run here: under the deadline like any call.
        let timeout = Duration::from_millis(conf.timeout_ms);
        let instance = armed(&loaded.ticker, &mut store, timeout, |store| {
            loaded.pre.instantiate(store)
        })
        .map_err(|e| fault(&name, format!("instantiate: {}", describe_trap(&e, conf))))?;
        let mut p = WasmPolicy {
            name,
            ticker: loaded.ticker.clone(),
            store,
            instance,
            conf: conf.clone(),
            stdout,
            stderr,
            logged: (0, 0),
            degraded: false,
            cache: loaded.cache,
        };
        let config = p.conf.config.to_string();
        let configured = p.guarded("configure", |inst, store| {
            inst.ohno_policy_decisions().call_configure(store, &config)
        })?;
        configured.map_err(|e| Error::PolicyFault {
            policy: p.name.clone(),
            reason: format!("configure: {}", wit_error(e)),
        })?;
        Ok(p)
    }

    /// Run one export under the timeout, then copy the guest's output to the log.
    fn guarded<R>(
        &mut self,
        what: &str,
        call: impl FnOnce(&PolicyWorld, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        let started = Instant::now();
        let timeout = Duration::from_millis(self.conf.timeout_ms);
        let instance = &self.instance;
        let outcome = armed(&self.ticker, &mut self.store, timeout, |store| {
            call(instance, store)
        });
        self.flush_output();
        log::debug!(
            "policy {}: {what} took {:.3} ms",
            self.name,
            started.elapsed().as_secs_f64() * 1e3
        );
        outcome.map_err(|e| {
            fault(
                &self.name,
                format!("{what}: {}", describe_trap(&e, &self.conf)),
            )
        })
    }

    /// Copy the guest's new stdout/stderr lines to the log (at info, within
    /// the ADD's log budget), and say how many lines the budget dropped.
    fn flush_output(&mut self) {
        let wanted = log::log_enabled!(log::Level::Info);
        for (pipe, seen, stream) in [
            (&self.stdout, &mut self.logged.0, "stdout"),
            (&self.stderr, &mut self.logged.1, "stderr"),
        ] {
            let all = pipe.contents();
            if all.len() > *seen && wanted {
                for line in String::from_utf8_lossy(&all[*seen..]).lines() {
                    if self.store.data_mut().budget.take() {
                        let line = limits::bounded(line, limits::LINE_BYTES);
                        log::info!("policy {} {stream}: {line}", self.name);
                    }
                }
            }
            *seen = all.len();
        }
        let dropped = self.store.data_mut().budget.take_dropped()
            + self.stdout.take_discarded()
            + self.stderr.take_discarded();
        if dropped > 0 {
            log::warn!(
                "policy {}: dropped {dropped} lines (at most {} log lines per ADD)",
                self.name,
                limits::LOG_LINES
            );
        }
    }

    /// Under failurePolicy "default", a fault is logged and the built-in
    /// decision is used; otherwise the fault fails the ADD.
    fn tolerate<T>(&mut self, r: Result<T>, fallback: T) -> Result<T> {
        if r.is_err() && self.conf.failure_policy == FailurePolicy::Default {
            self.degraded = true;
        }
        tolerate(&self.conf, r, fallback)
    }

    /// True once a fault was tolerated (failurePolicy "default").
    pub fn degraded(&self) -> bool {
        self.degraded
    }
}

/// Under failurePolicy "default", a fault is logged and `fallback` (the
/// built-in decision) is used; otherwise the fault fails the ADD.
pub fn tolerate<T>(conf: &PolicyConf, r: Result<T>, fallback: T) -> Result<T> {
    match r {
        Err(e) if conf.failure_policy == FailurePolicy::Default => {
            log::warn!("{e}; failurePolicy is \"default\": using the built-in decision");
            Ok(fallback)
        }
        other => other,
    }
}

/// A trap in words an admin can act on.
fn describe_trap(e: &wasmtime::Error, conf: &PolicyConf) -> String {
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => format!(
                "ran out of fuel (budget {} units): an endless loop?",
                conf.fuel
            ),
            Trap::Interrupt => format!(
                "exceeded its time limit of {} ms (timeoutMs)",
                conf.timeout_ms
            ),
            Trap::StackOverflow => "overflowed its stack (unbounded recursion?)".into(),
            Trap::UnreachableCodeReached => {
                "trapped: unreachable code reached (the policy panicked)".into()
            }
            other => format!("trapped: {other}"),
        };
    }
    // The root cause, without the wasm backtrace wasmtime attaches as context.
    let text = e.root_cause().to_string();
    if text.contains("growing table") || text.contains("table minimum size") {
        return format!(
            "exceeded its table limit of {} elements: {text}",
            limits::TABLE_ELEMENTS
        );
    }
    if text.contains("resource limit exceeded") {
        return format!("exceeded a sandbox limit (one memory, few tables and instances): {text}");
    }
    if text.contains("growing memory") || text.contains("memory minimum size") {
        return format!(
            "exceeded its memory limit of {} MB (memoryMB): {text}",
            conf.memory_mb
        );
    }
    text
}

impl Policy for WasmPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn allocate(&mut self, pod: &Pod, family: Family, pools: &[&PoolConf]) -> Result<Allocation> {
        let wpod = to_wit_pod(pod);
        let wpools: Vec<t::Pool> = pools.iter().map(|p| to_wit_pool(p)).collect();
        let fam = match family {
            Family::V4 => t::Family::Ipv4,
            Family::V6 => t::Family::Ipv6,
        };
        let name = self.name.clone();
        let answer = self
            .guarded("allocate", |inst, store| {
                inst.ohno_policy_decisions()
                    .call_allocate(store, &wpod, fam, &wpools)
            })
            .and_then(|r| r.map_err(|e| fault(&name, format!("allocate: {}", wit_error(e)))))
            .and_then(|a| {
                from_wit_allocation(a).map_err(|e| fault(&name, format!("allocate: {e}")))
            });
        self.tolerate(answer, Allocation::Default)
    }

    fn name_interface(&mut self, pod: &Pod) -> Result<Naming> {
        let wpod = to_wit_pod(pod);
        let name = self.name.clone();
        let answer = self
            .guarded("name-interface", |inst, store| {
                inst.ohno_policy_decisions()
                    .call_name_interface(store, &wpod)
            })
            .and_then(|r| r.map_err(|e| fault(&name, format!("name-interface: {}", wit_error(e)))))
            .and_then(|n| match n {
                t::Naming::Default => Ok(Naming::Default),
                t::Naming::Name(s) => limits::answered_name("interface name", s)
                    .map(Naming::Name)
                    .map_err(|e| fault(&name, format!("name-interface: {e}"))),
                t::Naming::Deny(reason) => Ok(Naming::Deny(limits::answered_reason(reason))),
            });
        self.tolerate(answer, Naming::Default)
    }

    fn reject(&mut self, err: Error) -> Result<()> {
        self.tolerate(Err(err), ())
    }
}
