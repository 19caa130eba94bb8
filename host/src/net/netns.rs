//! Network namespace handles. A [`NetNs`] is an open file on nsfs
//! (`/proc/<pid>/ns/net` or a bind mount under `/var/run/netns/`); holding it
//! keeps the namespace alive. Work inside a namespace happens on a dedicated
//! thread ([`NetNs::run`]): the calling thread's namespace is never switched.
//! See `net/README.md` for why.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// `statfs.f_type` of nsfs, the filesystem namespace files live on.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `ioctl(fd, NS_GET_NSTYPE)`: `_IO(0xb7, 0x3)` (linux/nsfs.h, Linux 4.11+).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Open a netns by path: `/proc/<pid>/ns/net` or `/var/run/netns/<name>`.
    ///
    /// A missing path is an error for which `is_not_found()` is true. A path
    /// that exists but is not a network namespace (a plain file left behind by
    /// an unmounted `/var/run/netns/<name>`, a FIFO, a device, another
    /// namespace type) is an `InvalidInput` error naming the path, at once.
    ///
    /// The open is non-blocking: a plain `open` of a FIFO waits for a writer
    /// for ever, and an ADD or DEL given one would hang. `O_NOCTTY` keeps a
    /// terminal from becoming ours. Symlinks are followed: `/proc/<pid>/ns/net`
    /// is one (a magic link to the namespace), so no `O_NOFOLLOW`; what the
    /// path leads to is checked on the descriptor (nsfs, then the namespace
    /// type) before anything uses it.
    pub fn open(path: &Path) -> Result<NetNs> {
        use std::os::unix::fs::OpenOptionsExt;
        let context = || format!("open netns {}", path.display());
        // O_CLOEXEC is the std default.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| Error::netlink(context(), e))?;
        let fs = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| Error::netlink(context(), io::Error::from(e)))?;
        let magic = fs.filesystem_type().0 as i64;
        if magic != NSFS_MAGIC {
            return Err(Error::netlink(
                context(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not a network namespace (filesystem magic {magic:#x}, not nsfs)"),
                ),
            ));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if nstype >= 0 && nstype != libc::CLONE_NEWNET {
            return Err(Error::netlink(
                context(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not a network namespace (namespace type {nstype:#x})"),
                ),
            ));
        }
        // nstype < 0: kernel older than 4.11; nsfs magic is all we can check.
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace file descriptor (for `setns` or `IFLA_NET_NS_FD`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Run `f` on a new dedicated OS thread that has `setns()`'d into this
    /// netns; the thread ends after `f` returns, so no other code ever runs in
    /// a thread whose namespace was switched. The calling thread's netns is
    /// never touched. A panic in `f` is propagated to the caller.
    pub fn run<T: Send, F: FnOnce() -> Result<T> + Send>(&self, f: F) -> Result<T> {
        let fd = self.fd();
        let path = &self.path;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name("ohno-netns".into())
                .spawn_scoped(scope, move || {
                    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::netlink(format!("enter netns {}", path.display()), e.into())
                    })?;
                    f()
                })
                .map_err(|e| {
                    Error::netlink(format!("spawn thread for netns {}", path.display()), e)
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testns::TestNs;

    #[test]
    fn open_missing_path_is_not_found() {
        let err = NetNs::open(Path::new("/var/run/netns/ohno-does-not-exist")).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err
            .to_string()
            .contains("open netns /var/run/netns/ohno-does-not-exist"));
    }

    #[test]
    fn open_refuses_a_file_that_is_not_a_netns() {
        let err = NetNs::open(Path::new("/proc/self/status")).unwrap_err();
        assert!(err.to_string().contains("not a network namespace"), "{err}");
        // Another namespace type on nsfs is refused too.
        let err = NetNs::open(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert!(err.to_string().contains("not a network namespace"), "{err}");
    }

    #[test]
    fn open_refuses_a_fifo_at_once_instead_of_waiting_for_a_writer() {
        let dir = std::env::temp_dir().join(format!("ohno-netns-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("netns");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A blocking open would never return: run it where a hang fails the test.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(NetNs::open(&path).map(|_| ()).map_err(|e| e.to_string()));
        });
        let outcome = rx.recv_timeout(std::time::Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).ok();
        let err = outcome
            .expect("opening a FIFO as a netns hung")
            .unwrap_err();
        assert!(err.contains("not a network namespace"), "{err}");
        assert!(err.contains(&fifo.display().to_string()), "{err}");
    }

    #[test]
    fn run_enters_the_namespace_and_leaves_the_caller_alone() {
        let ns = TestNs::new("netns");
        let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let inside = ns
            .netns()
            .run(|| {
                std::fs::read_link("/proc/thread-self/ns/net").map_err(|e| Error::io("readlink", e))
            })
            .unwrap();
        let after = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(before, inside);
        assert_eq!(before, after);
        // Also by /proc/<pid>/ns/net path.
        let by_proc = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(by_proc.path(), Path::new("/proc/self/ns/net"));
    }
}
