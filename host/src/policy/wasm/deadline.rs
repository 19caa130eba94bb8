//! Every wait of a policy ends at its deadline (`timeoutMs`), in wasm and in
//! the host.
//!
//! **In wasm** the engine's epoch is the clock: while any call of the engine is
//! running, one ticker thread increments it every [`TICK`]. Each store has an
//! epoch-deadline callback that compares the time with *its own* deadline, so
//! one store's timeout never cuts another store's call short — calls of many
//! stores (the agent's concurrent ADDs) run side by side on one engine.
//! The ticker sleeps while no call is armed: a process that is not running a
//! policy gets no wake-ups.
//!
//! **In the host** fuel and the epoch are not looked at: a guest that sleeps
//! (`wasi:clocks/monotonic-clock` subscribe + `wasi:io/poll` block or poll)
//! waits in wasmtime-wasi, on its ambient Tokio runtime, for as long as it asked.
//! The sandbox links its own two interfaces over wasmtime-wasi's:
//! - every clock subscription is cut to the time left before the deadline, so
//!   no pollable a policy can make waits longer than that (the other pollables
//!   of the sandbox — closed stdin, the in-memory stdout and stderr — are
//!   always ready; there are no files and no sockets);
//! - `poll` and `block` return an interrupt trap when they come back at or
//!   past the deadline, and a subscription made past it traps at once: the
//!   call fails exactly like a timeout in wasm ("exceeded its time limit").
//!
//! Instantiation (start functions) and `configure` are armed like decisions.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::clocks::{WasiClocksCtxView, WasiClocksView};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::sync::io::poll;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::WasiView;

/// How often the ticker increments the epoch while a call runs: how far past
/// its deadline a call in wasm may run.
pub const TICK: Duration = Duration::from_millis(2);

/// Store data that knows the deadline of the call running in it.
pub trait HasDeadline: WasiView + 'static {
    /// `None` when no call is running: then nothing may wait at all.
    fn deadline(&self) -> Option<Instant>;
}

/// Nanoseconds left before `deadline` (0 when none or past).
fn left_ns(deadline: Option<Instant>) -> u64 {
    deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The error a wait past the deadline returns: what the epoch raises in wasm.
fn interrupted() -> wasmtime::Error {
    wasmtime::Error::from(Trap::Interrupt)
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_none_or(|d| Instant::now() >= d)
}

/// Install the per-store deadline check: at each epoch tick, a store whose
/// call is past its deadline traps with [`Trap::Interrupt`]; the others go on.
pub fn watch<T: HasDeadline>(store: &mut Store<T>) {
    store.epoch_deadline_callback(|ctx| {
        if past(ctx.data().deadline()) {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Continue(1))
        }
    });
    store.set_epoch_deadline(1);
}

/// What the ticker thread and the calls share.
struct Shared {
    /// Calls running now, and whether the ticker should end.
    state: Mutex<(usize, bool)>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One per engine: increments its epoch every [`TICK`] while at least one
/// call is armed. Dropping it ends the thread.
pub struct Ticker {
    shared: Arc<Shared>,
}

impl Ticker {
    pub fn start(engine: Engine) -> Ticker {
        let shared = Arc::new(Shared {
            state: Mutex::new((0, false)),
            wake: Condvar::new(),
        });
        let theirs = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ohno-policy-ticker".into())
            .spawn(move || loop {
                {
                    let mut g = theirs.lock();
                    while g.0 == 0 && !g.1 {
                        g = theirs.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                    if g.1 {
                        return;
                    }
                }
                std::thread::sleep(TICK);
                engine.increment_epoch();
            });
        if let Err(e) = spawned {
            log::warn!("policy ticker thread: {e}; only the fuel budget bounds calls in wasm");
        }
        Ticker { shared }
    }

    /// Tick while the returned guard lives (one guard per running call).
    pub fn arm(&self) -> Armed<'_> {
        let mut g = self.shared.lock();
        g.0 += 1;
        if g.0 == 1 {
            self.shared.wake.notify_one();
        }
        Armed { ticker: self }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.lock().1 = true;
        self.shared.wake.notify_one();
    }
}

/// A running call: the ticker ticks until it is dropped.
pub struct Armed<'a> {
    ticker: &'a Ticker,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let mut g = self.ticker.shared.lock();
        g.0 = g.0.saturating_sub(1);
    }
}

/// Links one WASI interface.
pub type LinkWasi<T> = fn(&mut Linker<T>) -> wasmtime::Result<()>;

/// The sandbox's own versions of the two WASI interfaces a policy can wait
/// in, by import prefix (they replace wasmtime-wasi's when linking).
pub fn bounded_waits<T: HasDeadline>() -> [(&'static str, LinkWasi<T>); 2] {
    [
        ("wasi:io/poll@0.2.", |l| {
            poll::add_to_linker::<T, BoundedPoll>(l, |t| {
                let deadline = t.deadline();
                Waits {
                    table: t.ctx().table,
                    deadline,
                }
            })
        }),
        ("wasi:clocks/monotonic-clock@0.2.", |l| {
            monotonic_clock::add_to_linker::<T, BoundedClock>(l, |t| {
                let deadline = t.deadline();
                Clock {
                    clocks: t.clocks(),
                    deadline,
                }
            })
        }),
    ]
}

/// `wasi:io/poll` over the resource table, ending at the deadline.
struct BoundedPoll;

impl HasData for BoundedPoll {
    type Data<'a> = Waits<'a>;
}

struct Waits<'a> {
    table: &'a mut ResourceTable,
    deadline: Option<Instant>,
}

impl Waits<'_> {
    /// A wait that came back at or past the deadline fails the call.
    fn checked<R>(&self, r: wasmtime::Result<R>) -> wasmtime::Result<R> {
        let r = r?;
        if past(self.deadline) {
            return Err(interrupted());
        }
        Ok(r)
    }
}

impl poll::Host for Waits<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let r = poll::Host::poll(self.table, pollables);
        self.checked(r)
    }
}

impl poll::HostPollable for Waits<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(self.table, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let r = poll::HostPollable::block(self.table, pollable);
        self.checked(r)
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.table, pollable)
    }
}

/// `wasi:clocks/monotonic-clock` whose subscriptions end by the deadline.
struct BoundedClock;

impl HasData for BoundedClock {
    type Data<'a> = Clock<'a>;
}

struct Clock<'a> {
    clocks: WasiClocksCtxView<'a>,
    deadline: Option<Instant>,
}

impl monotonic_clock::Host for Clock<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        monotonic_clock::Host::now(&mut self.clocks)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        monotonic_clock::Host::resolution(&mut self.clocks)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let now = monotonic_clock::Host::now(&mut self.clocks)?;
        self.subscribe_duration(when.saturating_sub(now))
    }

    fn subscribe_duration(
        &mut self,
        duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let left = left_ns(self.deadline);
        if left == 0 {
            return Err(interrupted());
        }
        monotonic_clock::Host::subscribe_duration(&mut self.clocks, duration.min(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_is_zero_without_a_deadline_or_past_it() {
        assert_eq!(left_ns(None), 0);
        assert_eq!(left_ns(Some(Instant::now())), 0);
        let soon = Instant::now() + Duration::from_millis(50);
        let left = left_ns(Some(soon));
        assert!(left > 0 && left <= 50_000_000, "{left}");
        assert!(past(None));
        assert!(!past(Some(soon)));
    }

    struct Spinner {
        wasi: wasmtime_wasi::WasiCtx,
        table: ResourceTable,
        deadline: Option<Instant>,
    }

    impl WasiView for Spinner {
        fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
            wasmtime_wasi::WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl HasDeadline for Spinner {
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
    }

    /// `(module (func (export "spin") (loop (br 0))))`
    const SPIN: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type () -> ()
        0x03, 0x02, 0x01, 0x00, // one function
        0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // export "spin"
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop br 0
    ];

    /// Spins in a fresh store until `timeout` cuts it: (how long it ran, error).
    fn spin(
        engine: &Engine,
        module: &wasmtime::Module,
        ticker: &Ticker,
        timeout: Duration,
    ) -> (Duration, String) {
        let mut store = Store::new(
            engine,
            Spinner {
                wasi: wasmtime_wasi::WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
                deadline: None,
            },
        );
        store.set_fuel(u64::MAX / 4).expect("fuel");
        watch(&mut store);
        let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("instantiate");
        let run = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .expect("spin export");
        let started = Instant::now();
        store.data_mut().deadline = Some(started + timeout);
        let _armed = ticker.arm();
        let e = run
            .call(&mut store, ())
            .expect_err("a spin ends only by its deadline");
        let trap = e.downcast_ref::<Trap>().copied();
        assert_eq!(trap, Some(Trap::Interrupt), "{e:?}");
        (started.elapsed(), format!("{e}"))
    }

    #[test]
    fn one_store_s_deadline_does_not_cut_another_store_s_call() {
        let engine = super::super::engine().expect("engine");
        let module = wasmtime::Module::new(&engine, SPIN).expect("compile");
        let ticker = Arc::new(Ticker::start(engine.clone()));
        let long = {
            let (engine, module, ticker) = (engine.clone(), module.clone(), ticker.clone());
            std::thread::spawn(move || spin(&engine, &module, &ticker, Duration::from_millis(1500)))
        };
        std::thread::sleep(Duration::from_millis(100));
        let (short, _) = spin(&engine, &module, &ticker, Duration::from_millis(50));
        assert!(short >= Duration::from_millis(50), "{short:?}");
        assert!(short < Duration::from_millis(50) + TICK * 100, "{short:?}");
        let (long, _) = long.join().expect("the long spin");
        // The short call's timeout did not end the long one.
        assert!(long >= Duration::from_millis(1500), "{long:?}");
        assert!(long < Duration::from_millis(3000), "{long:?}");
    }
}
