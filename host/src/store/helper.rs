//! The etcd connection helper: a node-local process that keeps one mutual-TLS
//! connection to etcd open between plugin calls, the way `ssh -o ControlPersist`
//! keeps a master connection.
//!
//! Every plugin call is a new process, and a new process's first etcd request
//! pays a TCP connect, a full TLS 1.3 handshake with client authentication and
//! an HTTP/2 set-up: ~2.5 ms of an ADD on a 2-core VM, more than the raft
//! commit of the transaction itself (rustls cannot carry a session ticket from
//! one process to the next). So the first call that finds no helper starts one
//! (`ohno` re-executed with [`ENV`] set, detached: own process group, no stdio,
//! no inherited descriptors) and talks to etcd itself; later calls send their
//! store operations over a Unix socket in `ipam.lockDir` and the helper runs
//! them on its warm connection, each with the same timeouts, retries and
//! failover as in-process calls.
//!
//! - The socket is `<lockDir>/etcd-<hash>.sock`, mode 0600; the helper serves
//!   only peers with its own uid. The hash covers everything the connection
//!   depends on — endpoints, prefix, timeouts, the network namespace, and the
//!   identity (inode, size, times) of the CA, certificate and key files — so a
//!   changed config or a rotated certificate gets a helper of its own.
//! - `<socket>.lock` holds an exclusive `flock` for the helper's lifetime and its
//!   PID: only one helper per socket, and a caller that finds the lock free
//!   knows none is running.
//! - The helper exits after `persistMs` without a connection, when its socket
//!   is removed or replaced, or when a certificate file changes or disappears.
//! - Nothing is decided in the helper: it executes the allocator's
//!   transactions, whose compares hold wherever they run. A helper that dies
//!   under a request makes the caller repeat it on a connection of its own,
//!   which is safe for the same reason (a transaction that did apply fails its
//!   compares the second time and the allocator reads what it already holds).

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Freshness, KeyValue, Kv, Read, Txn};
use crate::cni::config::EtcdConf;
use crate::error::{Error, Result};

/// The environment variable that makes `ohno` the helper (its value: the
/// [`Start`] document).
pub const ENV: &str = "OHNO_STORE_HELPER";
/// Bumped when the wire format changes (part of the socket's hash).
const PROTOCOL: &str = "ohno-store-helper/1";
/// Largest frame either side accepts.
const MAX_FRAME: usize = 64 << 20;
/// How often the helper checks its socket, its certificates and its idleness.
const TICK: Duration = Duration::from_millis(250);

/// Only the plugin binary starts helpers (not `ohnoctl`, not tests linking the
/// library): set by `ohno`'s `main`.
static MAY_SPAWN: AtomicBool = AtomicBool::new(false);

/// Let this process start a helper when it finds none.
pub fn allow_spawn() {
    MAY_SPAWN.store(true, Ordering::Relaxed);
}

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

/// An error crossing the socket, keeping what decides the CNI code.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    Config { field: String, msg: String },
    TryAgain(String),
    Store(String),
}

impl From<Error> for WireError {
    fn from(e: Error) -> WireError {
        match e {
            Error::InvalidConfig { field, msg } => WireError::Config { field, msg },
            Error::TryAgainLater(m) => WireError::TryAgain(m),
            Error::Store(m) => WireError::Store(m),
            other => WireError::Store(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e {
            WireError::Config { field, msg } => Error::InvalidConfig { field, msg },
            WireError::TryAgain(m) => Error::TryAgainLater(m),
            WireError::Store(m) => Error::Store(m),
        }
    }
}

fn write_frame(s: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf)
}

fn read_frame(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn invalid(e: serde_json::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
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
        "{PROTOCOL}\n{}\n{:?}\n{}\n{}\n{}\n{}\n",
        env!("CARGO_PKG_VERSION"),
        conf.endpoints,
        conf.prefix,
        conf.timeout_ms,
        conf.retries,
        conf.persist_ms
    );
    // The network namespace: 127.0.0.1 is not the same place everywhere.
    let ns = std::fs::metadata("/proc/self/ns/net").ok()?;
    id.push_str(&format!("netns {}:{}\n", ns.dev(), ns.ino()));
    for file in [&conf.ca_file, &conf.cert_file, &conf.key_file]
        .into_iter()
        .flatten()
    {
        let identity = crate::file_identity(file).ok()?;
        id.push_str(&format!("{} {identity}\n", file.display()));
    }
    let hash = crate::ipam::fnv1a64(&[id.as_bytes()]);
    Some(dir.join(format!("etcd-{hash:016x}.sock")))
}

/// The store for `conf`: through a running helper when there is one, else
/// in-process (starting a helper for the next calls, when allowed).
pub fn open(conf: &EtcdConf) -> Result<Arc<dyn Kv>> {
    let Some(socket) = socket_path(conf) else {
        return Ok(Arc::new(super::etcd::EtcdStore::open(conf)?));
    };
    match UnixStream::connect(&socket) {
        Ok(stream) => {
            log::debug!("etcd: through the helper at {}", socket.display());
            let fallback = conf.clone();
            Ok(Arc::new(Remote::new(
                stream,
                budget(conf),
                Box::new(move || {
                    Ok(Arc::new(super::etcd::EtcdStore::open(&fallback)?) as Arc<dyn Kv>)
                }),
            )?))
        }
        Err(e) => {
            log::debug!("etcd: no helper at {} ({e})", socket.display());
            let direct = super::etcd::EtcdStore::open(conf)?;
            if MAY_SPAWN.load(Ordering::Relaxed) {
                spawn(conf, &socket);
            }
            Ok(Arc::new(direct))
        }
    }
}

/// The longest a helper may take over one request: every attempt's timeout and
/// the back-off between attempts, plus a margin.
fn budget(conf: &EtcdConf) -> Duration {
    let backoff: u64 = (0..conf.retries).map(|a| 20u64 << a.min(4)).sum();
    Duration::from_millis(conf.timeout_ms * u64::from(conf.retries) + backoff + 1000)
}

/// Whether a helper holds `lock` (its `flock`).
fn lock_held(lock: &Path) -> bool {
    let Ok(f) = std::fs::File::open(lock) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !free
}

/// Start a helper for `conf` on `socket`, detached, unless one holds the lock.
fn spawn(conf: &EtcdConf, socket: &Path) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    if lock_held(&socket.with_extension("lock")) {
        return;
    }
    let start = Start {
        conf: conf.clone(),
        socket: socket.to_path_buf(),
    };
    let Ok(doc) = serde_json::to_string(&start) else {
        return;
    };
    // posix_spawn (no pre_exec): the caller pays a vfork, not a fork of its
    // address space. Its own process group: a signal to the runtime's group
    // does not reach it.
    let spawned = Command::new("/proc/self/exe")
        .arg0("ohno-etcd-helper")
        .env_clear()
        .env(ENV, doc)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(child) => log::debug!(
            "etcd: started a connection helper (pid {}) at {}",
            child.id(),
            socket.display()
        ),
        Err(e) => log::debug!("etcd: could not start a connection helper: {e}"),
    }
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
    fn new(stream: UnixStream, budget: Duration, fallback: Fallback) -> Result<Remote> {
        stream
            .set_read_timeout(Some(budget))
            .and_then(|()| stream.set_write_timeout(Some(budget)))
            .map_err(|e| Error::io("configure the helper socket", e))?;
        Ok(Remote {
            stream: Mutex::new(Some(stream)),
            fallback,
            direct: OnceLock::new(),
        })
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
        let sent = serde_json::to_vec(req)
            .map_err(invalid)
            .and_then(|body| write_frame(stream, &body))
            .and_then(|()| read_frame(stream))
            .and_then(|body| serde_json::from_slice::<Reply>(&body).map_err(invalid));
        match sent {
            Ok(reply) => Ok(Some(reply)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
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
                let what = format!("{reply:?}");
                pick(reply).ok_or_else(|| {
                    Error::Store(format!("the etcd helper answered {req:?} with {what}"))
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
            |r| match r {
                Reply::Reads(v) => Some(v),
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
                Reply::TxnOrRead(v) => Some(v),
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

/// Serve one client connection until it closes.
fn serve_connection(kv: &dyn Kv, mut stream: UnixStream) {
    while let Ok(body) = read_frame(&mut stream) {
        let reply = match serde_json::from_slice::<Request>(&body) {
            Ok(req) => execute(kv, req),
            Err(e) => Reply::Failed(WireError::Store(format!("bad request: {e}"))),
        };
        let Ok(out) = serde_json::to_vec(&reply) else {
            return;
        };
        if write_frame(&mut stream, &out).is_err() {
            return;
        }
    }
}

/// The uid of the peer of `stream`.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the given length on a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// `ohno`'s entry point when started as a helper: `Some(exit code)`, or `None`
/// when this process is not one.
pub fn main_if_helper() -> Option<i32> {
    let doc = std::env::var(ENV).ok()?;
    Some(match serve(&doc) {
        Ok(()) => 0,
        Err(_) => 1,
    })
}

fn serve(doc: &str) -> std::io::Result<()> {
    // Nothing of the caller's stays open here (a pod's netns, a pipe the
    // runtime waits on): stdio is /dev/null, everything else goes.
    // SAFETY: close_range on descriptors this new process does not use.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    let start: Start = serde_json::from_str(doc).map_err(invalid)?;
    let socket = start.socket;
    if let Some(dir) = socket.parent() {
        // The lock directory may not exist yet on a node's first call.
        std::fs::create_dir_all(dir)?;
    }
    let lock_path = socket.with_extension("lock");
    let mut lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own, held until this process exits.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Ok(()); // Another helper serves this socket.
        }
    }
    lock.set_len(0)?;
    lock.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let bound = std::fs::metadata(&socket)?.ino();
    let kv: Arc<dyn Kv> = Arc::new(
        super::etcd::EtcdStore::open_shared(&start.conf)
            .map_err(|e| std::io::Error::other(e.to_string()))?,
    );
    listener.set_nonblocking(true)?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let open = Arc::new(AtomicUsize::new(0));
    let persist = Duration::from_millis(start.conf.persist_ms);
    let mut idle_since = Instant::now();
    let mut last_check = Instant::now();
    loop {
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd for a descriptor we own.
        unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as libc::c_int) };
        match listener.accept() {
            Ok((stream, _)) => {
                if peer_uid(&stream) != Some(me) || stream.set_nonblocking(false).is_err() {
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                let (kv, done) = (kv.clone(), open.clone());
                let served = std::thread::Builder::new()
                    .name("ohno-helper".into())
                    .spawn(move || {
                        serve_connection(&*kv, stream);
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if served.is_err() {
                    open.fetch_sub(1, Ordering::SeqCst);
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if open.load(Ordering::SeqCst) > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= persist {
            break;
        }
        if last_check.elapsed() >= TICK {
            last_check = Instant::now();
            let ours = std::fs::metadata(&socket).is_ok_and(|m| m.ino() == bound);
            if !ours {
                return Ok(()); // Removed or replaced: not ours to delete.
            }
            if socket_path(&start.conf).as_deref() != Some(socket.as_path()) {
                break; // A certificate changed or went away.
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// A Remote talking to a served MemoryStore over a socket pair.
    fn remote_on(kv: Arc<dyn Kv>) -> (Remote, std::thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve_connection(&*kv, b));
        let fallback: Fallback = Box::new(|| Err(Error::Store("no fallback in this test".into())));
        (
            Remote::new(a, Duration::from_secs(5), fallback).unwrap(),
            server,
        )
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
    fn errors_keep_their_code_across_the_socket() {
        for e in [
            Error::config("ipam.store.caFile", "bad CA"),
            Error::TryAgainLater("no quorum".into()),
            Error::Store("odd answer".into()),
        ] {
            let code = e.code();
            let text = e.to_string();
            let back: Error = WireError::from(e).into();
            assert_eq!(back.code(), code);
            assert_eq!(back.to_string(), text);
        }
    }

    #[test]
    fn a_vanished_helper_falls_back_to_the_direct_store() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b); // The helper is gone before the first request.
        let direct: Arc<dyn Kv> = Arc::new(MemoryStore::new());
        let d = direct.clone();
        let remote =
            Remote::new(a, Duration::from_secs(5), Box::new(move || Ok(d.clone()))).unwrap();
        assert!(remote.txn(Txn::new().put("/k", b"v".to_vec())).unwrap());
        assert_eq!(direct.get("/k").unwrap().unwrap().value, b"v");
        assert_eq!(remote.get("/k").unwrap().unwrap().value, b"v");
    }

    #[test]
    fn a_silent_helper_is_try_again_later() {
        let (a, _b) = UnixStream::pair().unwrap(); // Never answers.
        let remote = Remote::new(
            a,
            Duration::from_millis(100),
            Box::new(|| Err(Error::Store("must not fall back".into()))),
        )
        .unwrap();
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
