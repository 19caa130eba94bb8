//! The WebAssembly policy host: loads an admin's component (by path from the CNI
//! config), checks it against the `ohno:policy` contract, and runs it sandboxed.
//!
//! - One `bindgen!` (below), over `wit/policy.wit`.
//! - One engine configuration ([`engine`]): Cranelift, fuel (the deterministic
//!   budget), epoch interruption (the wall-clock backstop for `timeoutMs`), a
//!   bounded wasm stack, GC and exceptions off. `ohnoctl policy compile` uses the
//!   same function, so its cache entries are the plugin's.
//! - A fresh `Store` per ADD with the limits of [`limits`]: one memory of
//!   `memoryMB`, bounded tables, host resources, log volume and answers; host
//!   calls cost fuel.
//! - Every wait ends at the call's deadline, in wasm and in the host
//!   ([`deadline`]); each store has its own, so calls of many stores run at once.
//! - WASI with a deny-everything context: no preopened directories, no
//!   environment or arguments, no network, stdin empty; the guest's stdout and
//!   stderr go to a capped buffer ([`output`]) copied into the log, never to the
//!   plugin's stdout (which carries the CNI result).
//! - Imports are checked against an allow-list at load, by name; Ohno's own
//!   are in [`imports`], answered from the node's [`HostView`] ([`view`]).
//! - Precompiled components are cached by sha256 of the component and the
//!   engine's compatibility hash ([`cache`]).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, Strategy, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::cache;
use super::{Allocation, Family, Naming, Pod, Policy};
use crate::config::PoolConf;
use crate::error::{Error, Result};

mod deadline;
mod imports;
mod limits;
mod output;
mod view;

pub use view::HostView;

use deadline::Ticker;

/// The one `bindgen!`: Rust types and traits for the `policy` world.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
    });
}

use bindings::ohno::policy::types as t;
use bindings::Policy as PolicyWorld;
use bindings::PolicyPre as PolicyWorldPre;

/// The package version this host implements; components built against any
/// 0.1.x are accepted.
pub const WIT_PACKAGE: &str = "ohno:policy";
pub const WIT_VERSION: &str = "0.1.0";
const WIT_COMPATIBLE: &str = "0.1.";

/// The bound on the wasm stack.
const MAX_WASM_STACK: usize = 512 * 1024;

/// The host's own interfaces a component may import.
const OWN_IMPORTS: &[&str] = &["ohno:policy/host@0.1.", "ohno:policy/types@0.1."];

use deadline::LinkWasi;

/// Access to the resource table, for the `wasi:io` interfaces.
struct HasTable;

impl wasmtime::component::HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// The WASI interfaces a Rust `std` component imports, which the host may link
/// because the deny-everything context makes them harmless (no preopens, no
/// network, no environment), each with the function that links it. Anything
/// else is refused at load. Only the interfaces a component imports are linked:
/// linking costs per function, on every ADD (the sockets alone are a third of
/// WASI, and the sandbox never links them).
fn wasi_imports<T: WasiView + 'static>() -> [(&'static str, LinkWasi<T>); 20] {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io, random, sync};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    [
        ("wasi:cli/environment@0.2.", |l| {
            cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/exit@0.2.", |l| {
            cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/stdin@0.2.", |l| {
            cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/stdout@0.2.", |l| {
            cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/stderr@0.2.", |l| {
            cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-input@0.2.", |l| {
            cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-output@0.2.", |l| {
            cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-stdin@0.2.", |l| {
            cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-stdout@0.2.", |l| {
            cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:cli/terminal-stderr@0.2.", |l| {
            cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)
        }),
        ("wasi:io/error@0.2.", |l| {
            io::error::add_to_linker::<T, HasTable>(l, |t| t.ctx().table)
        }),
        ("wasi:io/poll@0.2.", |l| {
            sync::io::poll::add_to_linker::<T, HasTable>(l, |t| t.ctx().table)
        }),
        ("wasi:io/streams@0.2.", |l| {
            sync::io::streams::add_to_linker::<T, HasTable>(l, |t| t.ctx().table)
        }),
        ("wasi:clocks/wall-clock@0.2.", |l| {
            clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)
        }),
        ("wasi:clocks/monotonic-clock@0.2.", |l| {
            clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)
        }),
        ("wasi:random/random@0.2.", |l| {
            random::random::add_to_linker::<T, WasiRandom>(l, T::random)
        }),
        ("wasi:random/insecure@0.2.", |l| {
            random::insecure::add_to_linker::<T, WasiRandom>(l, T::random)
        }),
        ("wasi:random/insecure-seed@0.2.", |l| {
            random::insecure_seed::add_to_linker::<T, WasiRandom>(l, T::random)
        }),
        ("wasi:filesystem/types@0.2.", |l| {
            sync::filesystem::types::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)
        }),
        ("wasi:filesystem/preopens@0.2.", |l| {
            filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)
        }),
    ]
}

/// Whether the sandbox provides `import`.
fn allowed(import: &str) -> bool {
    OWN_IMPORTS.iter().any(|a| import.starts_with(a))
        || wasi_imports::<HostState>()
            .iter()
            .any(|(a, _)| import.starts_with(a))
}

/// Link the WASI interfaces `component` imports (only allowed ones are known:
/// [`check_contract`] refuses the rest).
pub fn link_wasi<T: WasiView + 'static>(
    engine: &Engine,
    component: &Component,
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    link_wasi_with(engine, component, linker, &[])
}

/// [`link_wasi`], with `own` linked instead of wasmtime-wasi's interfaces of
/// the same prefix (the sandbox's bounded waits).
fn link_wasi_with<T: WasiView + 'static>(
    engine: &Engine,
    component: &Component,
    linker: &mut Linker<T>,
    own: &[(&'static str, LinkWasi<T>)],
) -> wasmtime::Result<()> {
    let imports: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .collect();
    for (prefix, link) in wasi_imports::<T>() {
        if imports.iter().any(|i| i.starts_with(prefix)) {
            let link = own
                .iter()
                .find(|(p, _)| *p == prefix)
                .map_or(link, |(_, l)| *l);
            link(linker)?;
        }
    }
    Ok(())
}

pub use crate::config::policy::{
    FailurePolicy, PolicyConf, DEFAULT_CACHE_DIR, DEFAULT_FUEL, DEFAULT_MEMORY_MB,
    DEFAULT_PERSIST_MS, DEFAULT_TIMEOUT_MS,
};

/// The engine every policy runs on (and `ohnoctl policy compile` compiles for).
pub fn engine() -> Result<Engine> {
    let mut c = Config::new();
    c.strategy(Strategy::Cranelift)
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        // GC off; threads and exceptions are not compiled into this wasmtime.
        .wasm_gc(false);
    Engine::new(&c).map_err(|e| Error::PolicyFault {
        policy: "(engine)".into(),
        reason: format!("configure wasmtime: {e:#}"),
    })
}

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

fn to_wit_ip(ip: IpAddr) -> t::IpAddress {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            t::IpAddress::V4((o[0], o[1], o[2], o[3]))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            t::IpAddress::V6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

fn from_wit_ip(ip: &t::IpAddress) -> IpAddr {
    match *ip {
        t::IpAddress::V4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        t::IpAddress::V6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

impl bindings::ohno::policy::types::Host for HostState {}

/// How a component was obtained, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded the precompiled entry.
    Hit,
    /// Compiled and stored.
    Compiled,
    /// The entry was refused (damaged, another engine's, or failing the cache's
    /// trust checks, see [`cache`]); recompiled and stored in its place.
    Replaced,
    /// Compiled and not stored: no cache, a cache directory that failed its
    /// checks, or a write that failed (each logged).
    Uncached,
}

/// A fault of the policy named `policy`.
fn fault(policy: &str, reason: impl Into<String>) -> Error {
    Error::PolicyFault {
        policy: policy.to_string(),
        reason: reason.into(),
    }
}

/// Load `path` as a component: from the cache in `cache_dir` when it holds an
/// entry that passes the cache's checks (see [`cache`]), else compile, and
/// store the result when the directory itself passes them. `None`: compile in
/// memory. Every refusal is logged with the check that failed. Checks the
/// contract (version, imports) either way.
pub fn load_component(
    engine: &Engine,
    path: &Path,
    cache_dir: Option<&Path>,
) -> Result<(Component, CacheOutcome)> {
    let name = path.display().to_string();
    let read_err = |e: std::io::Error| fault(&name, format!("read the component: {e}"));
    let dir = match cache_dir.map(|d| (d, cache::CacheDir::open(d))) {
        None => None,
        Some((_, Ok(dir))) => Some(dir),
        Some((d, Err(why))) => {
            log::warn!(
                "policy {name}: cache directory {} refused: {why}; compiling without a cache",
                d.display()
            );
            None
        }
    };
    let Some(dir) = dir else {
        let bytes = std::fs::read(path).map_err(read_err)?;
        return Ok((compile(engine, &bytes, &name)?, CacheOutcome::Uncached));
    };
    let (key, bytes) = dir.key_of_file(engine, path).map_err(read_err)?;
    let entry = dir.entry_path(&key);
    let mut outcome = CacheOutcome::Compiled;
    match dir.read(&key) {
        Ok(None) => {}
        Ok(Some(verified)) => match cache::deserialize(engine, &verified) {
            Ok(c) => {
                log::debug!("policy {name}: loaded from cache {}", entry.display());
                check_contract(engine, &c, &name)?;
                return Ok((c, CacheOutcome::Hit));
            }
            Err(e) => {
                log::warn!(
                    "policy {name}: cache entry {} unusable ({e:#}); recompiling",
                    entry.display()
                );
                outcome = CacheOutcome::Replaced;
            }
        },
        Err(why) => {
            log::warn!(
                "policy {name}: cache entry {} refused: {why}; recompiling",
                entry.display()
            );
            outcome = CacheOutcome::Replaced;
        }
    }
    let bytes = match bytes {
        Some(b) => b,
        None => std::fs::read(path).map_err(read_err)?,
    };
    let component = compile(engine, &bytes, &name)?;
    match component
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|payload| dir.write(&key, &payload))
    {
        Ok(()) => log::debug!("policy {name}: cached at {}", entry.display()),
        Err(e) => {
            log::warn!(
                "policy {name}: cannot write cache entry {}: {e}",
                entry.display()
            );
            outcome = CacheOutcome::Uncached;
        }
    }
    Ok((component, outcome))
}

/// Compile `bytes` (the component `name`) and check its contract.
fn compile(engine: &Engine, bytes: &[u8], name: &str) -> Result<Component> {
    let started = Instant::now();
    let component = Component::new(engine, bytes)
        .map_err(|e| fault(name, format!("not a valid WebAssembly component: {e:#}")))?;
    check_contract(engine, &component, name)?;
    log::info!(
        "policy {name}: compiled in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(component)
}

/// The component implements `ohno:policy/decisions@0.1.x` and imports nothing
/// outside the allow-list.
pub fn check_contract(engine: &Engine, component: &Component, name: &str) -> Result<()> {
    let ty = component.component_type();
    let export = ty
        .exports(engine)
        .map(|(n, _)| n.to_string())
        .find(|n| n.starts_with(&format!("{WIT_PACKAGE}/decisions@")));
    let Some(export) = export else {
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        return Err(fault(
            name,
            format!(
                "does not export {WIT_PACKAGE}/decisions (it exports: {}); build it against the {WIT_PACKAGE}@{WIT_VERSION} WIT",
                if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
            ),
        ));
    };
    let version = export.rsplit('@').next().unwrap_or_default();
    if !version.starts_with(WIT_COMPATIBLE) {
        return Err(fault(
            name,
            format!(
                "is built against {WIT_PACKAGE}@{version}; this ohno supports {WIT_PACKAGE}@{WIT_COMPATIBLE}x (rebuild it against the {WIT_VERSION} WIT)"
            ),
        ));
    }
    for (import, _) in ty.imports(engine) {
        if !allowed(import) {
            return Err(fault(
                name,
                format!("imports {import}, which the policy sandbox does not provide (no files, network or other host access)"),
            ));
        }
    }
    Ok(())
}

/// Versions and exports, for `ohnoctl policy check`.
pub fn describe(engine: &Engine, component: &Component) -> (Vec<String>, Vec<String>) {
    let ty = component.component_type();
    (
        ty.exports(engine).map(|(n, _)| n.to_string()).collect(),
        ty.imports(engine).map(|(n, _)| n.to_string()).collect(),
    )
}

/// A loaded, configured policy component for one ADD.
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
        link_wasi_with(
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
        // Deny everything: no preopens, no env, no args, no sockets, empty stdin.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(limits::RANDOM_BYTES)
            .build();
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

/// A policy's error in words, its message bounded.
fn wit_error(e: t::Error) -> String {
    match e {
        t::Error::InvalidConfig(m) => format!("invalid config: {}", limits::answered_reason(m)),
        t::Error::Internal(m) => format!("internal error: {}", limits::answered_reason(m)),
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

/// An allocation answer, its strings bounded: a name too long for any pool is
/// refused (`Err` says why), a deny reason is cut.
fn from_wit_allocation(a: t::Allocation) -> std::result::Result<Allocation, String> {
    let pool = |p| limits::answered_name("pool name", p);
    Ok(match a {
        t::Allocation::Default => Allocation::Default,
        t::Allocation::Pool(p) => Allocation::Pool(pool(p)?),
        t::Allocation::Address((p, ip)) => Allocation::Address {
            pool: pool(p)?,
            address: from_wit_ip(&ip),
        },
        t::Allocation::Deny(reason) => Allocation::Deny(limits::answered_reason(reason)),
    })
}

fn to_wit_pod(pod: &Pod) -> t::Pod {
    t::Pod {
        container_id: pod.container_id.clone(),
        ifname: pod.ifname.clone(),
        netns: pod.netns.clone(),
        network: pod.network.clone(),
        node: pod.node.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        annotations: pod
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        args: pod.args.clone(),
    }
}

fn to_wit_pool(p: &PoolConf) -> t::Pool {
    t::Pool {
        name: p.name.clone(),
        family: if p.subnet.is_ipv4() {
            t::Family::Ipv4
        } else {
            t::Family::Ipv6
        },
        subnet: to_wit_ip(p.subnet.network()),
        prefix_len: p.subnet.prefix(),
        block_size: p.block_size,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_addresses_round_trip() {
        for s in ["10.85.0.1", "fd00:85::1", "255.255.255.255", "::"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from_wit_ip(&to_wit_ip(ip)), ip);
        }
    }
}
