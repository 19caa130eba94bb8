//! The one wire protocol between the plugin and `ohnod` (either mode):
//! framing, its bounds, and every message.
//!
//! - A frame is a little-endian u32 length and that many bytes of JSON; no
//!   frame over [`MAX_FRAME`] is sent or accepted, and a body is read as it
//!   arrives (a header alone allocates nothing).
//! - Every connection opens with a [`Hello`] naming [`PROTOCOL`] and one
//!   [`Service`]; the server answers with a [`Greeting`] and the connection is
//!   that service's until it closes. A server that does not speak the
//!   caller's version refuses it, and the caller works in-process.
//! - Both sides check the peer's uid (SO_PEERCRED); sockets are 0600 in a
//!   directory only the uid may write.
//! - Errors cross as [`WireError`], keeping their CNI code and text.
//!
//! Sockets, in a lock directory (`ipam.lockDir`, default /run/ohno):
//! `ohnod.sock` (the agent), `etcd-<hash>.sock` and `policy-<hash>.sock`
//! (on-demand servers; the hash covers everything the server's state depends
//! on), each with its `.lock` (the server's `flock` and PID).

use std::io::Read as _;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{EtcdConf, NetConf, PoolConf, StoreConf};
use crate::error::Error;
use crate::policy::{Allocation, Family, Naming, Pod};
use crate::store::{Freshness, KeyValue, Read, Txn};

/// Largest frame either side accepts or sends.
pub const MAX_FRAME: usize = 64 << 20;
/// How much of a frame's body is allocated before its bytes arrive: a header
/// alone never makes the reader allocate more.
const READ_CHUNK: usize = 64 << 10;
/// The on-demand socket for server state identified by `id`, in `dir`.
pub fn socket_path(dir: &Path, kind: &str, id: &str) -> PathBuf {
    let hash = crate::ip::fnv1a64(&[
        env!("CARGO_PKG_VERSION").as_bytes(),
        kind.as_bytes(),
        id.as_bytes(),
    ]);
    dir.join(format!("{kind}-{hash:016x}.sock"))
}

/// This process's network namespace (127.0.0.1 is not the same place in two).
pub fn netns_identity() -> Option<String> {
    let ns = std::fs::metadata("/proc/self/ns/net").ok()?;
    Some(format!("netns {}:{}", ns.dev(), ns.ino()))
}

/// An error crossing the socket, keeping its CNI code and text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireError {
    Config {
        field: String,
        msg: String,
    },
    TryAgain(String),
    PolicyDenied {
        policy: String,
        reason: String,
    },
    PolicyFault {
        policy: String,
        reason: String,
    },
    Store(String),
    Agent(String),
    /// The server will not do this work (another configuration, protocol or
    /// namespace): the caller does it in-process.
    Refused(String),
    /// Any other error, by its code and text.
    Other {
        code: u32,
        msg: String,
    },
}

impl From<Error> for WireError {
    fn from(e: Error) -> WireError {
        match e {
            Error::InvalidConfig { field, msg } => WireError::Config { field, msg },
            Error::TryAgainLater(m) => WireError::TryAgain(m),
            Error::PolicyDenied { policy, reason } => WireError::PolicyDenied { policy, reason },
            Error::PolicyFault { policy, reason } => WireError::PolicyFault { policy, reason },
            Error::Store(m) => WireError::Store(m),
            Error::Agent(m) => WireError::Agent(m),
            other => WireError::Other {
                code: other.code(),
                msg: other.to_string(),
            },
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e {
            WireError::Config { field, msg } => Error::InvalidConfig { field, msg },
            WireError::TryAgain(m) => Error::TryAgainLater(m),
            WireError::PolicyDenied { policy, reason } => Error::PolicyDenied { policy, reason },
            WireError::PolicyFault { policy, reason } => Error::PolicyFault { policy, reason },
            WireError::Store(m) => Error::Store(m),
            WireError::Agent(m) => Error::Agent(m),
            WireError::Refused(m) => Error::Agent(format!("refused: {m}")),
            WireError::Other { code, msg } => Error::Relayed { code, msg },
        }
    }
}

pub fn invalid(e: serde_json::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Send one message: its length (u32, little-endian) and its JSON. A message
/// larger than [`MAX_FRAME`] is refused here, as the peer would refuse it.
pub fn send<T: Serialize>(s: &mut impl std::io::Write, msg: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(invalid)?;
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a message of {} bytes is over the frame limit", body.len()),
        ));
    }
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf)
}

/// Receive one message sent by [`send`]. The body is read as it arrives, up to
/// the length its header gives (at most [`MAX_FRAME`]): memory follows the
/// bytes received, not the bytes announced.
pub fn receive<T: for<'de> Deserialize<'de>>(s: &mut impl std::io::Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = Vec::with_capacity(len.min(READ_CHUNK));
    s.take(len as u64).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame of {len} bytes ended after {}", body.len()),
        ));
    }
    serde_json::from_slice(&body).map_err(invalid)
}

/// The `Debug` text of `v`, cut to a length fit for an error message.
pub fn bounded_debug(v: &impl std::fmt::Debug) -> String {
    const MAX: usize = 200;
    let text = format!("{v:?}");
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Whether the I/O error is a timeout (the peer did not answer in time).
pub fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Connect to the server at `socket`, with `budget` as the read and write
/// timeout of every exchange. A socket answered by a process of another uid is
/// not ours to use (the server checks its callers the same way).
pub fn connect(socket: &Path, budget: Duration) -> std::io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    let me = crate::nodefs::euid();
    match peer_uid(&stream) {
        Some(uid) if uid == me => {}
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("answered by uid {other:?}, not {me}"),
            ))
        }
    }
    stream.set_read_timeout(Some(budget))?;
    stream.set_write_timeout(Some(budget))?;
    Ok(stream)
}

/// Run `f` on a message of one byte with room for one descriptor: what
/// [`send_fd`] sends and [`receive_fd`] reads.
fn with_fd_message<T>(f: impl FnOnce(&mut libc::msghdr) -> T) -> T {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; it then points at the live
    // buffers above, of the given lengths, for as long as `f` runs.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    f(&mut msg)
}

/// Send one byte carrying `fd` (SCM_RIGHTS).
pub fn send_fd(stream: &UnixStream, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    with_fd_message(|msg| {
        // SAFETY: the control message is written inside the message's
        // control buffer, which has room for it, by the CMSG macros.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), raw);
            if libc::sendmsg(stream.as_raw_fd(), msg, libc::MSG_NOSIGNAL) != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// Receive the descriptor [`send_fd`] sent (close-on-exec).
pub fn receive_fd(stream: &UnixStream) -> std::io::Result<OwnedFd> {
    with_fd_message(|msg| {
        // SAFETY: recvmsg into the message's buffers; a received descriptor
        // is owned by us once read.
        unsafe {
            let n = libc::recvmsg(stream.as_raw_fd(), msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            if n != 1
                || cmsg.is_null()
                || (*cmsg).cmsg_level != libc::SOL_SOCKET
                || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "no descriptor came with the message",
                ));
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
            Ok(OwnedFd::from_raw_fd(fd))
        }
    })
}

/// The uid of the peer of `stream`.
pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
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

// ------------------------------------------------------------ the messages

/// The protocol's version: the first field of every connection's first
/// message. A server answers a version it does not speak with
/// [`Greeting::Refused`] (the caller then works in-process); bumped when any
/// message below changes shape.
pub const PROTOCOL: u32 = 1;

pub use crate::config::agent::AGENT_SOCKET;

/// The first message of every connection: what the caller wants served.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub service: Service,
}

/// The services one server offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Service {
    /// Store operations ([`StoreRequest`]) on a connection to this etcd.
    Store { conf: EtcdConf, identity: String },
    /// One ADD's policy ([`PolicyRequest`]) in a fresh store; lines at
    /// `level` and above come back with each answer.
    Policy {
        identity: PolicyIdentity,
        level: String,
    },
    /// Delete the retired link `index` in the network namespace whose
    /// descriptor follows the greeting (SCM_RIGHTS, one byte).
    Reap { index: u32 },
    /// A finished CNI call, for the metrics; nothing is answered.
    Report(CallReport),
    /// The agent's state ([`AgentStatus`]).
    Status,
}

impl Service {
    pub fn kind(&self) -> &'static str {
        match self {
            Service::Store { .. } => "store",
            Service::Policy { .. } => "policy",
            Service::Reap { .. } => "reaper",
            Service::Report(_) => "report",
            Service::Status => "status",
        }
    }
}

/// The server's answer to a [`Hello`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Greeting {
    Welcome { protocol: u32, agent: String },
    Refused(WireError),
}

/// Everything a policy service's state depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyIdentity {
    pub policy: crate::config::policy::PolicyConf,
    pub pools: Vec<PoolConf>,
    pub store: StoreConf,
    pub node: String,
    pub lock_dir: PathBuf,
}

impl PolicyIdentity {
    pub fn of(conf: &NetConf, policy: &crate::config::policy::PolicyConf) -> PolicyIdentity {
        PolicyIdentity {
            policy: policy.clone(),
            pools: conf.ipam.pools.clone(),
            store: conf.ipam.store.clone(),
            node: conf.node.clone(),
            lock_dir: conf.ipam.lock_dir.clone(),
        }
    }

    /// The key of the loaded state this identity needs: the identity, the
    /// component file's and the namespace's; `None` when the component file
    /// cannot be seen (the in-process load reports why).
    pub fn key(&self) -> Option<String> {
        Some(format!(
            "policy/{PROTOCOL}\n{:?}\n{}\n{}",
            self,
            crate::file_identity(&self.policy.path).ok()?,
            netns_identity()?
        ))
    }
}

/// The key of an etcd connection's state: endpoints, prefix, timeouts, the
/// network namespace and the identity of the CA, certificate and key files;
/// `None` when a file cannot be seen (the in-process client reports it).
pub fn store_key(conf: &EtcdConf) -> Option<String> {
    let mut id = format!(
        "store/{PROTOCOL}\n{:?}\n{}\n{}\n{}\n{}\n{}\n",
        conf.endpoints,
        conf.prefix,
        conf.timeout_ms,
        conf.retries,
        conf.persist_ms,
        netns_identity()?
    );
    for file in [&conf.ca_file, &conf.cert_file, &conf.key_file]
        .into_iter()
        .flatten()
    {
        let identity = crate::file_identity(file).ok()?;
        id.push_str(&format!("{} {identity}\n", file.display()));
    }
    Some(id)
}

/// One store operation, as [`crate::store::Kv`] has them.
#[derive(Debug, Serialize, Deserialize)]
pub enum StoreRequest {
    Get(String),
    Range(String, bool),
    ReadBatch(Vec<Read>, Freshness),
    Txn(Txn),
    TxnOrRead(Txn, Vec<Read>),
    Ping,
}

impl StoreRequest {
    /// The operation's name in metrics.
    pub fn op(&self) -> &'static str {
        match self {
            StoreRequest::Get(_) => "get",
            StoreRequest::Range(..) => "range",
            StoreRequest::ReadBatch(..) => "read_batch",
            StoreRequest::Txn(_) => "txn",
            StoreRequest::TxnOrRead(..) => "txn_or_read",
            StoreRequest::Ping => "ping",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum StoreReply {
    Get(Option<KeyValue>),
    Range(Vec<KeyValue>),
    Reads(Vec<Vec<KeyValue>>),
    Txn(bool),
    TxnOrRead(Option<Vec<Vec<KeyValue>>>),
    Pong,
    Failed(WireError),
}

/// One call on an ADD's policy.
#[derive(Debug, Serialize, Deserialize)]
pub enum PolicyRequest {
    NameInterface(Pod),
    /// The pools by name (the server has their definitions).
    Allocate(Pod, Family, Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PolicyReply {
    /// The ADD's store is open (the first answer on a connection).
    Ready,
    Naming(Naming),
    Allocation(Allocation),
    Failed(WireError),
}

/// Log lines: (level, message).
pub type Lines = Vec<(String, String)>;

/// A policy reply and the log lines written while it was made.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyAnswer {
    pub logs: Lines,
    pub reply: PolicyReply,
}

/// A finished CNI call, reported to a running agent after the result is
/// written (fire-and-forget).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallReport {
    pub verb: String,
    /// 0 on success, else the CNI error code.
    pub code: u32,
    pub seconds: f64,
    /// The services this call used in-process after the agent failed it.
    pub fallbacks: Vec<String>,
}

/// What `ohnoctl status` shows of a running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// "run" (`ohnod run`) or "on-demand".
    pub mode: String,
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub socket: PathBuf,
    /// Whether the agent's own store answers and its policy is loaded.
    pub ready: bool,
    pub network: Option<String>,
    pub policies: Vec<String>,
    pub etcd_endpoints: Vec<String>,
    pub etcd_endpoint_in_use: Option<String>,
    pub metrics_address: Option<String>,
    /// The latest errors (newest last), with their Unix times.
    pub recent_errors: Vec<(u64, String)>,
    /// Cross-node routing (`ohnod run` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<super::routes::RoutesStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn every_socket_in_the_longest_accepted_lock_dir_fits_sun_path() {
        use crate::config::MAX_LOCK_DIR_LEN;
        let dir = PathBuf::from(format!("/{}", "d".repeat(MAX_LOCK_DIR_LEN - 1)));
        // sun_path holds 108 bytes with its NUL.
        let room =
            std::mem::size_of::<libc::sockaddr_un>() - std::mem::size_of::<libc::sa_family_t>() - 1;
        for kind in ["etcd", "policy"] {
            let path = socket_path(&dir, kind, "id");
            assert!(path.as_os_str().len() <= room, "{path:?}");
        }
        let longest = socket_path(&dir, "policy", "id");
        assert_eq!(
            longest.as_os_str().len(),
            room,
            "MAX_LOCK_DIR_LEN is not tight"
        );
    }

    #[test]
    fn errors_keep_their_code_and_text_across_the_socket() {
        for e in [
            Error::config("ipam.store.caFile", "bad CA"),
            Error::TryAgainLater("no quorum".into()),
            Error::Store("odd answer".into()),
            Error::Agent("odd greeting".into()),
            Error::io("read the CA", std::io::Error::other("gone")),
            Error::PoolExhausted {
                pool: "p".into(),
                msg: "full".into(),
            },
            Error::PolicyDenied {
                policy: "/p.wasm".into(),
                reason: "not here".into(),
            },
            Error::PolicyFault {
                policy: "/p.wasm".into(),
                reason: "trapped".into(),
            },
        ] {
            let code = e.code();
            let text = e.to_string();
            let back: Error = WireError::from(e).into();
            assert_eq!(back.code(), code);
            assert_eq!(back.to_string(), text);
        }
    }

    #[test]
    fn a_descriptor_crosses_the_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/proc/self/ns/net").unwrap();
        send_fd(&a, std::os::fd::AsFd::as_fd(&file)).unwrap();
        let got = receive_fd(&b).unwrap();
        let sent = std::fs::metadata("/proc/self/ns/net").unwrap();
        let back = std::fs::metadata(format!("/proc/self/fd/{}", got.as_raw_fd())).unwrap();
        assert_eq!((back.dev(), back.ino()), (sent.dev(), sent.ino()));
        // A message without one is refused, not mistaken for a descriptor.
        (&a).write_all(b"x").unwrap();
        assert!(receive_fd(&b).is_err());
    }

    #[test]
    fn messages_round_trip_and_oversized_frames_are_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send(&mut a, &("hello", 42u32)).unwrap();
        let got: (String, u32) = receive(&mut b).unwrap();
        assert_eq!(got, ("hello".to_string(), 42));
        a.write_all(&(MAX_FRAME as u32 + 1).to_le_bytes()).unwrap();
        let e = receive::<String>(&mut b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}
