//! The one server behind `ohnod run` and `ohnod on-demand`: a Unix socket,
//! its lock, a pool of worker threads, and how long it lives.
//!
//! Both modes are this loop; they differ only in [`Lifetime`]. `run` serves
//! until SIGTERM and then drains (stops accepting, removes its socket so new
//! plugin calls work in-process at once, and waits for the calls it is
//! serving); `on-demand` leaves after `persistMs` without a caller, when its
//! socket is removed or replaced, or when what it was started for no longer
//! holds (a certificate or component file changed).
//!
//! - The socket is created mode 0600 (umask 0177 from the start of the
//!   process) in a directory [`crate::nodefs::private_dir`] accepts; every
//!   connection's peer must have the server's uid (SO_PEERCRED).
//! - `<socket>.lock` (the socket path with extension `lock`) is held with an
//!   exclusive `flock` for the server's whole life and holds its PID: a
//!   second server for the same socket leaves at once.
//! - At most [`MAX_WORKERS`] connections are served at once; one more is
//!   closed unread (its caller works in-process). A connection idle for
//!   [`CONNECTION_IDLE`] is dropped; idle workers exit.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the server checks its socket, its lifetime and its idleness.
const TICK: Duration = Duration::from_millis(250);
/// How long a connected caller may pause before its next request, and take
/// to read a reply, before the connection is dropped: a caller is one CNI
/// call, which never pauses that long between two requests.
pub const CONNECTION_IDLE: Duration = Duration::from_secs(30);
const CONNECTION_WRITE: Duration = Duration::from_secs(10);
/// At most this many connections are served at once, so a flood of
/// connections costs the server no more than this many threads.
pub const MAX_WORKERS: usize = 64;
/// A worker thread with nothing to do for this long exits.
const WORKER_IDLE: Duration = Duration::from_secs(10);

/// How long a server lives.
pub enum Lifetime {
    /// `ohnod run`: until `stop` is set; then in-flight connections get up to
    /// `drain` to finish.
    UntilStopped {
        stop: Arc<AtomicBool>,
        drain: Duration,
    },
    /// `ohnod on-demand`: until idle for `persist`, or until `still_valid`
    /// says no.
    OnDemand {
        persist: Duration,
        still_valid: Box<dyn Fn() -> bool>,
    },
}

/// Why [`serve`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Another server holds the socket's lock.
    AlreadyServed,
    /// The socket was removed or replaced by someone else (not deleted by us).
    SocketGone,
    /// Idle, stale, or stopped and drained: the socket was removed.
    Done,
    /// Stopped, and connections were still open when the drain time ran out.
    DrainTimedOut(usize),
}

/// Be the server on `socket`: take its lock (or leave: another server has
/// it), `setup` what is served, bind, and hand each connection to `handler`
/// on a worker thread, for the `lifetime`.
pub fn serve<H>(
    socket: &Path,
    lifetime: Lifetime,
    setup: impl FnOnce() -> std::io::Result<H>,
) -> std::io::Result<Ended>
where
    H: Fn(UnixStream) + Send + Sync + 'static,
{
    if let Some(dir) = socket.parent() {
        crate::nodefs::private_dir("socket directory", dir).map_err(std::io::Error::other)?;
    }
    let mut lock = crate::nodefs::open_file(
        &socket.with_extension("lock"),
        crate::nodefs::Access::ReadWriteCreate,
    )?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own, held until this process exits.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Ok(Ended::AlreadyServed);
        }
    }
    lock.set_len(0)?;
    lock.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    let handler = Arc::new(setup()?);
    let _ = std::fs::remove_file(socket);
    // 0600 by the umask set at start: a chmod by path could follow a link.
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
    let ours = || std::fs::metadata(socket).is_ok_and(|m| m.ino() == bound);
    loop {
        // Checked on every turn, before anything is accepted: a steady stream
        // of connections must not keep a stopping server serving.
        match &lifetime {
            Lifetime::UntilStopped { stop, drain } => {
                if stop.load(Ordering::SeqCst) {
                    if ours() {
                        let _ = std::fs::remove_file(socket);
                    }
                    drop(listener);
                    return Ok(drained(&open, *drain));
                }
                if last_check.elapsed() >= TICK {
                    last_check = Instant::now();
                    if !ours() {
                        log::warn!(
                            "{} was removed or replaced; serving no longer",
                            socket.display()
                        );
                        return Ok(Ended::SocketGone);
                    }
                }
            }
            Lifetime::OnDemand {
                persist,
                still_valid,
            } => {
                if open.load(Ordering::SeqCst) > 0 {
                    idle_since = Instant::now();
                } else if idle_since.elapsed() >= *persist {
                    break;
                }
                if last_check.elapsed() >= TICK {
                    last_check = Instant::now();
                    if !ours() {
                        return Ok(Ended::SocketGone); // Not ours to delete.
                    }
                    if !still_valid() {
                        break;
                    }
                }
            }
        }
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&listener),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd for a descriptor we own.
        unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as libc::c_int) };
        match listener.accept() {
            Ok((stream, _)) => {
                if crate::agent::protocol::peer_uid(&stream) != Some(me)
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
                    .name("ohnod-worker".into())
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
    }
    let _ = std::fs::remove_file(socket);
    Ok(Ended::Done)
}

/// Wait up to `drain` for the open connections to finish.
fn drained(open: &AtomicUsize, drain: Duration) -> Ended {
    let until = Instant::now() + drain;
    loop {
        let n = open.load(Ordering::SeqCst);
        if n == 0 {
            return Ended::Done;
        }
        if Instant::now() >= until {
            return Ended::DrainTimedOut(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// The start of a server process: nothing of the starter's stays open (a
/// pod's netns, a pipe the runtime waits on) unless `keep` names it, and
/// what it creates (its socket) is for its own uid only, whatever umask it
/// was started with.
pub fn detach_from_starter(keep: Option<i32>) {
    // SAFETY: close_range on descriptors this new process does not use;
    // umask only sets this process's creation mask.
    unsafe {
        match keep {
            Some(fd) if fd >= 3 => {
                if fd > 3 {
                    libc::syscall(libc::SYS_close_range, 3u32, (fd - 1) as u32, 0u32);
                }
                libc::syscall(libc::SYS_close_range, (fd + 1) as u32, u32::MAX, 0u32);
            }
            _ => {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            }
        }
        libc::umask(0o177);
    }
}
