//! The sandbox: what a component may and may not import, and the WASI it gets.
//!
//! - Ohno's own interfaces ([`super::imports`]) and the WASI interfaces a Rust
//!   `std` component imports, checked at load by name
//!   ([`super::check_contract`]); anything else is refused.
//! - Of those, only the ones a component imports are linked.
//! - A deny-everything WASI context: no preopened directories, no environment
//!   or arguments, no network, stdin empty; stdout and stderr go to capped
//!   buffers ([`super::output`]).

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiView};

use super::deadline::LinkWasi;
use super::output::GuestOutput;
use super::{limits, HostState};

/// The host's own interfaces a component may import.
const OWN_IMPORTS: &[&str] = &["ohno:policy/host@0.1.", "ohno:policy/types@0.1."];

/// Access to the resource table, for the `wasi:io` interfaces.
struct HasTable;

impl wasmtime::component::HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// The WASI interfaces a Rust `std` component imports, which the host may link
/// because the deny-everything context makes them harmless (no preopens, no
/// network, no environment), each with the function that links it. Anything
/// else is refused at load. Only the interfaces a component imports are linked:
/// linking costs per function, on every ADD, so a component pays for what it
/// imports and no more, and the sockets (a large part of WASI) are never linked
/// at all (docs/bench has the numbers).
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
pub(super) fn allowed(import: &str) -> bool {
    OWN_IMPORTS.iter().any(|a| import.starts_with(a))
        || wasi_imports::<HostState>()
            .iter()
            .any(|(a, _)| import.starts_with(a))
}

/// Link the WASI interfaces `component` imports (only allowed ones are known:
/// [`check_contract`](super::check_contract) refuses the rest).
pub fn link_wasi<T: WasiView + 'static>(
    engine: &Engine,
    component: &Component,
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    link_wasi_with(engine, component, linker, &[])
}

/// [`link_wasi`], with `own` linked instead of wasmtime-wasi's interfaces of
/// the same prefix (the sandbox's bounded waits).
pub(super) fn link_wasi_with<T: WasiView + 'static>(
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

/// The deny-everything WASI context of one store: no preopens, no env, no
/// args, no sockets, empty stdin; the guest's stdout and stderr to `stdout`
/// and `stderr`.
pub(super) fn wasi_ctx(stdout: &GuestOutput, stderr: &GuestOutput) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(limits::RANDOM_BYTES)
        .build()
}
