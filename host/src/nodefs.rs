//! Node-local directories and files: the only paths on the node that Ohno,
//! running as root, writes and reads back (`ipam.lockDir` with its locks,
//! hints and sockets; `ipam.store.dataDir` with the SQLite database;
//! `policy.cacheDir` with precompiled code).
//!
//! Whoever can write one of these directories can make root truncate a file
//! through a symlink, hang every ADD on a FIFO, or plant what root later
//! trusts. So a directory is used only when it is a real directory (not a
//! symlink) owned by the effective uid and closed to group and others; the
//! ones Ohno creates are made 0700 whatever the umask. Files inside are
//! opened without following symlinks and without blocking, and used only when
//! they are regular files (a FIFO or a device at a lock path is refused at
//! once instead of waited on).

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Why the directory `meta` describes may not hold Ohno's files, if it may not.
fn untrusted_dir(meta: &std::fs::Metadata) -> Option<String> {
    let me = euid();
    if meta.file_type().is_symlink() {
        return Some("is a symbolic link; name the real directory".into());
    }
    if !meta.is_dir() {
        return Some("is not a directory".into());
    }
    if meta.uid() != me {
        return Some(format!(
            "is owned by uid {}, not by uid {me} that runs ohno",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "has mode {mode:04o}: open to group or others (it must be 0700; chmod 700 it)"
        ));
    }
    None
}

/// Make sure `dir` (the value of config field `field`) is a directory that only
/// this uid can reach: create it (and missing parents) 0700 when absent;
/// refuse one that is a symlink, not a directory, owned by another uid, or
/// open to group or others (code 7, naming the field and why).
pub fn private_dir(field: &str, dir: &Path) -> Result<()> {
    let refuse = |why: String| Error::config(field, format!("{}: {why}", dir.display()));
    let judge =
        |meta: &std::fs::Metadata| untrusted_dir(meta).map_or(Ok(()), |why| Err(refuse(why)));
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => judge(&meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
            {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(refuse(format!("cannot create it: {e}"))),
            }
            // The umask may have taken bits of 0700 away; ours are exact.
            // Set through a descriptor of the directory itself, not its path.
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(dir)
                .map_err(|e| refuse(format!("cannot open it: {e}")))?;
            let stat = || {
                opened
                    .metadata()
                    .map_err(|e| refuse(format!("cannot stat it: {e}")))
            };
            let meta = stat()?;
            if meta.uid() == euid() && meta.mode() & 0o7777 != 0o700 {
                opened
                    .set_permissions(std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| refuse(format!("cannot set its mode: {e}")))?;
            }
            // Judged on the descriptor we hold (O_NOFOLLOW: not a symlink): a
            // directory of someone else's that raced ours into place is refused.
            judge(&stat()?)
        }
        Err(e) => Err(refuse(format!("cannot stat it: {e}"))),
    }
}

/// The node-local directories `conf` names, checked (and created) as
/// [`private_dir`] does, before any verb touches them.
pub fn check_conf(conf: &crate::config::NetConf) -> Result<()> {
    private_dir("ipam.lockDir", &conf.ipam.lock_dir)?;
    if let crate::config::StoreConf::Local { data_dir, .. } = &conf.ipam.store {
        private_dir("ipam.store.dataDir", data_dir)?;
    }
    if let Some(policy) = &conf.policy {
        private_dir("policy.cacheDir", &policy.cache_dir)?;
    }
    Ok(())
}

/// How [`open_file`] opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only; the file must exist.
    Read,
    /// Read and write, created (mode 0600) when missing.
    ReadWriteCreate,
}

/// Open the node-local file `path` without following a symlink and without
/// blocking (a FIFO opens at once and is then refused), and check that what
/// was opened is a regular file owned by this uid. A file created here is
/// 0600. The descriptor is blocking again once checked, for locks and reads.
pub fn open_file(path: &Path, access: Access) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    if access == Access::ReadWriteCreate {
        opts.write(true).create(true).truncate(false).mode(0o600);
    }
    let file = opts.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is a symbolic link", path.display()),
            )
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.uid() != euid() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not {}",
                path.display(),
                meta.uid(),
                euid()
            ),
        ));
    }
    set_blocking(&file)?;
    Ok(file)
}

/// Clear O_NONBLOCK (set only so that opening a FIFO could not hang).
fn set_blocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Read at most `max` bytes of the node-local file `path` (opened as
/// [`open_file`] does); a longer file is an error, not a long read.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = open_file(path, Access::Read)?;
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is longer than {max} bytes", path.display()),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ohno-nodefs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_missing_directory_is_created_0700_whatever_the_umask() {
        let d = scratch("create").join("a/b");
        // SAFETY: umask only changes this process's creation mask.
        let old = unsafe { libc::umask(0o777) };
        let made = private_dir("ipam.lockDir", &d);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        made.unwrap();
        let mode = std::fs::metadata(&d).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        private_dir("ipam.lockDir", &d).unwrap();
        let _ = std::fs::remove_dir_all(d.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn open_symlinked_or_foreign_directories_are_refused_with_the_field() {
        let base = scratch("refuse");
        std::fs::create_dir_all(&base).unwrap();
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = private_dir("ipam.lockDir", &open).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("ipam.lockDir"), "{e}");
        assert!(format!("{e:?}").contains("mode 0770"), "{e:?}");

        let link = base.join("link");
        let real = base.join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = private_dir("ipam.store.dataDir", &link).unwrap_err();
        assert!(format!("{e:?}").contains("symbolic link"), "{e:?}");
        private_dir("ipam.store.dataDir", &real).unwrap();

        let file = base.join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = private_dir("ipam.lockDir", &file).unwrap_err();
        assert!(format!("{e:?}").contains("not a directory"), "{e:?}");

        if euid() == 0 {
            let foreign = base.join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
            let e = private_dir("ipam.lockDir", &foreign).unwrap_err();
            assert!(format!("{e:?}").contains("owned by uid 65534"), "{e:?}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn files_that_are_symlinks_fifos_or_too_long_are_refused() {
        let base = scratch("files");
        std::fs::create_dir_all(&base).unwrap();
        let target = base.join("target");
        std::fs::write(&target, b"keep me").unwrap();
        let link = base.join("x.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_file(&link, Access::ReadWriteCreate).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

        let fifo = base.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(open_file(&fifo, Access::Read).is_err());
        assert!(open_file(&fifo, Access::ReadWriteCreate).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));

        let new = base.join("new");
        open_file(&new, Access::ReadWriteCreate).unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o777, 0o600);

        std::fs::write(&new, vec![b'a'; 100]).unwrap();
        assert_eq!(read_capped(&new, 100).unwrap().len(), 100);
        assert!(read_capped(&new, 99).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
