//! Harness for Ohno's etcd integration tests: a real 3-member mutual-TLS etcd
//! cluster (`myclusters/local-cluster.sh`) started *inside* a test's throwaway
//! host namespace, so that `127.0.0.1` is that namespace's own loopback and
//! nothing listens in the machine's namespace. `ohno`, `ohnoctl` and `etcdctl`
//! run in the same namespace (via `ip netns exec`).
//!
//! [`EtcdNode`] bundles a [`common::Node`] (host netns + temp dir) with its
//! [`Cluster`]; dropping it stops the cluster (the script signals only the PIDs
//! it recorded) and then deletes the namespace and the directory. When a test
//! fails, the cluster's directory (etcd logs, certificates) is kept and named.
//!
//! Store keys are read with `etcdctl get --prefix -w json` (keys and values are
//! base64 there) so that what the tests assert on is exactly what an operator
//! would see.
#![allow(dead_code)]

use crate::common::{
    default_cni_path, ohno_binary, one_json_document, run_plugin, Invocation, NetNs, Node, Output,
    Pod,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The operator CLI cargo built for these tests.
pub const OHNOCTL: &str = env!("CARGO_BIN_EXE_ohnoctl");
/// The network name every test config uses.
pub const NETWORK: &str = "podnet";
/// The key prefix every test config uses (unless a test is about the prefix).
pub const PREFIX: &str = "/ohno";

/// The repository root (scripts live in `myclusters/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .to_path_buf()
}

fn output_of(what: String, out: std::process::Output) -> Output {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout_json: one_json_document(&stdout),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what,
    }
}

/// A 3-member etcd cluster running inside one network namespace.
pub struct Cluster {
    /// The namespace the members listen in.
    netns: String,
    /// `--dir` of local-cluster.sh: certificates, data dirs, logs, cluster.env.
    dir: PathBuf,
    /// `cluster.env` as read after `start`.
    env: BTreeMap<String, String>,
}

impl Cluster {
    /// Starts the cluster inside `ns` (whose `lo` must be up) in `dir`, waiting
    /// until every member is healthy.
    pub fn start(ns: &NetNs, dir: &Path) -> Cluster {
        let started = Instant::now();
        let mut cluster = Cluster {
            netns: ns.name().to_owned(),
            dir: dir.to_path_buf(),
            env: BTreeMap::new(),
        };
        let out = cluster.script(&["start"]);
        // On failure the script has stopped what it started, and Drop (with no
        // env read yet) leaves the cluster alone.
        assert_eq!(out.code, 0, "{out}\nlocal-cluster.sh start failed");
        cluster.env = read_env(&dir.join("cluster.env"));
        eprintln!(
            "etcd cluster up in {:.2} s in {} (netns {})",
            started.elapsed().as_secs_f64(),
            dir.display(),
            ns.name()
        );
        cluster
    }

    /// Runs `local-cluster.sh ARGS --dir DIR` inside the namespace.
    fn script(&self, args: &[&str]) -> Output {
        let script = repo_root().join("myclusters/local-cluster.sh");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(&script)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", script.display()));
        output_of(format!("local-cluster.sh {args:?}"), out)
    }

    /// A value of `cluster.env`.
    pub fn var(&self, key: &str) -> String {
        self.env
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} missing from cluster.env: {:?}", self.env))
    }

    /// The client endpoints of all three members.
    pub fn endpoints(&self) -> Vec<String> {
        self.var("OHNO_ETCD_ENDPOINTS")
            .split(',')
            .map(str::to_owned)
            .collect()
    }

    /// The client endpoint of member `n` (1..=3).
    pub fn member_endpoint(&self, n: usize) -> String {
        self.var(&format!("OHNO_ETCD{n}_ENDPOINT"))
    }

    /// The certificate directory (`ca.pem`, `client.pem`, `other-client.pem`, ...).
    pub fn cert(&self, file: &str) -> PathBuf {
        PathBuf::from(self.var("OHNO_CERT_DIR")).join(file)
    }

    /// Stops member `n` (SIGTERM to its recorded PID; waits until it has exited).
    pub fn stop_member(&self, n: usize) {
        let out = self.script(&["stop-member", &n.to_string()]);
        assert_eq!(out.code, 0, "{out}");
    }

    /// Restarts member `n` on its data dir and waits until it is healthy.
    pub fn start_member(&mut self, n: usize) {
        let out = self.script(&["start-member", &n.to_string()]);
        assert_eq!(out.code, 0, "{out}");
        self.env = read_env(&self.dir.join("cluster.env"));
    }

    /// The member (1..=3) that is the raft leader now, asked of the members
    /// in `alive`.
    pub fn leader(&self, alive: &[usize]) -> usize {
        let endpoints: Vec<String> = alive.iter().map(|n| self.member_endpoint(*n)).collect();
        let out = self.etcdctl(&endpoints, &["endpoint", "status", "-w", "json"]);
        assert_eq!(out.code, 0, "{out}");
        let statuses = out.json().as_array().cloned().unwrap_or_default();
        for s in &statuses {
            let member = &s["Status"]["header"]["member_id"];
            if member.as_u64().is_some() && s["Status"]["leader"] == *member {
                let endpoint = s["Endpoint"].as_str().unwrap_or_default();
                if let Some(n) = (1..=3).find(|n| self.member_endpoint(*n) == endpoint) {
                    return n;
                }
            }
        }
        panic!("no leader among members {alive:?}: {out}");
    }

    /// `etcdctl ARGS` against `endpoints`, inside the namespace, with Ohno's
    /// client certificate.
    pub fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "etcdctl"])
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", self.cert("ca.pem").display()))
            .arg(format!("--cert={}", self.cert("client.pem").display()))
            .arg(format!("--key={}", self.cert("client-key.pem").display()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("spawn etcdctl {args:?}: {e}"));
        output_of(format!("etcdctl {args:?}"), out)
    }

    /// Every key under `prefix` with its value, read linearizably (needs quorum).
    pub fn keys(&self, prefix: &str) -> BTreeMap<String, String> {
        self.read_keys(&self.endpoints(), prefix, false)
    }

    /// Every key under `prefix` as member `n` has it locally (a serializable
    /// read: answered without quorum).
    pub fn keys_on_member(&self, n: usize, prefix: &str) -> BTreeMap<String, String> {
        self.read_keys(&[self.member_endpoint(n)], prefix, true)
    }

    fn read_keys(
        &self,
        endpoints: &[String],
        prefix: &str,
        serializable: bool,
    ) -> BTreeMap<String, String> {
        let mut args = vec!["get", "--prefix", prefix, "-w", "json"];
        if serializable {
            args.push("--consistency=s");
        }
        let out = self.etcdctl(endpoints, &args);
        assert_eq!(out.code, 0, "{out}");
        let doc = out.json();
        doc["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let field = |name: &str| {
                    let raw = kv[name].as_str().unwrap_or_default();
                    let bytes = base64_decode(raw)
                        .unwrap_or_else(|| panic!("etcdctl {name} is not base64: {raw:?}"));
                    String::from_utf8_lossy(&bytes).into_owned()
                };
                (field("key"), field("value"))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.env.is_empty() {
            return;
        }
        let started = Instant::now();
        let args: &[&str] = if thread::panicking() {
            eprintln!(
                "test failed: keeping the etcd cluster's dir (logs, certs) {}",
                self.dir.display()
            );
            &["stop", "--keep"]
        } else {
            &["stop"]
        };
        let out = self.script(args);
        if out.code != 0 {
            eprintln!("warning: stopping the etcd cluster failed:\n{out}");
        } else if thread::panicking() {
            // Keep the logs and certificates, not ~60 MB of preallocated WAL
            // per member.
            for n in 1..=3 {
                let _ = std::fs::remove_dir_all(self.dir.join(format!("etcd{n}")));
            }
        }
        // Should the script have found no state (its directory removed under
        // us), stop our members ourselves: by the PIDs recorded, and only while
        // they are still the members of this cluster.
        for n in 1..=3 {
            if let Some(pid) = self.env.get(&format!("OHNO_ETCD{n}_PID")) {
                stop_our_member(pid, &self.dir.join(format!("etcd{n}")));
            }
        }
        eprintln!(
            "etcd cluster stopped in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Whether `pid` is still the etcd member whose data dir is `data_dir`.
fn is_our_member(pid: i32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let want = data_dir.as_os_str().as_encoded_bytes();
    args.windows(2)
        .any(|w| w[0] == b"--data-dir" && w[1] == want)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(") ").next().unwrap_or("").starts_with('Z'))
            .unwrap_or(true)
}

/// SIGTERM (SIGKILL after 10 s) to member `pid` while it is ours.
fn stop_our_member(pid: &str, data_dir: &Path) {
    let Ok(pid) = pid.parse::<i32>() else {
        return;
    };
    if !is_our_member(pid, data_dir) {
        return;
    }
    eprintln!("warning: etcd member {pid} still running after stop; sending SIGTERM");
    // SAFETY: kill(2) with a PID we checked is our own etcd member.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_our_member(pid, data_dir) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if is_our_member(pid, data_dir) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn read_env(path: &Path) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Standard base64 (with padding), as etcdctl's JSON output writes keys and values.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// A throwaway node whose store is a fresh etcd cluster in its host namespace.
///
/// Field order matters: the cluster is stopped before the node's namespace
/// and directory go.
pub struct EtcdNode {
    pub cluster: Cluster,
    pub node: Node,
}

impl EtcdNode {
    pub fn start() -> EtcdNode {
        let node = Node::new();
        // Beside the node's directory rather than in it, under a name of its
        // own: the cluster's state must outlive whatever happens to that one.
        let dir = std::env::temp_dir().join(format!(
            "ohno-etcdtest-{}",
            node.dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let cluster = Cluster::start(&node.host, &dir);
        EtcdNode { cluster, node }
    }

    pub fn host(&self) -> &NetNs {
        &self.node.host
    }

    /// The `ipam.store` section for this cluster: mutual TLS with Ohno's
    /// client certificate, all three members.
    pub fn store(&self, timeout_ms: u64, retries: u32) -> Value {
        json!({
            "type": "etcd",
            "endpoints": self.cluster.endpoints(),
            "caFile": self.cluster.cert("ca.pem"),
            "certFile": self.cluster.cert("client.pem"),
            "keyFile": self.cluster.cert("client-key.pem"),
            "prefix": PREFIX,
            "timeoutMs": timeout_ms,
            "retries": retries,
        })
    }

    /// A complete bridge-mode config (cniVersion 1.1.0, network `podnet`) for
    /// simulated node `node_name`, storing in this cluster with the default
    /// timeouts (1000 ms × 3).
    pub fn conf(&self, node_name: &str) -> Value {
        let mut conf = self.node.ohno_conf("1.1.0");
        conf["name"] = json!(NETWORK);
        conf["node"] = json!(node_name);
        conf["ipam"]["store"] = self.store(1000, 3);
        conf["ipam"]["strictAffinity"] = json!(true);
        conf
    }

    /// Runs the plugin for `pod` in the host namespace.
    pub fn ohno(&self, command: &str, pod: &Pod, conf: &Value) -> Output {
        self.node.ohno(command, pod, conf)
    }

    /// GC as libcni sends it: CNI_COMMAND and CNI_PATH only, and the config
    /// with `cni.dev/valid-attachments`.
    pub fn gc(&self, conf: &Value, valid: &[(String, String)]) -> Output {
        let mut conf = conf.clone();
        conf["cniVersion"] = json!("1.1.0");
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        let inv = Invocation {
            binary: ohno_binary(),
            command: Some("GC".into()),
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            args: String::new(),
            cni_path: default_cni_path(),
        };
        run_plugin(&self.node.host, &inv, &conf.to_string())
    }

    /// `ohnoctl ipam SUBCOMMAND --config FILE ARGS...` in the host namespace,
    /// with `conf` written to a file.
    pub fn ohnoctl(&self, conf: &Value, subcommand: &str, args: &[&str]) -> Output {
        ohnoctl(&self.node, conf, subcommand, args)
    }

    /// Every key under `<prefix>/<section>/` (linearizable).
    pub fn section(&self, section: &str) -> BTreeMap<String, String> {
        self.cluster.keys(&format!("{PREFIX}/{section}/"))
    }
}

/// `ohnoctl ipam SUBCOMMAND --config FILE ARGS...` inside `node`'s host
/// namespace, `conf` written to a fresh file in the node's directory.
pub fn ohnoctl(node: &Node, conf: &Value, subcommand: &str, args: &[&str]) -> Output {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = node.dir.path().join(format!("ohnoctl-{n}.json"));
    std::fs::write(&file, conf.to_string())
        .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    let file_arg = file.to_string_lossy().into_owned();
    let mut argv = vec![OHNOCTL, "ipam", subcommand, "--config", &file_arg];
    argv.extend_from_slice(args);
    let out = node.host.command(&argv).stdin(Stdio::null()).output();
    let out = out.unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
    output_of(format!("ohnoctl ipam {subcommand} {args:?}"), out)
}

/// Starts the plugin for `pod` in `host` and returns the running process
/// (which is `ohno` itself: `ip netns exec` execs without forking), with the
/// config already written to its stdin. Its output is discarded.
pub fn spawn_plugin(host: &NetNs, command: &str, pod: &Pod, conf: &Value) -> Child {
    let binary = ohno_binary();
    let mut cmd = host.command(&[&binary.to_string_lossy()]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", pod.ns.path())
        .env("CNI_IFNAME", &pod.ifname)
        .env("CNI_ARGS", "")
        .env("CNI_PATH", default_cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn ohno {command}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        // Fits in the pipe buffer, so this does not block on the child.
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    child
}

/// Creates `n` pods (each its own netns) on a few threads: `ip netns add` is
/// mostly waiting.
pub fn pods(n: usize) -> Vec<Pod> {
    let per = n.div_ceil(4).max(1);
    let handles: Vec<_> = (0..n)
        .collect::<Vec<_>>()
        .chunks(per)
        .map(|c| {
            let k = c.len();
            thread::spawn(move || (0..k).map(|_| Pod::new()).collect::<Vec<Pod>>())
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_else(|_| panic!("creating pods failed")))
        .collect()
}

/// The address of an `ips[]` entry without its prefix length.
pub fn bare(address: &str) -> &str {
    address.split('/').next().unwrap_or(address)
}

/// The error document's `details` (empty when there is none).
pub fn details(out: &Output) -> String {
    out.json()["details"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Parses a key's JSON value, panicking with the key on failure.
pub fn value_json(key: &str, value: &str) -> Value {
    serde_json::from_str(value).unwrap_or_else(|e| panic!("value of {key} is not JSON: {e}"))
}

/// A small xorshift generator: the SIGKILL test's delays vary per run, and the
/// seed is printed so a failing run can be replayed (`OHNO_TEST_SEED`).
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_clock() -> Rng {
        let seed = std::env::var("OHNO_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x5eed)
            })
            | 1;
        eprintln!("random seed: OHNO_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Waits at most `timeout` for `child`; kills it (by its PID) if it is still
/// running then. Returns whether it exited on its own.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
