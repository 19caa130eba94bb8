//! What one ADD's store may take from the host, and how much of what a policy
//! says reaches the log and the CNI error document.
//!
//! - Memory: one linear memory of at most `memoryMB`; growing past it traps.
//! - Tables: few, each of at most [`TABLE_ELEMENTS`] elements; few instances.
//! - Host resources: at most [`RESOURCES`] entries in the store's resource
//!   table (pollables, streams, errors), at most [`RANDOM_BYTES`] per call for
//!   random bytes.
//! - Host calls cost fuel ([`HOST_CALL_FUEL`] each), so a loop of host calls
//!   is bounded by the same deterministic budget as a loop in wasm.
//! - Log volume: [`LOG_LINES`] lines per ADD (the policy's log lines and its
//!   stdout/stderr lines together), each at most [`LINE_BYTES`]; the rest are
//!   counted, and one line per call says how many were dropped.
//! - Answers: a pool or interface name longer than [`NAME_BYTES`] is a bad
//!   answer; a deny reason or error message is cut at [`REASON_BYTES`].
//!
//! Control characters in any of it are escaped by the logger
//! ([`crate::logging::escape_control`]), so no line a policy writes can look
//! like two.

use std::borrow::Cow;

use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, Store, StoreLimits, StoreLimitsBuilder, Trap};

/// Core instances per store (a component is a handful of core modules).
pub const INSTANCES: usize = 16;
/// Tables per store.
pub const TABLES: usize = 16;
/// Elements per table: a Rust policy's function table has hundreds.
pub const TABLE_ELEMENTS: usize = 100_000;
/// Entries in a store's resource table at once.
pub const RESOURCES: usize = 4096;
/// Random bytes one `get-random-bytes` call may ask for.
pub const RANDOM_BYTES: u64 = 64 * 1024;
/// The fuel one call into the host costs (a wasm instruction costs about 1).
pub const HOST_CALL_FUEL: u64 = 10_000;
/// Log lines per ADD: the policy's own and its stdout/stderr lines.
pub const LOG_LINES: u32 = 100;
/// Bytes of one log line of the policy (before escaping).
pub const LINE_BYTES: usize = 1024;
/// Bytes of a pool or interface name in an answer, or a pool name asked about.
pub const NAME_BYTES: usize = 255;
/// Bytes of a deny reason or a policy's error message.
pub const REASON_BYTES: usize = 1024;

/// The store limits of one ADD.
pub fn store_limits(memory_mb: u64) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(
            usize::try_from(memory_mb)
                .unwrap_or(usize::MAX)
                .saturating_mul(1 << 20),
        )
        .memories(1)
        .instances(INSTANCES)
        .tables(TABLES)
        .table_elements(TABLE_ELEMENTS)
        .trap_on_grow_failure(true)
        .build()
}

/// The resource table of one ADD's store.
pub fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(RESOURCES);
    table
}

/// Make every call from the guest into the host (WASI or Ohno's own imports)
/// cost [`HOST_CALL_FUEL`]; a call without that much left traps as out of fuel.
pub fn charge_host_calls<T: 'static>(store: &mut Store<T>) {
    store.call_hook(|mut ctx, hook| {
        if matches!(hook, CallHook::CallingHost) {
            let fuel = ctx.get_fuel()?;
            if fuel < HOST_CALL_FUEL {
                ctx.set_fuel(0)?;
                return Err(Trap::OutOfFuel.into());
            }
            ctx.set_fuel(fuel - HOST_CALL_FUEL)?;
        }
        Ok(())
    });
}

/// The log lines one ADD may still write, and those it could not.
#[derive(Debug)]
pub struct LogBudget {
    left: u32,
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            left: LOG_LINES,
            dropped: 0,
        }
    }
}

impl LogBudget {
    /// Whether one more line may be written (if not, it is counted).
    pub fn take(&mut self) -> bool {
        if self.left == 0 {
            self.dropped += 1;
            return false;
        }
        self.left -= 1;
        true
    }

    /// Lines dropped since the last time this was asked.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), saying how long
/// it was when it was cut.
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &s[..end], s.len()))
}

/// A name from an answer, or why it is refused: longer than [`NAME_BYTES`].
pub fn answered_name(what: &str, name: String) -> std::result::Result<String, String> {
    if name.len() <= NAME_BYTES {
        return Ok(name);
    }
    Err(format!(
        "answered a {what} of {} bytes (at most {NAME_BYTES}): {}",
        name.len(),
        bounded(&name, 64)
    ))
}

/// A deny reason or error message from an answer, cut at [`REASON_BYTES`].
pub fn answered_reason(reason: String) -> String {
    match bounded(&reason, REASON_BYTES) {
        Cow::Borrowed(_) => reason,
        Cow::Owned(cut) => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_character_boundary_and_says_its_length() {
        assert_eq!(bounded("short", 10), "short");
        let s = "é".repeat(10); // 20 bytes
        let cut = bounded(&s, 5);
        assert_eq!(cut, "éé… (20 bytes)");
        let long = "x".repeat(50 << 20);
        let reason = answered_reason(long.clone());
        assert!(reason.len() < REASON_BYTES + 32, "{}", reason.len());
        assert!(
            reason.ends_with("(52428800 bytes)"),
            "{}",
            &reason[REASON_BYTES..]
        );
        let e = answered_name("pool name", long).unwrap_err();
        assert!(e.len() < 200, "{e}");
        assert!(e.contains("52428800 bytes"), "{e}");
        assert_eq!(answered_name("pool name", "prod".into()).unwrap(), "prod");
    }

    /// `(module (memory 1) (memory 1))`
    const TWO_MEMORIES: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x05, 0x05, 0x02, 0x00, 0x01, 0x00, 0x01, // two memories of one page
    ];

    /// `(module (table 1 funcref) (func (export "grow") (result i32)
    ///   (table.grow (ref.null func) (i32.const 1000000))))`
    const TABLE_GROWTH: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // type () -> i32
        0x03, 0x02, 0x01, 0x00, // one function
        0x04, 0x04, 0x01, 0x70, 0x00, 0x01, // table 1 funcref
        0x07, 0x08, 0x01, 0x04, b'g', b'r', b'o', b'w', 0x00, 0x00, // export "grow"
        0x0a, 0x0d, 0x01, 0x0b, 0x00, 0xd0, 0x70, 0x41, 0xc0, 0x84, 0x3d, 0xfc, 0x0f, 0x00,
        0x0b, // ref.null func, i32.const 1000000, table.grow 0
    ];

    /// `(module (import "h" "f" (func)) (func (export "run") (loop (call 0) (br 0))))`
    const HOST_CALL_LOOP: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type () -> ()
        0x02, 0x07, 0x01, 0x01, b'h', 0x01, b'f', 0x00, 0x00, // import h.f
        0x03, 0x02, 0x01, 0x00, // one function
        0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x01, // export "run"
        0x0a, 0x0b, 0x01, 0x09, 0x00, 0x03, 0x40, 0x10, 0x00, 0x0c, 0x00, 0x0b,
        0x0b, // loop call 0, br 0
    ];

    struct Limited {
        limits: StoreLimits,
        host_calls: u64,
    }

    fn store(engine: &wasmtime::Engine, fuel: u64) -> Store<Limited> {
        let mut store = Store::new(
            engine,
            Limited {
                limits: store_limits(32),
                host_calls: 0,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_fuel(fuel).expect("fuel");
        store.set_epoch_deadline(u64::MAX / 2);
        store
    }

    #[test]
    fn a_second_memory_is_refused_at_instantiation() {
        let engine = super::super::engine().expect("engine");
        let module = wasmtime::Module::new(&engine, TWO_MEMORIES).expect("compile");
        let mut store = store(&engine, 1_000_000);
        let e = wasmtime::Instance::new(&mut store, &module, &[]).expect_err("two memories");
        let text = e.root_cause().to_string();
        assert!(text.contains("memory count too high"), "{text}");
    }

    #[test]
    fn table_growth_stops_at_the_element_limit() {
        let engine = super::super::engine().expect("engine");
        let module = wasmtime::Module::new(&engine, TABLE_GROWTH).expect("compile");
        let mut store = store(&engine, 1 << 40);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instantiate");
        let grow = instance
            .get_typed_func::<(), i32>(&mut store, "grow")
            .expect("grow export");
        let e = grow
            .call(&mut store, ())
            .expect_err("growth past the limit traps");
        let text = e.root_cause().to_string();
        assert!(text.contains("growing table to 1000001 elements"), "{text}");
    }

    #[test]
    fn host_calls_cost_fuel() {
        let engine = super::super::engine().expect("engine");
        let module = wasmtime::Module::new(&engine, HOST_CALL_LOOP).expect("compile");
        let fuel = 100 * HOST_CALL_FUEL;
        let mut store = store(&engine, fuel);
        charge_host_calls(&mut store);
        let mut linker = wasmtime::Linker::new(&engine);
        linker
            .func_wrap("h", "f", |mut cx: wasmtime::Caller<'_, Limited>| {
                cx.data_mut().host_calls += 1;
            })
            .expect("define h.f");
        let instance = linker
            .instantiate(&mut store, &module)
            .expect("instantiate");
        let run = instance
            .get_typed_func::<(), ()>(&mut store, "run")
            .expect("run export");
        let e = run.call(&mut store, ()).expect_err("the loop ends by fuel");
        assert_eq!(e.downcast_ref::<Trap>(), Some(&Trap::OutOfFuel), "{e:?}");
        let calls = store.data().host_calls;
        // The loop's own instructions cost a little too.
        assert!((90..100).contains(&calls), "{calls} host calls");
    }

    #[test]
    fn the_log_budget_counts_what_it_drops() {
        let mut b = LogBudget::default();
        let written = (0..LOG_LINES + 7).filter(|_| b.take()).count();
        assert_eq!(written, LOG_LINES as usize);
        assert_eq!(b.take_dropped(), 7);
        assert_eq!(b.take_dropped(), 0);
    }
}
