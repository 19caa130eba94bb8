//! The etcd connection helper: a node-local process (see [`crate::helper`])
//! that keeps one mutual-TLS connection to etcd open between plugin calls.
//!
//! A new process's first etcd request pays a TCP connect, a full TLS 1.3
//! handshake with client authentication and an HTTP/2 set-up, more than the
//! raft commit of the transaction itself (docs/bench has the numbers): rustls
//! cannot carry a session ticket from one process to the next. With a
//! helper, the calls after the first send their store operations over the
//! helper's socket (`<lockDir>/etcd-<hash>.sock`) and the helper runs them on
//! its warm connection, with the same timeouts, retries and failover as
//! in-process calls. The hash covers endpoints, prefix, timeouts, the network
//! namespace and the identity of the CA, certificate and key files; the helper
//! leaves when one of those files changes or disappears.
//!
//! Nothing is decided in the helper: it executes the allocator's transactions,
//! whose compares hold wherever they run. A helper that dies under a request
//! makes the caller repeat it on a connection of its own, which is safe for the
//! same reason (a transaction that did apply fails its compares the second time
//! and the allocator reads what it already holds).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::protocol::{receive, send, timed_out, WireError};
use crate::config::EtcdConf;
use crate::error::{Error, Result};
use crate::store::{Freshness, KeyValue, Kv, Read, Txn};

/// The environment variable that makes `ohno` the etcd helper (its value: the
/// [`Start`] document).
pub const ENV: &str = "OHNO_STORE_HELPER";
/// The helper kind: `ohno --helper etcd`, and its sockets' names.
const KIND: &str = "etcd";
/// The helper's name in `ps`.
const NAME: &str = "ohno-etcd-helper";
/// Bumped when the wire format changes (part of the socket's hash).
const PROTOCOL: &str = "ohno-store-helper/1";

/// What the helper is started with.
#[derive(Serialize, Deserialize)]
struct Start {
    conf: EtcdConf,
    socket: PathBuf,
}

/// One store operation, as [`Kv`] has them.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Get(String),
    Range(String, bool),
    ReadBatch(Vec<Read>, Freshness),
    Txn(Txn),
    TxnOrRead(Txn, Vec<Read>),
    Ping,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Get(Option<KeyValue>),
    Range(Vec<KeyValue>),
    Reads(Vec<Vec<KeyValue>>),
    Txn(bool),
    TxnOrRead(Option<Vec<Vec<KeyValue>>>),
    Pong,
    Failed(WireError),
}

/// The socket of the helper for `conf`, if `conf` may use one: `persistMs` > 0,
/// a directory to put it in, and every certificate file present (a missing one
/// is reported by the in-process client, with its field name).
pub fn socket_path(conf: &EtcdConf) -> Option<PathBuf> {
    if conf.persist_ms == 0 {
        return None;
    }
    let dir = conf.helper_dir.as_ref()?;
    let mut id = format!(
        "{PROTOCOL}\n{:?}\n{}\n{}\n{}\n{}\n{}\n",
        conf.endpoints,
        conf.prefix,
        conf.timeout_ms,
        conf.retries,
        conf.persist_ms,
        crate::agent::protocol::netns_identity()?
    );
    for file in [&conf.ca_file, &conf.cert_file, &conf.key_file]
        .into_iter()
        .flatten()
    {
        let identity = crate::file_identity(file).ok()?;
        id.push_str(&format!("{} {identity}\n", file.display()));
    }
    Some(crate::agent::protocol::socket_path(dir, KIND, &id))
}

/// The store for `conf`: through a running helper when there is one, else
/// in-process (starting a helper for the next calls, when allowed).
pub fn open(conf: &EtcdConf) -> Result<Arc<dyn Kv>> {
    let Some(socket) = socket_path(conf) else {
        return Ok(Arc::new(crate::store::etcd::EtcdStore::open(conf)?));
    };
    match crate::agent::protocol::connect(&socket, budget(conf)) {
        Ok(stream) => {
            log::debug!("etcd: through the helper at {}", socket.display());
            let fallback = conf.clone();
            Ok(Arc::new(Remote::new(
                stream,
                Box::new(move || {
                    Ok(Arc::new(crate::store::etcd::EtcdStore::open(&fallback)?) as Arc<dyn Kv>)
                }),
            )))
        }
        Err(e) => {
            log::debug!("etcd: no helper at {} ({e})", socket.display());
            let direct = crate::store::etcd::EtcdStore::open(conf)?;
            let start = Start {
                conf: conf.clone(),
                socket: socket.clone(),
            };
            if let Ok(doc) = serde_json::to_string(&start) {
                crate::agent::protocol::spawn(KIND, ENV, NAME, &doc, &socket);
            }
            Ok(Arc::new(direct))
        }
    }
}

/// The longest a helper may take over one request: every attempt's timeout and
/// the back-off between attempts, plus a margin.
fn budget(conf: &EtcdConf) -> Duration {
    let backoff: Duration = (0..conf.retries)
        .map(crate::store::etcd::failover_backoff)
        .sum();
    Duration::from_millis(conf.timeout_ms * u64::from(conf.retries) + 1000) + backoff
}

/// Makes the in-process store a [`Remote`] falls back to.
type Fallback = Box<dyn Fn() -> Result<Arc<dyn Kv>> + Send + Sync>;

/// The client side: each [`Kv`] call is one request on the helper's socket. A
/// broken connection (the helper went away) switches to an in-process store
/// for the rest of the call's process; a helper that does not answer within
/// the request budget is "try again later", as etcd's own silence is.
pub struct Remote {
    stream: Mutex<Option<UnixStream>>,
    fallback: Fallback,
    direct: OnceLock<Arc<dyn Kv>>,
}

impl Remote {
    fn new(stream: UnixStream, fallback: Fallback) -> Remote {
        Remote {
            stream: Mutex::new(Some(stream)),
            fallback,
            direct: OnceLock::new(),
        }
    }

    fn direct(&self) -> Result<&Arc<dyn Kv>> {
        if let Some(d) = self.direct.get() {
            return Ok(d);
        }
        let d = (self.fallback)()?;
        Ok(self.direct.get_or_init(|| d))
    }

    /// Send `req`; `Ok(None)` when the helper is gone (use the fallback).
    fn exchange(&self, req: &Request) -> Result<Option<Reply>> {
        let mut slot = match self.stream.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(stream) = slot.as_mut() else {
            return Ok(None);
        };
        match send(stream, req).and_then(|()| receive::<Reply>(stream)) {
            Ok(reply) => Ok(Some(reply)),
            Err(e) if timed_out(&e) => {
                *slot = None;
                Err(Error::TryAgainLater(
                    "the etcd connection helper did not answer in time".into(),
                ))
            }
            Err(e) => {
                log::debug!("etcd helper connection lost ({e}); connecting directly");
                *slot = None;
                Ok(None)
            }
        }
    }

    fn ask<T>(
        &self,
        req: Request,
        pick: impl FnOnce(Reply) -> Option<T>,
        direct: impl FnOnce(&dyn Kv) -> Result<T>,
    ) -> Result<T> {
        match self.exchange(&req)? {
            Some(Reply::Failed(e)) => Err(e.into()),
            Some(reply) => {
                // Only the start of each: a reply can be megabytes of keys.
                let what = crate::agent::protocol::bounded_debug(&reply);
                pick(reply).ok_or_else(|| {
                    Error::Store(format!(
                        "the etcd helper answered {} with {what}",
                        crate::agent::protocol::bounded_debug(&req)
                    ))
                })
            }
            None => direct(&**self.direct()?),
        }
    }
}

impl Kv for Remote {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.ask(
            Request::Get(key.to_string()),
            |r| match r {
                Reply::Get(v) => Some(v),
                _ => None,
            },
            |kv| kv.get(key),
        )
    }

    fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>> {
        self.ask(
            Request::Range(prefix.to_string(), keys_only),
            |r| match r {
                Reply::Range(v) => Some(v),
                _ => None,
            },
            |kv| kv.range(prefix, keys_only),
        )
    }

    fn read_batch(&self, reads: &[Read], freshness: Freshness) -> Result<Vec<Vec<KeyValue>>> {
        self.ask(
            Request::ReadBatch(reads.to_vec(), freshness),
            // One answer per read, as the allocator indexes them.
            |r| match r {
                Reply::Reads(v) if v.len() == reads.len() => Some(v),
                _ => None,
            },
            |kv| kv.read_batch(reads, freshness),
        )
    }

    fn txn(&self, txn: Txn) -> Result<bool> {
        self.ask(
            Request::Txn(txn.clone()),
            |r| match r {
                Reply::Txn(v) => Some(v),
                _ => None,
            },
            |kv| kv.txn(txn),
        )
    }

    fn txn_or_read(&self, txn: Txn, reads: &[Read]) -> Result<Option<Vec<Vec<KeyValue>>>> {
        self.ask(
            Request::TxnOrRead(txn.clone(), reads.to_vec()),
            |r| match r {
                Reply::TxnOrRead(v) if v.as_ref().is_none_or(|v| v.len() == reads.len()) => Some(v),
                _ => None,
            },
            |kv| kv.txn_or_read(txn, reads),
        )
    }

    fn ping(&self) -> Result<()> {
        self.ask(
            Request::Ping,
            |r| matches!(r, Reply::Pong).then_some(()),
            |kv| kv.ping(),
        )
    }
}

/// Run one request on `kv`.
fn execute(kv: &dyn Kv, req: Request) -> Reply {
    let reply = match req {
        Request::Get(k) => kv.get(&k).map(Reply::Get),
        Request::Range(p, keys_only) => kv.range(&p, keys_only).map(Reply::Range),
        Request::ReadBatch(reads, f) => kv.read_batch(&reads, f).map(Reply::Reads),
        Request::Txn(t) => kv.txn(t).map(Reply::Txn),
        Request::TxnOrRead(t, reads) => kv.txn_or_read(t, &reads).map(Reply::TxnOrRead),
        Request::Ping => kv.ping().map(|()| Reply::Pong),
    };
    reply.unwrap_or_else(|e| Reply::Failed(e.into()))
}

/// Every key a request names: gets, range prefixes, compares and writes.
fn keys_of(req: &Request) -> Vec<&str> {
    fn of_reads(reads: &[Read]) -> impl Iterator<Item = &str> {
        reads.iter().map(|r| match r {
            Read::Get(k) => k.as_str(),
            Read::Range { prefix, .. } => prefix.as_str(),
        })
    }
    fn of_txn(t: &Txn) -> impl Iterator<Item = &str> {
        let compares = t.compares.iter().map(|c| match c {
            crate::store::Compare::CreateRevision(k, _)
            | crate::store::Compare::ModRevision(k, _)
            | crate::store::Compare::Value(k, _) => k.as_str(),
        });
        let ops = t.success.iter().chain(&t.failure).map(|o| match o {
            crate::store::Op::Put(k, _) | crate::store::Op::Delete(k) => k.as_str(),
        });
        compares.chain(ops)
    }
    match req {
        Request::Get(k) | Request::Range(k, _) => vec![k.as_str()],
        Request::ReadBatch(reads, _) => of_reads(reads).collect(),
        Request::Txn(t) => of_txn(t).collect(),
        Request::TxnOrRead(t, reads) => of_txn(t).chain(of_reads(reads)).collect(),
        Request::Ping => Vec::new(),
    }
}

/// The first key of `req` outside `prefix` (the helper's configured one), if
/// any. Inside means under `<prefix>/`, as every key of [`crate::ipam::keys`]
/// is: a range of `<prefix>` itself would also reach `<prefix>x/…`.
fn outside_prefix<'r>(req: &'r Request, prefix: &str) -> Option<&'r str> {
    let under = format!("{}/", prefix.trim_end_matches('/'));
    keys_of(req).into_iter().find(|k| !k.starts_with(&under))
}

/// Run one request on `kv`, or refuse it when it names a key outside `prefix`:
/// the helper acts with its own credentials for callers of one configuration,
/// and serves that configuration's keys only.
fn execute_within(kv: &dyn Kv, prefix: &str, req: Request) -> Reply {
    match outside_prefix(&req, prefix) {
        Some(key) => {
            log::warn!("refused a request for key {key:?}, outside prefix {prefix:?}");
            Reply::Failed(
                Error::Store(format!(
                    "the etcd helper serves keys under {prefix:?} only; refused key {key:?}"
                ))
                .into(),
            )
        }
        None => execute(kv, req),
    }
}

/// Serve one client connection until it closes; keys outside `prefix` are refused.
fn serve_connection(kv: &dyn Kv, prefix: &str, mut stream: UnixStream) {
    while let Ok(req) = receive::<Request>(&mut stream) {
        if send(&mut stream, &execute_within(kv, prefix, req)).is_err() {
            return;
        }
    }
}

/// `ohno`'s entry point when started as the etcd helper: `Some(exit code)`,
/// or `None` when this process is not one.
pub fn main_if_helper() -> Option<i32> {
    if crate::agent::protocol::role().as_deref() != Some(KIND) {
        return None;
    }
    let doc = std::env::var(ENV).ok()?;
    crate::agent::protocol::close_inherited_descriptors();
    let start: Start = serde_json::from_str(&doc).ok()?;
    let conf = start.conf;
    let served = crate::agent::protocol::serve(
        &start.socket,
        Duration::from_millis(conf.persist_ms),
        || {
            let kv: Arc<dyn Kv> = Arc::new(
                crate::store::etcd::EtcdStore::open(&conf)
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            );
            let prefix = conf.prefix.clone();
            Ok(move |stream| serve_connection(&*kv, &prefix, stream))
        },
        // A certificate that changed or went away: the helper is stale.
        || socket_path(&conf).as_deref() == Some(start.socket.as_path()),
    );
    Some(i32::from(served.is_err()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::time::Instant;

    /// A Remote talking to a served MemoryStore over a socket pair.
    fn remote_on(kv: Arc<dyn Kv>) -> (Remote, std::thread::JoinHandle<()>) {
        remote_within(kv, "/")
    }

    /// [`remote_on`] with a helper configured for `prefix`.
    fn remote_within(kv: Arc<dyn Kv>, prefix: &str) -> (Remote, std::thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let prefix = prefix.to_string();
        let server = std::thread::spawn(move || serve_connection(&*kv, &prefix, b));
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let fallback: Fallback = Box::new(|| Err(Error::Store("no fallback in this test".into())));
        (Remote::new(a, fallback), server)
    }

    #[test]
    fn the_store_suites_hold_through_the_socket() {
        let (remote, server) = remote_on(Arc::new(MemoryStore::new()));
        crate::store::suite::put_get_range_delete(&remote);
        crate::store::suite::compares_are_all_or_nothing(&remote);
        drop(remote);
        server.join().unwrap();
    }

    #[test]
    fn the_allocator_suite_holds_through_the_socket() {
        crate::ipam::allocator::suite::run_all(&|| {
            Box::new(remote_on(Arc::new(MemoryStore::new())).0)
        });
    }

    #[test]
    fn the_helper_refuses_keys_outside_its_prefix() {
        use crate::store::Compare;
        let kv: Arc<dyn Kv> = Arc::new(MemoryStore::new());
        for key in ["/ohno/pools/default", "/other/secret", "/ohnox/a"] {
            assert!(kv.txn(Txn::new().put(key, b"v".to_vec())).unwrap());
        }
        let (remote, _server) = remote_within(kv.clone(), "/ohno");
        let refused = |r: Result<(), Error>, key: &str| {
            let e = r.unwrap_err();
            assert_eq!(e.code(), crate::error::code::STORE, "{e}");
            assert!(e.to_string().contains(&format!("{key:?}")), "{e}");
            assert!(e.to_string().contains("\"/ohno\""), "{e}");
        };
        // Inside: served.
        assert!(remote.get("/ohno/pools/default").unwrap().is_some());
        assert_eq!(remote.range("/ohno/", true).unwrap().len(), 1);
        remote.ping().unwrap();
        // Outside, or a range that would reach past the prefix: refused.
        refused(remote.get("/other/secret").map(drop), "/other/secret");
        refused(remote.range("/ohno", false).map(drop), "/ohno");
        refused(remote.range("", true).map(drop), "");
        refused(remote.range("/ohnox/", true).map(drop), "/ohnox/");
        refused(
            remote
                .read_batch(
                    &[
                        Read::Get("/ohno/pools/default".into()),
                        Read::Get("/other/secret".into()),
                    ],
                    Freshness::Latest,
                )
                .map(drop),
            "/other/secret",
        );
        let write_outside = Txn::new().put("/other/planted", b"x".to_vec());
        refused(remote.txn(write_outside).map(drop), "/other/planted");
        let compare_outside = Txn::new()
            .when(Compare::absent("/other/secret"))
            .put("/ohno/x", b"x".to_vec());
        refused(remote.txn(compare_outside).map(drop), "/other/secret");
        refused(
            remote
                .txn_or_read(
                    Txn::new().put("/ohno/y", b"y".to_vec()),
                    &[Read::Range {
                        prefix: "/other/".into(),
                        keys_only: false,
                    }],
                )
                .map(drop),
            "/other/",
        );
        // Nothing refused was written, in or out of the prefix.
        for key in ["/other/planted", "/ohno/x", "/ohno/y"] {
            assert!(kv.get(key).unwrap().is_none(), "{key} written");
        }
    }

    #[test]
    fn a_vanished_helper_falls_back_to_the_direct_store() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b); // The helper is gone before the first request.
        let direct: Arc<dyn Kv> = Arc::new(MemoryStore::new());
        let d = direct.clone();
        let remote = Remote::new(a, Box::new(move || Ok(d.clone())));
        assert!(remote.txn(Txn::new().put("/k", b"v".to_vec())).unwrap());
        assert_eq!(direct.get("/k").unwrap().unwrap().value, b"v");
        assert_eq!(remote.get("/k").unwrap().unwrap().value, b"v");
    }

    #[test]
    fn a_silent_helper_is_try_again_later() {
        let (a, _b) = UnixStream::pair().unwrap(); // Never answers.
        a.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let remote = Remote::new(
            a,
            Box::new(|| Err(Error::Store("must not fall back".into()))),
        );
        let started = Instant::now();
        let e = remote.get("/k").unwrap_err();
        assert_eq!(e.code(), crate::error::code::TRY_AGAIN_LATER, "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn the_socket_name_follows_the_config_and_the_certificates() {
        let dir = std::env::temp_dir().join(format!("ohno-helper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "one").unwrap();
        let conf = EtcdConf {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            prefix: "/ohno".into(),
            ca_file: Some(ca.clone()),
            cert_file: None,
            key_file: None,
            timeout_ms: 1000,
            retries: 3,
            persist_ms: 1000,
            helper_dir: Some(dir.clone()),
        };
        let first = socket_path(&conf).unwrap();
        assert!(first.starts_with(&dir));
        assert_eq!(socket_path(&conf), Some(first.clone()));
        let mut other = conf.clone();
        other.prefix = "/other".into();
        assert_ne!(socket_path(&other), Some(first.clone()));
        std::fs::write(&ca, "two, rotated").unwrap();
        assert_ne!(socket_path(&conf), Some(first.clone()));
        std::fs::remove_file(&ca).unwrap();
        assert_eq!(socket_path(&conf), None, "a missing CA file: no helper");
        let mut off = conf.clone();
        off.persist_ms = 0;
        assert_eq!(socket_path(&off), None);
        std::fs::remove_dir_all(dir).ok();
    }
}
