//! A throwaway node and its pods, and what Ohno leaves on a node: on-demand
//! helper servers and host veths.

use super::netns::{NetNs, NAME_PREFIX};
use super::plugin::{run_plugin, Invocation, Output};
use super::util::{eventually, tail, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

/// A pod: its own network namespace, a container id and the interface name
/// the runtime asks for.
pub struct Pod {
    pub ns: NetNs,
    pub container_id: String,
    pub ifname: String,
}

impl Pod {
    pub fn new() -> Pod {
        let ns = NetNs::create("p");
        let container_id = format!("ctr-{}", ns.name().trim_start_matches(NAME_PREFIX));
        Pod {
            ns,
            container_id,
            ifname: "eth0".to_owned(),
        }
    }
}

impl Default for Pod {
    fn default() -> Self {
        Self::new()
    }
}

/// A throwaway node: the "host" namespace the plugin runs in, plus a fresh
/// directory for the local store and the plugin's log file.
pub struct Node {
    pub host: NetNs,
    pub dir: TempDir,
}

impl Node {
    pub fn new() -> Node {
        Node {
            host: NetNs::create("h"),
            dir: TempDir::new(),
        }
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("ohno.log")
    }

    /// Ohno's plugin-level fields for this node (no `name`/`cniVersion`), as
    /// they appear inside a conflist's `plugins`.
    pub fn ohno_plugin(&self) -> Value {
        json!({
            "type": "ohno",
            "bridge": "ohno0",
            "mtu": 1500,
            "isDefaultGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "node": "node-a",
            "logFile": self.log_file(),
            "logLevel": "debug",
            "ipam": {
                "type": "ohno",
                "pools": [ { "name": "default", "subnet": "10.85.0.0/16", "blockSize": 26 } ],
                "routes": [ { "dst": "0.0.0.0/0" } ],
                "store": { "type": "local", "dataDir": self.store_dir() }
            }
        })
    }

    /// A complete single-plugin network configuration in `version`.
    pub fn ohno_conf(&self, version: &str) -> Value {
        let mut conf = self.ohno_plugin();
        conf["cniVersion"] = json!(version);
        conf["name"] = json!("podnet");
        conf
    }

    /// Runs Ohno for `pod` with `conf` on stdin.
    pub fn ohno(&self, command: &str, pod: &Pod, conf: &Value) -> Output {
        run_plugin(
            &self.host,
            &Invocation::ohno(command, pod),
            &conf.to_string(),
        )
    }

    /// ADD, asserting success; returns the result.
    pub fn add(&self, pod: &Pod, conf: &Value) -> Value {
        self.ohno("ADD", pod, conf).success().json().clone()
    }

    /// CHECK or DEL with the cached ADD result as `prevResult`.
    pub fn with_prev_result(&self, conf: &Value, prev: &Value) -> Value {
        let mut conf = conf.clone();
        conf["prevResult"] = prev.clone();
        conf
    }

    /// Host-side links whose names look like Ohno's veths.
    pub fn host_veths(&self) -> Vec<String> {
        self.host
            .link_names()
            .into_iter()
            .filter(|n| is_ohno_veth_name(n))
            .collect()
    }

    /// Whether every Ohno host veth is gone within 10 s. DEL hands the veth
    /// pair's deletion to a detached reaper (the kernel's RCU barrier is slow)
    /// and a deleted netns is destroyed from a kernel workqueue, so "gone" is
    /// eventual, not immediate.
    pub fn host_veths_eventually_gone(&self) -> bool {
        eventually(Duration::from_secs(10), || self.host_veths().is_empty())
    }

    /// The attachments in the store `conf` names, as `ohnoctl ipam ls -o json`
    /// lists them.
    pub fn allocations(&self, conf: &Value) -> Vec<Value> {
        let path = self.dir.path().join("ohnoctl-ls-conf.json");
        std::fs::write(&path, conf.to_string()).expect("write config for ohnoctl");
        let out = Command::new(env!("CARGO_BIN_EXE_ohnoctl"))
            .args(["ipam", "ls", "-o", "json", "--config"])
            .arg(&path)
            .output()
            .expect("run ohnoctl");
        assert!(
            out.status.success(),
            "ohnoctl ipam ls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ohnoctl ipam ls -o json prints a list")
    }

    /// The plugin's log, or a note that there is none.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_else(|e| format!("<no log: {e}>"))
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- tail of {}\n{}",
                self.log_file().display(),
                tail(&self.log(), 6000)
            );
        }
    }
}

/// The socket of the on-demand server (`ohnod on-demand`) of `kind` (`etcd`,
/// `policy`: the socket's prefix) in the lock directory `dir`, if there is
/// one.
pub fn helper_socket(dir: &Path, kind: &str) -> Option<PathBuf> {
    let prefix = format!("{kind}-");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".sock"))
        })
}

/// The PID the `kind` on-demand server wrote into its lock file, while that
/// process is alive and is that server (see [`is_on_demand_server`]).
pub fn helper_pid(dir: &Path, kind: &str) -> Option<i32> {
    let lock = helper_socket(dir, kind)?.with_extension("lock");
    let pid: i32 = std::fs::read_to_string(lock).ok()?.trim().parse().ok()?;
    is_on_demand_server(pid, kind).then_some(pid)
}

/// Whether `pid` is an on-demand server for the sockets of `kind` (`etcd`,
/// `policy`), by its command line: `…/ohnod on-demand store|policy`.
pub fn is_on_demand_server(pid: i32, kind: &str) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let service = match kind {
        "etcd" => "store",
        other => other,
    };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.len() >= 3
        && Path::new(std::ffi::OsStr::from_bytes(args[0])).file_name()
            == Some(std::ffi::OsStr::new("ohnod"))
        && args[1] == b"on-demand"
        && args[2] == service.as_bytes()
}

/// `veth` followed by 11 lower-case hex digits.
pub fn is_ohno_veth_name(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("veth")
        && name[4..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}
