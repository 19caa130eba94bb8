//! The one way the plugin starts a process: `ohnod on-demand …`, the
//! `ohnod` binary beside the running `ohno` (`/opt/cni/bin/ohnod`), detached —
//! its own process group, stdio on /dev/null (what it is started with comes
//! on stdin and is closed), an empty environment, no inherited descriptor
//! but the one it is given — so the runtime neither waits for it nor signals
//! it with its own group.
//!
//! Nothing is started when an agent answers (`ohnod run` serves everything),
//! when `ohnod` is not beside `ohno`, is not a regular file of our uid, or is
//! writable by group or others, or when this process is not the plugin
//! (`ohnoctl` and tests linking the library never start servers).

use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Only the plugin binary starts servers: set by `ohno`'s `main`.
static MAY_SPAWN: AtomicBool = AtomicBool::new(false);

/// Let this process start on-demand servers when it finds none.
pub fn allow_spawn() {
    MAY_SPAWN.store(true, Ordering::Relaxed);
}

/// The `ohnod` beside this executable, if it is one we may run.
pub fn ohnod() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join("ohnod");
    let m = std::fs::metadata(&path).ok()?;
    let trusted = m.is_file()
        && m.uid() == crate::nodefs::euid()
        && m.mode() & 0o022 == 0
        && m.mode() & 0o100 != 0;
    if !trusted {
        log::debug!("{} is not an ohnod we may start", path.display());
        return None;
    }
    Some(path)
}

/// Whether a server holds `lock` (its `flock`). A lock path that is not a
/// plain file of ours counts as held: no server is started over it.
fn lock_held(lock: &Path) -> bool {
    let f = match crate::nodefs::open_file(lock, crate::nodefs::Access::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            log::debug!("server lock {}: {e}", lock.display());
            return true;
        }
    };
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !free
}

/// Start `ohnod on-demand <kind>` for `socket`, with `doc` on its stdin,
/// unless one already holds the socket's lock or this process may not.
pub fn on_demand(kind: &str, doc: &str, socket: &Path) {
    if !MAY_SPAWN.load(Ordering::Relaxed) || lock_held(&socket.with_extension("lock")) {
        return;
    }
    let Some(ohnod) = ohnod() else {
        return;
    };
    use std::process::{Command, Stdio};
    // posix_spawn (no pre_exec): the caller pays a vfork, not a fork of its
    // address space.
    let spawned = Command::new(&ohnod)
        .arg("on-demand")
        .arg(kind)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        Ok(mut child) => {
            // Well under a pipe's buffer: this never blocks.
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(doc.as_bytes());
            }
            log::debug!(
                "started ohnod on-demand {kind} (pid {}) at {}",
                child.id(),
                socket.display()
            );
        }
        Err(e) => log::debug!("could not start ohnod on-demand {kind}: {e}"),
    }
}

/// Start `ohnod on-demand reap --link INDEX --netns-fd FD`, holding a
/// duplicate of the namespace descriptor. `Err` when it cannot be started
/// (the caller deletes the link itself).
pub fn reaper(ns: &crate::net::netns::NetNs, index: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    let ohnod = ohnod().ok_or_else(|| std::io::Error::other("no ohnod beside ohno"))?;
    // dup() clears close-on-exec: the child inherits exactly this descriptor.
    let fd = nix::unistd::dup(ns.fd()).map_err(std::io::Error::from)?;
    Command::new(&ohnod)
        .arg("on-demand")
        .arg("reap")
        .arg("--link")
        .arg(index.to_string())
        .arg("--netns-fd")
        .arg(fd.as_raw_fd().to_string())
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(())
}
