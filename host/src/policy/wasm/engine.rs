//! Building and checking components: the one engine configuration every policy
//! runs on (and `ohnoctl policy compile` compiles for, so its cache entries are
//! the plugin's), loading a component through the precompile cache
//! ([`cache`]), and the `ohno:policy` contract a component must meet (the
//! package version, and imports only from the sandbox's allow-list,
//! [`super::sandbox`]).

use std::path::Path;
use std::time::Instant;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, Strategy};

use super::{fault, sandbox};
use crate::error::{Error, Result};
use crate::policy::cache;

/// The package version this host implements; components built against any
/// 0.1.x are accepted.
pub const WIT_PACKAGE: &str = "ohno:policy";
pub const WIT_VERSION: &str = "0.1.0";
const WIT_COMPATIBLE: &str = "0.1.";

/// The bound on the wasm stack.
const MAX_WASM_STACK: usize = 512 * 1024;

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
        if !sandbox::allowed(import) {
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
