//! The precompile cache. Its entries are native code that Ohno executes as
//! root, so the cache takes nothing from the file system on trust: an entry
//! another user could have written is never loaded.
//!
//! **Layout.** `<cacheDir>/<sha256(component ‖ engine hash)>.cwasm`: wasmtime's
//! serialized component followed by a 24-byte trailer (magic, the payload's
//! length, its checksum); and `index-<fnv(path)>`, which remembers the key of a
//! component file against its identity (see [`CacheDir::key_of_file`]).
//!
//! **Trust.** The directory is opened once (`O_DIRECTORY|O_NOFOLLOW`) and every
//! entry and index relative to that descriptor (`openat`, `O_NOFOLLOW|O_NONBLOCK`),
//! so no symbolic link is followed and no name is resolved twice. Each
//! descriptor is `fstat`ed before a byte of it is used ([`check`]): the
//! directory must be a directory owned by the effective uid that group and
//! others cannot write; an entry or an index must be a regular file owned by
//! the effective uid that group and others cannot write, with one link. Only a
//! process of that uid (or root) can make such a file in such a directory. An
//! entry's payload is copied once from that descriptor into a memfd, the memfd
//! sealed (nothing can write, grow or shrink it any more), and its length and
//! checksum verified on the sealed copy, which is what wasmtime maps
//! ([`Verified`], [`deserialize`]): whatever happens to the file after the copy
//! changes nothing. The checksum catches truncation and corruption; the checks
//! above are what stop an attacker.
//!
//! **Refusals** ([`Refusal`]) say which check failed; the caller logs it and
//! recompiles. The compiled result replaces a refused entry by `renameat`, which
//! replaces a symbolic link or a hard link rather than writing through it. A
//! directory that fails the checks is not used at all (compile in memory).
//!
//! **Creating.** A missing cache directory is created mode 0700, and so is each
//! missing parent, but only inside a directory owned by the effective uid or by
//! root that group and others cannot write (or that is sticky, as `/tmp` is):
//! root running with another user's `$HOME` does not plant root-owned
//! directories in it. Parents that exist are resolved as any path is (symbolic
//! links followed): what decides trust is the descriptor of the cache directory
//! itself, checked as above.
//!
//! **Writes** go to a temporary file created in the directory by descriptor
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600), written, fsynced, then renamed into
//! place: a reader sees the old entry or the new one, never a part.

use std::ffi::OsString;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::MFdFlags;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

const MAGIC: &[u8; 8] = b"OHNOCW02";
const INDEX_MAGIC: &str = "ohno-policy-cache-index-1";
const TRAILER: usize = 24;
/// The largest entry read; a larger file is refused (a policy's entry is
/// hundreds of KiB).
pub const MAX_ENTRY: u64 = 256 << 20;
/// The largest index read (magic, identity, engine tag, key: under 200 bytes).
const MAX_INDEX: u64 = 4096;

/// Why the cache refused its directory, an entry or an index: the check that
/// failed, worded to follow the file's name in a log line.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("is a symbolic link")]
    Symlink,
    #[error("is not a directory")]
    NotDirectory,
    #[error("is not a regular file")]
    NotRegular,
    #[error("is owned by uid {owner}, not by the effective uid {euid}")]
    Owner { owner: u32, euid: u32 },
    #[error("is writable by group or others (mode {mode:04o})")]
    Writable { mode: u32 },
    #[error("has {links} hard links, not 1")]
    Links { links: u64 },
    #[error("is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("is damaged (its length or checksum does not match)")]
    Damaged,
    #[error("cannot be created in {}: it {reason}", parent.display())]
    Uncreatable {
        parent: PathBuf,
        reason: Box<Refusal>,
    },
    #[error("cannot be created: {0}")]
    Create(std::io::Error),
    #[error("cannot be read: {0}")]
    Io(std::io::Error),
}

/// What a file is, as the checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    Regular,
    Other,
}

/// The fields of one `fstat` the checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub uid: u32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub nlink: u64,
}

impl Stat {
    fn of(m: &std::fs::Metadata) -> Stat {
        let t = m.file_type();
        Stat {
            kind: if t.is_dir() {
                Kind::Directory
            } else if t.is_file() {
                Kind::Regular
            } else {
                Kind::Other
            },
            uid: m.uid(),
            mode: m.mode() & 0o7777,
            nlink: m.nlink(),
        }
    }
}

/// The trust check of a descriptor about to be used as the cache directory
/// (`want` [`Kind::Directory`]) or read as an entry or index
/// ([`Kind::Regular`]): of that kind, owned by `euid`, not writable by group or
/// others, and a file with exactly one link (a second name would be one the
/// cache does not control).
pub fn check(st: &Stat, want: Kind, euid: u32) -> Result<(), Refusal> {
    if st.kind != want {
        return Err(match want {
            Kind::Directory => Refusal::NotDirectory,
            _ => Refusal::NotRegular,
        });
    }
    if st.uid != euid {
        return Err(Refusal::Owner {
            owner: st.uid,
            euid,
        });
    }
    if st.mode & 0o022 != 0 {
        return Err(Refusal::Writable { mode: st.mode });
    }
    if want == Kind::Regular && st.nlink != 1 {
        return Err(Refusal::Links { links: st.nlink });
    }
    Ok(())
}

/// Whether the cache may create a missing directory inside one with `st`: a
/// directory of the effective uid or root that group and others cannot write,
/// or a sticky one (where nobody else can rename or remove what we create).
pub fn may_create_in(st: &Stat, euid: u32) -> Result<(), Refusal> {
    if st.kind != Kind::Directory {
        return Err(Refusal::NotDirectory);
    }
    if st.uid != euid && st.uid != 0 {
        return Err(Refusal::Owner {
            owner: st.uid,
            euid,
        });
    }
    if st.mode & 0o022 != 0 && st.mode & 0o1000 == 0 {
        return Err(Refusal::Writable { mode: st.mode });
    }
    Ok(())
}

/// The private cache of a user's `ohnoctl policy check|test`:
/// `$XDG_CACHE_HOME/ohno/policy`, else `$HOME/.cache/ohno/policy`. Relative or
/// empty values are ignored (the XDG rule); None when neither is usable.
pub fn user_cache_dir(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg_cache_home)
        .or_else(|| absolute(home).map(|h| h.join(".cache")))
        .map(|base| base.join("ohno").join("policy"))
}

/// Feeds `Hash` output into SHA-256 (the engine's compatibility hash is only
/// available as `impl Hash`).
struct ShaHasher(Sha256);
impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// FNV-1a over 8-byte words, four lanes: catches truncation and corruption of
/// an entry (not tampering: that is what the trust checks are for) in well
/// under a millisecond for the megabytes of a precompiled component.
pub fn checksum(payload: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut lanes: [u64; 4] = [
        0xcbf2_9ce4_8422_2325,
        0x8422_2325_cbf2_9ce4,
        0x9ce4_8422_2325_cbf2,
        0x2325_cbf2_9ce4_8422,
    ];
    let mut chunks = payload.chunks_exact(32);
    for c in &mut chunks {
        for (lane, w) in lanes.iter_mut().zip(c.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            *lane = (*lane ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
        }
    }
    let mut h = lanes
        .iter()
        .fold(0u64, |h, l| (h ^ l).wrapping_mul(PRIME).rotate_left(23));
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    h ^ payload.len() as u64
}

/// [`checksum`] over a payload that arrives in pieces.
struct Checksum {
    lanes: [u64; 4],
    /// Bytes short of a 32-byte block.
    pending: [u8; 32],
    npending: usize,
    len: u64,
}

impl Checksum {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Checksum {
        Checksum {
            lanes: [
                0xcbf2_9ce4_8422_2325,
                0x8422_2325_cbf2_9ce4,
                0x9ce4_8422_2325_cbf2,
                0x2325_cbf2_9ce4_8422,
            ],
            pending: [0; 32],
            npending: 0,
            len: 0,
        }
    }

    fn block(&mut self, block: &[u8]) {
        for (lane, w) in self.lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            *lane = (*lane ^ u64::from_le_bytes(b)).wrapping_mul(Self::PRIME);
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let take = (32 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 32 {
                return;
            }
            let block = self.pending;
            self.block(&block);
            self.npending = 0;
        }
        let mut blocks = data.chunks_exact(32);
        for b in &mut blocks {
            self.block(b);
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    fn finish(&self) -> u64 {
        let mut h = self.lanes.iter().fold(0u64, |h, l| {
            (h ^ l).wrapping_mul(Self::PRIME).rotate_left(23)
        });
        for &b in &self.pending[..self.npending] {
            h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        h ^ self.len
    }
}

/// The cache key of `component` for `engine`.
pub fn key(engine: &Engine, component: &[u8]) -> String {
    let mut h = ShaHasher(Sha256::new());
    h.0.update(component);
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A key is 64 hex digits: it can only name a file in the directory.
fn is_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An entry's payload, copied once from a descriptor that passed [`check`]
/// into a memfd that was then sealed — no write, shrink or grow is possible
/// any more, through any descriptor — and only then verified (length and
/// checksum). The only input [`deserialize`] takes: what wasmtime loads is the
/// verified bytes, whatever happens to the entry's file afterwards.
///
/// A memfd rather than a buffer because wasmtime maps a file without copying
/// (and maps the components' memory images from it): loading from a buffer
/// costs a copy into fresh pages and a memory image per memory.
#[derive(Debug)]
pub struct Verified {
    memfd: File,
    len: u64,
}

impl Verified {
    /// The payload's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The payload, read back from the sealed memfd.
    pub fn payload(&self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let len = usize::try_from(self.len)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        let mut bytes = vec![0u8; len];
        self.memfd.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}

/// Deserialize a verified entry. wasmtime maps the sealed memfd through
/// `/proc/self/fd` (a name for our descriptor, not for a file in any
/// directory); without `/proc` the payload is read back and copied in.
pub fn deserialize(engine: &Engine, entry: &Verified) -> wasmtime::Result<Component> {
    use std::os::fd::AsRawFd;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", entry.memfd.as_raw_fd()));
    // SAFETY: the bytes were copied from a regular file with one link, owned
    // by the effective uid and not writable by group or others, in a directory
    // that is the same: only this uid could have written it, which it does
    // only through `CacheDir::write` with the output of `Component::serialize`
    // for an engine with the same compatibility hash (it is in the key). Their
    // length and checksum were verified on the sealed memfd, whose contents
    // can no longer change, and which is what either call below loads.
    unsafe {
        if by_fd.exists() {
            Component::deserialize_file(engine, &by_fd)
        } else {
            Component::deserialize(engine, entry.payload()?)
        }
    }
}

/// The checksum of the first `len` bytes of `file`, read in blocks.
fn checksum_of(file: &File, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut sum = Checksum::new();
    let mut block = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from((len - at).min(block.len() as u64)).unwrap_or(block.len());
        file.read_exact_at(&mut block[..want], at)?;
        sum.update(&block[..want]);
        at += want as u64;
    }
    Ok(sum.finish())
}

/// Distinguishes the temporary files of one process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// An open cache directory that passed [`check`]: every file in it is opened
/// through this descriptor.
#[derive(Debug)]
pub struct CacheDir {
    dir: File,
    path: PathBuf,
    euid: u32,
}

impl CacheDir {
    /// Open the cache directory at `path` (absolute), creating it (and missing
    /// parents) mode 0700 if missing, and check it.
    pub fn open(path: &Path) -> Result<CacheDir, Refusal> {
        let euid = crate::nodefs::euid();
        let dir = match open_dir(path) {
            Err(Refusal::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                create_missing(path, euid)?;
                open_dir(path)?
            }
            other => other?,
        };
        let st = dir.metadata().map_err(Refusal::Io)?;
        check(&Stat::of(&st), Kind::Directory, euid)?;
        Ok(CacheDir {
            dir,
            path: path.to_path_buf(),
            euid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where entry `key` lives (for messages; files are opened by descriptor).
    pub fn entry_path(&self, key: &str) -> PathBuf {
        self.path.join(entry_name(key))
    }

    /// The path of the index that remembers `component`'s key.
    pub fn index_path(&self, component: &Path) -> PathBuf {
        self.path.join(index_name(component))
    }

    /// Entry `key`: `Ok(None)` when there is none, a [`Refusal`] when the file
    /// fails the checks or its checksum. The payload is copied from the checked
    /// descriptor into a memfd, which is sealed before its contents are
    /// verified (see [`Verified`]).
    pub fn read(&self, key: &str) -> Result<Option<Verified>, Refusal> {
        if !is_key(key) {
            return Ok(None);
        }
        let Some((file, len)) = self.open_checked(&entry_name(key), MAX_ENTRY)? else {
            return Ok(None);
        };
        let payload = len.checked_sub(TRAILER as u64).ok_or(Refusal::Damaged)?;
        let memfd = File::from(
            nix::sys::memfd::memfd_create(
                "ohno-policy-entry",
                MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
            )
            .map_err(|e| Refusal::Io(e.into()))?,
        );
        // In the kernel (copy_file_range or sendfile): no buffer of ours.
        let copied = std::io::copy(&mut (&file).take(payload), &mut &memfd).map_err(Refusal::Io)?;
        let mut trailer = [0u8; TRAILER];
        match (&file).read_exact(&mut trailer) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Refusal::Damaged)
            }
            Err(e) => return Err(Refusal::Io(e)),
        }
        // Shorter or longer than it was at the fstat: changed under us.
        let more = (&file).read(&mut [0u8; 1]).map_err(Refusal::Io)?;
        if copied != payload || more != 0 {
            return Err(Refusal::Damaged);
        }
        let seals = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL;
        nix::fcntl::fcntl(&memfd, FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| Refusal::Io(e.into()))?;
        let sum = checksum_of(&memfd, payload).map_err(Refusal::Io)?;
        if &trailer[..8] != MAGIC
            || trailer[8..16] != payload.to_le_bytes()
            || trailer[16..24] != sum.to_le_bytes()
        {
            return Err(Refusal::Damaged);
        }
        Ok(Some(Verified {
            memfd,
            len: payload,
        }))
    }

    /// Store `payload` as entry `key`, replacing whatever has that name.
    pub fn write(&self, key: &str, payload: &[u8]) -> std::io::Result<()> {
        if !is_key(key) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{key:?} is not a cache key"),
            ));
        }
        let mut trailer = Vec::with_capacity(TRAILER);
        trailer.extend_from_slice(MAGIC);
        trailer.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        trailer.extend_from_slice(&checksum(payload).to_le_bytes());
        self.write_atomic(&entry_name(key), &[payload, &trailer])
    }

    /// The cache key of the component at `path`, remembered in the directory
    /// against the file's identity (device, inode, size, modification and
    /// change times — the change time cannot be set back) and the engine, so a
    /// warm ADD does not read and hash the component. The index decides which
    /// entry is loaded, so it passes the same checks as an entry; a refused one
    /// is logged and rewritten. Returns the bytes when it had to read them.
    pub fn key_of_file(
        &self,
        engine: &Engine,
        path: &Path,
    ) -> std::io::Result<(String, Option<Vec<u8>>)> {
        // The identity is taken before the bytes are read: a file changed in
        // between is remembered under an identity it no longer has.
        let identity = crate::file_identity(path)?;
        let mut tag = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut tag);
        let head = format!("{INDEX_MAGIC}\n{identity}\n{:016x}\n", tag.finish());
        let index = index_name(path);
        match self.read_file(&index, MAX_INDEX) {
            Ok(Some(raw)) => {
                let text = String::from_utf8_lossy(&raw);
                if let Some(key) = text.strip_prefix(&head).map(str::trim) {
                    if is_key(key) {
                        return Ok((key.to_string(), None));
                    }
                }
            }
            Ok(None) => {}
            Err(why) => log::warn!(
                "policy cache index {} refused: {why}; hashing {} again",
                self.path.join(&index).display(),
                path.display()
            ),
        }
        let bytes = std::fs::read(path)?;
        let key = key(engine, &bytes);
        if let Err(e) = self.write_atomic(&index, &[format!("{head}{key}\n").as_bytes()]) {
            log::debug!(
                "policy cache index {}: {e}",
                self.path.join(&index).display()
            );
        }
        Ok((key, Some(bytes)))
    }

    /// Open `name` in the directory without following a symbolic link and
    /// check the descriptor: the file and its size (at most `limit`).
    /// `Ok(None)` when there is no such file.
    fn open_checked(&self, name: &str, limit: u64) -> Result<Option<(File, u64)>, Refusal> {
        // O_NONBLOCK: opening a FIFO planted under the name does not wait for
        // a writer; it is then refused as not a regular file.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(&self.dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(Refusal::Symlink),
            Err(e) => return Err(Refusal::Io(e.into())),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(Refusal::Io)?;
        check(&Stat::of(&meta), Kind::Regular, self.euid)?;
        if meta.len() > limit {
            return Err(Refusal::TooLarge { limit });
        }
        Ok(Some((file, meta.len())))
    }

    /// Open `name` as [`Self::open_checked`] does and read it whole (at most
    /// `limit` bytes) from that descriptor.
    fn read_file(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, Refusal> {
        let Some((file, len)) = self.open_checked(name, limit)? else {
            return Ok(None);
        };
        let mut raw = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // One more byte than the limit: a file that grew after the fstat is
        // still caught.
        (&file)
            .take(limit + 1)
            .read_to_end(&mut raw)
            .map_err(Refusal::Io)?;
        if raw.len() as u64 > limit {
            return Err(Refusal::TooLarge { limit });
        }
        Ok(Some(raw))
    }

    /// Write `parts` as `name` atomically: a temporary file created by
    /// descriptor (`O_EXCL|O_NOFOLLOW`, 0600), fsync, `renameat`.
    fn write_atomic(&self, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
        let tmp = format!(
            ".{}.{}.{}.tmp",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(
            &self.dir,
            tmp.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut f = File::from(fd);
        let written = parts
            .iter()
            .try_for_each(|p| f.write_all(p))
            .and_then(|_| f.sync_all())
            .and_then(|_| {
                nix::fcntl::renameat(&self.dir, tmp.as_str(), &self.dir, name).map_err(Into::into)
            });
        if written.is_err() {
            let _ = nix::unistd::unlinkat(
                &self.dir,
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
        written
    }
}

/// `index-<fnv(path)>`: the index of a component file.
fn index_name(component: &Path) -> String {
    format!(
        "index-{:016x}",
        crate::ip::fnv1a64(&[component.as_os_str().as_encoded_bytes()])
    )
}

fn entry_name(key: &str) -> String {
    format!("{key}.cwasm")
}

/// Open `path` as a directory without following a final symbolic link.
fn open_dir(path: &Path) -> Result<File, Refusal> {
    // std adds O_CLOEXEC.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // With O_DIRECTORY, Linux answers a symbolic link with ENOTDIR; the
            // second look only words the refusal.
            Some(libc::ELOOP) => Refusal::Symlink,
            Some(libc::ENOTDIR)
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                Refusal::Symlink
            }
            Some(libc::ENOTDIR) => Refusal::NotDirectory,
            _ => Refusal::Io(e),
        })
}

/// Create the missing directories of `path`, outermost first, each mode 0700
/// and each only where [`may_create_in`] allows.
fn create_missing(path: &Path, euid: u32) -> Result<(), Refusal> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut cur = path;
    loop {
        match std::fs::symlink_metadata(cur) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(cur);
                cur = match cur.parent() {
                    Some(p) => p,
                    None => break,
                };
            }
            Err(e) => return Err(Refusal::Io(e)),
        }
    }
    for dir in missing.into_iter().rev() {
        let Some(parent) = dir.parent() else {
            continue;
        };
        let st = std::fs::metadata(parent).map_err(Refusal::Io)?;
        may_create_in(&Stat::of(&st), euid).map_err(|reason| Refusal::Uncreatable {
            parent: parent.to_path_buf(),
            reason: Box::new(reason),
        })?;
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            // Created meanwhile by another ADD: the checks on the descriptor decide.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Refusal::Create(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::wasm::engine;
    use std::os::unix::fs::PermissionsExt;
    use wasmtime::Config;

    /// The smallest component there is: the preamble of an empty one.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";
    /// `nobody`: the "another user" of these tests.
    const OTHER_UID: u32 = 65534;

    /// A fresh directory (0755, this uid's) removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("ohno-cache-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
            Scratch(d)
        }

        fn path(&self) -> &Path {
            &self.0
        }

        /// `name` inside, opened as a cache directory (created 0700).
        fn cache(&self, name: &str) -> CacheDir {
            CacheDir::open(&self.0.join(name)).unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The payload of entry `key`, which must be there and pass.
    fn payload_of(dir: &CacheDir, key: &str) -> Vec<u8> {
        dir.read(key).unwrap().unwrap().payload().unwrap()
    }

    /// A key as the cache makes them (64 hex digits) for `tag`.
    fn key_for(tag: &str) -> String {
        Sha256::digest(tag.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Changing owners needs root; without it the test says so and passes.
    fn root() -> bool {
        let root = crate::nodefs::euid() == 0;
        if !root {
            eprintln!("not root: skipping the ownership case");
        }
        root
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn stat(kind: Kind, uid: u32, mode: u32, nlink: u64) -> Stat {
        Stat {
            kind,
            uid,
            mode,
            nlink,
        }
    }

    #[test]
    fn only_own_closed_single_link_files_and_directories_pass_the_check() {
        use Kind::*;
        let me = 0;
        for (st, want, ok) in [
            (stat(Regular, me, 0o600, 1), Regular, true),
            (stat(Regular, me, 0o644, 1), Regular, true),
            (stat(Regular, me, 0o755, 1), Regular, true),
            (stat(Directory, me, 0o700, 2), Directory, true),
            (stat(Directory, me, 0o755, 9), Directory, true),
        ] {
            assert_eq!(check(&st, want, me).is_ok(), ok, "{st:?}");
        }
        let refusal = |st: Stat, want: Kind| check(&st, want, me).unwrap_err().to_string();
        assert!(refusal(stat(Other, me, 0o600, 1), Regular).contains("not a regular file"));
        assert!(refusal(stat(Directory, me, 0o700, 1), Regular).contains("not a regular file"));
        assert!(refusal(stat(Regular, me, 0o700, 1), Directory).contains("not a directory"));
        assert!(refusal(stat(Regular, 1000, 0o600, 1), Regular)
            .contains("owned by uid 1000, not by the effective uid 0"));
        assert!(refusal(stat(Directory, 1000, 0o700, 2), Directory).contains("uid 1000"));
        assert!(
            refusal(stat(Regular, me, 0o620, 1), Regular).contains("group or others (mode 0620)")
        );
        assert!(refusal(stat(Regular, me, 0o602, 1), Regular).contains("mode 0602"));
        assert!(refusal(stat(Directory, me, 0o770, 2), Directory).contains("mode 0770"));
        assert!(refusal(stat(Directory, me, 0o1777, 2), Directory).contains("mode 1777"));
        assert!(refusal(stat(Regular, me, 0o600, 2), Regular).contains("2 hard links"));
        // Another uid's euid is its own.
        assert!(check(&stat(Regular, 1000, 0o600, 1), Regular, 1000).is_ok());
    }

    #[test]
    fn directories_are_created_only_inside_closed_directories_of_this_uid_or_root() {
        use Kind::*;
        let user = 1000;
        assert!(may_create_in(&stat(Directory, user, 0o700, 2), user).is_ok());
        assert!(may_create_in(&stat(Directory, 0, 0o755, 2), user).is_ok());
        // Sticky: nobody else can rename or remove what is created in it.
        assert!(may_create_in(&stat(Directory, 0, 0o1777, 2), user).is_ok());
        // Root with another user's $HOME does not plant directories in it.
        assert!(may_create_in(&stat(Directory, user, 0o755, 2), 0).is_err());
        assert!(may_create_in(&stat(Directory, 2000, 0o755, 2), user).is_err());
        assert!(may_create_in(&stat(Directory, 0, 0o775, 2), user).is_err());
        assert!(may_create_in(&stat(Regular, user, 0o700, 1), user).is_err());
    }

    #[test]
    fn the_user_cache_is_under_xdg_cache_home_or_home_and_never_relative() {
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            user_cache_dir(some("/x/cache"), some("/home/u")),
            Some(PathBuf::from("/x/cache/ohno/policy"))
        );
        assert_eq!(
            user_cache_dir(None, some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/ohno/policy"))
        );
        assert_eq!(
            user_cache_dir(some("rel"), some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/ohno/policy"))
        );
        assert_eq!(
            user_cache_dir(some(""), some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/ohno/policy"))
        );
        assert_eq!(user_cache_dir(None, some("home")), None);
        assert_eq!(user_cache_dir(None, None), None);
    }

    #[test]
    fn the_checksum_is_the_same_however_the_payload_is_cut() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in (0..200).chain([511, 512, 513, 1000]) {
            let whole = checksum(&data[..len]);
            for cut in [1, 3, 31, 32, 33, 64, 100, 4096] {
                let mut sum = Checksum::new();
                data[..len].chunks(cut).for_each(|c| sum.update(c));
                assert_eq!(sum.finish(), whole, "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let s = Scratch::new("roundtrip");
        let dir = s.cache("c");
        assert_eq!(mode_of(dir.path()), 0o700);
        let k = key_for("roundtrip");
        let path = dir.entry_path(&k);
        dir.write(&k, b"payload bytes").unwrap();
        assert_eq!(payload_of(&dir, &k), b"payload bytes");
        assert_eq!(mode_of(&path), 0o600);
        let raw = std::fs::read(&path).unwrap();
        let damaged = |bytes: &[u8], what: &str| {
            std::fs::write(&path, bytes).unwrap();
            let e = dir.read(&k).err();
            assert!(matches!(e, Some(Refusal::Damaged)), "{what}: {e:?}");
        };
        damaged(&raw[..raw.len() - 3], "truncated");
        let mut flipped = raw.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        damaged(&flipped, "corrupted trailer");
        let mut flipped = raw.clone();
        flipped[0] ^= 0x01;
        damaged(&flipped, "corrupted payload");
        damaged(b"", "empty");
        std::fs::remove_file(&path).unwrap();
        assert!(dir.read(&k).unwrap().is_none(), "a missing entry is none");
        assert!(dir.read("../../etc/passwd").unwrap().is_none());
        assert!(dir.write("../x", b"p").is_err());
    }

    #[test]
    fn an_entry_owned_by_another_uid_is_refused() {
        if !root() {
            return;
        }
        let s = Scratch::new("owner");
        let dir = s.cache("c");
        let k = key_for("owner");
        dir.write(&k, b"planted").unwrap();
        std::os::unix::fs::chown(dir.entry_path(&k), Some(OTHER_UID), None).unwrap();
        let e = dir.read(&k).err();
        assert!(
            matches!(
                e,
                Some(Refusal::Owner {
                    owner: OTHER_UID,
                    euid: 0
                })
            ),
            "{e:?}"
        );
        // The compiled result replaces it.
        dir.write(&k, b"ours").unwrap();
        assert_eq!(payload_of(&dir, &k), b"ours");
    }

    #[test]
    fn a_group_or_world_writable_entry_is_refused() {
        let s = Scratch::new("writable");
        let dir = s.cache("c");
        let k = key_for("writable");
        dir.write(&k, b"planted").unwrap();
        for mode in [0o620, 0o602, 0o666] {
            chmod(&dir.entry_path(&k), mode);
            let e = dir.read(&k).err();
            assert!(
                matches!(e, Some(Refusal::Writable { mode: m }) if m == mode),
                "{mode:o}: {e:?}"
            );
        }
    }

    #[test]
    fn a_symlinked_entry_is_refused_and_replaced_not_followed() {
        let s = Scratch::new("symlink");
        let dir = s.cache("c");
        // A valid entry elsewhere, of this uid, closed: only the link is wrong.
        let elsewhere = s.cache("elsewhere");
        let target_key = key_for("target");
        elsewhere.write(&target_key, b"planted").unwrap();
        let target = elsewhere.entry_path(&target_key);
        let before = std::fs::read(&target).unwrap();
        let k = key_for("symlink");
        std::os::unix::fs::symlink(&target, dir.entry_path(&k)).unwrap();
        let e = dir.read(&k).err();
        assert!(matches!(e, Some(Refusal::Symlink)), "{e:?}");
        dir.write(&k, b"ours").unwrap();
        assert!(std::fs::symlink_metadata(dir.entry_path(&k))
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(
            std::fs::read(&target).unwrap(),
            before,
            "written through the link"
        );
        assert_eq!(payload_of(&dir, &k), b"ours");
    }

    #[test]
    fn a_hard_linked_entry_is_refused_and_replaced() {
        let s = Scratch::new("hardlink");
        let dir = s.cache("c");
        let (a, b) = (key_for("a"), key_for("b"));
        dir.write(&a, b"planted").unwrap();
        std::fs::hard_link(dir.entry_path(&a), dir.entry_path(&b)).unwrap();
        for k in [&a, &b] {
            let e = dir.read(k).err();
            assert!(matches!(e, Some(Refusal::Links { links: 2 })), "{e:?}");
        }
        dir.write(&b, b"ours").unwrap();
        assert_eq!(payload_of(&dir, &b), b"ours");
        assert_eq!(payload_of(&dir, &a), b"planted");
    }

    #[test]
    fn a_fifo_or_a_directory_entry_is_refused_without_blocking() {
        let s = Scratch::new("fifo");
        let dir = s.cache("c");
        let k = key_for("fifo");
        nix::unistd::mkfifo(&dir.entry_path(&k), Mode::from_bits_truncate(0o600)).unwrap();
        let e = dir.read(&k).err();
        assert!(matches!(e, Some(Refusal::NotRegular)), "{e:?}");
        let k = key_for("dir");
        std::fs::create_dir(dir.entry_path(&k)).unwrap();
        chmod(&dir.entry_path(&k), 0o700);
        let e = dir.read(&k).err();
        assert!(matches!(e, Some(Refusal::NotRegular)), "{e:?}");
    }

    #[test]
    fn the_bytes_deserialized_are_the_bytes_verified() {
        let s = Scratch::new("swap");
        let dir = s.cache("c");
        let e = engine().unwrap();
        let real = Component::new(&e, EMPTY_COMPONENT)
            .unwrap()
            .serialize()
            .unwrap();
        let k = key_for("swap");
        dir.write(&k, &real).unwrap();
        let verified = dir.read(&k).unwrap().unwrap();
        // Between the read and the load: the file is rewritten in place, then
        // another file (with a valid trailer) takes its name.
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.entry_path(&k))
            .and_then(|mut f| f.write_all(&vec![0u8; real.len()]))
            .unwrap();
        dir.write(&k, b"not a serialized component").unwrap();
        assert_eq!(verified.payload().unwrap(), real);
        // Nothing can change the verified copy, not even through its own
        // descriptor.
        assert!((&verified.memfd).write_all(b"x").is_err(), "not sealed");
        deserialize(&e, &verified).expect("the verified bytes load");
        // What is on disk now would be refused by wasmtime if it were loaded.
        let now = dir.read(&k).unwrap().unwrap();
        assert_eq!(now.payload().unwrap(), b"not a serialized component");
        assert!(deserialize(&e, &now).is_err());
    }

    #[test]
    fn a_cache_directory_of_another_uid_open_to_others_or_not_a_directory_is_refused() {
        let s = Scratch::new("dirs");
        let path = s.path().join("c");
        drop(s.cache("c"));
        chmod(&path, 0o770);
        let e = CacheDir::open(&path).err();
        assert!(
            matches!(e, Some(Refusal::Writable { mode: 0o770 })),
            "{e:?}"
        );
        chmod(&path, 0o1777);
        let e = CacheDir::open(&path).err();
        assert!(matches!(e, Some(Refusal::Writable { .. })), "{e:?}");
        chmod(&path, 0o700);
        assert!(CacheDir::open(&path).is_ok());
        let file = s.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = CacheDir::open(&file).err();
        assert!(matches!(e, Some(Refusal::NotDirectory)), "{e:?}");
        if root() {
            std::os::unix::fs::chown(&path, Some(OTHER_UID), None).unwrap();
            let e = CacheDir::open(&path).err();
            assert!(
                matches!(
                    e,
                    Some(Refusal::Owner {
                        owner: OTHER_UID,
                        ..
                    })
                ),
                "{e:?}"
            );
        }
    }

    #[test]
    fn a_symlinked_cache_directory_is_refused() {
        let s = Scratch::new("dirlink");
        drop(s.cache("real"));
        let link = s.path().join("link");
        std::os::unix::fs::symlink(s.path().join("real"), &link).unwrap();
        let e = CacheDir::open(&link).err();
        assert!(matches!(e, Some(Refusal::Symlink)), "{e:?}");
    }

    #[test]
    fn a_missing_cache_directory_is_created_0700_with_its_parents_only_where_allowed() {
        let s = Scratch::new("create");
        let path = s.path().join("a/b/c");
        let dir = CacheDir::open(&path).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode_of(&s.path().join(p)), 0o700, "{p}");
        }
        drop(dir);
        // Not inside a directory group or others can write (unless sticky).
        let open = s.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let e = CacheDir::open(&open.join("c")).err();
        assert!(matches!(e, Some(Refusal::Uncreatable { .. })), "{e:?}");
        assert!(!open.join("c").exists());
        chmod(&open, 0o1777);
        assert!(CacheDir::open(&open.join("c")).is_ok());
        if root() {
            // Not inside another user's directory.
            let theirs = s.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(OTHER_UID), None).unwrap();
            let e = CacheDir::open(&theirs.join("ohno/policy")).err();
            let text = e.as_ref().map(ToString::to_string).unwrap_or_default();
            assert!(
                text.contains("cannot be created in") && text.contains("uid 65534"),
                "{e:?}"
            );
            assert!(!theirs.join("ohno").exists());
        }
    }

    #[test]
    fn a_planted_index_is_refused_and_the_component_hashed_again() {
        let s = Scratch::new("index");
        let dir = s.cache("c");
        let file = s.path().join("p.wasm");
        std::fs::write(&file, b"component one").unwrap();
        let e = engine().unwrap();
        let (k1, _) = dir.key_of_file(&e, &file).unwrap();
        let index = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|d| d.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("index-"))
            })
            .unwrap();
        assert_eq!(mode_of(&index), 0o600);
        // The index decides which entry loads: pointed at another key...
        let planted_key = key_for("another component");
        let text = std::fs::read_to_string(&index).unwrap();
        let planted = text.replace(&k1, &planted_key);
        std::fs::write(&index, &planted).unwrap();
        // ...by this uid, it is believed (as an entry of this uid would be)...
        assert_eq!(dir.key_of_file(&e, &file).unwrap().0, planted_key);
        // ...open to others, it is refused: hashed again, and rewritten.
        chmod(&index, 0o666);
        let (k, bytes) = dir.key_of_file(&e, &file).unwrap();
        assert_eq!(k, k1);
        assert!(bytes.is_some(), "the component was hashed again");
        assert_eq!(mode_of(&index), 0o600);
        assert_eq!(dir.key_of_file(&e, &file).unwrap(), (k1.clone(), None));
        // A symlinked index is refused the same way.
        let elsewhere = s.path().join("elsewhere");
        std::fs::write(&elsewhere, &planted).unwrap();
        chmod(&elsewhere, 0o600);
        std::fs::remove_file(&index).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &index).unwrap();
        assert_eq!(dir.key_of_file(&e, &file).unwrap().0, k1);
        if root() {
            std::fs::write(&index, &planted).unwrap();
            std::os::unix::fs::chown(&index, Some(OTHER_UID), None).unwrap();
            assert_eq!(dir.key_of_file(&e, &file).unwrap().0, k1);
        }
    }

    #[test]
    fn the_key_of_an_unchanged_file_is_remembered_and_a_changed_file_rehashed() {
        let s = Scratch::new("keyidx");
        let file = s.path().join("p.wasm");
        let dir = s.cache("cache");
        std::fs::write(&file, b"component one").unwrap();
        let e = engine().unwrap();
        let (k1, bytes) = dir.key_of_file(&e, &file).unwrap();
        assert_eq!(k1, key(&e, b"component one"));
        assert_eq!(bytes.as_deref(), Some(&b"component one"[..]));
        let (again, bytes) = dir.key_of_file(&e, &file).unwrap();
        assert_eq!(again, k1);
        assert!(bytes.is_none(), "an unchanged file is not read again");
        // Same size, new content: the change time moves, so it is hashed again.
        std::fs::write(&file, b"component two").unwrap();
        let (k2, bytes) = dir.key_of_file(&e, &file).unwrap();
        assert_eq!(k2, key(&e, b"component two"));
        assert!(bytes.is_some());
        // Another engine configuration never reuses the remembered key.
        let mut other = Config::new();
        other.consume_fuel(false);
        let e2 = Engine::new(&other).unwrap();
        let (k3, _) = dir.key_of_file(&e2, &file).unwrap();
        assert_eq!(k3, key(&e2, b"component two"));
        assert_ne!(k3, k2);
    }

    #[test]
    fn cache_key_depends_on_component_and_engine_config() {
        let e1 = engine().unwrap();
        let k1 = key(&e1, b"component a");
        assert_eq!(k1, key(&e1, b"component a"));
        assert_ne!(k1, key(&e1, b"component b"));
        let mut other = Config::new();
        other.consume_fuel(false).epoch_interruption(false);
        let e2 = Engine::new(&other).unwrap();
        assert_ne!(k1, key(&e2, b"component a"));
    }
}
