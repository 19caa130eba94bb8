//! A simulated cluster, all in namespaces this test creates: an "underlay"
//! namespace with two bridges and forwarding between them (a router), node
//! namespaces on them (192.0.2.0/24 + 2001:db8::/64 on the first segment,
//! 198.51.100.0/24 + 2001:db8:1::/64 on the second), one etcd member
//! listening on the router's first address, and one `ohnod run` per node.
//! Everything is stopped (by PID) and deleted on drop.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

pub const OHNOD: &str = env!("CARGO_BIN_EXE_ohnod");
pub const OHNOCTL: &str = env!("CARGO_BIN_EXE_ohnoctl");
pub const PREFIX: &str = "/ohno";
pub const NETWORK: &str = "podnet";

/// The router and the two segments.
pub struct Underlay {
    pub ns: NetNs,
}

/// One segment of the underlay: its bridge and prefixes.
#[derive(Clone, Copy)]
pub struct Segment {
    bridge: &'static str,
    v4: &'static str,
    v6: &'static str,
}

pub const SEGMENT_A: Segment = Segment {
    bridge: "ul0",
    v4: "192.0.2",
    v6: "2001:db8",
};
pub const SEGMENT_B: Segment = Segment {
    bridge: "ul1",
    v4: "198.51.100",
    v6: "2001:db8:1",
};

impl Underlay {
    pub fn new() -> Underlay {
        let ns = NetNs::create("ul");
        for seg in [SEGMENT_A, SEGMENT_B] {
            ns.exec_ok(&["ip", "link", "add", seg.bridge, "type", "bridge"]);
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{}.1/24", seg.v4),
                "dev",
                seg.bridge,
            ]);
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{}::1/64", seg.v6),
                "dev",
                seg.bridge,
                "nodad",
            ]);
            ns.exec_ok(&["ip", "link", "set", seg.bridge, "up"]);
        }
        ns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        Underlay { ns }
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Underlay::new()
    }
}

/// One etcd member in the underlay namespace, on the router's address of
/// segment A (plain HTTP: the TLS paths have their own tests).
pub struct Etcd {
    child: Child,
    dir: TempDir,
    pub endpoint: String,
}

impl Etcd {
    pub fn start(ul: &Underlay) -> Etcd {
        let dir = TempDir::new();
        let endpoint = format!("http://{}.1:2379", SEGMENT_A.v4);
        let child = Etcd::spawn(ul, &dir, &endpoint);
        let etcd = Etcd {
            child,
            dir,
            endpoint,
        };
        etcd.wait_healthy(ul);
        etcd
    }

    fn spawn(ul: &Underlay, dir: &TempDir, endpoint: &str) -> Child {
        let data = dir.path().join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("etcd.log"))
            .expect("etcd log");
        ul.ns
            .command(&[
                "etcd",
                "--name",
                "m1",
                "--data-dir",
                data.to_str().expect("utf-8"),
                "--listen-client-urls",
                endpoint,
                "--advertise-client-urls",
                endpoint,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "m1=http://127.0.0.1:2380",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd")
    }

    fn wait_healthy(&self, ul: &Underlay) {
        let up = eventually(Duration::from_secs(20), || {
            self.etcdctl(ul, &["endpoint", "health"]).status.success()
        });
        assert!(up, "etcd did not come up:\n{}", self.log());
    }

    /// SIGKILL the member (by its PID), then start it again on its data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self, ul: &Underlay) {
        self.child = Etcd::spawn(ul, &self.dir, &self.endpoint);
        self.wait_healthy(ul);
    }

    pub fn etcdctl(&self, ul: &Underlay, args: &[&str]) -> std::process::Output {
        let mut argv = vec!["etcdctl", "--endpoints", &self.endpoint];
        argv.extend_from_slice(args);
        ul.ns
            .command(&argv)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .expect("run etcdctl")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SAFETY: a signal to the child this test started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A node: a host namespace on one segment, its CNI config, its agent.
pub struct SimNode {
    pub name: String,
    pub v4: String,
    pub v6: String,
    agent: Option<Child>,
    pub node: Node,
    agent_config: PathBuf,
    log_path: PathBuf,
    pub conf: Value,
}

impl SimNode {
    /// Node `name` with host number `host` on `seg`, default routes via the
    /// router; `agent` is merged into the agent's config.
    pub fn new(
        ul: &Underlay,
        etcd: &Etcd,
        seg: Segment,
        host: u8,
        name: &str,
        agent: Value,
    ) -> SimNode {
        let node = Node::new();
        let v4 = format!("{}.{host}", seg.v4);
        let v6 = format!("{}::{host}", seg.v6);
        // Unique within the underlay namespace, which is this test's own.
        let ul_end = format!("u{host}");
        ul.ns.exec_ok(&[
            "ip",
            "link",
            "add",
            &ul_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.host.name(),
        ]);
        ul.ns
            .exec_ok(&["ip", "link", "set", &ul_end, "master", seg.bridge, "up"]);
        let h = &node.host;
        h.exec_ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        h.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        h.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        h.exec_ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("{}.1", seg.v4),
        ]);
        h.exec_ok(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("{}::1", seg.v6),
        ]);
        let mut conf = node.ohno_conf("1.1.0");
        conf["name"] = json!(NETWORK);
        conf["node"] = json!(name);
        conf["ipMasq"] = json!(true);
        // The pods' MTU is the node's to choose (the vxlan device's, on a
        // vxlan node).
        if let Some(o) = conf.as_object_mut() {
            o.remove("mtu");
        }
        conf["ipam"]["store"] = json!({
            "type": "etcd", "endpoints": [etcd.endpoint], "prefix": PREFIX,
            "timeoutMs": 2000, "retries": 2,
        });
        conf["ipam"]["pools"] = json!([
            {"name": "v4", "subnet": "10.85.0.0/16", "blockSize": 26},
            {"name": "v6", "subnet": "fd00:85::/48", "blockSize": 122},
        ]);
        conf["ipam"]["lockDir"] = json!(node.dir.path().join("run"));
        let network = node.dir.path().join("network.json");
        std::fs::write(&network, conf.to_string()).expect("write network config");
        let mut doc = json!({"network": network, "metricsAddress": "127.0.0.1:9672",
                             "logLevel": "debug", "resyncSeconds": 2});
        if let (Some(d), Some(extra)) = (doc.as_object_mut(), agent.as_object()) {
            for (k, v) in extra {
                d.insert(k.clone(), v.clone());
            }
        }
        let agent_config = node.dir.path().join("ohnod.json");
        std::fs::write(&agent_config, doc.to_string()).expect("write agent config");
        let log_path = node.dir.path().join("ohnod.log");
        SimNode {
            name: name.into(),
            v4,
            v6,
            agent: None,
            node,
            agent_config,
            log_path,
            conf,
        }
    }

    pub fn host(&self) -> &NetNs {
        &self.node.host
    }

    /// Start `ohnod run`, appending to its log.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "{}: agent already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("agent log");
        let child = self
            .node
            .host
            .command(&[
                OHNOD,
                "run",
                "--config",
                self.agent_config.to_str().expect("utf-8"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ohnod run");
        self.agent = Some(child);
    }

    /// SIGTERM the agent (by its PID) and wait for it.
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: a signal to the child this test started, by its PID.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `ip -j route show proto 111` (both families) as (text, json) rows.
    pub fn owned_routes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let text = self
                .host()
                .exec_ok(&["ip", fam, "route", "show", "proto", "111"]);
            out.extend(text.lines().map(|l| l.trim().to_string()));
        }
        out
    }

    pub fn fdb(&self, dev: &str) -> String {
        let o = self.host().exec(&["bridge", "fdb", "show", "dev", dev]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn neighbours(&self, dev: &str) -> String {
        let o = self.host().exec(&["ip", "-6", "neigh", "show", "dev", dev]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// ADD `pod`; returns the result.
    pub fn add(&self, pod: &Pod) -> Value {
        self.node.add(pod, &self.conf)
    }

    /// `ohnoctl ARGS... --config <network>` in this node's namespace.
    pub fn ohnoctl(&self, args: &[&str]) -> std::process::Output {
        let network = self.node.dir.path().join("network.json");
        let mut argv: Vec<&str> = vec![OHNOCTL];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--config", network.to_str().expect("utf-8")]);
        self.host()
            .command(&argv)
            .stdin(Stdio::null())
            .output()
            .expect("run ohnoctl")
    }

    /// `ohnoctl status -o json`.
    pub fn status(&self) -> Value {
        let o = self.ohnoctl(&["status", "-o", "json"]);
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    /// `/metrics` of the agent.
    pub fn metrics(&self) -> String {
        let o = self
            .host()
            .exec(&["curl", "-sf", "http://127.0.0.1:9672/metrics"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

/// The first address of family `v4` in an ADD result, without its prefix.
pub fn address(result: &Value, v4: bool) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .find(|a| a.contains('.') == v4)
        .unwrap_or_else(|| {
            panic!(
                "no {} address in {result}",
                if v4 { "IPv4" } else { "IPv6" }
            )
        })
}

/// Run `argv` in a pod's namespace; true when it exits 0.
pub fn in_pod(pod: &Pod, argv: &[&str]) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pod.ns.name()]).args(argv);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `ping` from `pod` to `addr` (retrying briefly: a route may be a moment away).
pub fn pings(pod: &Pod, addr: &str) -> bool {
    eventually(Duration::from_secs(5), || {
        in_pod(pod, &["ping", "-c", "1", "-W", "1", addr])
    })
}
