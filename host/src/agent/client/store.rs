//! [`FallbackKv`]: the store a plugin call uses when a server runs — each
//! [`Kv`] call one request on the server's warm etcd connection — and that
//! finishes the call on a connection of its own when the server fails it.
//!
//! A server that refuses, closes, is slower than the request budget, or
//! answers with the wrong shape is dropped for the rest of the call, and the
//! request is repeated in-process. Repeating is safe: every write is a
//! compare transaction, so one the server did apply fails its compares the
//! second time and the allocator reads what it already holds.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::Conn;
use crate::agent::protocol::{bounded_debug, receive, send, StoreReply, StoreRequest};
use crate::config::EtcdConf;
use crate::error::{Error, Result};
use crate::store::{Freshness, KeyValue, Kv, Read, Txn};

/// Makes the in-process store a [`FallbackKv`] falls back to.
pub type OpenDirect = Box<dyn Fn() -> Result<Arc<dyn Kv>> + Send + Sync>;

pub struct FallbackKv {
    conn: Mutex<Option<Conn>>,
    open_direct: OpenDirect,
    direct: OnceLock<Arc<dyn Kv>>,
}

/// The longest a server may take over one request: every attempt's timeout
/// and the back-off between attempts, plus a margin.
pub fn budget(conf: &EtcdConf) -> Duration {
    let backoff: Duration = (0..conf.retries)
        .map(crate::store::etcd::failover_backoff)
        .sum();
    Duration::from_millis(conf.timeout_ms * u64::from(conf.retries) + 1000) + backoff
}

impl FallbackKv {
    pub fn new(conn: Conn, open_direct: OpenDirect) -> FallbackKv {
        FallbackKv {
            conn: Mutex::new(Some(conn)),
            open_direct,
            direct: OnceLock::new(),
        }
    }

    /// Bound every later exchange by `timeout` (tests).
    #[cfg(test)]
    pub fn conn_timeout(&self, timeout: Duration) {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = c.stream().set_read_timeout(Some(timeout));
        }
    }

    fn direct(&self) -> Result<&Arc<dyn Kv>> {
        if let Some(d) = self.direct.get() {
            return Ok(d);
        }
        let d = (self.open_direct)()?;
        Ok(self.direct.get_or_init(|| d))
    }

    /// Send `req`; `None` when the server failed us (use the fallback).
    fn exchange(&self, req: &StoreRequest) -> Option<StoreReply> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = slot.as_mut()?;
        // The first request goes out with the greeting still unread.
        let answered = send(conn.stream(), req)
            .and_then(|()| conn.welcomed().map(|_| ()))
            .and_then(|()| receive::<StoreReply>(conn.stream()));
        match answered {
            Ok(reply) => Some(reply),
            Err(e) => {
                log::debug!(
                    "store server at {} failed ({e}); connecting directly",
                    conn.socket().display()
                );
                *slot = None;
                super::note_fallback("store");
                None
            }
        }
    }

    fn ask<T>(
        &self,
        req: StoreRequest,
        pick: impl FnOnce(StoreReply) -> Option<T>,
        direct: impl FnOnce(&dyn Kv) -> Result<T>,
    ) -> Result<T> {
        match self.exchange(&req) {
            Some(StoreReply::Failed(e)) => Err(e.into()),
            Some(reply) => {
                // Only the start of each: a reply can be megabytes of keys.
                let what = bounded_debug(&reply);
                pick(reply).ok_or_else(|| {
                    Error::Agent(format!(
                        "the agent answered {} with {what}",
                        bounded_debug(&req)
                    ))
                })
            }
            None => direct(&**self.direct()?),
        }
    }
}

impl Kv for FallbackKv {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.ask(
            StoreRequest::Get(key.to_string()),
            |r| match r {
                StoreReply::Get(v) => Some(v),
                _ => None,
            },
            |kv| kv.get(key),
        )
    }

    fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>> {
        self.ask(
            StoreRequest::Range(prefix.to_string(), keys_only),
            |r| match r {
                StoreReply::Range(v) => Some(v),
                _ => None,
            },
            |kv| kv.range(prefix, keys_only),
        )
    }

    fn read_batch(&self, reads: &[Read], freshness: Freshness) -> Result<Vec<Vec<KeyValue>>> {
        self.ask(
            StoreRequest::ReadBatch(reads.to_vec(), freshness),
            // One answer per read, as the allocator indexes them.
            |r| match r {
                StoreReply::Reads(v) if v.len() == reads.len() => Some(v),
                _ => None,
            },
            |kv| kv.read_batch(reads, freshness),
        )
    }

    fn txn(&self, txn: Txn) -> Result<bool> {
        self.ask(
            StoreRequest::Txn(txn.clone()),
            |r| match r {
                StoreReply::Txn(v) => Some(v),
                _ => None,
            },
            |kv| kv.txn(txn),
        )
    }

    fn txn_or_read(&self, txn: Txn, reads: &[Read]) -> Result<Option<Vec<Vec<KeyValue>>>> {
        self.ask(
            StoreRequest::TxnOrRead(txn.clone(), reads.to_vec()),
            |r| match r {
                StoreReply::TxnOrRead(v) if v.as_ref().is_none_or(|v| v.len() == reads.len()) => {
                    Some(v)
                }
                _ => None,
            },
            |kv| kv.txn_or_read(txn, reads),
        )
    }

    fn ping(&self) -> Result<()> {
        self.ask(
            StoreRequest::Ping,
            |r| matches!(r, StoreReply::Pong).then_some(()),
            |kv| kv.ping(),
        )
    }
}
