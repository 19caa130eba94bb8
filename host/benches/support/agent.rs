//! `ohnod run` for the benchmarks: started in a node's host namespace,
//! serving one network, stopped by its PID. Included with
//! `#[path = "support/agent.rs"] mod agent;` next to `mod common;`.

#![allow(dead_code)] // each bench uses its own subset

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, ohno_binary, Node};

/// `ohnod run` in a node's host namespace, serving `conf`'s network; stopped
/// (SIGTERM, by its PID) when dropped.
pub struct Agent {
    child: std::process::Child,
}

impl Agent {
    pub fn start(node: &Node, conf: &Value) -> Agent {
        let dir = node.dir.path();
        let lock_dir = PathBuf::from(conf["ipam"]["lockDir"].as_str().expect("lockDir"));
        // One agent per node-local directory: its files are named after it,
        // so several simulated nodes in one namespace each get their own.
        let tag = lock_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("locks")
            .to_owned();
        let network = dir.join(format!("ohnod-{tag}-network.json"));
        std::fs::write(&network, conf.to_string()).expect("write the agent's network");
        let config = dir.join(format!("ohnod-{tag}.json"));
        let doc = json!({ "network": network, "metricsAddress": "", "logLevel": "warn" });
        std::fs::write(&config, doc.to_string()).expect("write the agent's config");
        let ohnod = ohno_binary().with_file_name("ohnod");
        let log = std::fs::File::create(dir.join(format!("ohnod-{tag}.log"))).expect("agent log");
        let child = node
            .host
            .command(&[
                ohnod.to_str().expect("utf-8 path"),
                "run",
                "--config",
                config.to_str().expect("utf-8 path"),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ohnod run");
        let socket = lock_dir.join("ohnod.sock");
        assert!(
            common::eventually(Duration::from_secs(10), || socket.exists()),
            "ohnod run did not serve {socket:?}"
        );
        Agent { child }
    }

    /// The agent's resident set (its own process: `ip netns exec` execs it).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: a signal to the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
