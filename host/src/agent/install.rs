//! `ohnod install` and `ohnod uninstall`: what a DaemonSet's init container
//! (or an admin on a plain host) does to put Ohno on a node, and to take it
//! off again.
//!
//! - The binaries `ohno` and `ohnoctl` (and `ohnod`, which the plugin starts
//!   on demand from its own directory) are copied to the CNI bin dir.
//! - The conflist is rendered from a template (`${VAR}` replaced by the
//!   environment: the ConfigMap and the downward API's node name) and
//!   written to the CNI conf dir.
//! - The etcd client certificate, key and CA are copied from the mounted
//!   Secret to a root-only directory (0700, files 0600) the conflist names.
//! - The policy the conflist names is precompiled into its cache.
//!
//! Every file is written to a temporary file in its own directory and
//! renamed over the target, so a runtime never reads half a file; a target
//! that already holds the same bytes is left alone (not even its mtime
//! changes). What was written is recorded in `<stateDir>/install.json`, and
//! `uninstall` removes exactly those files — and only while they still hold
//! what install wrote (a file replaced since is someone else's now).
//! Stopping the agent removes nothing: pods keep being deleted cleanly
//! while the agent is upgraded.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::agent::read_capped;
use crate::error::{Error, Result};

/// The binaries installed, from the directory of the running `ohnod`.
pub const BINARIES: &[&str] = &["ohno", "ohnoctl", "ohnod"];
/// The record of an install, in the state directory.
pub const MANIFEST: &str = "install.json";

/// Where everything goes; every path settable, so tests install into a
/// temporary root.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Where `ohno`, `ohnoctl`, `ohnod` come from.
    pub source_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub conf_name: String,
    /// The conflist template.
    pub template: PathBuf,
    /// The mounted Secret with the etcd client files, if any.
    pub certs_from: Option<PathBuf>,
    /// The root-only directory the certificates are copied to.
    pub certs_dir: PathBuf,
    /// Where `install.json` is kept.
    pub state_dir: PathBuf,
}

/// One file install wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    pub path: PathBuf,
    /// FNV-1a 64 of the bytes written, hex.
    pub digest: String,
    /// Whether this install replaced or created it (false: it held these
    /// bytes already).
    pub changed: bool,
}

/// `install.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub files: Vec<Written>,
    /// Directories install created (removed by uninstall when empty).
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
}

fn digest(bytes: &[u8]) -> String {
    format!("{:016x}", crate::ip::fnv1a64(&[bytes]))
}

/// `${NAME}` in `template` replaced by `vars[NAME]`; a name without a value
/// is an error naming it (a conflist with an empty node name is worse than
/// none). `$${` is a literal `${`.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| Error::config("template", "an unclosed ${"))?;
        let name = &body[..end];
        let value = vars.get(name).ok_or_else(|| {
            Error::config(
                "template",
                format!("${{{name}}} has no value (set {name} in the environment)"),
            )
        })?;
        out.push_str(value);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A directory that exists after this (mode `mode` when created here);
/// returns whether it was created.
fn ensure_dir(dir: &Path, mode: u32) -> Result<bool> {
    if dir.is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
    Ok(true)
}

/// Write `bytes` to `path` with `mode` through a temporary file in the same
/// directory and a rename; nothing when `path` already holds `bytes` with
/// that mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<Written> {
    let same = std::fs::symlink_metadata(path).ok().is_some_and(|m| {
        m.file_type().is_file()
            && m.permissions().mode() & 0o7777 == mode
            && std::fs::read(path).is_ok_and(|b| b == bytes)
    });
    let written = Written {
        path: path.to_path_buf(),
        digest: digest(bytes),
        changed: !same,
    };
    if same {
        return Ok(written);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.ohno-tmp.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("write {}", path.display()), e));
    }
    Ok(written)
}

/// The variables a template sees: the environment, plus `OHNO_CERTS_DIR`.
pub fn template_vars(layout: &Layout) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = std::env::vars().collect();
    vars.insert(
        "OHNO_CERTS_DIR".into(),
        layout.certs_dir.to_string_lossy().into_owned(),
    );
    vars
}

/// Install as `layout` says, with `vars` for the template; returns (and
/// records) what was written.
pub fn install(layout: &Layout, vars: &BTreeMap<String, String>) -> Result<Manifest> {
    let mut m = Manifest::default();
    // Render first: a template that does not render installs nothing.
    let template = String::from_utf8(read_capped("template", &layout.template)?)
        .map_err(|_| Error::config("template", "not UTF-8"))?;
    let conflist = render(&template, vars)?;
    let doc: serde_json::Value = serde_json::from_str(&conflist).map_err(|e| Error::Decode {
        what: format!("the rendered conflist (from {})", layout.template.display()),
        msg: e.to_string(),
    })?;
    let _ = doc;
    // The plugin's part must parse as the plugin will parse it.
    let net = crate::config::NetConf::parse(
        &crate::config::agent::ohno_plugin_conf(conflist.as_bytes())?,
        &[],
    )?;

    if ensure_dir(&layout.state_dir, 0o700)? {
        m.dirs.push(layout.state_dir.clone());
    }
    if ensure_dir(&layout.bin_dir, 0o755)? {
        m.dirs.push(layout.bin_dir.clone());
    }
    for bin in BINARIES {
        let src = layout.source_dir.join(bin);
        let bytes =
            std::fs::read(&src).map_err(|e| Error::io(format!("read {}", src.display()), e))?;
        m.files
            .push(write_atomic(&layout.bin_dir.join(bin), &bytes, 0o755)?);
    }
    if let Some(from) = &layout.certs_from {
        if ensure_dir(&layout.certs_dir, 0o700)? {
            m.dirs.push(layout.certs_dir.clone());
        }
        // Root's alone, whatever it was before.
        std::fs::set_permissions(&layout.certs_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod {}", layout.certs_dir.display()), e))?;
        let mut names: Vec<String> = std::fs::read_dir(from)
            .map_err(|e| Error::io(format!("read {}", from.display()), e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // A Secret volume's own ..data links and dot-files are not keys.
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let src = from.join(&name);
            if !src.is_file() {
                continue;
            }
            let bytes = read_capped("certificate", &src)?;
            m.files
                .push(write_atomic(&layout.certs_dir.join(&name), &bytes, 0o600)?);
        }
    }
    // The policy precompiled into the cache the plugin loads from, so the
    // node's first ADD does not compile it.
    #[cfg(feature = "wasm")]
    if let Some(pc) = &net.policy {
        if ensure_dir(&pc.cache_dir, 0o700)? {
            m.dirs.push(pc.cache_dir.clone());
        }
        use crate::policy::{cache, wasm};
        let engine = wasm::engine()?;
        let (_, outcome) = wasm::load_component(&engine, &pc.path, Some(&pc.cache_dir))?;
        let bytes = std::fs::read(&pc.path)
            .map_err(|e| Error::io(format!("read {}", pc.path.display()), e))?;
        let dir = cache::CacheDir::open(&pc.cache_dir).map_err(|why| {
            Error::io(
                format!("cache directory {}", pc.cache_dir.display()),
                std::io::Error::other(why.to_string()),
            )
        })?;
        // The entry is install's (written now or by an earlier install), for
        // uninstall to remove.
        let entry = dir.entry_path(&cache::key(&engine, &bytes));
        for path in [entry, dir.index_path(&pc.path)] {
            if let Ok(written) = std::fs::read(&path) {
                m.files.push(Written {
                    path,
                    digest: digest(&written),
                    changed: !matches!(outcome, wasm::CacheOutcome::Hit),
                });
            }
        }
    }
    #[cfg(not(feature = "wasm"))]
    let _ = &net;
    // The conflist last: a runtime that sees it finds the binaries in place.
    if ensure_dir(&layout.conf_dir, 0o755)? {
        m.dirs.push(layout.conf_dir.clone());
    }
    m.files.push(write_atomic(
        &layout.conf_dir.join(&layout.conf_name),
        conflist.as_bytes(),
        0o644,
    )?);
    // Keep what an earlier install created, so uninstall can remove it.
    let manifest_path = layout.state_dir.join(MANIFEST);
    if let Ok(old) = read_manifest(&manifest_path) {
        for d in old.dirs {
            if !m.dirs.contains(&d) {
                m.dirs.push(d);
            }
        }
    }
    let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Decode {
        what: "install manifest".into(),
        msg: e.to_string(),
    })?;
    write_atomic(&manifest_path, &json, 0o600)?;
    Ok(m)
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let bytes = read_capped("manifest", path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
        what: format!("install manifest {}", path.display()),
        msg: e.to_string(),
    })
}

/// What uninstall did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub removed: Vec<PathBuf>,
    /// Files install wrote that hold other bytes now: left in place.
    pub kept: Vec<PathBuf>,
}

/// Remove what the install recorded in `state_dir` wrote, and the
/// directories it created when they are empty.
pub fn uninstall(state_dir: &Path) -> Result<Removed> {
    let manifest_path = state_dir.join(MANIFEST);
    let m = read_manifest(&manifest_path)?;
    let mut out = Removed::default();
    for f in &m.files {
        match std::fs::read(&f.path) {
            Ok(bytes) if digest(&bytes) == f.digest => {
                std::fs::remove_file(&f.path)
                    .map_err(|e| Error::io(format!("remove {}", f.path.display()), e))?;
                out.removed.push(f.path.clone());
            }
            Ok(_) => {
                log::warn!("{} changed since install; left in place", f.path.display());
                out.kept.push(f.path.clone());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("read {}", f.path.display()), e)),
        }
    }
    std::fs::remove_file(&manifest_path)
        .map_err(|e| Error::io(format!("remove {}", manifest_path.display()), e))?;
    out.removed.push(manifest_path);
    // Deepest first; a directory with anything else in it stays.
    let mut dirs = m.dirs.clone();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        if std::fs::remove_dir(&d).is_ok() {
            out.removed.push(d);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates_render_every_variable_or_name_the_missing_one() {
        let v = vars(&[("NODE_NAME", "node-a"), ("POOLS", "[1]")]);
        assert_eq!(
            render(
                "{\"node\": \"${NODE_NAME}\", \"p\": ${POOLS}, \"$x\": \"$${LIT}\"}",
                &v
            )
            .unwrap(),
            "{\"node\": \"node-a\", \"p\": [1], \"$x\": \"${LIT}\"}"
        );
        let err = render("${NODE_NAME} ${NOPE}", &v).unwrap_err().to_string();
        assert!(err.contains("${NOPE} has no value"), "{err}");
        assert!(render("${OPEN", &v).is_err());
    }

    #[test]
    fn atomic_writes_skip_identical_files_and_replace_others() {
        let dir = std::env::temp_dir().join(format!("ohno-install-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        assert!(write_atomic(&p, b"one", 0o600).unwrap().changed);
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        assert!(!write_atomic(&p, b"one", 0o600).unwrap().changed);
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
        assert!(write_atomic(&p, b"two", 0o600).unwrap().changed);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(
            write_atomic(&p, b"two", 0o644).unwrap().changed,
            "a mode change is a change"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
