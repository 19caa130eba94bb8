//! The store service: etcd operations run on a warm connection.
//!
//! A new process's first etcd request pays a TCP connect, a full TLS 1.3
//! handshake with client authentication and an HTTP/2 set-up, more than the
//! raft commit of the transaction itself: rustls cannot carry a session ticket
//! from one process to the next. The agent keeps the connection, and the
//! plugin sends its operations here instead.
//!
//! Nothing is decided here: the service executes the allocator's
//! transactions, whose compares hold wherever they run. A server that dies
//! under a request makes the caller repeat it on a connection of its own,
//! which is safe for the same reason (a transaction that did apply fails its
//! compares the second time and the allocator reads what it already holds).
//!
//! Connections are keyed by [`store_key`] (endpoints, prefix, timeouts, the
//! network namespace, the certificate files' identity): a rotated certificate
//! gets a new connection, and a caller in another network namespace is
//! refused (127.0.0.1 is not the same place in two). Every request is
//! confined to the keys under the connection's prefix.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::agent::metrics::Metrics;
use crate::agent::protocol::{receive, send, store_key, StoreReply, StoreRequest, WireError};
use crate::config::EtcdConf;
use crate::error::Error;
use crate::store::etcd::EtcdStore;
use crate::store::{Kv, Read, Txn};

/// At most this many etcd connections are kept (the oldest goes first): one
/// per network and certificate generation in practice.
const MAX_CONNECTIONS: usize = 8;

pub struct StoreService {
    /// `(key, connection)`, oldest first.
    stores: Mutex<Vec<(String, Arc<EtcdStore>)>>,
    /// On demand: the one key served.
    only: Option<String>,
    metrics: Arc<Metrics>,
}

impl StoreService {
    pub fn new(only: Option<String>, metrics: Arc<Metrics>) -> StoreService {
        StoreService {
            stores: Mutex::new(Vec::new()),
            only,
            metrics,
        }
    }

    /// The connection for `conf`, opened now if need be. `key` is what the
    /// caller computed: it must be what this process computes (same files,
    /// same namespace).
    pub fn connection(
        &self,
        conf: &EtcdConf,
        key: &str,
    ) -> std::result::Result<Arc<EtcdStore>, WireError> {
        let mine = store_key(conf);
        if mine.as_deref() != Some(key) {
            return Err(WireError::Refused(
                "the agent sees another etcd configuration, certificate or network namespace"
                    .into(),
            ));
        }
        if self.only.as_deref().is_some_and(|only| only != key) {
            return Err(WireError::Refused(
                "this on-demand server serves another etcd configuration".into(),
            ));
        }
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = stores.iter().find(|(k, _)| k == key) {
            return Ok(s.clone());
        }
        let store = Arc::new(EtcdStore::open(conf).map_err(WireError::from)?);
        if stores.len() >= MAX_CONNECTIONS {
            stores.remove(0);
        }
        stores.push((key.to_string(), store.clone()));
        Ok(store)
    }

    /// The endpoints of the connections held, and the one in use on each.
    pub fn endpoints(&self) -> (Vec<String>, Option<String>) {
        let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = Vec::new();
        let mut in_use = None;
        for (_, s) in stores.iter() {
            all.extend(s.endpoints().iter().cloned());
            in_use = s.endpoint_in_use().or(in_use);
        }
        (all, in_use)
    }

    /// Serve one caller's operations on `kv` until it closes; keys outside
    /// `prefix` are refused.
    pub fn serve(&self, kv: &dyn Kv, prefix: &str, mut stream: UnixStream) {
        while let Ok(req) = receive::<StoreRequest>(&mut stream) {
            let op = req.op();
            let started = Instant::now();
            let reply = execute_within(kv, prefix, req);
            self.metrics.etcd_request(
                op,
                started.elapsed(),
                matches!(reply, StoreReply::Failed(_)),
            );
            if send(&mut stream, &reply).is_err() {
                return;
            }
        }
    }
}

/// Run one request on `kv`.
pub fn execute(kv: &dyn Kv, req: StoreRequest) -> StoreReply {
    let reply = match req {
        StoreRequest::Get(k) => kv.get(&k).map(StoreReply::Get),
        StoreRequest::Range(p, keys_only) => kv.range(&p, keys_only).map(StoreReply::Range),
        StoreRequest::ReadBatch(reads, f) => kv.read_batch(&reads, f).map(StoreReply::Reads),
        StoreRequest::Txn(t) => kv.txn(t).map(StoreReply::Txn),
        StoreRequest::TxnOrRead(t, reads) => kv.txn_or_read(t, &reads).map(StoreReply::TxnOrRead),
        StoreRequest::Ping => kv.ping().map(|()| StoreReply::Pong),
    };
    reply.unwrap_or_else(|e| StoreReply::Failed(e.into()))
}

/// Every key a request names: gets, range prefixes, compares and writes.
fn keys_of(req: &StoreRequest) -> Vec<&str> {
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
        StoreRequest::Get(k) | StoreRequest::Range(k, _) => vec![k.as_str()],
        StoreRequest::ReadBatch(reads, _) => of_reads(reads).collect(),
        StoreRequest::Txn(t) => of_txn(t).collect(),
        StoreRequest::TxnOrRead(t, reads) => of_txn(t).chain(of_reads(reads)).collect(),
        StoreRequest::Ping => Vec::new(),
    }
}

/// The first key of `req` outside `prefix` (the connection's configured one),
/// if any. Inside means under `<prefix>/`, as every key of
/// [`crate::ipam::keys`] is: a range of `<prefix>` itself would also reach
/// `<prefix>x/…`.
fn outside_prefix<'r>(req: &'r StoreRequest, prefix: &str) -> Option<&'r str> {
    let under = format!("{}/", prefix.trim_end_matches('/'));
    keys_of(req).into_iter().find(|k| !k.starts_with(&under))
}

/// Run one request on `kv`, or refuse it when it names a key outside `prefix`:
/// the server acts with its own credentials for callers of one configuration,
/// and serves that configuration's keys only.
pub fn execute_within(kv: &dyn Kv, prefix: &str, req: StoreRequest) -> StoreReply {
    match outside_prefix(&req, prefix) {
        Some(key) => {
            log::warn!("refused a request for key {key:?}, outside prefix {prefix:?}");
            StoreReply::Failed(
                Error::Store(format!(
                    "the agent serves keys under {prefix:?} only; refused key {key:?}"
                ))
                .into(),
            )
        }
        None => execute(kv, req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::client::store::{FallbackKv, OpenDirect};
    use crate::agent::client::Conn;
    use crate::config::EtcdConf;
    use crate::store::memory::MemoryStore;
    use crate::store::{Freshness, Read};
    use std::time::Duration;
    use std::time::Instant;

    /// A FallbackKv talking to a served MemoryStore over a socket pair.
    fn remote_on(kv: Arc<dyn Kv>) -> (FallbackKv, std::thread::JoinHandle<()>) {
        remote_within(kv, "/")
    }

    /// A connection past its greeting, over a socket pair.
    fn welcomed_pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Conn::from_stream(a), b)
    }

    /// [`remote_on`] with a server configured for `prefix`.
    fn remote_within(kv: Arc<dyn Kv>, prefix: &str) -> (FallbackKv, std::thread::JoinHandle<()>) {
        let (conn, b) = welcomed_pair();
        let prefix = prefix.to_string();
        let service = StoreService::new(None, Arc::new(Metrics::new()));
        let server = std::thread::spawn(move || service.serve(&*kv, &prefix, b));
        let fallback: OpenDirect =
            Box::new(|| Err(Error::Store("no fallback in this test".into())));
        (FallbackKv::new(conn, fallback), server)
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
        crate::ipam::suite::run_all(&|| Box::new(remote_on(Arc::new(MemoryStore::new())).0));
    }

    #[test]
    fn the_service_refuses_keys_outside_its_prefix() {
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
    fn a_vanished_server_falls_back_to_the_direct_store() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b); // The server is gone before the first request.
        let direct: Arc<dyn Kv> = Arc::new(MemoryStore::new());
        let d = direct.clone();
        let remote = FallbackKv::new(Conn::from_stream(a), Box::new(move || Ok(d.clone())));
        assert!(remote.txn(Txn::new().put("/k", b"v".to_vec())).unwrap());
        assert_eq!(direct.get("/k").unwrap().unwrap().value, b"v");
        assert_eq!(remote.get("/k").unwrap().unwrap().value, b"v");
    }

    #[test]
    fn a_silent_server_is_left_for_the_direct_store() {
        let (conn, _b) = welcomed_pair(); // Welcomes, then never answers.
        let direct: Arc<dyn Kv> = Arc::new(MemoryStore::new());
        assert!(direct.txn(Txn::new().put("/k", b"v".to_vec())).unwrap());
        let d = direct.clone();
        let remote = FallbackKv::new(conn, Box::new(move || Ok(d.clone())));
        remote.conn_timeout(Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(remote.get("/k").unwrap().unwrap().value, b"v");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn the_store_key_follows_the_config_and_the_certificates() {
        let dir = std::env::temp_dir().join(format!("ohno-store-key-{}", std::process::id()));
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
        let first = store_key(&conf).unwrap();
        assert_eq!(store_key(&conf), Some(first.clone()));
        let mut other = conf.clone();
        other.prefix = "/other".into();
        assert_ne!(store_key(&other), Some(first.clone()));
        std::fs::write(&ca, "two, rotated").unwrap();
        assert_ne!(store_key(&conf), Some(first.clone()));
        // A key computed elsewhere (another namespace, older files) is refused.
        let service = StoreService::new(None, Arc::new(Metrics::new()));
        assert!(matches!(
            service.connection(&conf, &first),
            Err(crate::agent::protocol::WireError::Refused(_))
        ));
        std::fs::remove_file(&ca).unwrap();
        assert_eq!(store_key(&conf), None, "a missing CA file: no server");
        std::fs::remove_dir_all(dir).ok();
    }
}
