//! `ohno:policy/host`, the interface a policy imports: its log, and the
//! read-only view of this node's free addresses ([`super::HostView`]).
//!
//! Linked by hand instead of through the `bindgen!` trait so that the guest's
//! strings arrive as [`WasmStr`] — a reference into the guest's memory — and
//! are bounded before the host copies anything: a log line below the log level
//! is not read at all, one past the ADD's budget is only counted, one that is
//! read is cut at [`LINE_BYTES`]; a pool name longer than [`NAME_BYTES`] names
//! no pool and is not copied.

use std::net::IpAddr;

use wasmtime::component::{HasSelf, Linker, WasmStr};
use wasmtime::StoreContextMut;

use super::bindings::ohno::policy::types as t;
use super::bindings::{from_wit_ip, to_wit_ip};
use super::limits::{bounded, LINE_BYTES, NAME_BYTES};
use super::HostState;

/// The instance name; components built against any 0.1.x resolve to it.
const HOST: &str = "ohno:policy/host@0.1.0";

type Cx<'a> = StoreContextMut<'a, HostState>;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    super::bindings::ohno::policy::types::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    let mut host = linker.instance(HOST)?;
    host.func_wrap(
        "log",
        |cx: Cx<'_>, (level, message): (t::Level, WasmStr)| log(cx, level, &message),
    )?;
    host.func_wrap(
        "next-free",
        |cx: Cx<'_>, (pool, after): (WasmStr, Option<t::IpAddress>)| {
            let after = after.as_ref().map(from_wit_ip);
            Ok((pool_name(&cx, &pool)?
                .and_then(|p| cx.data().view.next_free(&p, after))
                .map(to_wit_ip),))
        },
    )?;
    host.func_wrap(
        "is-free",
        |cx: Cx<'_>, (pool, address): (WasmStr, t::IpAddress)| {
            let address: IpAddr = from_wit_ip(&address);
            Ok((pool_name(&cx, &pool)?.is_some_and(|p| cx.data().view.is_free(&p, address)),))
        },
    )?;
    host.func_wrap("free-count", |cx: Cx<'_>, (pool,): (WasmStr,)| {
        Ok((pool_name(&cx, &pool)?.map_or(0, |p| cx.data().view.free_count(&p)),))
    })?;
    Ok(())
}

/// A pool name asked about: `None` when it is longer than any pool's.
fn pool_name(cx: &Cx<'_>, pool: &WasmStr) -> wasmtime::Result<Option<String>> {
    let name = pool.to_str(cx)?;
    Ok((name.len() <= NAME_BYTES).then(|| name.into_owned()))
}

fn log(mut cx: Cx<'_>, level: t::Level, message: &WasmStr) -> wasmtime::Result<()> {
    let level = match level {
        t::Level::Trace => log::Level::Trace,
        t::Level::Debug => log::Level::Debug,
        t::Level::Info => log::Level::Info,
        t::Level::Warn => log::Level::Warn,
        t::Level::Error => log::Level::Error,
    };
    if !log::log_enabled!(level) || !cx.data_mut().budget.take() {
        return Ok(());
    }
    let text = message.to_str(&cx)?;
    let line = bounded(&text, LINE_BYTES);
    log::log!(level, "policy {}: {line}", cx.data().name);
    Ok(())
}
