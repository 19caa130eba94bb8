//! containerd with its CRI plugin as the kubelet's runtime, for the CRI
//! end-to-end test (`cri_e2e.rs`) and the CRI benchmark (`benches/cri.rs`).
//!
//! [`Containerd::start`] runs Debian's containerd 1.6 (CRI plugin, runc v2
//! shim) with everything of its own: root, state, gRPC and ttrpc sockets, CNI
//! bin and conf dirs, all under one directory, and a pause image built from
//! `busybox-static` (`tests/cri-client/pause-image.sh`) and imported with
//! `ctr`. The machine's own containerd (Docker's, say) is never addressed:
//! nothing here uses a default path. The debug and metrics listeners are
//! off; the streaming server listens on 127.0.0.1 port 0 of the throwaway
//! namespace.
//!
//! The process enters, between fork and exec, the test's host network
//! namespace (where the CNI plugins it execs then run, as on a node) and a
//! private mount namespace with a fresh tmpfs on `/run` and on `/var/lib`.
//! That keeps what containerd, libcni and the shims put in hard-coded places
//! — shim sockets under `/run/containerd/s`, runc's state, the pod netns bind
//! mounts in `/var/run/netns` (a link to `/run/netns`), libcni's result
//! cache in `/var/lib/cni` (containerd 1.6 cannot move it) — and the rootfs
//! overlay and shm mounts off the machine: they vanish with the namespace
//! when the last of these processes exits. So nothing the CNI plugins run
//! there may rely on `/var/lib` (the configs put every Ohno directory under
//! the test's own). The pods' network namespaces are reached
//! from outside through the pause process (`/proc/<pid>/ns/net`), whose PID
//! containerd reports in the verbose `PodSandboxStatus`.
//!
//! Clean-up ([`Drop`]): every sandbox started through [`Containerd::run`]
//! and not yet removed is stopped and removed (CNI DEL), containerd is
//! stopped by its PID, then any process left in the pods' cgroup parent
//! (pause processes of a killed shim) or named with this instance's socket
//! (a shim) is killed by PID, the cgroup directories are removed, and any
//! mount under the directory that reached this mount namespace (none is
//! expected) is detached. A harness process killed outright runs no Drop:
//! the first start in a later process kills, by PID, the containerd, shims
//! and pods such a dead process left (`cleanup::sweep_dead_harnesses`).
#![allow(dead_code)] // the test and the bench use different parts

mod cleanup;
mod spawn;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cri_client::{CriClient, PodSandboxConfig, PodSandboxMetadata, PodSandboxState};
use serde_json::Value;

use crate::common::tail;
use cleanup::{detach_mounts_under, kill_leftovers, remove_dir, stop_child, sweep_dead_harnesses};
use spawn::{connect_when_ready, containerd_config, import_pause_image, spawn_in_namespaces};

/// The sandbox image's name, as `pause-image.sh` tags it.
pub const PAUSE_IMAGE: &str = "localhost/ohno-pause:1";
/// How long containerd may take to serve CRI and to see the imported image.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long containerd may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Why the CRI tier cannot run here, if it cannot: containerd, ctr or runc
/// missing (`scripts/setup.sh` installs them).
pub fn unavailable() -> Option<String> {
    let missing: Vec<&str> = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"]
        .into_iter()
        .filter(|b| which(b).is_none())
        .collect();
    if !Path::new("/bin/busybox").is_file() {
        return Some("busybox-static (/bin/busybox) is not installed".into());
    }
    (!missing.is_empty()).then(|| format!("{} not found on PATH", missing.join(", ")))
}

/// A program on `PATH`, or in the sbin directories root's PATH has.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The repository root (the host crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// What a containerd instance gets: the host netns it runs in, its
/// directory, the conflist it loads and the plugins in its CNI bin dir.
pub struct ContainerdConf<'a> {
    /// `/var/run/netns/<name>` of the throwaway host namespace.
    pub host_netns: String,
    /// An empty directory of the caller's; everything goes under it.
    pub dir: &'a Path,
    /// The one network configuration (`max_conf_num` 1).
    pub conflist: &'a Value,
    /// Plugin name → executable, linked into the CNI bin dir. containerd
    /// itself needs `loopback` (it brings up the pod's `lo`).
    pub plugins: &'a [(&'a str, PathBuf)],
}

/// A running containerd and the sandboxes made through it.
pub struct Containerd {
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The pods' cgroup parent, `/ohno-cri-<pid>-<n>` (cgroupfs driver).
    pub cgroup_parent: String,
    pub cri: CriClient,
    live: Mutex<Vec<String>>,
}

/// One pod sandbox as the tests see it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    /// `PodSandboxStatus` network.ip.
    pub ip: String,
    /// The pause process, whose network namespace is the pod's.
    pub pid: u32,
}

impl Sandbox {
    /// `/proc/<pid>/ns/net` of the pause process.
    pub fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.pid)
    }

    /// Runs `argv` in the pod's network namespace.
    pub fn exec(&self, argv: &[&str]) -> std::process::Output {
        let netns = format!("--net={}", self.netns());
        Command::new("nsenter")
            .arg(netns)
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {argv:?} into sandbox {}: {e}", self.id))
    }

    /// Pings `addr` from inside the pod; three tries, one second each.
    pub fn ping(&self, addr: &str) -> bool {
        (0..3).any(|_| self.exec(&["ping", "-c1", "-W1", addr]).status.success())
    }
}

impl Containerd {
    /// Writes the config, the conflist and the bin dir, starts containerd,
    /// waits until it serves CRI, imports the pause image and waits until
    /// the CRI plugin knows it.
    pub fn start(conf: &ContainerdConf) -> Containerd {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_dead_harnesses);
        let dir = conf.dir.to_path_buf();
        let bin_dir = dir.join("cni-bin");
        let conf_dir = dir.join("net.d");
        for d in [&bin_dir, &conf_dir, &dir.join("logs")] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {d:?}: {e}"));
        }
        for (name, target) in conf.plugins {
            let link = bin_dir.join(name);
            std::os::unix::fs::symlink(target, &link)
                .unwrap_or_else(|e| panic!("link {link:?} -> {target:?}: {e}"));
        }
        let conflist = serde_json::to_string_pretty(conf.conflist).unwrap_or_default();
        let conflist_path = conf_dir.join("10-net.conflist");
        std::fs::write(&conflist_path, conflist)
            .unwrap_or_else(|e| panic!("write {conflist_path:?}: {e}"));

        let socket = dir.join("containerd.sock");
        let config = containerd_config(&dir, &socket, &bin_dir, &conf_dir);
        let config_path = dir.join("containerd.toml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("{config_path:?}: {e}"));

        let child =
            spawn_in_namespaces(&conf.host_netns, &config_path, &dir.join("containerd.log"));
        let cgroup_parent = format!(
            "/ohno-cri-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // From here on, Drop cleans up whatever happens.
        let mut guard = Starting {
            child: Some(child),
            dir: dir.clone(),
        };
        let Some(child) = guard.child.as_mut() else {
            unreachable!("the start-up guard holds containerd until it is ready")
        };
        let cri = connect_when_ready(&socket, child);
        import_pause_image(&dir, &socket, &cri);
        let Some(child) = guard.child.take() else {
            unreachable!("the start-up guard holds containerd until it is ready")
        };
        Containerd {
            child,
            dir,
            socket,
            cgroup_parent,
            cri,
            live: Mutex::new(Vec::new()),
        }
    }

    /// containerd's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A sandbox config for `pod` the way the kubelet builds one, with this
    /// instance's log root and cgroup parent.
    pub fn sandbox_config(
        &self,
        pod: &PodSandboxMetadata,
        annotations: &[(&str, &str)],
    ) -> PodSandboxConfig {
        let annotations: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cri_client::pod_sandbox_config(
            pod,
            annotations,
            &self.dir.join("logs"),
            &self.cgroup_parent,
        )
    }

    /// `RunPodSandbox`; the sandbox is remembered for clean-up on success.
    pub fn run(&self, config: PodSandboxConfig) -> Result<String, cri_client::Error> {
        let id = self.cri.run_pod_sandbox(config)?;
        self.remember(&id);
        Ok(id)
    }

    /// `RunPodSandbox` for every config concurrently, on one connection.
    pub fn run_concurrently(
        &self,
        configs: Vec<PodSandboxConfig>,
    ) -> Vec<Result<String, cri_client::Error>> {
        let results = self.cri.run_pod_sandboxes(configs);
        for id in results.iter().flatten() {
            self.remember(id);
        }
        results
    }

    fn remember(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.to_owned());
    }

    /// The sandbox's address, pause PID and state from a verbose
    /// `PodSandboxStatus`; panics unless it is `SANDBOX_READY`.
    pub fn ready_sandbox(&self, id: &str) -> Sandbox {
        let status = self
            .cri
            .pod_sandbox_status(id, true)
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"));
        let inner = status
            .status
            .as_ref()
            .unwrap_or_else(|| panic!("PodSandboxStatus {id} has no status"));
        assert_eq!(
            inner.state(),
            PodSandboxState::SandboxReady,
            "sandbox {id} is not ready: {inner:?}"
        );
        let ip = inner
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        // containerd 1.6's verbose info: {"info": "{\"pid\": N, ...}"}.
        let info: Value = status
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        let pid = info["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .unwrap_or_else(|| panic!("sandbox {id}: no pause pid in the verbose status {info}"));
        Sandbox {
            id: id.to_owned(),
            ip,
            pid,
        }
    }

    /// Whether `PodSandboxStatus` reports the sandbox ready.
    pub fn is_ready(&self, id: &str) -> bool {
        self.cri
            .pod_sandbox_status(id, false)
            .ok()
            .and_then(|s| s.status)
            .is_some_and(|s| s.state() == PodSandboxState::SandboxReady)
    }

    /// `StopPodSandbox` (the CNI DEL), panicking on an error.
    pub fn stop(&self, id: &str) {
        self.cri
            .stop_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
    }

    /// `RemovePodSandbox`, panicking on an error; forgets the sandbox.
    pub fn remove(&self, id: &str) {
        self.cri
            .remove_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s != id);
    }

    /// Stops and removes every sandbox still live, returning the errors.
    pub fn remove_all(&self) -> Vec<String> {
        let ids = std::mem::take(&mut *self.live.lock().unwrap_or_else(|e| e.into_inner()));
        let mut errors = Vec::new();
        for id in ids {
            if let Err(e) = self.cri.stop_pod_sandbox(&id) {
                errors.push(format!("StopPodSandbox {id}: {e}"));
            }
            if let Err(e) = self.cri.remove_pod_sandbox(&id) {
                errors.push(format!("RemovePodSandbox {id}: {e}"));
            }
        }
        errors
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for e in self.remove_all() {
            eprintln!("cri clean-up: {e}");
        }
        if std::thread::panicking() {
            eprintln!("--- tail of containerd's log\n{}", tail(&self.log(), 6000));
        }
        stop_child(&mut self.child);
        kill_leftovers(&self.socket, Some(&self.cgroup_parent));
        detach_mounts_under(&self.dir);
        // Kept after a failure, with containerd's log, for diagnosis.
        if !std::thread::panicking() {
            remove_dir(&self.dir);
        }
    }
}

/// Cleans up a containerd that has not finished starting.
struct Starting {
    child: Option<Child>,
    dir: PathBuf,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            eprintln!(
                "--- tail of containerd's log\n{}",
                tail(
                    &std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default(),
                    6000
                )
            );
            stop_child(child);
            kill_leftovers(&self.dir.join("containerd.sock"), None);
            detach_mounts_under(&self.dir);
        }
    }
}
