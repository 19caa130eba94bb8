//! The guest's stdout and stderr: an in-memory buffer per stream and per ADD,
//! copied to the log line by line after each call (never to the plugin's
//! stdout, which carries the CNI result).
//!
//! The buffer keeps the whole lines of the first [`OUTPUT_BYTES`]; what comes
//! after is discarded and its lines counted, and the guest is never told: a
//! chatty policy goes on instead of failing on a full stream (Rust's
//! `println!` panics on a write error).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of one stream kept per ADD.
pub const OUTPUT_BYTES: usize = 64 * 1024;
/// What one write may hand over (the guest asks for a permit first).
const PERMIT: usize = 4096;

/// One of the guest's output streams: whole lines up to [`OUTPUT_BYTES`]
/// kept, then everything discarded and its lines counted.
#[derive(Clone)]
pub struct GuestOutput {
    kept: MemoryOutputPipe,
    /// Lines written past what was kept.
    discarded: Arc<AtomicU64>,
    /// Set once something was discarded: nothing is kept after a gap.
    full: Arc<AtomicBool>,
}

impl GuestOutput {
    pub fn new() -> GuestOutput {
        GuestOutput {
            kept: MemoryOutputPipe::new(OUTPUT_BYTES),
            discarded: Arc::default(),
            full: Arc::default(),
        }
    }

    /// Everything kept so far.
    pub fn contents(&self) -> Bytes {
        self.kept.contents()
    }

    /// Lines discarded since the last time this was asked.
    pub fn take_discarded(&self) -> u64 {
        self.discarded.swap(0, Ordering::Relaxed)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    /// Only WASIp3 asks for this (the sandbox links p2): the kept buffer.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        self.kept.async_stream()
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let room = if self.full.load(Ordering::Relaxed) {
            0
        } else {
            OUTPUT_BYTES.saturating_sub(self.kept.contents().len())
        };
        // All of it if it fits, else up to the last whole line that does.
        let keep = if bytes.len() <= room {
            bytes.len()
        } else {
            self.full.store(true, Ordering::Relaxed);
            bytes[..room]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1)
        };
        let (kept, past) = bytes.split_at(keep);
        if !kept.is_empty() {
            self.kept.write(Bytes::copy_from_slice(kept))?;
        }
        let lines = past.iter().filter(|b| **b == b'\n').count() as u64;
        self.discarded.fetch_add(lines, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(PERMIT)
    }
}

impl Pollable for GuestOutput {
    // What `#[async_trait]` would write for `async fn ready(&mut self) {}`:
    // always ready.
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::ready(()))
    }
}
