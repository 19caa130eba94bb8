//! Harness for Ohno's netns integration tests and the CNI benchmark.
//!
//! Everything here happens inside network namespaces the harness creates and
//! deletes: a throwaway "host" namespace per test (where the plugin runs, via
//! `ip netns exec`, and where the bridge, host veths and nftables rules live)
//! and one namespace per pod beside it. The machine's own namespace is never
//! touched. Names are `ohno-t-<pid>-<n>-<role>`, unique per process and per
//! test, so tests run in parallel; guards delete them on drop, and a run sweeps
//! namespaces left behind by harness processes that no longer exist (killed
//! by a signal, say) once they are half an hour old.
//!
//! It also carries a small CNI runtime (what libcni does for a conflist): ADD
//! each plugin in order with `name`, `cniVersion`, `prevResult` and the
//! `runtimeConfig` of declared capabilities injected; CHECK in order and DEL in
//! reverse with the cached ADD result as `prevResult`.
//!
//! Shared by every test crate and by `benches/cni.rs` (through `#[path]`), so
//! each user sees parts it does not call.
#![allow(dead_code)]

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Once};
use std::thread;
use std::time::Duration;

/// The plugin cargo built for these integration tests and benches.
pub const OHNO: &str = env!("CARGO_BIN_EXE_ohno");

/// The plugin under test: `$OHNO_BIN` when set (an installed or saved
/// binary), else the one cargo built.
pub fn ohno_binary() -> PathBuf {
    std::env::var_os("OHNO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(OHNO))
}
/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// Every result version Ohno writes.
pub const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The highest version Debian's reference plugins (1.1.1) speak.
pub const REFERENCE_VERSION: &str = "1.0.0";
/// A plugin that hangs longer than this is killed (by its PID) and the test fails.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Python used for tiny TCP servers and clients inside namespaces.
pub const PYTHON: &str = "/usr/bin/python3";

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

const NETNS_DIR: &str = "/var/run/netns";
const NAME_PREFIX: &str = "ohno-t-";

/// A name unique to this process and call: `ohno-t-<pid>-<n>-<role>`.
pub fn unique_name(role: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{n}-{role}", std::process::id())
}

/// Fails the test early, with a reason, when it cannot create namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "netns integration tests create network namespaces: run them as root \
         (CAP_NET_ADMIN and CAP_SYS_ADMIN), e.g. `sudo -E make test`"
    );
}

/// Runs a command to completion and panics, with its stderr, if it fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces older than this whose creator is gone are leftovers.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Deletes `ohno-t-<pid>-*` namespaces whose harness process is gone.
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Age as well as a dead PID: a run in another PID namespace sharing
        // /var/run/netns must not lose namespaces it is still using.
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A network namespace created with `ip netns add` and deleted on drop.
///
/// Deleting a namespace removes everything in it: links (and their veth
/// peers elsewhere), addresses, routes, nftables rules, sysctls.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `ohno-t-<pid>-<n>-<role>` with `lo` up.
    pub fn create(role: &str) -> NetNs {
        require_root();
        SWEEP.call_once(sweep_stale_namespaces);
        let name = unique_name(role);
        run_ok("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("{NETNS_DIR}/{}", self.name)
    }

    /// `ip netns exec NAME argv...`, not yet started.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its output, whatever the status.
    pub fn exec(&self, argv: &[&str]) -> std::process::Output {
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {}: {e}", self.name))
    }

    /// Runs `argv` inside the namespace, panics if it fails, returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in netns {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j -d <args>` inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut argv = vec!["ip", "-j", "-d"];
        argv.extend_from_slice(args);
        let out = self.exec_ok(&argv);
        if out.trim().is_empty() {
            return Vec::new();
        }
        match serde_json::from_str(&out) {
            Ok(Value::Array(items)) => items,
            other => panic!("unexpected output of {argv:?} in {}: {other:?}", self.name),
        }
    }

    /// Every link, as `ip -j -d link show` describes it.
    pub fn links(&self) -> Vec<Value> {
        self.ip_json(&["link", "show"])
    }

    /// Names of every link, sorted.
    pub fn link_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// One link by name, if it exists.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.links()
            .into_iter()
            .find(|l| l["ifname"].as_str() == Some(name))
    }

    /// IPv4 addresses on `dev` as `(address, prefix length)`.
    pub fn ipv4_addrs(&self, dev: &str) -> Vec<(Ipv4Addr, u8)> {
        let links = self.ip_json(&["-4", "addr", "show", "dev", dev]);
        let mut addrs = Vec::new();
        for link in &links {
            for info in link["addr_info"].as_array().into_iter().flatten() {
                let local = info["local"].as_str().and_then(|a| a.parse().ok());
                let len = info["prefixlen"]
                    .as_u64()
                    .and_then(|l| u8::try_from(l).ok());
                if let (Some(local), Some(len)) = (local, len) {
                    addrs.push((local, len));
                }
            }
        }
        addrs
    }

    /// The main table's IPv4 routes, as `ip -j route show` describes them.
    pub fn routes(&self) -> Vec<Value> {
        self.ip_json(&["-4", "route", "show"])
    }

    /// The default route's gateway and device, if there is a default route.
    pub fn default_route(&self) -> Option<(String, String)> {
        self.routes().into_iter().find_map(|r| {
            (r["dst"].as_str() == Some("default")).then(|| {
                (
                    r["gateway"].as_str().unwrap_or_default().to_owned(),
                    r["dev"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
    }

    /// Pings `addr` once from inside the namespace; three tries, one second each.
    pub fn ping(&self, addr: &str) -> bool {
        (0..3).any(|_| self.exec(&["ping", "-c1", "-W1", addr]).status.success())
    }

    /// Reads a sysctl as the namespace sees it.
    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec_ok(&["cat", &path]).trim().to_owned()
    }

    /// `nft -j list ruleset` inside the namespace.
    pub fn nft_ruleset(&self) -> Value {
        let out = self.exec_ok(&["nft", "-j", "list", "ruleset"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j output: {e}: {out}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete netns {}", self.name);
        }
    }
}

impl fmt::Debug for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A fresh directory, removed on drop; kept (and named) when the test failed.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique_name("dir"));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test failed: keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns
/// whether it held. For effects the kernel completes asynchronously, such as
/// destroying a deleted namespace's veth peers.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir` with its size: a store's footprint, to compare.
pub fn file_tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => walk(&path, out),
                Ok(m) => {
                    out.insert(path, m.len());
                }
                Err(_) => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// What a plugin process left: its exit code and stdout (parsed when it is
/// exactly one JSON document).
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_json: Option<Value>,
    /// What was asked, for failure messages.
    pub what: String,
}

impl Output {
    /// The single JSON document on stdout; panics if there is not exactly one.
    pub fn json(&self) -> &Value {
        match &self.stdout_json {
            Some(v) => v,
            None => panic!("{self}\nstdout is not exactly one JSON document"),
        }
    }

    /// Panics unless the plugin exited 0; returns the output for chaining.
    pub fn success(&self) -> &Self {
        assert_eq!(self.code, 0, "{self}\nexpected success");
        self
    }

    /// Asserts a CNI error: non-zero exit and exactly one error document
    /// `{cniVersion, code, msg, details?}` carrying `code`; returns its `msg`.
    pub fn error_with_code(&self, code: u64) -> String {
        assert_ne!(self.code, 0, "{self}\nexpected a non-zero exit");
        let doc = self.json();
        let obj = doc
            .as_object()
            .unwrap_or_else(|| panic!("{self}\nerror is not a JSON object"));
        for key in obj.keys() {
            assert!(
                ["cniVersion", "code", "msg", "details"].contains(&key.as_str()),
                "{self}\nunexpected key {key:?} in the error document"
            );
        }
        assert!(
            doc["cniVersion"].is_string(),
            "{self}\nerror has no cniVersion"
        );
        assert_eq!(doc["code"].as_u64(), Some(code), "{self}\nwrong error code");
        let msg = doc["msg"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{self}\nerror has no msg");
        msg.to_owned()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code,
            self.stdout.trim_end(),
            tail(&self.stderr, 4000)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Parses stdout only when it holds exactly one JSON document.
pub fn one_json_document(stdout: &str) -> Option<Value> {
    let mut docs = serde_json::Deserializer::from_str(stdout).into_iter::<Value>();
    let first = docs.next()?.ok()?;
    docs.next().is_none().then_some(first)
}

/// One plugin execution as a runtime would do it.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub binary: PathBuf,
    /// `None` leaves `CNI_COMMAND` unset.
    pub command: Option<String>,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub cni_path: String,
}

impl Invocation {
    /// Ohno, with `CNI_PATH` set as a runtime would.
    pub fn ohno(command: &str, pod: &Pod) -> Invocation {
        Invocation {
            binary: ohno_binary(),
            command: Some(command.to_owned()),
            container_id: pod.container_id.clone(),
            netns: pod.ns.path(),
            ifname: pod.ifname.clone(),
            args: String::new(),
            cni_path: default_cni_path(),
        }
    }
}

/// `<dir of the ohno binary>:/usr/lib/cni`.
pub fn default_cni_path() -> String {
    let binary = ohno_binary();
    let dir = binary.parent().unwrap_or(Path::new("."));
    format!("{}:{REFERENCE_PLUGINS}", dir.display())
}

/// Execs a plugin inside `host` (via `ip netns exec`) with the CNI environment
/// and `stdin`, and collects its exit code and stdout.
pub fn run_plugin(host: &NetNs, inv: &Invocation, stdin: &str) -> Output {
    let binary = inv.binary.to_string_lossy().into_owned();
    let mut cmd = host.command(&[&binary]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(key);
        }
    }
    if let Some(command) = &inv.command {
        cmd.env("CNI_COMMAND", command);
    }
    cmd.env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.args)
        .env("CNI_PATH", &inv.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!(
        "{} {} (container {}, netns {}, ifname {})",
        inv.binary.file_name().unwrap_or_default().to_string_lossy(),
        inv.command.as_deref().unwrap_or("<no CNI_COMMAND>"),
        inv.container_id,
        inv.netns,
        inv.ifname
    );

    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut child_stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let input = stdin.as_bytes().to_vec();
    let writer = thread::spawn(move || {
        if let Some(pipe) = child_stdin.as_mut() {
            // A plugin may exit without reading stdin (VERSION, early errors).
            let _ = pipe.write_all(&input);
        }
    });
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = stdout.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = done_tx.send(buf);
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });

    // stdout closes when the plugin exits; the child is not reaped until
    // `wait`, so a kill on timeout can only reach our own child.
    let (stdout, timed_out) = match done_rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(buf) => (buf, false),
        Err(_) => {
            let _ = child.kill();
            (done_rx.recv().unwrap_or_default(), true)
        }
    };
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("wait for {what}: {e}"));
    let _ = writer.join();
    let stderr = err_reader.join().unwrap_or_default();
    let mut stderr = String::from_utf8_lossy(&stderr).into_owned();
    if timed_out {
        stderr.push_str(&format!("\n[harness] killed after {PLUGIN_TIMEOUT:?}"));
    }
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    Output {
        code: status.code().unwrap_or(-1),
        stdout_json: one_json_document(&stdout),
        stdout,
        stderr,
        what,
    }
}

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

/// `"10.85.17.2/26"` → `(10.85.17.2, 26)`.
pub fn parse_cidr(s: &str) -> (Ipv4Addr, u8) {
    let (addr, len) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("{s:?} is not a CIDR"));
    let addr = addr
        .parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an IPv4 CIDR: {e}"));
    let len = len
        .parse()
        .unwrap_or_else(|e| panic!("{s:?} has a bad prefix length: {e}"));
    (addr, len)
}

/// Whether `addr` lies in `net/len`.
pub fn in_subnet(addr: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(addr) & mask == u32::from(net) & mask
}

/// The first IPv4 entry of a result's `ips`: (address, prefix length, gateway).
pub fn first_ipv4(result: &Value) -> (Ipv4Addr, u8, Option<Ipv4Addr>) {
    let ip = result["ips"]
        .as_array()
        .and_then(|ips| ips.first())
        .unwrap_or_else(|| panic!("result has no ips: {result}"));
    let (addr, len) = parse_cidr(ip["address"].as_str().unwrap_or_default());
    let gateway = ip["gateway"].as_str().and_then(|g| g.parse().ok());
    (addr, len, gateway)
}

/// A conflist driven the way libcni drives one.
pub struct Runtime<'a> {
    pub host: &'a NetNs,
    pub cni_path: String,
}

/// Per-attachment runtime inputs.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    /// Capability name → value, e.g. `portMappings`. Passed in `runtimeConfig`
    /// only to plugins whose `capabilities` declare it.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    pub fn for_pod(pod: &Pod) -> RuntimeConf {
        RuntimeConf {
            container_id: pod.container_id.clone(),
            netns: pod.ns.path(),
            ifname: pod.ifname.clone(),
            ..RuntimeConf::default()
        }
    }
}

/// A plugin in a conflist failed.
#[derive(Debug)]
pub struct ListFailure {
    pub plugin: String,
    pub output: String,
}

impl fmt::Display for ListFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plugin {} failed: {}", self.plugin, self.output)
    }
}

impl<'a> Runtime<'a> {
    pub fn new(host: &'a NetNs) -> Runtime<'a> {
        Runtime {
            host,
            cni_path: default_cni_path(),
        }
    }

    /// The executable for a plugin `type`, searched in `CNI_PATH` order.
    pub fn find_plugin(&self, plugin_type: &str) -> PathBuf {
        self.cni_path
            .split(':')
            .map(|dir| Path::new(dir).join(plugin_type))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("plugin {plugin_type:?} not found in {}", self.cni_path))
    }

    /// The stdin libcni would give `plugin`.
    fn plugin_conf(
        list: &Value,
        plugin: &Value,
        prev_result: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(prev) = prev_result {
            conf["prevResult"] = prev.clone();
        }
        let mut runtime_config = Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, enabled) in caps {
                if enabled.as_bool() == Some(true) {
                    if let Some(value) = rt.capability_args.get(cap) {
                        runtime_config.insert(cap.clone(), value.clone());
                    }
                }
            }
        }
        if !runtime_config.is_empty() {
            conf["runtimeConfig"] = Value::Object(runtime_config);
        }
        conf
    }

    fn exec(
        &self,
        command: &str,
        list: &Value,
        plugin: &Value,
        prev: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Result<Output, ListFailure> {
        let plugin_type = plugin["type"].as_str().unwrap_or_default().to_owned();
        let inv = Invocation {
            binary: self.find_plugin(&plugin_type),
            command: Some(command.to_owned()),
            container_id: rt.container_id.clone(),
            netns: rt.netns.clone(),
            ifname: rt.ifname.clone(),
            args: rt.args.clone(),
            cni_path: self.cni_path.clone(),
        };
        let stdin = Self::plugin_conf(list, plugin, prev, rt).to_string();
        let out = run_plugin(self.host, &inv, &stdin);
        if out.code == 0 {
            Ok(out)
        } else {
            Err(ListFailure {
                plugin: plugin_type,
                output: out.to_string(),
            })
        }
    }

    fn plugins(list: &Value) -> &[Value] {
        list["plugins"].as_array().map(Vec::as_slice).unwrap_or(&[])
    }

    /// ADD through every plugin in order; returns the last plugin's result.
    pub fn add_list(&self, list: &Value, rt: &RuntimeConf) -> Result<Value, ListFailure> {
        let mut prev: Option<Value> = None;
        for plugin in Self::plugins(list) {
            let out = self.exec("ADD", list, plugin, prev.as_ref(), rt)?;
            let result = out.stdout_json.clone().ok_or_else(|| ListFailure {
                plugin: plugin["type"].to_string(),
                output: format!("{out}\nADD printed no single JSON result"),
            })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through every plugin in order, with the cached ADD result,
    /// except plugins whose `type` is in `skip` (see the caller for why).
    pub fn check_list(
        &self,
        list: &Value,
        rt: &RuntimeConf,
        cached: &Value,
        skip: &[&str],
    ) -> Result<(), ListFailure> {
        for plugin in Self::plugins(list) {
            if skip.iter().any(|s| plugin["type"] == *s) {
                continue;
            }
            self.exec("CHECK", list, plugin, Some(cached), rt)?;
        }
        Ok(())
    }

    /// DEL through every plugin in reverse order, with the cached ADD result.
    pub fn del_list(
        &self,
        list: &Value,
        rt: &RuntimeConf,
        cached: Option<&Value>,
    ) -> Result<(), ListFailure> {
        for plugin in Self::plugins(list).iter().rev() {
            self.exec("DEL", list, plugin, cached, rt)?;
        }
        Ok(())
    }
}

/// A process started inside a namespace, killed (by its PID) and reaped on drop.
pub struct Background {
    child: std::process::Child,
}

impl Background {
    /// Starts `argv` in `ns` and waits until it prints its first line
    /// (a readiness signal), which is returned.
    pub fn start(ns: &NetNs, argv: &[&str]) -> (Background, String) {
        let mut child = ns
            .command(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {ns:?}: {e}"));
        let stdout = child.stdout.take();
        let bg = Background { child };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = Vec::new();
            if let Some(mut pipe) = stdout {
                let mut byte = [0u8; 1];
                while let Ok(1) = pipe.read(&mut byte) {
                    if byte[0] == b'\n' {
                        break;
                    }
                    line.push(byte[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                // Keep draining so the process never blocks on a full pipe.
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{argv:?} in {ns:?} did not report ready"));
        (bg, ready)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
