//! The precompile cache: `<cacheDir>/<sha256(component ‖ engine hash)>.cwasm`,
//! written atomically (temp file + rename), mode 0600. An entry is wasmtime's
//! serialized component followed by a 24-byte trailer (magic, the payload's
//! length, its checksum), so a truncated or corrupted entry is recompiled instead
//! of loaded, and a verified entry is handed to wasmtime as the file itself
//! (`Component::deserialize_file` maps it: no copy, and linear-memory images
//! map from it too).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

const MAGIC: &[u8; 8] = b"OHNOCW02";
const INDEX_MAGIC: &str = "ohno-policy-cache-index-1";
const TRAILER: usize = 24;

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
/// an entry (not tampering: the directory is root's) in well under a
/// millisecond for the megabytes of a precompiled component.
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

/// The payload of a raw entry, if its trailer and checksum hold.
fn payload(raw: &[u8]) -> Option<&[u8]> {
    let body = raw.len().checked_sub(TRAILER)?;
    let (payload, trailer) = raw.split_at(body);
    if &trailer[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(trailer[8..16].try_into().ok()?);
    let sum = u64::from_le_bytes(trailer[16..24].try_into().ok()?);
    (payload.len() as u64 == len && checksum(payload) == sum).then_some(payload)
}

/// The cache key of `component` for `engine`.
pub fn key(engine: &Engine, component: &[u8]) -> String {
    let mut h = ShaHasher(Sha256::new());
    h.0.update(component);
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of the component at `path`, remembered in `dir` against the
/// file's identity (device, inode, size, modification and change times — the
/// change time cannot be set back) and the engine, so a warm ADD does not read
/// and hash the component. Returns the bytes when it had to read them.
pub fn key_of_file(
    engine: &Engine,
    path: &Path,
    dir: &Path,
) -> std::io::Result<(String, Option<Vec<u8>>)> {
    // The identity is taken before the bytes are read: a file changed in
    // between is remembered under an identity it no longer has.
    let identity = crate::file_identity(path)?;
    let mut tag = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut tag);
    let head = format!("{INDEX_MAGIC}\n{identity}\n{:016x}\n", tag.finish());
    let index = dir.join(format!(
        "index-{:016x}",
        crate::ipam::fnv1a64(&[path.as_os_str().as_encoded_bytes()])
    ));
    if let Ok(text) = std::fs::read_to_string(&index) {
        if let Some(key) = text.strip_prefix(&head).map(str::trim) {
            if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok((key.to_string(), None));
            }
        }
    }
    let bytes = std::fs::read(path)?;
    let key = key(engine, &bytes);
    if let Err(e) = write_atomic(dir, &index, &[format!("{head}{key}\n").as_bytes()]) {
        log::debug!("policy cache index {}: {e}", index.display());
    }
    Ok((key, Some(bytes)))
}

pub fn entry(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.cwasm"))
}

/// Read an entry's payload; None if missing or damaged.
pub fn read(path: &Path) -> Option<Vec<u8>> {
    let raw = std::fs::read(path).ok()?;
    payload(&raw).map(<[u8]>::to_vec)
}

/// True when the entry at `path` is whole and undamaged. The entry is
/// mapped with its pages populated in one call rather than read into a
/// fresh buffer, whose every page faults on the way in: ~150 faults for a
/// 600 KiB entry, ~0.6 ms of an ADD on a VM where a fault costs ~4 µs.
pub fn verify(path: &Path) -> bool {
    Mapped::open(path).is_ok_and(|m| payload(m.bytes()).is_some())
}

/// A whole file mapped read-only, its pages mapped up front (`MAP_POPULATE`).
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn open(path: &Path) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len,
            });
        }
        // SAFETY: a new private read-only mapping of an open file, owned by
        // the returned value and unmapped on drop; no Rust reference aliases
        // it mutably. Entries are replaced by rename, never rewritten in
        // place, so the mapped inode keeps its length (truncating one under
        // a running ADD would be a SIGBUS, as for wasmtime's own mapping).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping `open` made; no slice of it
            // outlives `self`.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

/// Write an entry atomically, mode 0600, directory 0700.
pub fn write(dir: &Path, path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let mut trailer = Vec::with_capacity(TRAILER);
    trailer.extend_from_slice(MAGIC);
    trailer.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    trailer.extend_from_slice(&checksum(payload).to_le_bytes());
    write_atomic(dir, path, &[payload, &trailer])
}

/// Write `parts` to `path` atomically (temp file, fsync, rename), mode 0600,
/// creating `dir` with mode 0700.
fn write_atomic(dir: &Path, path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        std::process::id(),
        crate::ipam::model::now()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = parts
        .iter()
        .try_for_each(|p| f.write_all(p))
        .and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cache;
    use crate::policy::wasm::engine;
    use wasmtime::Config;

    #[test]
    fn cache_entries_round_trip_and_damage_is_detected() {
        let dir = std::env::temp_dir().join(format!("ohno-cache-test-{}", std::process::id()));
        let path = cache::entry(&dir, "k");
        cache::write(&dir, &path, b"payload bytes").unwrap();
        assert_eq!(cache::read(&path).unwrap(), b"payload bytes");
        assert!(cache::verify(&path));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let raw = std::fs::read(&path).unwrap();
        std::fs::write(&path, &raw[..raw.len() - 3]).unwrap();
        assert!(
            cache::read(&path).is_none(),
            "truncated entry must not load"
        );
        assert!(!cache::verify(&path), "truncated entry must not verify");
        let mut flipped = raw.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        assert!(
            cache::read(&path).is_none(),
            "corrupted entry must not load"
        );
        assert!(!cache::verify(&path), "corrupted trailer must not verify");
        let mut flipped = raw.clone();
        flipped[0] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        assert!(!cache::verify(&path), "corrupted payload must not verify");
        std::fs::write(&path, b"").unwrap();
        assert!(!cache::verify(&path), "an empty entry must not verify");
        std::fs::remove_file(&path).unwrap();
        assert!(!cache::verify(&path), "a missing entry must not verify");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_key_of_an_unchanged_file_is_remembered_and_a_changed_file_rehashed() {
        let dir = std::env::temp_dir().join(format!("ohno-keyidx-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.wasm");
        let cache_dir = dir.join("cache");
        std::fs::write(&file, b"component one").unwrap();
        let e = engine().unwrap();
        let (k1, bytes) = cache::key_of_file(&e, &file, &cache_dir).unwrap();
        assert_eq!(k1, cache::key(&e, b"component one"));
        assert_eq!(bytes.as_deref(), Some(&b"component one"[..]));
        let (again, bytes) = cache::key_of_file(&e, &file, &cache_dir).unwrap();
        assert_eq!(again, k1);
        assert!(bytes.is_none(), "an unchanged file is not read again");
        // Same size, new content: the change time moves, so it is hashed again.
        std::fs::write(&file, b"component two").unwrap();
        let (k2, bytes) = cache::key_of_file(&e, &file, &cache_dir).unwrap();
        assert_eq!(k2, cache::key(&e, b"component two"));
        assert!(bytes.is_some());
        // Another engine configuration never reuses the remembered key.
        let mut other = Config::new();
        other.consume_fuel(false);
        let e2 = Engine::new(&other).unwrap();
        let (k3, _) = cache::key_of_file(&e2, &file, &cache_dir).unwrap();
        assert_eq!(k3, cache::key(&e2, b"component two"));
        assert_ne!(k3, k2);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn cache_key_depends_on_component_and_engine_config() {
        let e1 = engine().unwrap();
        let k1 = cache::key(&e1, b"component a");
        assert_eq!(k1, cache::key(&e1, b"component a"));
        assert_ne!(k1, cache::key(&e1, b"component b"));
        let mut other = Config::new();
        other.consume_fuel(false).epoch_interruption(false);
        let e2 = Engine::new(&other).unwrap();
        assert_ne!(k1, cache::key(&e2, b"component a"));
    }
}
