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

/// Kills, by PID, what this containerd started and left: processes in the
/// pods' cgroup parent (pause processes) and shims started for `socket`,
/// then removes the cgroup directories.
pub(super) fn kill_leftovers(socket: &Path, cgroup_parent: Option<&str>) {
    let needle = socket.to_string_lossy().into_owned();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && args.iter().any(|a| a == &needle);
            if is_shim {
                // SAFETY: kill(2) on a shim that serves this instance only.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let Some(parent) = cgroup_parent else {
        return;
    };
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
