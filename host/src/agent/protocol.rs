//! Node-local helper processes: what the plugin keeps warm between its calls.
//!
//! Every plugin call is a new process. What a call would otherwise rebuild
//! every time — an etcd connection (a TLS handshake), a policy component
//! (engine, component, linker) — is kept by a helper that the first call
//! starts (`ohno` re-executed with an environment variable naming what to
//! serve, detached: own process group, stdio on /dev/null, no inherited
//! descriptors) and that later calls reach over a Unix socket, the way
//! `ssh -o ControlPersist` keeps a master connection. This module is what the
//! two helpers share: the socket and its lock, spawning, the serve loop,
//! framing, and errors that keep their CNI code across the socket. What each
//! serves is in `store::helper` (etcd) and `policy::helper` (policies).
//!
//! - `<dir>/<kind>-<hash>.sock`, mode 0600, served only to peers with the
//!   helper's uid; the hash covers everything the helper's state depends on,
//!   so a changed config gets a helper of its own.
//! - `<dir>/<kind>-<hash>.lock`: the helper's exclusive `flock` for its whole
//!   life, and its PID. A caller that finds it free knows no helper runs.
//! - A helper exits after `persistMs` without a connected caller, when its
//!   socket is removed or replaced, or when what it was started for no longer
//!   holds (a certificate or component file changed).
//! - Callers never depend on a helper: one that is missing, dies or answers
//!   garbage is replaced by doing the work in-process.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Largest frame either side accepts or sends.
pub const MAX_FRAME: usize = 64 << 20;
/// How much of a frame's body is allocated before its bytes arrive: a header
/// alone never makes the reader allocate more.
const READ_CHUNK: usize = 64 << 10;
/// How often a helper checks its socket, what it serves, and its idleness.
const TICK: Duration = Duration::from_millis(250);
/// How long a helper waits for a connected caller's next request, and for a
/// caller to take a reply, before it drops the connection: a caller is one
/// CNI call, which never pauses that long between two requests.
const CONNECTION_IDLE: Duration = Duration::from_secs(30);
const CONNECTION_WRITE: Duration = Duration::from_secs(10);
/// At most this many connections are served at once; one more is closed at
/// once (its caller does the work in-process), so a flood of connections
/// costs the helper no more than this many threads.
const MAX_WORKERS: usize = 64;
/// A worker thread with nothing to do for this long exits.
const WORKER_IDLE: Duration = Duration::from_secs(10);

/// The first argument that makes `ohno` a helper: `ohno --helper <kind>`, with
/// what to serve in the kind's environment variable. Only this argument does:
/// the variable alone (an `ohno` run with a stray environment) is ignored.
pub const ROLE_ARG: &str = "--helper";

/// The helper kind this process was started as (`ohno --helper <kind>`), if any.
pub fn role() -> Option<String> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != ROLE_ARG {
        return None;
    }
    args.next()?.into_string().ok()
}

/// Only the plugin binary starts helpers (not `ohnoctl`, not tests linking the
/// library): set by `ohno`'s `main`.
static MAY_SPAWN: AtomicBool = AtomicBool::new(false);

/// Let this process start helpers when it finds none.
pub fn allow_spawn() {
    MAY_SPAWN.store(true, Ordering::Relaxed);
}

/// `ohno`'s entry point when started as a helper: `Some(exit code)`, or `None`
/// when this process is not one.
pub fn main_if_helper() -> Option<i32> {
    #[cfg(feature = "etcd")]
    if let Some(code) = crate::agent::store::main_if_helper() {
        return Some(code);
    }
    #[cfg(feature = "wasm")]
    if let Some(code) = crate::agent::policy::main_if_helper() {
        return Some(code);
    }
    None
}

/// The socket for helper state identified by `id`, in `dir`.
pub fn socket_path(dir: &Path, kind: &str, id: &str) -> PathBuf {
    let hash = crate::ipam::fnv1a64(&[
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

/// An error crossing a helper's socket, keeping what decides the CNI code.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireError {
    Config { field: String, msg: String },
    TryAgain(String),
    PolicyDenied { policy: String, reason: String },
    PolicyFault { policy: String, reason: String },
    Store(String),
}

impl From<Error> for WireError {
    fn from(e: Error) -> WireError {
        match e {
            Error::InvalidConfig { field, msg } => WireError::Config { field, msg },
            Error::TryAgainLater(m) => WireError::TryAgain(m),
            Error::PolicyDenied { policy, reason } => WireError::PolicyDenied { policy, reason },
            Error::PolicyFault { policy, reason } => WireError::PolicyFault { policy, reason },
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
            WireError::PolicyDenied { policy, reason } => Error::PolicyDenied { policy, reason },
            WireError::PolicyFault { policy, reason } => Error::PolicyFault { policy, reason },
            WireError::Store(m) => Error::Store(m),
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

/// Connect to the helper at `socket`, with `budget` as the read and write
/// timeout of every exchange. A socket answered by a process of another uid is
/// not ours to use (the helper checks its callers the same way).
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

/// Whether a helper holds `lock` (its `flock`). A lock path that is not a
/// plain file of ours counts as held: no helper is started over it.
fn lock_held(lock: &Path) -> bool {
    let f = match crate::nodefs::open_file(lock, crate::nodefs::Access::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            log::debug!("helper lock {}: {e}", lock.display());
            return true;
        }
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !free
}

/// Start `ohno --helper <kind>` for `socket` (environment variable `env` =
/// `doc`), detached, unless one already holds the socket's lock or this
/// process may not start helpers.
pub fn spawn(kind: &str, env: &str, name: &str, doc: &str, socket: &Path) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    if !MAY_SPAWN.load(Ordering::Relaxed) || lock_held(&socket.with_extension("lock")) {
        return;
    }
    // posix_spawn (no pre_exec): the caller pays a vfork, not a fork of its
    // address space. Its own process group: a signal to the runtime's group
    // does not reach it.
    let spawned = Command::new("/proc/self/exe")
        .arg0(name)
        .arg(ROLE_ARG)
        .arg(kind)
        .env_clear()
        .env(env, doc)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(child) => log::debug!(
            "started {name} (pid {}) at {}",
            child.id(),
            socket.display()
        ),
        Err(e) => log::debug!("could not start {name}: {e}"),
    }
}

/// The start of a helper process: nothing of the caller's stays open (a pod's
/// netns, a pipe the runtime waits on); stdio is already /dev/null. What the
/// helper creates (its socket) is for its own uid only, whatever umask the
/// runtime had.
pub fn close_inherited_descriptors() {
    // SAFETY: close_range on descriptors this new process does not use;
    // umask only sets this process's creation mask.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::umask(0o177);
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

/// A waiting worker's next connection, or `None` when it should exit: idle
/// for [`WORKER_IDLE`] while no connection is on its way to a waiting worker.
///
/// `idle` counts waiting workers not yet promised a connection; the acceptor
/// takes one off before it queues a connection. A worker leaves only by
/// taking itself off the same count, so there are always as many waiting
/// workers as queued connections.
fn next_connection(
    waiting: &std::sync::Mutex<std::sync::mpsc::Receiver<UnixStream>>,
    idle: &AtomicUsize,
) -> Option<UnixStream> {
    use std::sync::mpsc::RecvTimeoutError;
    let queue = waiting.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match queue.recv_timeout(WORKER_IDLE) {
            Ok(stream) => return Some(stream),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {
                let left = idle
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if left {
                    return None;
                }
                // Every waiting worker is promised: a connection is coming.
            }
        }
    }
}

/// Be the helper on `socket`: take its lock (or leave: another helper has
/// it), `setup` what is served, bind, and hand each connection to the
/// handler on a thread of its own, until idle for `persist`, until the socket
/// is no longer ours, or until `still_valid` says no.
pub fn serve<H>(
    socket: &Path,
    persist: Duration,
    setup: impl FnOnce() -> std::io::Result<H>,
    still_valid: impl Fn() -> bool,
) -> std::io::Result<()>
where
    H: Fn(UnixStream) + Send + Sync + 'static,
{
    if let Some(dir) = socket.parent() {
        // Checked by the plugin before it started us; again, as it is ours now.
        crate::nodefs::private_dir("ipam.lockDir", dir).map_err(std::io::Error::other)?;
    }
    let mut lock = crate::nodefs::open_file(
        &socket.with_extension("lock"),
        crate::nodefs::Access::ReadWriteCreate,
    )?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own, held until this process exits.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Ok(()); // Another helper serves this socket.
        }
    }
    lock.set_len(0)?;
    lock.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    let handler = Arc::new(setup()?);
    let _ = std::fs::remove_file(socket);
    // 0700 by the umask set at start: a chmod by path could follow a link.
    let listener = UnixListener::bind(socket)?;
    let bound = std::fs::metadata(socket)?.ino();
    listener.set_nonblocking(true)?;
    let me = crate::nodefs::euid();
    let open = Arc::new(AtomicUsize::new(0));
    // Connections go to a worker thread that is already waiting when there is
    // one (a new thread per connection costs its start on every call); a new
    // worker is started only when all are busy, and stays for later ones.
    let (to_idle, waiting) = std::sync::mpsc::channel::<UnixStream>();
    let waiting = Arc::new(std::sync::Mutex::new(waiting));
    let idle = Arc::new(AtomicUsize::new(0));
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
                if peer_uid(&stream) != Some(me)
                    || open.load(Ordering::SeqCst) >= MAX_WORKERS
                    || stream.set_nonblocking(false).is_err()
                    || stream.set_read_timeout(Some(CONNECTION_IDLE)).is_err()
                    || stream.set_write_timeout(Some(CONNECTION_WRITE)).is_err()
                {
                    continue; // Closed: the caller works in-process.
                }
                open.fetch_add(1, Ordering::SeqCst);
                let took_idle = idle
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if took_idle {
                    if to_idle.send(stream).is_err() {
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                    continue;
                }
                let (handler, done, idle, waiting) =
                    (handler.clone(), open.clone(), idle.clone(), waiting.clone());
                let started = std::thread::Builder::new()
                    .name("ohno-helper".into())
                    .spawn(move || {
                        let mut next = Some(stream);
                        while let Some(stream) = next.take() {
                            handler(stream);
                            done.fetch_sub(1, Ordering::SeqCst);
                            idle.fetch_add(1, Ordering::SeqCst);
                            next = next_connection(&waiting, &idle);
                        }
                    });
                if started.is_err() {
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
            let ours = std::fs::metadata(socket).is_ok_and(|m| m.ino() == bound);
            if !ours {
                return Ok(()); // Removed or replaced: not ours to delete.
            }
            if !still_valid() {
                break;
            }
        }
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
