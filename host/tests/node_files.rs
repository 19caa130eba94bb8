//! Node-local directories and files, through the real binary: what `ohno`
//! (root) creates is 0700/0600 whatever the runtime's umask; a directory
//! another uid owns, that group or others may write, or that is a symlink is
//! refused with code 7 naming its field, before anything is created; a FIFO
//! or a symlink planted at a lock or hint path neither hangs an ADD nor makes
//! root write through it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{file_tree, first_ipv4, Node, Pod};
use serde_json::{json, Value};

/// The umask is the process's: tests that create directories take turns.
static UMASK: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    UMASK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `node`'s config with its own lock directory `locks` (not yet created).
fn conf_with_lock_dir(node: &Node) -> (Value, PathBuf) {
    let locks = node.dir.path().join("locks");
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["lockDir"] = json!(locks);
    (conf, locks)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {path:?}: {e}"))
        .mode()
        & 0o7777
}

/// ADD of a fresh pod fails with code 7 for `field`, the details saying
/// `why`; no link appears and the store is untouched.
fn refused(node: &Node, conf: &Value, field: &str, why: &str) {
    let pod = Pod::new();
    let links = node.host.link_names();
    let store = file_tree(&node.store_dir());
    let out = node.ohno("ADD", &pod, conf);
    let msg = out.error_with_code(7);
    assert_eq!(
        msg,
        format!("invalid network config field {field}"),
        "{out}"
    );
    let details = out.json()["details"].as_str().unwrap_or_default();
    assert!(details.contains(why), "{out}\ndetails do not say {why:?}");
    assert_eq!(node.host.link_names(), links, "{out}\nlinks changed");
    assert_eq!(file_tree(&node.store_dir()), store, "{out}\nstore changed");
    assert!(pod.ns.link("eth0").is_none());
}

#[test]
fn directories_and_the_database_are_created_private_whatever_the_umask() {
    let _turn = turn();
    let node = Node::new();
    let (conf, locks) = conf_with_lock_dir(&node);
    let pod = Pod::new();
    // SAFETY: umask only sets this process's creation mask (restored below).
    let old = unsafe { libc::umask(0) };
    let out = node.ohno("ADD", &pod, &conf);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out.success();
    assert_eq!(mode(&locks), 0o700, "lockDir");
    assert_eq!(mode(&node.store_dir()), 0o700, "dataDir");
    let db = std::fs::read_dir(node.store_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect::<Vec<_>>();
    assert!(!db.is_empty());
    for file in db {
        assert_eq!(mode(&file), 0o600, "{file:?} must not be world-readable");
    }
    for file in std::fs::read_dir(&locks).unwrap().flatten() {
        let m = mode(&file.path());
        assert_eq!(m & 0o077, 0, "{:?} has mode {m:o}", file.path());
    }
    node.ohno("DEL", &pod, &conf).success();
}

#[test]
fn a_lock_dir_open_to_others_or_owned_by_another_uid_or_a_symlink_is_refused() {
    let _turn = turn();
    let node = Node::new();
    let (conf, locks) = conf_with_lock_dir(&node);

    std::fs::create_dir(&locks).unwrap();
    std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o770)).unwrap();
    refused(&node, &conf, "ipam.lockDir", "mode 0770");

    std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&locks, Some(65534), None).unwrap();
    refused(&node, &conf, "ipam.lockDir", "owned by uid 65534");
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "nothing may be created in another uid's directory"
    );

    std::fs::remove_dir(&locks).unwrap();
    let real = node.dir.path().join("real-locks");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, &locks).unwrap();
    refused(&node, &conf, "ipam.lockDir", "symbolic link");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}

#[test]
fn a_data_dir_open_to_others_is_refused_and_a_symlinked_database_is_not_opened() {
    let _turn = turn();
    let node = Node::new();
    let (conf, _) = conf_with_lock_dir(&node);
    let store = node.store_dir();
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    refused(&node, &conf, "ipam.store.dataDir", "mode 0755");

    // A private directory whose database is a symlink to a file elsewhere:
    // neither opened nor written through.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
    let elsewhere = node.dir.path().join("elsewhere.db");
    std::fs::write(&elsewhere, b"not a database").unwrap();
    let db_name = {
        // The database's file name, from a store made in a scratch directory.
        let scratch = node.dir.path().join("scratch-store");
        let mut c = conf.clone();
        c["ipam"]["store"]["dataDir"] = json!(scratch);
        let pod = Pod::new();
        node.ohno("ADD", &pod, &c).success();
        node.ohno("DEL", &pod, &c).success();
        std::fs::read_dir(&scratch)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .find(|n| !n.to_string_lossy().contains('-'))
            .expect("a database file")
    };
    std::os::unix::fs::symlink(&elsewhere, store.join(&db_name)).unwrap();
    let pod = Pod::new();
    let out = node.ohno("ADD", &pod, &conf);
    let msg = out.error_with_code(7);
    assert_eq!(
        msg, "invalid network config field ipam.store.dataDir",
        "{out}"
    );
    assert!(out.stdout.contains("symbolic link"), "{out}");
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not a database");
    assert!(pod.ns.link("eth0").is_none());
}

/// The node-local files in `dir` whose names start with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

#[test]
fn fifos_and_symlinks_at_the_claim_lock_and_hint_paths_neither_hang_nor_are_written() {
    let _turn = turn();
    let node = Node::new();
    let (conf, locks) = conf_with_lock_dir(&node);
    let first = Pod::new();
    let a = first_ipv4(&node.add(&first, &conf)).0;
    let claims = files_named(&locks, "claim-");
    let hints = files_named(&locks, "blocks-");
    assert_eq!(claims.len(), 1, "{:?}", file_tree(&locks));
    assert_eq!(hints.len(), 1, "{:?}", file_tree(&locks));

    // FIFOs at both: the next ADD completes at once, with another address.
    std::fs::remove_file(&claims[0]).unwrap();
    std::fs::remove_file(&hints[0]).unwrap();
    mkfifo(&claims[0]);
    mkfifo(&hints[0]);
    let second = Pod::new();
    let started = Instant::now();
    let out = node.ohno("ADD", &second, &conf);
    let b = first_ipv4(out.success().json()).0;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ADD took {:?} with FIFOs planted",
        started.elapsed()
    );
    assert_ne!(a, b);
    assert!(node.log().contains("not a regular file"), "{}", node.log());

    // Symlinks at both, to a file root must not write: left as it was.
    let victim = node.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    for planted in [&claims[0], &hints[0]] {
        std::fs::remove_file(planted).unwrap();
        std::os::unix::fs::symlink(&victim, planted).unwrap();
    }
    let third = Pod::new();
    let c = first_ipv4(&node.add(&third, &conf)).0;
    assert!(![a, b].contains(&c));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::symlink_metadata(&victim).unwrap().nlink(), 1);

    for pod in [&first, &second, &third] {
        node.ohno("DEL", pod, &conf).success();
    }
}
