//! Whole-process CNI benchmark, one run, three tables (`make bench`, as root):
//!
//! 1. ADD and DEL latency of N sequential pods (env `OHNO_BENCH_N`, default 50)
//!    for Ohno with the local store (fresh, and aged by a few hundred
//!    allocate/release cycles: the store's WAL grows with every write), Ohno
//!    with a 3-member mutual-TLS etcd cluster, and Debian's reference
//!    `bridge` with `host-local`, with ratios to the reference and the targets
//!    next to them. Ohno's DEL returns before the kernel has deleted the veth (a
//!    detached `ohnod on-demand reap`, or the agent's reaper, does that), so
//!    "DEL until the pod's host veth is gone" is reported beside it.
//! 2. ADD latency with an almost empty /16 pool versus the same pool 90% full,
//!    for both stores. The full pool is written through the `ohno` library
//!    (block claims, address and attachment keys of filler nodes, batched
//!    transactions), not through 56k plugin calls.
//! 3. Throughput: 4 nodes × 50 concurrent ADDs (200 processes; env
//!    `OHNO_BENCH_PODS_PER_NODE`) against the etcd cluster, and against the
//!    local store (4 nodes sharing one store file: 4 nodes on one machine).
//!    Fails the run if an ADD failed or an address was handed out twice.
//!
//! The report is printed and written as Markdown to `target/bench/report.md`;
//! every sample, in the order taken, goes to `target/bench/samples.json`.
//!
//! Isolation: every contender gets a throwaway host network namespace (the
//! plugin runs there, and so does its etcd cluster: 127.0.0.1 is that
//! namespace's loopback); pods are pre-created namespaces beside it (creation
//! is not timed). The machine's own namespace is never touched. Plugins are
//! exec'd as a runtime execs them: the bench forks, the child `setns()`es into
//! the host namespace (an fd opened before the fork) and execs the plugin; if
//! `setns` fails the plugin never runs. Guards delete namespaces, stop the
//! cluster and remove directories on every exit, including a panic or
//! SIGINT/SIGTERM/SIGHUP (which turn into a panic at the next checkpoint).

#[path = "support/agent.rs"]
mod agent;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/etcd_support/mod.rs"]
mod etcd_support;
#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use agent::Agent;
use common::{default_cni_path, ohno_binary, Node, Pod, REFERENCE_PLUGINS, REFERENCE_VERSION};
use etcd_support::{pods, EtcdNode};
use ohno::config::{EtcdConf, PoolConf};
use ohno::ip::cidr::{from_u128, Cidr};
use ohno::ipam::allocator::BlockRecord;
use ohno::ipam::block::Layout;
use ohno::ipam::keys::Keys;
use ohno::ipam::model::{AttachmentRecord, IpRecord, Owner};
use ohno::ipam::Allocator;
use ohno::store::etcd::EtcdStore;
use ohno::store::local::LocalStore;
use ohno::store::{Kv, Txn};
use serde_json::{json, Value};
use support::{
    checkpoint, env_usize, install_signal_handlers, loadavg, ms, p50, p95, percentile, verdict,
    Host, Report, Table,
};

/// A plugin call that takes longer than this is killed (by its PID).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a deleted pod's host veth may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// The pool every Ohno config uses (the harness's).
const POOL_SUBNET: &str = "10.85.0.0/16";
const POOL_BLOCK: u8 = 26;
/// Share of the pool's usable addresses the "full" prefix holds.
const FULL_PERCENT: u128 = 90;
const FILLER_NODES: usize = 100;
/// Allocate/release cycles that age the "aged" local store before table 1.
const AGE_CYCLES: usize = 300;
const NETWORK: &str = "podnet";
/// The simulated nodes of the throughput table.
const NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];

// ------------------------------------------------------------------ signals

/// Removes, after every other guard has run, the directories the harness
/// keeps for diagnosis when a run panics: on an interrupt there is nothing
/// to diagnose. (A failed run keeps them, and the harness names them.)
#[derive(Default)]
struct SweepOnInterrupt {
    dirs: Vec<PathBuf>,
}

impl Drop for SweepOnInterrupt {
    fn drop(&mut self) {
        if support::interrupted() {
            for dir in &self.dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
            eprintln!("bench: interrupted; removed {:?}", self.dirs);
        }
    }
}

// ------------------------------------------------------------------ processes

impl Host {
    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns
            .run(|| Ok(f()))
            .unwrap_or_else(|e| panic!("enter netns {}: {e}", self.name))
    }

    /// The ifindex of link `name` in this namespace.
    fn ifindex(&self, name: &str) -> Option<u32> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: a valid NUL-terminated name; no other preconditions.
        let idx = self.run(|| unsafe { libc::if_nametoindex(c.as_ptr()) });
        (idx != 0).then_some(idx)
    }

    /// Polls until link `ifindex` no longer exists here; returns when it was
    /// seen gone, or None after `GONE_TIMEOUT`.
    fn wait_gone(&self, ifindex: u32) -> Option<Instant> {
        self.run(|| {
            let deadline = Instant::now() + GONE_TIMEOUT;
            let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
            loop {
                // SAFETY: `name` has IF_NAMESIZE bytes, as if_indextoname needs.
                let r = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
                if r.is_null() {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::ENXIO) | Some(libc::ENODEV) => return Some(Instant::now()),
                        _ => panic!("if_indextoname({ifindex}): {e}"),
                    }
                }
                if Instant::now() >= deadline {
                    return None;
                }
                thread::sleep(Duration::from_micros(250));
            }
        })
    }
}

/// `CNI_*` variables of our own environment, removed from every child's.
fn inherited_cni_keys() -> &'static [OsString] {
    static KEYS: OnceLock<Vec<OsString>> = OnceLock::new();
    KEYS.get_or_init(|| {
        std::env::vars_os()
            .map(|(k, _)| k)
            .filter(|k| k.to_string_lossy().starts_with("CNI_"))
            .collect()
    })
}

/// A started process whose output is being collected.
struct Running {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out: Vec<u8>,
    err: Vec<u8>,
    start: Instant,
    what: String,
}

/// A finished process.
struct Done {
    code: i32,
    stdout: String,
    stderr: String,
    start: Instant,
    end: Instant,
    what: String,
}

impl Done {
    fn elapsed(&self) -> Duration {
        self.end - self.start
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{self}\nstdout is not one JSON document: {e}"))
    }
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let err = self.stderr.trim_end();
        let err = &err[err.len().saturating_sub(3000)..];
        write!(
            f,
            "{}: exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code,
            self.stdout.trim_end(),
            err
        )
    }
}

/// Forks, enters `host` (setns on the fd opened before the fork) and execs
/// `program` with `env` added; writes `stdin` (a config: it fits in the pipe
/// buffer) and closes it.
fn spawn_in(
    host: &Host,
    program: &Path,
    env: &[(&str, &str)],
    stdin: &[u8],
    what: String,
) -> Running {
    let mut cmd = Command::new(program);
    for key in inherited_cni_keys() {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    host.enter_on_exec(&mut cmd);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} in netns {}: {e}", host.name));
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin may exit without reading its stdin.
        let _ = pipe.write_all(stdin);
    }
    Running {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        out: Vec::new(),
        err: Vec::new(),
        start,
        what,
    }
}

/// Collects every process's output with poll(2) and reaps each one as soon
/// as both its pipes close; its end time is taken then. A process still
/// running at `timeout` is killed (it is our own child) and reported as exit -1.
fn finish_all(mut runs: Vec<Running>, timeout: Duration) -> Vec<Done> {
    let deadline = Instant::now() + timeout;
    let mut done: Vec<Option<Done>> = runs.iter().map(|_| None).collect();
    let mut buf = vec![0u8; 64 * 1024];
    let reap = |r: &mut Running, killed: bool| -> Done {
        let status = r.child.wait();
        let end = Instant::now();
        let mut stderr = String::from_utf8_lossy(&r.err).into_owned();
        if killed {
            stderr.push_str(&format!("\n[bench] killed after {timeout:?}"));
        }
        Done {
            code: status.ok().and_then(|s| s.code()).unwrap_or(-1),
            stdout: String::from_utf8_lossy(&r.out).into_owned(),
            stderr,
            start: r.start,
            end,
            what: std::mem::take(&mut r.what),
        }
    };
    loop {
        let mut fds = Vec::new();
        let mut owners = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            for (which, pipe) in [
                (0, r.stdout.as_ref().map(|p| p.as_raw_fd())),
                (1, r.stderr.as_ref().map(|p| p.as_raw_fd())),
            ] {
                if let Some(fd) = pipe {
                    fds.push(libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    owners.push((i, which));
                }
            }
        }
        if fds.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || support::interrupted() {
            for (i, r) in runs.iter_mut().enumerate() {
                if done[i].is_none() {
                    let _ = r.child.kill();
                    r.stdout = None;
                    r.stderr = None;
                    done[i] = Some(reap(r, true));
                }
            }
            checkpoint();
            break;
        }
        let wait_ms = left.as_millis().min(200) as libc::c_int;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        for (pfd, &(i, which)) in fds.iter().zip(&owners) {
            if pfd.revents == 0 {
                continue;
            }
            let r = &mut runs[i];
            let Running {
                stdout,
                stderr,
                out,
                err,
                ..
            } = r;
            let got = if which == 0 {
                stdout.as_mut().map(|p| p.read(&mut buf))
            } else {
                stderr.as_mut().map(|p| p.read(&mut buf))
            };
            let sink = if which == 0 { out } else { err };
            match got {
                Some(Ok(0)) => {
                    if which == 0 {
                        *stdout = None;
                    } else {
                        *stderr = None;
                    }
                }
                Some(Ok(k)) => sink.extend_from_slice(&buf[..k]),
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(_)) => {
                    if which == 0 {
                        *stdout = None;
                    } else {
                        *stderr = None;
                    }
                }
                None => {}
            }
            if r.stdout.is_none() && r.stderr.is_none() && done[i].is_none() {
                done[i] = Some(reap(r, false));
            }
        }
    }
    for (i, r) in runs.iter_mut().enumerate() {
        if done[i].is_none() {
            done[i] = Some(reap(r, false));
        }
    }
    done.into_iter().flatten().collect()
}

/// The cost of the launcher alone: fork, setns, exec of `/bin/true`.
fn launcher_overhead(host: &Host, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let run = spawn_in(host, Path::new("/bin/true"), &[], b"", "true".into());
            let d = finish_all(vec![run], CALL_TIMEOUT).remove(0);
            assert_eq!(d.code, 0, "{d}");
            d.elapsed()
        })
        .collect()
}

// ------------------------------------------------------------------ plugins

/// One plugin with its config, run in one host namespace.
struct Plugin<'h> {
    label: String,
    host: &'h Host,
    binary: PathBuf,
    conf: Value,
    bridge: String,
}

/// What an ADD left behind, for its DEL.
struct Attached {
    result: Value,
    host_ifindex: Option<u32>,
}

impl<'h> Plugin<'h> {
    fn spawn(&self, command: &str, container_id: &str, pod: &Pod, conf: &Value) -> Running {
        let netns = pod.ns.path();
        let cni_path = default_cni_path();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", pod.ifname.as_str()),
            ("CNI_ARGS", ""),
            ("CNI_PATH", cni_path.as_str()),
        ];
        let what = format!(
            "{} {command} (container {container_id}, netns {netns})",
            self.label
        );
        spawn_in(
            self.host,
            &self.binary,
            &env,
            conf.to_string().as_bytes(),
            what,
        )
    }

    fn call(&self, command: &str, container_id: &str, pod: &Pod, conf: &Value) -> Done {
        checkpoint();
        let d = finish_all(
            vec![self.spawn(command, container_id, pod, conf)],
            CALL_TIMEOUT,
        )
        .remove(0);
        if d.code != 0 {
            panic!("{d}");
        }
        d
    }

    /// What an ADD's result says: it has an address, and its host veth is
    /// the interface without a sandbox that is not the bridge.
    fn attached(&self, result: Value) -> Attached {
        if result["ips"][0]["address"].as_str().is_none() {
            panic!("{}: result without ips: {result}", self.label);
        }
        let veth = result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| {
                i["sandbox"].as_str().unwrap_or_default().is_empty()
                    && i["name"].as_str() != Some(self.bridge.as_str())
            })
            .and_then(|i| i["name"].as_str());
        let host_ifindex = veth.and_then(|v| self.host.ifindex(v));
        Attached {
            result,
            host_ifindex,
        }
    }

    fn add(&self, container_id: &str, pod: &Pod) -> (Duration, Attached) {
        let d = self.call("ADD", container_id, pod, &self.conf);
        (d.elapsed(), self.attached(d.json()))
    }

    /// DEL as libcni sends it (the cached result as `prevResult`); returns
    /// the DEL's latency and the time until the pod's host veth was gone.
    fn del(&self, container_id: &str, pod: &Pod, att: &Attached) -> (Duration, Duration) {
        let mut conf = self.conf.clone();
        conf["prevResult"] = att.result.clone();
        let d = self.call("DEL", container_id, pod, &conf);
        let gone = match att.host_ifindex {
            Some(idx) => self.host.wait_gone(idx).unwrap_or_else(|| {
                panic!(
                    "{}: host veth {idx} of {container_id} still there {GONE_TIMEOUT:?} after DEL",
                    self.label
                )
            }),
            None => d.end,
        };
        (d.elapsed(), gone - d.start)
    }

    /// One untimed ADD/DEL: creates the bridge and the store, warms caches.
    fn warm_up(&self, pod: &Pod, tag: &str) {
        let cid = container_id(tag, 0);
        let (_, att) = self.add(&cid, pod);
        self.del(&cid, pod, &att);
    }
}

fn container_id(tag: &str, i: usize) -> String {
    format!("bench-{}-{tag}-{i}", std::process::id())
}

/// An Ohno config on `node`'s directory: network `podnet`, cniVersion
/// 1.0.0 (the reference plugins' highest), the harness's pool.
fn ohno_conf(node: &Node, bridge: &str, node_name: &str, store: Value) -> Value {
    let mut conf = node.ohno_conf(REFERENCE_VERSION);
    conf["name"] = json!(NETWORK);
    conf["logLevel"] = json!("info");
    conf["bridge"] = json!(bridge);
    conf["node"] = json!(node_name);
    conf["ipam"]["store"] = store;
    // Claim locks in the node's directory, not in /run/ohno.
    conf["ipam"]["lockDir"] = json!(node.dir.path().join("locks"));
    conf
}

/// Ohno as `node_name`, on `node`'s directory, in `host`.
fn ohno_plugin<'h>(
    host: &'h Host,
    binary: &Path,
    node: &Node,
    node_name: &str,
    label: &str,
    store: Value,
    bridge: &str,
) -> Plugin<'h> {
    Plugin {
        label: label.into(),
        host,
        binary: binary.to_path_buf(),
        conf: ohno_conf(node, bridge, node_name, store),
        bridge: bridge.into(),
    }
}

/// One Ohno per simulated node (`node-a`..), each with a bridge of its own,
/// all on one store.
fn node_plugins<'h>(
    host: &'h Host,
    binary: &Path,
    node: &Node,
    store: &Value,
    label: &str,
) -> Vec<Plugin<'h>> {
    NODES
        .iter()
        .map(|name| {
            let bridge = format!("tput-{}", name.trim_start_matches("node-"));
            let mut plugin = ohno_plugin(
                host,
                binary,
                node,
                name,
                &format!("{label} {name}"),
                store.clone(),
                &bridge,
            );
            // Each simulated node has its own node-local directory (claim
            // lock, hints, on-demand store server), as separate machines would.
            plugin.conf["ipam"]["lockDir"] = json!(node.dir.path().join(format!("locks-{name}")));
            plugin
        })
        .collect()
}

fn local_store(data_dir: &Path, prefix: &str) -> Value {
    json!({ "type": "local", "dataDir": data_dir, "prefix": prefix })
}

fn etcd_store(etcd: &EtcdNode, prefix: &str, timeout_ms: u64) -> Value {
    let mut store = etcd.store(timeout_ms, 3);
    store["prefix"] = json!(prefix);
    store
}

fn etcd_conf(etcd: &EtcdNode, prefix: &str) -> EtcdConf {
    EtcdConf {
        endpoints: etcd.cluster.endpoints(),
        prefix: prefix.to_owned(),
        ca_file: Some(etcd.cluster.cert("ca.pem")),
        cert_file: Some(etcd.cluster.cert("client.pem")),
        key_file: Some(etcd.cluster.cert("client-key.pem")),
        timeout_ms: 5000,
        retries: 3,
        persist_ms: 0,
        helper_dir: None,
    }
}

// ------------------------------------------------------------------ stats

/// Samples in milliseconds (0.01 ms), for `samples.json`.
fn samples_ms(s: &[Duration]) -> Value {
    s.iter()
        .map(|d| json!((d.as_secs_f64() * 1e5).round() / 100.0))
        .collect()
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

// ------------------------------------------------------------------ machine

fn first_line_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------ table 1

struct Latency<'h> {
    plugin: Plugin<'h>,
    add: Vec<Duration>,
    del: Vec<Duration>,
    gone: Vec<Duration>,
}

impl<'h> Latency<'h> {
    fn new(plugin: Plugin<'h>) -> Self {
        Latency {
            plugin,
            add: Vec::new(),
            del: Vec::new(),
            gone: Vec::new(),
        }
    }
}

/// N sequential ADDs, then N sequential DELs, contenders alternating per pod
/// so machine noise hits them alike. After each DEL the bench waits until
/// the pod's host veth is gone, so no deletion overlaps the next call.
#[allow(clippy::needless_range_loop)] // `i` indexes pods of every contender
fn sequential(contenders: &mut [Latency<'_>], pods: &[&[Pod]], n: usize) {
    let mut attached: Vec<Vec<Attached>> = contenders.iter().map(|_| Vec::new()).collect();
    for i in 0..n {
        for (c, (lat, atts)) in contenders.iter_mut().zip(&mut attached).enumerate() {
            let (t, att) = lat
                .plugin
                .add(&container_id(&format!("t1c{c}"), i), &pods[c][i]);
            lat.add.push(t);
            atts.push(att);
        }
    }
    for i in 0..n {
        for (c, (lat, atts)) in contenders.iter_mut().zip(&attached).enumerate() {
            let (del, gone) =
                lat.plugin
                    .del(&container_id(&format!("t1c{c}"), i), &pods[c][i], &atts[i]);
            lat.del.push(del);
            lat.gone.push(gone);
        }
    }
}

// ------------------------------------------------------------------ table 2

/// What the "full" prefix holds after [`fill_pool`].
struct Fill {
    blocks: usize,
    addresses: usize,
    usable: u128,
    keys: usize,
    txns: usize,
    elapsed: Duration,
}

fn bench_pool() -> PoolConf {
    PoolConf {
        name: "default".into(),
        subnet: Cidr::parse(POOL_SUBNET).unwrap_or_else(|e| panic!("{e}")),
        block_size: POOL_BLOCK,
        exclude: Vec::new(),
        range_start: None,
        range_end: None,
    }
}

/// The blocks the fillers claim and how many addresses each gets: 90% of the
/// pool's usable addresses, whole blocks, starting at the block the bench
/// node would try first (so it has to skip all of them: the worst case for
/// its claim) and wrapping around.
fn fill_plan(pool: &PoolConf, bench_node: &str) -> (Vec<(Cidr, usize)>, u128) {
    let layout = Layout::new(pool);
    let (lo, hi) = layout.candidate_blocks();
    let n = hi - lo + 1;
    let usable: u128 = (lo..=hi)
        .map(|i| layout.usable_count(&layout.block_at(i)))
        .sum();
    let target = (usable * FULL_PERCENT).div_ceil(100);
    let seed = ohno::ip::fnv1a64(&[bench_node.as_bytes(), pool.name.as_bytes()]) as u128 % n;
    let mut plan = Vec::new();
    let mut left = target;
    let mut k = 0;
    while left > 0 && k < n {
        let block = layout.block_at(lo + (seed + k) % n);
        k += 1;
        let take = layout.usable_count(&block).min(left);
        if take == 0 {
            continue;
        }
        plan.push((block, take as usize));
        left -= take;
    }
    (plan, usable)
}

/// Writes the share `t` of `threads` of the plan: per block, its claim
/// (block key + the filler node's affinity key), then per address its key
/// and an attachment key, in transactions of at most 128 operations.
/// Returns (keys, transactions).
fn fill_worker(
    kv: &dyn Kv,
    prefix: &str,
    pool: &PoolConf,
    plan: &[(Cidr, usize)],
    t: usize,
    threads: usize,
) -> (usize, usize) {
    let keys = Keys::new(prefix);
    let layout = Layout::new(pool);
    let created = ohno::ipam::model::now();
    let (mut nkeys, mut ntxns) = (0, 0);
    let mut txn = Txn::new();
    let mut commit = |txn: &mut Txn, force: bool| {
        if txn.success.len() >= TXN_OPS || (force && !txn.success.is_empty()) {
            let t = std::mem::take(txn);
            let ops = t.success.len();
            match kv.txn(t) {
                Ok(true) => {}
                other => panic!("fill transaction ({ops} ops) failed: {other:?}"),
            }
            nkeys += ops;
            ntxns += 1;
        }
    };
    let empty = BTreeSet::new();
    for (j, (block, take)) in plan.iter().enumerate() {
        if j % threads != t {
            continue;
        }
        checkpoint();
        let node = format!("filler-{:03}", j % FILLER_NODES);
        let claim = BlockRecord {
            node: node.clone(),
            claimed: created,
        };
        txn = txn
            .put(
                keys.block(&pool.name, block),
                serde_json::to_vec(&claim).unwrap_or_default(),
            )
            .put(keys.affinity(&node, &pool.name, block), Vec::new());
        commit(&mut txn, false);
        let gateway = layout.gateway(block).to_string();
        let mut ip = None;
        for a in 0..*take {
            ip = layout.first_free(block, &empty, ip);
            let Some(n) = ip else { break };
            let addr = from_u128(n, true);
            // A Kubernetes-like container id: 64 hex digits.
            let h = ohno::ip::fnv1a64(&[block.to_string().as_bytes(), &a.to_le_bytes()]);
            let cid = format!("{h:016x}").repeat(4);
            let owner = Owner {
                network: NETWORK.into(),
                container_id: cid.clone(),
                ifname: "eth0".into(),
                node: node.clone(),
                pod_namespace: Some("default".into()),
                pod_name: Some(format!("filler-{j}-{a}")),
                pod_uid: None,
                created,
            };
            let record = AttachmentRecord {
                owner: owner.clone(),
                ips: vec![IpRecord {
                    pool: pool.name.clone(),
                    address: format!("{addr}/{}", block.prefix()),
                    block: block.to_string(),
                    gateway: gateway.clone(),
                }],
            };
            txn = txn
                .put(
                    keys.ip(&pool.name, block, addr),
                    serde_json::to_vec(&owner).unwrap_or_default(),
                )
                .put(
                    keys.attachment(NETWORK, &cid, "eth0"),
                    serde_json::to_vec(&record).unwrap_or_default(),
                );
            commit(&mut txn, false);
        }
    }
    commit(&mut txn, true);
    (nkeys, ntxns)
}

/// How the fill reaches a store: `with` hands `f` a fresh client, on a thread
/// that can reach the store (for etcd: inside the host namespace, where the
/// client is built and where its connections are made).
trait StoreAccess: Sync {
    fn with(&self, f: &mut (dyn FnMut(&dyn Kv) + Send));
}

struct LocalAccess(PathBuf);

impl StoreAccess for LocalAccess {
    fn with(&self, f: &mut (dyn FnMut(&dyn Kv) + Send)) {
        let kv = LocalStore::open(&self.0).unwrap_or_else(|e| panic!("open the local store: {e}"));
        f(&kv);
    }
}

struct EtcdAccess<'a> {
    host: &'a Host,
    conf: EtcdConf,
}

impl StoreAccess for EtcdAccess<'_> {
    fn with(&self, f: &mut (dyn FnMut(&dyn Kv) + Send)) {
        self.host.run(|| {
            let kv =
                EtcdStore::open(&self.conf).unwrap_or_else(|e| panic!("open the etcd store: {e}"));
            f(&kv);
        });
    }
}

/// Fills `prefix` of a store to 90%, with `threads` workers, each with its
/// own client.
fn fill_pool(store: &dyn StoreAccess, threads: usize, prefix: &str, bench_node: &str) -> Fill {
    let pool = bench_pool();
    let (plan, usable) = fill_plan(&pool, bench_node);
    let started = Instant::now();
    store.with(&mut |kv| {
        Allocator::new(kv, prefix, "filler-000")
            .ensure_pool(&pool)
            .unwrap_or_else(|e| panic!("store the pool definition: {e}"));
    });
    let totals: Vec<(usize, usize)> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (pool, plan) = (&pool, &plan);
                s.spawn(move || {
                    let mut out = (0, 0);
                    store.with(&mut |kv| out = fill_worker(kv, prefix, pool, plan, t, threads));
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    Fill {
        blocks: plan.len(),
        addresses: plan.iter().map(|(_, n)| n).sum(),
        usable,
        keys: totals.iter().map(|t| t.0).sum(),
        txns: totals.iter().map(|t| t.1).sum(),
        elapsed: started.elapsed(),
    }
}

/// Size of a local store's write-ahead log.
fn wal_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("ohno.db-wal")).map_or(0, |m| m.len())
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes.div_ceil(1024))
}

/// Checkpoints a local store's WAL into the database and truncates it (the
/// bench is the only user then), so a series starts from the same state
/// whatever the bulk fill left in the WAL.
fn truncate_wal(dir: &Path) {
    let db = dir.join("ohno.db");
    let conn =
        rusqlite::Connection::open(&db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap_or_else(|e| panic!("checkpoint {}: {e}", db.display()));
}

/// Ages a local store as a node's plugin calls do: `cycles` times, one
/// short-lived connection (a plugin process opens the store afresh) allocates
/// an address for a new container and another releases it, through the
/// `ohno` library.
fn age_local_store(dir: &Path, prefix: &str, node: &str, cycles: usize) -> Duration {
    let pool = bench_pool();
    let started = Instant::now();
    let open = || LocalStore::open(dir).unwrap_or_else(|e| panic!("open the local store: {e}"));
    for i in 0..cycles {
        checkpoint();
        let owner = Owner {
            network: NETWORK.into(),
            container_id: container_id("age", i),
            ifname: "eth0".into(),
            node: node.into(),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            created: ohno::ipam::model::now(),
        };
        let want = [ohno::ipam::Want::any(&pool)];
        {
            let kv = open();
            Allocator::new(&kv, prefix, node)
                .allocate(&owner, &want)
                .unwrap_or_else(|e| panic!("age: allocate: {e}"));
        }
        let kv = open();
        Allocator::new(&kv, prefix, node)
            .release(&owner.id())
            .unwrap_or_else(|e| panic!("age: release: {e}"));
    }
    started.elapsed()
}

/// One prefix's series: N ADDs then N DELs of a node with no block yet.
#[derive(Default)]
struct Series {
    add: Vec<Duration>,
    del: Vec<Duration>,
    gone: Vec<Duration>,
}

/// The bench node's ADDs in the empty and the full prefix, alternating per
/// pod; then the DELs.
fn fullness(
    empty: &Plugin<'_>,
    full: &Plugin<'_>,
    pods: &[Pod],
    n: usize,
    tag: &str,
) -> [Series; 2] {
    let (pe, pf) = pods.split_at(n);
    // Bridges, pool keys, caches: a different node, so the bench node still
    // has no block.
    let warm = |p: &Plugin<'_>, pod: &Pod, tag: &str| {
        let mut conf = p.conf.clone();
        conf["node"] = json!("node-warm");
        let w = Plugin {
            label: p.label.clone(),
            host: p.host,
            binary: p.binary.clone(),
            conf,
            bridge: p.bridge.clone(),
        };
        w.warm_up(pod, tag);
    };
    warm(empty, &pe[0], &format!("{tag}we"));
    warm(full, &pf[0], &format!("{tag}wf"));
    let mut out = [Series::default(), Series::default()];
    let mut atts: [Vec<Attached>; 2] = [Vec::new(), Vec::new()];
    let (te, tf) = (format!("{tag}e"), format!("{tag}f"));
    let sides = [(empty, pe, &te), (full, pf, &tf)];
    for i in 0..n {
        for (s, (p, pods, tag)) in sides.iter().enumerate() {
            let (t, att) = p.add(&container_id(tag, i), &pods[i]);
            out[s].add.push(t);
            atts[s].push(att);
        }
    }
    for i in 0..n {
        for (s, (p, pods, tag)) in sides.iter().enumerate() {
            let (del, gone) = p.del(&container_id(tag, i), &pods[i], &atts[s][i]);
            out[s].del.push(del);
            out[s].gone.push(gone);
        }
    }
    out
}

// ------------------------------------------------------------------ table 3

struct Throughput {
    label: String,
    nodes: usize,
    per_node: usize,
    wall: Duration,
    lat: Vec<Duration>,
    failed: Vec<String>,
    distinct: usize,
    duplicates: Vec<String>,
    del_wall: Duration,
    del_failed: usize,
}

/// `nodes` × `per_node` concurrent ADDs (one process each, each its own pod),
/// spawned node-interleaved as fast as the bench can fork; then the same
/// DELs, concurrently too. Each node is warmed first (its bridge and first
/// block exist, as on a node that has run pods before).
fn throughput(label: &str, plugins: &[Plugin<'_>], pods: &[Pod], per_node: usize) -> Throughput {
    for (k, p) in plugins.iter().enumerate() {
        p.warm_up(&pods[k], &format!("t3w{k}"));
    }
    checkpoint();
    let cid = |k: usize, j: usize| container_id(&format!("t3n{k}"), j);
    let mut runs = Vec::new();
    let mut who = Vec::new();
    let started = Instant::now();
    for j in 0..per_node {
        for (k, p) in plugins.iter().enumerate() {
            let pod = &pods[j * plugins.len() + k];
            runs.push(p.spawn("ADD", &cid(k, j), pod, &p.conf));
            who.push((k, j));
        }
    }
    let done = finish_all(runs, CALL_TIMEOUT);
    let wall = done.iter().map(|d| d.end).max().unwrap_or(started) - started;
    let mut failed = Vec::new();
    let mut addresses = Vec::new();
    let mut results: Vec<Option<Value>> = Vec::new();
    for d in &done {
        let result = (d.code == 0)
            .then(|| serde_json::from_str::<Value>(&d.stdout).ok())
            .flatten();
        match result
            .as_ref()
            .and_then(|r| r["ips"][0]["address"].as_str())
        {
            Some(a) => addresses.push(a.split('/').next().unwrap_or(a).to_owned()),
            None => failed.push(d.to_string()),
        }
        results.push(result);
    }
    let distinct: BTreeSet<&String> = addresses.iter().collect();
    let mut seen = BTreeSet::new();
    let duplicates: Vec<String> = addresses
        .iter()
        .filter(|a| !seen.insert(a.as_str()))
        .cloned()
        .collect();
    let lat = done.iter().map(Done::elapsed).collect();

    // The DELs (cleanup, and a DEL throughput figure), concurrent as well.
    let mut runs = Vec::new();
    let del_started = Instant::now();
    for (&(k, j), result) in who.iter().zip(&results) {
        let p = &plugins[k];
        let mut conf = p.conf.clone();
        if let Some(r) = result {
            conf["prevResult"] = r.clone();
        }
        runs.push(p.spawn("DEL", &cid(k, j), &pods[j * plugins.len() + k], &conf));
    }
    let dels = finish_all(runs, CALL_TIMEOUT);
    let del_wall = dels.iter().map(|d| d.end).max().unwrap_or(del_started) - del_started;
    let del_failed = dels.iter().filter(|d| d.code != 0).count();
    for d in dels.iter().filter(|d| d.code != 0).take(3) {
        eprintln!("{d}");
    }
    Throughput {
        label: label.to_owned(),
        nodes: plugins.len(),
        per_node,
        wall,
        lat,
        distinct: distinct.len(),
        failed,
        duplicates,
        del_wall,
        del_failed,
    }
}

/// Waits until no pod veth (live or retired) is left in `node`'s host
/// namespace, so the kernel's deletions do not overlap the next phase.
fn settle(node: &Node) {
    let leftover = || {
        node.host
            .link_names()
            .into_iter()
            .filter(|n| common::is_ohno_veth_name(n) || n.starts_with("ohnodel"))
            .collect::<Vec<_>>()
    };
    if !common::eventually(Duration::from_secs(30), || leftover().is_empty()) {
        eprintln!(
            "warning: veths still present in {}: {:?}",
            node.host.name(),
            leftover()
        );
    }
}

// ------------------------------------------------------------------ main

fn main() {
    // `cargo bench` passes `--bench`; a filter argument means "not us".
    if std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        return;
    }
    common::require_root();
    install_signal_handlers();
    let bench_started = Instant::now();
    let n = env_usize("OHNO_BENCH_N", 50);
    let per_node = env_usize("OHNO_BENCH_PODS_PER_NODE", 50);
    let mut problems: Vec<String> = Vec::new();
    // Every sample, in the order taken: `target/bench/samples.json`.
    let mut samples = serde_json::Map::new();
    let mut report = Report::new();

    report.add("# Ohno CNI benchmark\n\n");
    report.para(&support::machine(" at start"));
    report.para(&format!(
        "Plugins: ohno `{}`; reference `bridge` + `host-local` from {REFERENCE_PLUGINS} \
         (containernetworking-plugins {}); {} (3 members, mutual TLS).",
        ohno_binary().display(),
        first_line_of(
            "dpkg-query",
            &["-W", "-f", "${Version}", "containernetworking-plugins"]
        ),
        first_line_of("etcd", &["--version"]),
    ));

    // Guards, in drop order last to first: pods, then the etcd node (its
    // cluster stops before its namespace and directory go), then the others.
    eprintln!("bench: creating host namespaces and starting the etcd cluster");
    let mut sweep = SweepOnInterrupt::default();
    let local_node = Node::new();
    let aged_node = Node::new();
    let ref_node = Node::new();
    for node in [&local_node, &aged_node, &ref_node] {
        sweep.dirs.push(node.dir.path().to_path_buf());
    }
    let etcd_node = EtcdNode::start();
    sweep.dirs.push(etcd_node.node.dir.path().to_path_buf());
    sweep.dirs.push(PathBuf::from(
        etcd_node.cluster.var("OHNO_ETCD_CLUSTER_DIR"),
    ));
    checkpoint();
    let pods_needed = (6 * n).max(NODES.len() * per_node);
    eprintln!("bench: creating {pods_needed} pod namespaces");
    let all_pods = pods(pods_needed);
    checkpoint();

    let local_host = Host::of(&local_node.host);
    let aged_host = Host::of(&aged_node.host);
    let etcd_host = Host::of(&etcd_node.node.host);
    let ref_host = Host::of(&ref_node.host);
    let ohno_bin = ohno_binary();
    let ref_bin = Path::new(REFERENCE_PLUGINS).join("bridge");

    let launcher = launcher_overhead(&local_host, n.max(20));
    report.para(&format!(
        "Method: every sample is a whole plugin process, exec'd as a runtime does it: the bench \
         forks, the child `setns(CLONE_NEWNET)`s into the contender's throwaway host namespace \
         (fd opened before the fork) and execs the plugin, config on stdin, result read from \
         stdout. No `ip netns exec`. The launcher alone (fork + setns + exec of `/bin/true`) \
         costs p50 {} ms, p95 {} ms, included in every sample. Pod namespaces are created \
         beforehand (not timed). Each contender has its own host namespace; the etcd cluster \
         runs inside the etcd contender's.",
        ms(p50(&launcher)),
        ms(p95(&launcher)),
    ));

    // ---------------------------------------------------------- table 1
    eprintln!("bench: table 1 ({n} sequential pods per contender)");
    eprintln!("bench: ageing a local store ({AGE_CYCLES} allocate/release cycles)");
    let aged_in = age_local_store(&aged_node.store_dir(), "/ohno", "node-a", AGE_CYCLES);
    checkpoint();
    let mut contenders = vec![
        Latency::new(Plugin {
            label: "ohno, local store".into(),
            host: &local_host,
            binary: ohno_bin.clone(),
            conf: ohno_conf(
                &local_node,
                "ohno0",
                "node-a",
                local_store(&local_node.store_dir(), "/ohno"),
            ),
            bridge: "ohno0".into(),
        }),
        Latency::new(Plugin {
            label: "ohno, local store, aged".into(),
            host: &aged_host,
            binary: ohno_bin.clone(),
            conf: ohno_conf(
                &aged_node,
                "ohno0",
                "node-a",
                local_store(&aged_node.store_dir(), "/ohno"),
            ),
            bridge: "ohno0".into(),
        }),
        Latency::new(Plugin {
            label: "ohno, etcd (3 members, mTLS)".into(),
            host: &etcd_host,
            binary: ohno_bin.clone(),
            conf: ohno_conf(
                &etcd_node.node,
                "ohno0",
                "node-a",
                etcd_store(&etcd_node, "/ohno", 1000),
            ),
            bridge: "ohno0".into(),
        }),
        Latency::new(Plugin {
            label: "ohno, etcd, no on-demand server (persistMs 0)".into(),
            host: &etcd_host,
            binary: ohno_bin.clone(),
            conf: {
                // Another node on the same cluster (its own blocks and hint),
                // every call connecting on its own.
                let mut conf = ohno_conf(
                    &etcd_node.node,
                    "ohno1",
                    "node-b",
                    etcd_store(&etcd_node, "/ohno", 1000),
                );
                conf["ipam"]["store"]["persistMs"] = json!(0);
                conf
            },
            bridge: "ohno1".into(),
        }),
        Latency::new(Plugin {
            label: "ohno, etcd, through `ohnod run`".into(),
            host: &etcd_host,
            binary: ohno_bin.clone(),
            conf: {
                // A third node on the same cluster, its calls served by the
                // node agent started below (its socket is in this lockDir).
                let mut conf = ohno_conf(
                    &etcd_node.node,
                    "ohno2",
                    "node-c",
                    etcd_store(&etcd_node, "/ohno", 1000),
                );
                conf["ipam"]["lockDir"] = json!(etcd_node.node.dir.path().join("locks-agent"));
                conf
            },
            bridge: "ohno2".into(),
        }),
        Latency::new(Plugin {
            label: "reference bridge + host-local".into(),
            host: &ref_host,
            binary: ref_bin,
            conf: support::reference_conf(&ref_node, NETWORK),
            bridge: "cni0".into(),
        }),
    ];
    let agent = Agent::start(&etcd_node.node, &contenders[4].plugin.conf);
    for (c, lat) in contenders.iter().enumerate() {
        lat.plugin.warm_up(&all_pods[c * n], &format!("t1w{c}"));
    }
    let slices: Vec<&[Pod]> = (0..contenders.len())
        .map(|c| &all_pods[c * n..(c + 1) * n])
        .collect();
    let wal_before = [
        wal_bytes(&local_node.store_dir()),
        wal_bytes(&aged_node.store_dir()),
    ];
    sequential(&mut contenders, &slices, n);
    let wal_after = [
        wal_bytes(&local_node.store_dir()),
        wal_bytes(&aged_node.store_dir()),
    ];

    report.add(&format!(
        "## 1. Whole-process ADD and DEL latency, {n} sequential pods (ms)\n\n"
    ));
    let agent_rss_kib = agent.rss_kib();
    drop(agent);
    let [fresh, aged, etcd, etcd_cold, etcd_agent, reference] = &contenders[..] else {
        unreachable!("six contenders")
    };
    let (ref_add50, ref_add95) = (p50(&reference.add), p95(&reference.add));
    let (ref_del50, ref_del95) = (p50(&reference.del), p95(&reference.del));
    let mut t = Table::new(&[
        "plugin",
        "ADD p50",
        "ADD p95",
        "ADD ×ref p50 / p95",
        "DEL p50",
        "DEL p95",
        "DEL ×ref p50 / p95",
        "DEL→veth gone p50",
        "p95",
        "gone ×ref DEL p50 / p95",
    ]);
    for c in &contenders {
        let (a50, a95) = (p50(&c.add), p95(&c.add));
        let (d50, d95) = (p50(&c.del), p95(&c.del));
        let (g50, g95) = (p50(&c.gone), p95(&c.gone));
        t.row(vec![
            c.plugin.label.clone(),
            ms(a50),
            ms(a95),
            format!("{} / {}", ratio(a50, ref_add50), ratio(a95, ref_add95)),
            ms(d50),
            ms(d95),
            format!("{} / {}", ratio(d50, ref_del50), ratio(d95, ref_del95)),
            ms(g50),
            ms(g95),
            format!("{} / {}", ratio(g50, ref_del50), ratio(g95, ref_del95)),
        ]);
    }
    report.table(&t);
    let mut targets = Table::new(&["target (ratio of medians)", "measured", ""]);
    // Issue 11's bar: the hardening must not cost latency.
    let checks = [
        (
            "ohno local ADD ≤ 0.45× reference ADD",
            &fresh.add,
            ref_add50,
            0.45,
        ),
        (
            "ohno local DEL ≤ 0.40× reference DEL",
            &fresh.del,
            ref_del50,
            0.4,
        ),
        (
            "ohno etcd ADD ≤ 0.55× reference ADD",
            &etcd.add,
            ref_add50,
            0.55,
        ),
        (
            "ohno etcd DEL ≤ 0.40× reference DEL",
            &etcd.del,
            ref_del50,
            0.4,
        ),
        (
            "ohno etcd ADD through `ohnod run` ≤ 0.45× reference ADD",
            &etcd_agent.add,
            ref_add50,
            0.45,
        ),
        ("aged local store: ADD ≤ 0.45×", &aged.add, ref_add50, 0.45),
        ("aged local store: DEL ≤ 0.40×", &aged.del, ref_del50, 0.4),
    ];
    for (what, samples, reference, limit) in checks {
        let r = p50(samples) / reference;
        targets.row(vec![
            what.into(),
            format!("{r:.2}×"),
            verdict(r <= limit).into(),
        ]);
    }
    targets.row(vec![
        "`ohnod run` RSS after the run, one warm etcd connection (target ≤ 40 MB)".into(),
        format!("{:.1} MB", agent_rss_kib as f64 / 1024.0),
        verdict(agent_rss_kib <= 40 * 1024).into(),
    ]);
    targets.row(vec![
        "(info) ohno etcd without the on-demand store server (persistMs 0): ADD".into(),
        ratio(p50(&etcd_cold.add), ref_add50),
        String::new(),
    ]);
    for (what, c) in [
        ("ohno local", fresh),
        ("aged local", aged),
        ("ohno etcd", etcd),
    ] {
        targets.row(vec![
            format!("(info) {what}: DEL until the veth is gone vs reference DEL"),
            ratio(p50(&c.gone), ref_del50),
            String::new(),
        ]);
    }
    report.table(&targets);
    for c in &contenders {
        samples.insert(
            format!("1. {}", c.plugin.label),
            json!({"add": samples_ms(&c.add), "del": samples_ms(&c.del), "gone": samples_ms(&c.gone)}),
        );
    }
    report.para(
        "DEL→veth gone: from the DEL's start until the pod's host veth no longer exists in \
         the host namespace (polled every 0.25 ms after DEL returns). Ohno's DEL retires the \
         pair and leaves the kernel's deletion (an RCU barrier) to a detached \
         `ohnod on-demand reap` (or the agent's reaper, when `ohnod run` answers); \
         the reference DEL deletes it before returning, so its two columns match. The bench \
         waits for the veth to be gone before the next call.",
    );
    report.para(&format!(
        "Local stores: \"local store\" starts fresh (WAL {} → {} over the run). \"aged\" is the \
         same setup on a store first aged by {AGE_CYCLES} allocate/release cycles through the \
         `ohno` library, each on a fresh connection as a plugin process opens it ({:.1} s), \
         as on a node that has run a few hundred pods (WAL {} → {}).",
        kib(wal_before[0]),
        kib(wal_after[0]),
        aged_in.as_secs_f64(),
        kib(wal_before[1]),
        kib(wal_after[1]),
    ));
    report.para(
        "etcd: \"ohno, etcd\" runs with the default `persistMs` (30 s): its warm-up call starts \
         the node's on-demand store server (`ohnod on-demand store`), and every timed call \
         sends its store operations through it (one mutual-TLS connection kept open; README, \
         \"The node agent: `ohnod`\"). \"no on-demand server\" is the same cluster with \
         `persistMs` 0, as another node: every call \
         connects, handshakes and sets up HTTP/2 on its own.",
    );
    drop(contenders);
    checkpoint();

    // ---------------------------------------------------------- table 2
    eprintln!("bench: table 2 (filling a /16 to 90% in both stores)");
    let bench_node = "node-x";
    let local_fill = fill_pool(
        &LocalAccess(local_node.store_dir()),
        1,
        "/bench-full",
        bench_node,
    );
    truncate_wal(&local_node.store_dir());
    checkpoint();
    let etcd_fill = fill_pool(
        &EtcdAccess {
            host: &etcd_host,
            conf: etcd_conf(&etcd_node, "/bench-full"),
        },
        4,
        "/bench-full",
        bench_node,
    );
    checkpoint();
    eprintln!(
        "bench: filled in {:.1} s (local) and {:.1} s (etcd); timing ADDs",
        local_fill.elapsed.as_secs_f64(),
        etcd_fill.elapsed.as_secs_f64()
    );
    let sd = local_node.store_dir();
    let local_sides = [
        ohno_plugin(
            &local_host,
            &ohno_bin,
            &local_node,
            bench_node,
            "local, empty pool",
            local_store(&sd, "/bench-empty"),
            "ohnoe0",
        ),
        ohno_plugin(
            &local_host,
            &ohno_bin,
            &local_node,
            bench_node,
            "local, 90% full pool",
            local_store(&sd, "/bench-full"),
            "ohnof0",
        ),
    ];
    let etcd_sides = [
        ohno_plugin(
            &etcd_host,
            &ohno_bin,
            &etcd_node.node,
            bench_node,
            "etcd, empty pool",
            etcd_store(&etcd_node, "/bench-empty", 1000),
            "ohnoe0",
        ),
        ohno_plugin(
            &etcd_host,
            &ohno_bin,
            &etcd_node.node,
            bench_node,
            "etcd, 90% full pool",
            etcd_store(&etcd_node, "/bench-full", 1000),
            "ohnof0",
        ),
    ];
    let local_series = fullness(
        &local_sides[0],
        &local_sides[1],
        &all_pods[..2 * n],
        n,
        "t2l",
    );
    checkpoint();
    let etcd_series = fullness(
        &etcd_sides[0],
        &etcd_sides[1],
        &all_pods[n..3 * n],
        n,
        "t2x",
    );
    checkpoint();

    report.add(&format!(
        "## 2. ADD latency, empty /16 versus 90% full /16 ({n} sequential pods, ms)\n\n"
    ));
    let mut t = Table::new(&[
        "store, pool",
        "1st ADD (claims a block)",
        "ADD p50",
        "ADD p95",
        "DEL p50",
        "DEL p95",
        "DEL→veth gone p50",
    ]);
    let mut ft = Table::new(&[
        "full / empty",
        "ADD p50",
        "ADD p95",
        "1st ADD",
        "target ADD p50 ≤ 1.20×",
    ]);
    for (sides, series) in [(&local_sides, &local_series), (&etcd_sides, &etcd_series)] {
        for (p, s) in sides.iter().zip(series) {
            samples.insert(
                format!("2. {}", p.label),
                json!({"add": samples_ms(&s.add), "del": samples_ms(&s.del), "gone": samples_ms(&s.gone)}),
            );
            t.row(vec![
                p.label.clone(),
                ms(s.add[0].as_secs_f64() * 1e3),
                ms(p50(&s.add)),
                ms(p95(&s.add)),
                ms(p50(&s.del)),
                ms(p95(&s.del)),
                ms(p50(&s.gone)),
            ]);
        }
        let (e, f) = (&series[0], &series[1]);
        let r = p50(&f.add) / p50(&e.add);
        ft.row(vec![
            sides[0].label.split(',').next().unwrap_or("").to_owned(),
            format!("{r:.2}×"),
            ratio(p95(&f.add), p95(&e.add)),
            ratio(f.add[0].as_secs_f64(), e.add[0].as_secs_f64()),
            verdict(r <= 1.2).into(),
        ]);
    }
    report.table(&t);
    report.table(&ft);
    for (what, fill) in [("local", &local_fill), ("etcd", &etcd_fill)] {
        report.para(&format!(
            "{what}: prefix `/bench-full` holds {} addresses of the pool's {} usable ({:.1}%) in \
             {} blocks claimed by {FILLER_NODES} filler nodes (block + affinity keys), each \
             address with its attachment key: {} keys in {} transactions of ≤ {TXN_OPS} \
             operations, written through the `ohno` library in {:.1} s. `/bench-empty` is in \
             the same store.{}",
            fill.addresses,
            fill.usable,
            fill.addresses as f64 * 100.0 / fill.usable as f64,
            fill.blocks,
            fill.keys,
            fill.txns,
            fill.elapsed.as_secs_f64(),
            if what == "local" {
                " The fill's WAL is then checkpointed and truncated, so every run starts the \
                 series from the same store state."
            } else {
                ""
            },
        ));
    }
    report.para(&format!(
        "The bench node (`{bench_node}`) has no block in either prefix; its first ADD claims \
         one. In the full pool the filled blocks start at the block it tries first, so it \
         skips every one of them. A warm-up ADD/DEL by another node created the bridges and \
         the pool key first. Empty and full alternate per pod."
    ));
    drop(local_sides);
    drop(etcd_sides);
    checkpoint();

    // ---------------------------------------------------------- table 3
    eprintln!(
        "bench: table 3 ({} nodes × {per_node} concurrent ADDs)",
        NODES.len()
    );
    let tput_pods = &all_pods[..NODES.len() * per_node];
    let tput_dir = local_node.dir.path().join("tput-store");
    let local_plugins = node_plugins(
        &local_host,
        &ohno_bin,
        &local_node,
        &local_store(&tput_dir, "/bench-tput"),
        "local",
    );
    let local_tput = throughput(
        "local store, 4 nodes sharing one store file (4 nodes on one machine)",
        &local_plugins,
        tput_pods,
        per_node,
    );
    settle(&local_node);
    checkpoint();
    let etcd_plugins = node_plugins(
        &etcd_host,
        &ohno_bin,
        &etcd_node.node,
        &etcd_store(&etcd_node, "/bench-tput", 5000),
        "etcd",
    );
    let etcd_tput = throughput(
        "etcd, 3 members, mTLS, timeoutMs 5000",
        &etcd_plugins,
        tput_pods,
        per_node,
    );
    settle(&etcd_node.node);
    checkpoint();
    // The same burst with one `ohnod run` per simulated node, each serving
    // its node's directory (as a DaemonSet pod would on separate machines).
    let mut agent_plugins = node_plugins(
        &etcd_host,
        &ohno_bin,
        &etcd_node.node,
        &etcd_store(&etcd_node, "/bench-tput-agent", 5000),
        "etcd via ohnod run",
    );
    for p in &mut agent_plugins {
        let dir = p.conf["ipam"]["lockDir"]
            .as_str()
            .unwrap_or("locks")
            .to_owned();
        p.conf["ipam"]["lockDir"] = json!(format!("{dir}-agent"));
    }
    let agents: Vec<Agent> = agent_plugins
        .iter()
        .map(|p| Agent::start(&etcd_node.node, &p.conf))
        .collect();
    let agent_tput = throughput(
        "etcd, 3 members, mTLS, timeoutMs 5000, through one `ohnod run` per node",
        &agent_plugins,
        tput_pods,
        per_node,
    );
    settle(&etcd_node.node);
    drop(agents);

    report.add(&format!(
        "## 3. Throughput: {} nodes × {per_node} concurrent ADDs ({} processes at once)\n\n",
        NODES.len(),
        NODES.len() * per_node
    ));
    let mut t = Table::new(&[
        "store",
        "wall s",
        "ADDs/s",
        "ADD p50 ms",
        "ADD p95 ms",
        "ADD max ms",
        "failed",
        "distinct addresses",
        "DEL wall s",
        "DEL failed",
    ]);
    for r in [&local_tput, &etcd_tput, &agent_tput] {
        let total = r.nodes * r.per_node;
        samples.insert(
            format!("3. {}", r.label),
            json!({"add": samples_ms(&r.lat)}),
        );
        t.row(vec![
            r.label.clone(),
            format!("{:.2}", r.wall.as_secs_f64()),
            format!("{:.1}", total as f64 / r.wall.as_secs_f64()),
            ms(p50(&r.lat)),
            ms(p95(&r.lat)),
            ms(percentile(&r.lat, 100.0)),
            r.failed.len().to_string(),
            format!("{} of {total}", r.distinct),
            format!("{:.2}", r.del_wall.as_secs_f64()),
            r.del_failed.to_string(),
        ]);
        if !r.failed.is_empty() {
            problems.push(format!(
                "{}: {} failed ADDs; first:\n{}",
                r.label,
                r.failed.len(),
                r.failed[0]
            ));
        }
        if !r.duplicates.is_empty() || r.distinct != total - r.failed.len() {
            problems.push(format!(
                "{}: duplicate addresses {:?}",
                r.label, r.duplicates
            ));
        }
        if r.del_failed != 0 {
            problems.push(format!("{}: {} failed DELs", r.label, r.del_failed));
        }
    }
    report.table(&t);
    report.para(&format!(
        "Each ADD is its own process in its own pre-created pod namespace, spawned \
         node-interleaved as fast as the bench forks; wall = first spawn to last exit; \
         per-ADD latency = spawn to exit. The nodes (`node-a`..`node-d`, one bridge each) \
         were warmed with one ADD/DEL each, so bridges and first blocks exist. Checks: zero \
         failed ADDs: {}; zero duplicate addresses: {}. The DELs ran concurrently as well.",
        if [&local_tput, &etcd_tput, &agent_tput]
            .iter()
            .all(|r| r.failed.is_empty())
        {
            "yes"
        } else {
            "**NO**"
        },
        if [&local_tput, &etcd_tput, &agent_tput]
            .iter()
            .all(|r| r.duplicates.is_empty())
        {
            "yes"
        } else {
            "**NO**"
        },
    ));
    report.para(&format!(
        "Load average at the end: {}. Bench wall time: {:.0} s (before cleanup).",
        loadavg(),
        bench_started.elapsed().as_secs_f64()
    ));

    let path = support::report_path("report.md");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, &report.text) {
        Ok(()) => eprintln!("bench: report written to {}", path.display()),
        Err(e) => eprintln!("bench: could not write {}: {e}", path.display()),
    }
    let sample_path = path.with_file_name("samples.json");
    if let Err(e) = std::fs::write(&sample_path, Value::Object(samples).to_string()) {
        eprintln!("bench: could not write {}: {e}", sample_path.display());
    }
    drop(local_plugins);
    drop(etcd_plugins);
    drop(agent_plugins);
    if !problems.is_empty() {
        panic!("benchmark checks failed:\n{}", problems.join("\n"));
    }
}
