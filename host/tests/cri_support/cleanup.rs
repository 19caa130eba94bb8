//! Clean-up after containerd: stop it by PID, kill by PID what it started
//! and left, remove its pods' cgroups, detach mounts that reached us.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::STOP_TIMEOUT;

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`], to our own child by PID.
pub(super) fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own unreaped child's PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills, by PID, what this containerd started and left: shims started for
/// `socket` and processes in the pods' cgroup parent (pause processes),
/// then removes the cgroup directories.
pub(super) fn kill_leftovers(socket: &Path, cgroup_parent: Option<&str>) {
    kill_shims(socket);
    if let Some(parent) = cgroup_parent {
        remove_pod_cgroups(parent);
    }
}

/// Every process's PID and command line.
fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, args))
        })
        .collect()
}

/// SIGKILLs the shims started for `socket` and waits (bounded) until they
/// are gone: a dying shim still writes in the state directory.
fn kill_shims(socket: &Path) {
    let needle = socket.to_string_lossy().into_owned();
    let mut killed = Vec::new();
    for (pid, args) in processes() {
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
            && args.iter().any(|a| a == &needle);
        if is_shim {
            // SAFETY: kill(2) on a shim that serves this instance only.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while killed.iter().any(|pid| is_running(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` exists and is not a zombie (a zombie holds no files).
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state …`: the state follows the last `)`.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Removes `dir`, retrying a few times: a process that has just exited may
/// still have been writing into it.
pub(super) fn remove_dir(dir: &Path) {
    let mut last = None;
    for _ in 0..5 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(e) = last {
        eprintln!("cri clean-up: remove {}: {e}", dir.display());
    }
}

fn remove_pod_cgroups(parent: &str) {
    for dir in cgroup_dirs(parent) {
        for _ in 0..50 {
            let mut procs = Vec::new();
            collect_procs(&dir, &mut procs);
            if procs.is_empty() {
                break;
            }
            for pid in procs {
                // SAFETY: kill(2) on a process in this instance's pod cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroup_tree(&dir);
    }
}

/// What harness processes that were killed (no Drop ran) left: containerd
/// instances whose config is `<tmp>/ohno-t-<pid>-…/containerd.toml`
/// (`common::unique_name`) and pod cgroups `/ohno-cri-<pid>-<n>`, for a
/// `<pid>` that no longer exists. They are killed by PID with their shims
/// and pods, and the cgroups removed.
pub(super) fn sweep_dead_harnesses() {
    let gone = |pid: &str| !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists();
    let tmp = std::env::temp_dir().join("ohno-t-");
    let tmp = tmp.to_string_lossy();
    for (pid, args) in processes() {
        let is_containerd = args
            .first()
            .is_some_and(|a| Path::new(a).file_name() == Some("containerd".as_ref()));
        let config = args
            .iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .filter(|c| c.ends_with("/containerd.toml"));
        let Some(config) = config.filter(|_| is_containerd) else {
            continue;
        };
        let Some(owner) = config.strip_prefix(tmp.as_ref()) else {
            continue;
        };
        let owner: String = owner.chars().take_while(char::is_ascii_digit).collect();
        if gone(&owner) {
            eprintln!("cri clean-up: containerd {pid} of the dead harness {owner}");
            // SAFETY: kill(2) on a containerd a harness process started
            // with its own config, that harness being gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            kill_shims(&Path::new(config).with_file_name("containerd.sock"));
        }
    }
    let mut parents = std::collections::BTreeSet::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for entry in std::fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("ohno-cri-") {
                let owner: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if gone(&owner) {
                    parents.insert(format!("/{name}"));
                }
            }
        }
    }
    for parent in parents {
        eprintln!("cri clean-up: pod cgroups {parent} of a dead harness");
        remove_pod_cgroups(&parent);
    }
}

/// The parent's directory in every mounted cgroup hierarchy.
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let relative = parent.trim_start_matches('/');
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(relative)];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for entry in entries.flatten() {
            dirs.push(entry.path().join(relative));
        }
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

fn collect_procs(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&entry.path(), out);
            }
        }
    }
}

/// cgroup directories are removed with rmdir, children first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("cri clean-up: rmdir {}: {e}", dir.display());
    }
}

/// Lazily unmounts every mount of this mount namespace under `dir`,
/// deepest first. containerd's mounts live in its private namespace, so
/// none is expected; this only guards the directory's removal.
pub(super) fn detach_mounts_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        eprintln!("cri clean-up: unmounting {point}");
        if let Ok(c) = CString::new(point) {
            // SAFETY: umount2 with a valid C string; MNT_DETACH cannot hang.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
