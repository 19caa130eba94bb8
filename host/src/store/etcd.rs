//! The etcd backend: etcd's v3 API over gRPC (etcd-client), mutual TLS, several
//! endpoints with failover, a timeout per request and bounded retries.
//!
//! Every plugin call is a new process, so the client is built for a short life: a
//! current-thread tokio runtime, one endpoint connected at a time (starting at a
//! position derived from the process id, so a node's calls spread over the members),
//! and on a transport error or timeout the next endpoint is tried. A call that no
//! member answers within `timeoutMs` × `retries` is "try again later" (code 11).
//! Requests carry `require-leader`, so a member that lost quorum answers at once
//! instead of hanging.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare as ECompare, CompareOp, ConnectOptions, GetOptions, Identity,
    KvClient, TlsOptions, Txn as ETxn, TxnOp, TxnOpResponse,
};

use tokio::time::Instant;

use super::{Compare, Freshness, KeyValue, Kv, Op, Read, Txn};
use crate::config::EtcdConf;
use crate::error::{Error, Result};

pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    conf: EtcdConf,
    options: ConnectOptions,
    /// The connected endpoint (index into `conf.endpoints`) and its client.
    client: Mutex<Option<(usize, KvClient)>>,
    /// Where failover starts.
    start: usize,
    /// Watches opened so far: each starts at the next endpoint.
    watches: std::sync::atomic::AtomicUsize,
}

/// The error etcd-client wraps: `etcd_client::Error` has no `source()`, so the
/// chain (the TLS alert, the refused connection) starts at the tonic error inside.
fn inner(e: &etcd_client::Error) -> Option<&(dyn std::error::Error + 'static)> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    }
}

/// The error and its causes on one line.
fn chain(e: &etcd_client::Error) -> String {
    let mut s = e.to_string();
    let mut cur = inner(e).and_then(|i| i.source());
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::config(field, format!("read {}: {e}", path.display())))
}

/// A TLS handshake failure (unknown CA, rejected or missing client certificate):
/// rustls reports it as an `io::Error` of kind `InvalidData` somewhere in the chain.
/// Retrying cannot help; the certificates in the config are wrong.
fn is_tls_failure(e: &etcd_client::Error) -> bool {
    let mut cur = inner(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// The server closed the connection under a request: after a TLS 1.3
/// handshake the client may have sent its request before the server's alert
/// (a refused client certificate) arrived, and then only sees the close.
fn closed_by_peer(e: &etcd_client::Error) -> bool {
    let text = chain(e).to_ascii_lowercase();
    [
        "connection closed",
        "broken pipe",
        "connection reset",
        "unexpected eof",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// Why the TLS session with `endpoint` fails, if it does: a fresh connection,
/// the handshake with the configured CA and client certificate, the HTTP/2
/// preface, then a short read. A server that refuses the client certificate
/// answers with an alert (rustls: "received fatal alert: …"); a healthy one
/// with its HTTP/2 settings (then `None`).
///
/// All of it ends by `deadline` (the attempt's own, so the probe never
/// stretches a call past `timeoutMs` × `retries`): a member that accepts the
/// connection and never completes the handshake is `None` then, like any
/// other member that does not answer.
async fn tls_probe(endpoint: &str, conf: &EtcdConf, deadline: Instant) -> Option<String> {
    tokio::time::timeout_at(deadline, tls_probe_unbounded(endpoint, conf))
        .await
        .ok()
        .flatten()
}

/// [`tls_probe`] without its deadline.
async fn tls_probe_unbounded(endpoint: &str, conf: &EtcdConf) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    let hostport = endpoint.strip_prefix("https://")?.trim_end_matches('/');
    let (host, _) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &conf.ca_file {
        for cert in CertificateDer::pem_file_iter(ca).ok()? {
            roots.add(cert.ok()?).ok()?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let mut config = match (&conf.cert_file, &conf.key_file) {
        (Some(c), Some(k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .ok()?
                .collect::<std::result::Result<Vec<_>, _>>()
                .ok()?;
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(k).ok()?)
                .ok()?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.to_string()).ok()?;
    let tcp = tokio::net::TcpStream::connect(hostport).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Some(e.to_string()),
        Err(_) => return None,
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(500), tls.read(&mut buf)).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Some(e.to_string()),
        _ => None,
    }
}

/// Errors after which another endpoint (or a later try) may succeed.
fn retriable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
                | tonic::Code::ResourceExhausted
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// The pause after failed attempt `attempt` (from 0), before the next member.
pub(crate) fn failover_backoff(attempt: u32) -> Duration {
    Duration::from_millis(20u64 << attempt.min(4))
}

impl EtcdStore {
    /// Build the client. Reads the certificates now (a bad path is code 7) but
    /// connects lazily, on the first request.
    ///
    /// The runtime is current-thread, also in the agent, where many threads
    /// call at once: whichever thread is waiting drives the connection itself,
    /// with no hand-off to a worker thread (a hand-off made bursts slower;
    /// docs/bench).
    pub fn open(conf: &EtcdConf) -> Result<EtcdStore> {
        let timeout = Duration::from_millis(conf.timeout_ms);
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_require_leader(true);
        if conf.endpoints.iter().any(|e| e.starts_with("https://")) {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &conf.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem("ipam.store.caFile", ca)?));
            }
            match (&conf.cert_file, &conf.key_file) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_pem("ipam.store.certFile", c)?,
                        read_pem("ipam.store.keyFile", k)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::config(
                        "ipam.store.certFile",
                        "certFile and keyFile go together",
                    ))
                }
            }
            options = options.with_tls(tls);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the etcd client runtime", e))?;
        let start = std::process::id() as usize % conf.endpoints.len().max(1);
        Ok(EtcdStore {
            rt,
            conf: conf.clone(),
            options,
            client: Mutex::new(None),
            start,
            watches: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The configured endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.conf.endpoints
    }

    /// The endpoint the current connection goes to, if one is open.
    pub fn endpoint_in_use(&self) -> Option<String> {
        let slot = self.slot();
        let (idx, _) = slot.as_ref()?;
        self.conf.endpoints.get(*idx).cloned()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(usize, KvClient)>> {
        match self.client.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Run `op` against the current endpoint; on a retriable failure, move to the
    /// next endpoint, up to `retries` attempts in all.
    fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(KvClient) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let n = self.conf.endpoints.len();
        let attempts = self.conf.retries.max(1);
        let timeout = Duration::from_millis(self.conf.timeout_ms);
        let mut last = String::new();
        for attempt in 0..attempts {
            // Everything one attempt does (connect, request, TLS probe) ends
            // by its deadline.
            let deadline = Instant::now() + timeout;
            let (idx, client) = match self.connected(attempt as usize % n, deadline) {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let endpoint = &self.conf.endpoints[idx];
            let outcome = self
                .rt
                .block_on(async { tokio::time::timeout_at(deadline, op(client)).await });
            match outcome {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if is_tls_failure(&e) => {
                    return Err(Error::config(
                        "ipam.store.caFile/certFile/keyFile",
                        format!("TLS handshake with {endpoint} failed: {} (check the CA and the client certificate)", chain(&e)),
                    ))
                }
                Ok(Err(e)) if retriable(&e) => {
                    // A closed connection on TLS may be a refused certificate
                    // whose alert the request did not see: ask the handshake.
                    if endpoint.starts_with("https://") && closed_by_peer(&e) {
                        let probe = tls_probe(endpoint, &self.conf, deadline);
                        if let Some(why) = self.rt.block_on(probe) {
                            return Err(Error::config(
                                "ipam.store.caFile/certFile/keyFile",
                                format!("TLS handshake with {endpoint} failed: {why} (check the CA and the client certificate)"),
                            ));
                        }
                    }
                    last = format!("{endpoint}: {}", chain(&e));
                    log::warn!(
                        "etcd {what} via {endpoint} failed (attempt {}): {}",
                        attempt + 1,
                        chain(&e)
                    );
                }
                Ok(Err(e)) => {
                    return Err(Error::Store(format!(
                        "etcd {what} via {endpoint}: {}",
                        chain(&e)
                    )))
                }
                Err(_) => {
                    last = format!("{endpoint}: no answer within {} ms", self.conf.timeout_ms);
                    log::warn!(
                        "etcd {what} via {endpoint}: timed out (attempt {})",
                        attempt + 1
                    );
                }
            }
            // Fail over: forget this connection, back off a little, try the next member.
            *self.slot() = None;
            std::thread::sleep(failover_backoff(attempt));
        }
        Err(Error::TryAgainLater(format!(
            "etcd {what}: no endpoint answered after {attempts} attempts (timeoutMs {}); last error: {last}",
            self.conf.timeout_ms
        )))
    }

    /// The current client, or a new one to endpoint `start + offset`, made by
    /// `deadline`.
    fn connected(
        &self,
        offset: usize,
        deadline: Instant,
    ) -> std::result::Result<(usize, KvClient), String> {
        let mut slot = self.slot();
        if let Some((i, c)) = slot.as_ref() {
            return Ok((*i, c.clone()));
        }
        let idx = (self.start + offset) % self.conf.endpoints.len();
        let (_, client) = self.connect_to(idx, deadline)?;
        let kv = client.kv_client();
        *slot = Some((idx, kv.clone()));
        Ok((idx, kv))
    }

    /// A new client to endpoint `idx`, made by `deadline`.
    fn connect_to(
        &self,
        idx: usize,
        deadline: Instant,
    ) -> std::result::Result<(String, Client), String> {
        let endpoint = self
            .conf
            .endpoints
            .get(idx)
            .cloned()
            .ok_or_else(|| "no etcd endpoint".to_string())?;
        let opts = self.options.clone();
        let client = self
            .rt
            .block_on(async {
                tokio::time::timeout_at(deadline, Client::connect([endpoint.as_str()], Some(opts)))
                    .await
            })
            .map_err(|_| {
                format!(
                    "{endpoint}: connect: no answer within {} ms",
                    self.conf.timeout_ms
                )
            })?
            .map_err(|e| format!("{endpoint}: connect: {}", chain(&e)))?;
        Ok((endpoint, client))
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// The range requests of a batch of reads.
fn get_ops(reads: &[Read], freshness: Freshness) -> Vec<TxnOp> {
    reads
        .iter()
        .map(|r| {
            let (key, mut o) = match r {
                Read::Get(key) => (key.as_str(), GetOptions::new()),
                Read::Range { prefix, keys_only } => {
                    let o = GetOptions::new().with_prefix();
                    (
                        prefix.as_str(),
                        if *keys_only { o.with_keys_only() } else { o },
                    )
                }
            };
            if freshness == Freshness::MayLag {
                o = o.with_serializable();
            }
            TxnOp::get(key, Some(o))
        })
        .collect()
}

/// The answers to `expected` reads, in order.
fn answers(responses: Vec<TxnOpResponse>, expected: usize) -> Result<Vec<Vec<KeyValue>>> {
    let answers: Vec<Vec<KeyValue>> = responses
        .iter()
        .map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().iter().map(convert).collect(),
            _ => Vec::new(),
        })
        .collect();
    if answers.len() != expected {
        return Err(Error::Store(format!(
            "etcd answered {} of {expected} reads in a batch",
            answers.len()
        )));
    }
    Ok(answers)
}

/// A transaction's compares and its two branches, in etcd's terms.
fn txn_parts(txn: &Txn) -> (Vec<ECompare>, Vec<TxnOp>, Vec<TxnOp>) {
    let compares: Vec<ECompare> = txn
        .compares
        .iter()
        .map(|c| match c {
            Compare::CreateRevision(k, r) => {
                ECompare::create_revision(k.as_str(), CompareOp::Equal, *r)
            }
            Compare::ModRevision(k, r) => ECompare::mod_revision(k.as_str(), CompareOp::Equal, *r),
            Compare::Value(k, v) => ECompare::value(k.as_str(), CompareOp::Equal, v.clone()),
        })
        .collect();
    let ops = |ops: &[Op]| -> Vec<TxnOp> {
        ops.iter()
            .map(|o| match o {
                Op::Put(k, v) => TxnOp::put(k.as_str(), v.clone(), None),
                Op::Delete(k) => TxnOp::delete(k.as_str(), None),
            })
            .collect()
    };
    (compares, ops(&txn.success), ops(&txn.failure))
}

impl Kv for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.call("get", |mut c| async move { c.get(key, None).await })?;
        Ok(resp.kvs().first().map(convert))
    }

    fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>> {
        let resp = self.call("range", |mut c| async move {
            let mut o = GetOptions::new().with_prefix();
            if keys_only {
                o = o.with_keys_only();
            }
            c.get(prefix, Some(o)).await
        })?;
        Ok(resp.kvs().iter().map(convert).collect())
    }

    /// One read-only transaction. All-serializable, it is answered by the connected
    /// member without a round through the leader (etcd's `isTxnSerializable`).
    fn read_batch(&self, reads: &[Read], freshness: Freshness) -> Result<Vec<Vec<KeyValue>>> {
        let ops = get_ops(reads, freshness);
        let resp = self.call("read", |mut c| {
            let t = ETxn::new().and_then(ops.clone());
            async move { c.txn(t).await }
        })?;
        answers(resp.op_responses(), reads.len())
    }

    fn txn(&self, txn: Txn) -> Result<bool> {
        Ok(self.txn_or_read(txn, &[])?.is_none())
    }

    /// One transaction whose failure branch also reads: its answers come from
    /// the revision the compares failed at.
    fn txn_or_read(&self, txn: Txn, reads: &[Read]) -> Result<Option<Vec<Vec<KeyValue>>>> {
        let (compares, success, mut failure) = txn_parts(&txn);
        failure.extend(get_ops(reads, Freshness::Latest));
        let resp = self.call("txn", |mut c| {
            let t = ETxn::new()
                .when(compares.clone())
                .and_then(success.clone())
                .or_else(failure.clone());
            async move { c.txn(t).await }
        })?;
        if resp.succeeded() {
            return Ok(None);
        }
        // The failure branch's own writes answer first, the reads last.
        let mut all = resp.op_responses();
        let reads_at = all.len().saturating_sub(reads.len());
        answers(all.split_off(reads_at), reads.len()).map(Some)
    }

    fn ping(&self) -> Result<()> {
        // A linearizable read: answered only when the cluster has a leader and quorum.
        self.call("ping", |mut c| async move {
            c.get("/", Some(GetOptions::new().with_keys_only().with_limit(1)))
                .await
        })
        .map(|_| ())
    }
}

/// A throwaway single-member etcd for tests, inside a network namespace of its
/// own (so nothing listens in the machine's namespace): fixed ports on that
/// namespace's 127.0.0.1, its own data directory; stopped by PID, the namespace
/// and directory removed on drop. Test code that talks to it runs through
/// [`TestEtcd::run`], on a thread inside that namespace.
impl super::watch::Watch for EtcdStore {
    /// One read-only transaction of ranges: one revision for all of them.
    fn list(&self, prefixes: &[String]) -> Result<super::watch::Listing> {
        let reads: Vec<Read> = prefixes
            .iter()
            .map(|p| Read::Range {
                prefix: p.clone(),
                keys_only: false,
            })
            .collect();
        let ops = get_ops(&reads, Freshness::Latest);
        let resp = self.call("list", |mut c| {
            let t = ETxn::new().and_then(ops.clone());
            async move { c.txn(t).await }
        })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let keys = answers(resp.op_responses(), reads.len())?;
        Ok(super::watch::Listing { keys, revision })
    }

    fn watch(
        &self,
        prefixes: &[String],
        from: &super::watch::Listing,
        tick: Duration,
        on: &mut dyn FnMut(Vec<super::watch::Change>),
        stop: &dyn Fn() -> bool,
    ) -> super::watch::WatchEnd {
        use super::watch::{Change, WatchEnd};
        use etcd_client::{EventType, WatchOptions};
        let attempt = self
            .watches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A client of its own: the request path keeps only a `KvClient`,
        // and a watch stream lives as long as the agent follows.
        let idx = (self.start + attempt) % self.conf.endpoints.len().max(1);
        let deadline = Instant::now() + Duration::from_millis(self.conf.timeout_ms);
        let (endpoint, client) = match self.connect_to(idx, deadline) {
            Ok(c) => c,
            Err(e) => return WatchEnd::Failed(e),
        };
        let options = || {
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(from.revision + 1)
        };
        self.rt.block_on(async {
            let mut wc = client.watch_client();
            let Some(first) = prefixes.first() else {
                return WatchEnd::Failed("nothing to watch".into());
            };
            // Setting the watch up ends by the request deadline, like any request.
            let set_up = async {
                let mut stream = wc.watch(first.as_str(), Some(options())).await?;
                for p in &prefixes[1..] {
                    stream.watch(p.as_str(), Some(options())).await?;
                }
                Ok::<_, etcd_client::Error>(stream)
            };
            let mut stream = match tokio::time::timeout_at(
                deadline + Duration::from_millis(self.conf.timeout_ms),
                set_up,
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return WatchEnd::Failed(format!("{endpoint}: watch: {}", chain(&e))),
                Err(_) => {
                    return WatchEnd::Failed(format!(
                        "{endpoint}: watch: no answer within {} ms",
                        self.conf.timeout_ms
                    ))
                }
            };
            loop {
                if stop() {
                    return WatchEnd::Stopped;
                }
                let msg = match tokio::time::timeout(tick, stream.message()).await {
                    Err(_) => continue,
                    Ok(Err(e)) => {
                        return WatchEnd::Failed(format!("{endpoint}: watch: {}", chain(&e)))
                    }
                    Ok(Ok(None)) => {
                        return WatchEnd::Failed(format!("{endpoint}: watch stream closed"))
                    }
                    Ok(Ok(Some(m))) => m,
                };
                if msg.compact_revision() > 0 {
                    return WatchEnd::Compacted(msg.compact_revision());
                }
                if msg.canceled() {
                    return WatchEnd::Failed(format!(
                        "{endpoint}: watch canceled: {}",
                        msg.cancel_reason()
                    ));
                }
                let changes: Vec<Change> = msg
                    .events()
                    .iter()
                    .filter_map(|ev| {
                        let kv = ev.kv()?;
                        Some(match ev.event_type() {
                            EventType::Put => Change::Put(convert(kv)),
                            EventType::Delete => {
                                Change::Delete(String::from_utf8_lossy(kv.key()).into_owned())
                            }
                        })
                    })
                    .collect();
                if !changes.is_empty() {
                    on(changes);
                }
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::net::netns::NetNs;

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    pub struct TestEtcd {
        child: Child,
        dir: PathBuf,
        ns_name: String,
        ns: NetNs,
        pub endpoint: String,
    }

    fn ip(args: &[&str]) {
        let ok = Command::new("ip")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip {args:?} failed");
    }

    impl TestEtcd {
        pub fn start() -> TestEtcd {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let ns_name = format!("ohno-etcdunit-{}-{n}", std::process::id());
            let dir = std::env::temp_dir().join(&ns_name);
            std::fs::create_dir_all(&dir).expect("create etcd test dir");
            ip(&["netns", "add", &ns_name]);
            ip(&["-n", &ns_name, "link", "set", "lo", "up"]);
            let ns = NetNs::open(Path::new(&format!("/var/run/netns/{ns_name}")))
                .expect("open test netns");
            // The namespace is ours alone, so fixed ports cannot clash.
            let endpoint = "http://127.0.0.1:2379".to_string();
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns_name,
                    "etcd",
                    "--name",
                    "t",
                    "--data-dir",
                ])
                .arg(dir.join("data"))
                .args([
                    "--listen-client-urls",
                    &endpoint,
                    "--advertise-client-urls",
                    &endpoint,
                ])
                .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
                .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
                .args(["--initial-cluster", "t=http://127.0.0.1:2380"])
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(dir.join("etcd.log"))
                        .map(Stdio::from)
                        .unwrap_or(Stdio::null()),
                )
                .spawn()
                .expect("start etcd (Debian package etcd-server; `make setup` installs it)");
            let me = TestEtcd {
                child,
                dir,
                ns_name,
                ns,
                endpoint,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if me.run(|s| s.ping().is_ok()) {
                    return me;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("etcd in netns {} did not become healthy", me.ns_name);
        }

        pub fn conf(&self) -> EtcdConf {
            EtcdConf {
                endpoints: vec![self.endpoint.clone()],
                prefix: "/ohno".into(),
                ca_file: None,
                cert_file: None,
                key_file: None,
                timeout_ms: 1000,
                retries: 2,
                persist_ms: 0,
                helper_dir: None,
            }
        }

        /// Run `f` with a fresh store client, on a thread inside the namespace.
        pub fn run<T: Send>(&self, f: impl FnOnce(EtcdStore) -> T + Send) -> T {
            let conf = self.conf();
            self.ns
                .run(move || Ok(f(EtcdStore::open(&conf)?)))
                .expect("run inside the etcd test namespace")
        }

        /// Delete every key, so each test of a suite starts empty.
        pub fn wipe(s: &EtcdStore) {
            s.call("wipe", |mut c| async move {
                c.delete("", Some(etcd_client::DeleteOptions::new().with_all_keys()))
                    .await
            })
            .expect("wipe etcd");
        }
    }

    impl Drop for TestEtcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns_name])
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestEtcd;
    use super::*;

    #[test]
    fn watch_follows_from_the_listing_and_ends_on_compaction() {
        use crate::store::watch::{Change, Watch, WatchEnd};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let etcd = TestEtcd::start();
        etcd.run(|s| {
            let prefixes = vec!["/ohno/blocks/".to_string(), "/ohno/nodes/".to_string()];
            s.txn(
                Txn::new()
                    .put("/ohno/blocks/p/a", "1")
                    .put("/ohno/ips/x", "no"),
            )
            .unwrap();
            let listing = s.list(&prefixes).unwrap();
            assert_eq!(listing.keys[0].len(), 1);
            assert!(listing.keys[1].is_empty());
            assert!(listing.revision > 0);
            // Written after the listing, before the watch starts: not missed.
            s.txn(
                Txn::new()
                    .put("/ohno/nodes/n1", "r")
                    .put("/ohno/ips/y", "no"),
            )
            .unwrap();
            s.txn(Txn::new().delete("/ohno/blocks/p/a")).unwrap();
            static SEEN: AtomicUsize = AtomicUsize::new(0);
            let mut got = Vec::new();
            let end = s.watch(
                &prefixes,
                &listing,
                Duration::from_millis(50),
                &mut |c| {
                    SEEN.fetch_add(c.len(), Ordering::SeqCst);
                    got.extend(c)
                },
                &|| SEEN.load(Ordering::SeqCst) >= 2,
            );
            assert_eq!(end, WatchEnd::Stopped);
            // In order per prefix; the two prefixes' streams interleave freely.
            assert!(
                got.iter()
                    .any(|c| matches!(c, Change::Put(kv) if kv.key == "/ohno/nodes/n1")),
                "{got:?}"
            );
            assert!(
                got.contains(&Change::Delete("/ohno/blocks/p/a".into())),
                "{got:?}"
            );
            assert_eq!(got.len(), 2, "only the watched prefixes: {got:?}");

            // Compacted past the listing: the watch says so, to list again.
            let now = s.list(&prefixes).unwrap().revision;
            s.call("compact", |mut c| async move { c.compact(now, None).await })
                .unwrap();
            let end = s.watch(
                &prefixes,
                &listing,
                Duration::from_millis(50),
                &mut |_| {},
                &|| false,
            );
            assert!(matches!(end, WatchEnd::Compacted(r) if r >= now), "{end:?}");
        });
    }

    #[test]
    fn store_and_allocator_suites_on_etcd() {
        let etcd = TestEtcd::start();
        let conf = etcd.conf();
        etcd.run(move |s| {
            super::super::suite::put_get_range_delete(&s);
            TestEtcd::wipe(&s);
            super::super::suite::compares_are_all_or_nothing(&s);
            crate::ipam::suite::run_all(&|| {
                TestEtcd::wipe(&s);
                Box::new(EtcdStore::open(&conf).expect("open etcd store"))
            });
        });
    }

    #[test]
    fn unreachable_endpoint_is_try_again_within_the_budget() {
        let conf = EtcdConf {
            endpoints: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            prefix: "/ohno".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout_ms: 200,
            retries: 2,
            persist_ms: 0,
            helper_dir: None,
        };
        let started = std::time::Instant::now();
        let e = EtcdStore::open(&conf).unwrap().get("/x").unwrap_err();
        assert_eq!(e.code(), 11, "{e}");
        assert!(e.to_string().contains("127.0.0.1:"), "{e}");
        assert!(
            started.elapsed() < Duration::from_millis(2 * 200 + 500),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_dead_endpoint_fails_over_to_a_live_one() {
        let etcd = TestEtcd::start();
        let mut conf = etcd.conf();
        // Whichever one the process starts with, the live member answers.
        conf.endpoints = vec!["http://127.0.0.1:1".into(), etcd.endpoint.clone()];
        etcd.run(move |_| {
            let s = EtcdStore::open(&conf).unwrap();
            assert!(s.txn(Txn::new().put("/k", "v")).unwrap());
            assert_eq!(s.get("/k").unwrap().unwrap().value, b"v");
        });
    }

    #[test]
    fn missing_certificate_file_is_config_error() {
        let conf = EtcdConf {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            prefix: "/ohno".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            cert_file: None,
            key_file: None,
            timeout_ms: 200,
            retries: 1,
            persist_ms: 0,
            helper_dir: None,
        };
        let e = EtcdStore::open(&conf).err().unwrap();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("ipam.store.caFile"), "{e}");
    }
}
