//! The node agent (`ohnod run`) through the real binaries: the plugin's calls
//! go through it (and nothing else is started), DEL's veth is reaped by it, a
//! SIGKILL in the middle of a burst of ADDs on etcd costs no ADD and leaks no
//! address, SIGTERM drains and leaves calls working in-process, a binary
//! replaced under load loses no call, readiness follows etcd, the metrics
//! count what happened, and `ohnoctl status` tells whether an agent runs.
//!
//! Every agent runs inside its test's throwaway host namespace (so its
//! metrics address, 127.0.0.1:9672, is that namespace's own loopback), with
//! `ipam.lockDir` in the test's directory, and is killed by its PID on drop.

mod common;
mod etcd_support;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use etcd_support::{pods, EtcdNode, OHNOCTL};
use serde_json::{json, Value};

const OHNOD: &str = env!("CARGO_BIN_EXE_ohnod");
/// Inside each node's own namespace: no two tests share it.
const METRICS: &str = "127.0.0.1:9672";
const THROUGH_AGENT: &str = "policy: through the agent at";
const NO_AGENT: &str = "policy: no agent at";

/// One etcd burst at a time in this binary: two clusters and their ADDs on
/// two cores starve each other.
static ETCD: Mutex<()> = Mutex::new(());

fn etcd_lock() -> std::sync::MutexGuard<'static, ()> {
    ETCD.lock().unwrap_or_else(|p| p.into_inner())
}

// ------------------------------------------------------------------ setup

/// A component built by `make policies`.
fn wasm(crate_name: &str) -> PathBuf {
    policy_component(crate_name)
}

/// The test's own lock directory, where the agent's socket goes.
fn lock_dir(node: &Node) -> PathBuf {
    node.dir.path().join("run")
}

fn socket(node: &Node) -> PathBuf {
    lock_dir(node).join("ohnod.sock")
}

/// `conf` with the test's lock directory.
fn with_lock_dir(node: &Node, mut conf: Value) -> Value {
    conf["ipam"]["lockDir"] = json!(lock_dir(node));
    conf
}

/// The harness's local-store config (CNI 1.1.0) in the test's lock directory.
fn local_conf(node: &Node) -> Value {
    with_lock_dir(node, node.ohno_conf("1.1.0"))
}

/// A precompile cache shared by this binary's tests, filled once with
/// `ohnoctl policy compile`: a debug build takes seconds to compile a
/// component, which would otherwise land in the first calls of every test.
fn policy_cache() -> PathBuf {
    static WARM: Once = Once::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-policy-cache");
    WARM.call_once(|| {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
        let out = std::process::Command::new(OHNOCTL)
            .args(["policy", "compile"])
            .arg(wasm("pod_ifname"))
            .arg("--cache-dir")
            .arg(&dir)
            .output()
            .expect("run ohnoctl policy compile");
        assert!(
            out.status.success(),
            "ohnoctl policy compile: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    dir
}

/// `conf` with the `pod_ifname` policy (host veth named `<ns>-<pod>`), the
/// warm cache, and `persistMs` for the on-demand server.
fn with_policy(mut conf: Value, persist_ms: u64) -> Value {
    conf["policy"] = json!({
        "path": wasm("pod_ifname"),
        "cacheDir": policy_cache(),
        "persistMs": persist_ms,
    });
    conf
}

/// CNI_ARGS as a Kubernetes runtime passes them.
fn k8s_args(name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME={name}")
}

/// The network config file (what the agent and `ohnoctl` read) and the
/// agent's config file pointing at it.
struct Files {
    network: PathBuf,
    agent: PathBuf,
}

fn write_files(node: &Node, conf: &Value) -> Files {
    let network = node.dir.path().join("10-ohno.conf");
    std::fs::write(&network, conf.to_string()).expect("write the network config");
    let agent = node.dir.path().join("ohnod.json");
    let doc = json!({
        "network": network,
        "metricsAddress": METRICS,
        "logLevel": "debug",
        "drainSeconds": 10,
    });
    std::fs::write(&agent, doc.to_string()).expect("write the agent config");
    Files { network, agent }
}

fn call(node: &Node, command: &str, pod: &Pod, conf: &Value, args: &str) -> Output {
    let mut inv = Invocation::ohno(command, pod);
    inv.args = args.to_owned();
    run_plugin(&node.host, &inv, &conf.to_string())
}

fn add_ok(node: &Node, pod: &Pod, conf: &Value, args: &str) -> Value {
    call(node, "ADD", pod, conf, args).success().json().clone()
}

fn del_ok(node: &Node, pod: &Pod, conf: &Value, args: &str, prev: &Value) {
    call(node, "DEL", pod, &node.with_prev_result(conf, prev), args).success();
}

/// How often `needle` appears in the plugin's log.
fn log_count(node: &Node, needle: &str) -> usize {
    node.log().matches(needle).count()
}

/// On-demand servers' sockets in the test's lock directory.
fn on_demand_sockets(node: &Node) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(lock_dir(node)) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sock") && n != "ohnod.sock")
        .collect();
    found.sort();
    found
}

// ------------------------------------------------------------------ the agent

/// `ohnod run` inside a node's host namespace (`ip netns exec` execs, so the
/// child's PID is the agent's), its stderr in a file; killed by PID on drop.
struct Agent {
    child: Option<Child>,
    pid: u32,
    stderr: PathBuf,
}

static AGENTS: AtomicUsize = AtomicUsize::new(0);

impl Agent {
    /// Starts `binary run --config FILE` and waits until `ohnoctl status`
    /// answers with this process's PID.
    fn start(node: &Node, files: &Files, binary: &Path) -> Agent {
        let n = AGENTS.fetch_add(1, Ordering::Relaxed);
        let stderr = node.dir.path().join(format!("ohnod-{n}.stderr"));
        let err = File::create(&stderr).expect("create the agent's stderr file");
        let child = node
            .host
            .command(&[
                &binary.to_string_lossy(),
                "run",
                "--config",
                &files.agent.to_string_lossy(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let pid = child.id();
        let mut agent = Agent {
            child: Some(child),
            pid,
            stderr,
        };
        let answered = eventually(Duration::from_secs(15), || {
            if let Some(status) = agent.try_wait() {
                panic!("ohnod exited at start ({status}):\n{}", agent.stderr_text());
            }
            status_json(node, files).1["pid"].as_u64() == Some(u64::from(pid))
        });
        assert!(
            answered,
            "ohnod (pid {pid}) does not answer `ohnoctl status`:\n{}",
            agent.stderr_text()
        );
        agent
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if self.child.is_some() {
            // Our own child, not yet reaped: the PID is still ours.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
        }
    }

    /// Waits up to `timeout` for the agent to exit; its status, if it did.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigkill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        assert!(
            self.wait_exit(Duration::from_secs(5)).is_some(),
            "ohnod {} survived SIGKILL",
            self.pid
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            let text = self.stderr_text();
            let start = text.len().saturating_sub(6000);
            let start = (start..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            eprintln!(
                "--- tail of {} (ohnod {})\n{}",
                self.stderr.display(),
                self.pid,
                &text[start..]
            );
        }
    }
}

// ------------------------------------------------------------------ ohnoctl and HTTP

/// `ohnoctl ARGS` inside the node's namespace: (exit code, stdout, stderr).
fn ohnoctl(node: &Node, args: &[&str]) -> (i32, String, String) {
    let mut argv = vec![OHNOCTL];
    argv.extend_from_slice(args);
    let out = node.host.exec(&argv);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ohnoctl status --config NETWORK -o json`: (exit code, document).
fn status_json(node: &Node, files: &Files) -> (i32, Value) {
    let network = files.network.to_string_lossy().into_owned();
    let (code, stdout, stderr) = ohnoctl(node, &["status", "--config", &network, "-o", "json"]);
    let doc = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ohnoctl status -o json: {e}: {stdout}{stderr}"));
    (code, doc)
}

/// GET `path` on the node's metrics address: (HTTP status, body); status 0
/// when nothing answers.
fn http_get(node: &Node, path: &str) -> (u16, String) {
    let url = format!("http://{METRICS}{path}");
    let out = node
        .host
        .exec(&["curl", "-s", "-m", "5", "-w", "\n%{http_code}", &url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn metrics(node: &Node) -> String {
    let (code, body) = http_get(node, "/metrics");
    assert_eq!(code, 200, "GET /metrics: {code}\n{body}");
    body
}

/// The sum of every sample of `name` whose labels include `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, set) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = n == name
                && labels.iter().all(|(k, v)| {
                    let pair = format!("{k}=\"{v}\"");
                    set.split(',').any(|kv| kv == pair)
                });
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Polls `/metrics` until `name{labels}` reaches `at_least`; the last text.
fn metric_reaches(
    node: &Node,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> Result<String, String> {
    let mut last = String::new();
    let ok = eventually(Duration::from_secs(10), || {
        last = metrics(node);
        sample(&last, name, labels) >= at_least
    });
    if ok {
        Ok(last)
    } else {
        Err(format!(
            "{name}{labels:?} = {} after 10 s, want ≥ {at_least}:\n{last}",
            sample(&last, name, labels)
        ))
    }
}

/// Links in the host namespace other than `lo` and the bridge.
fn host_links(node: &Node) -> Vec<String> {
    node.host
        .link_names()
        .into_iter()
        .filter(|n| n != "lo" && n != "ohno0")
        .collect()
}

// ------------------------------------------------------------------ tests

/// 1. With the agent running, ADDs decide their policy in it and nothing
///    else is started; DEL's veth pair is deleted by the agent's reaper.
#[test]
fn adds_go_through_the_agent_and_its_reaper_deletes_the_veth() {
    require_root();
    let node = Node::new();
    // persistMs > 0: without an agent, the first ADD would start an
    // on-demand policy server.
    let conf = with_policy(local_conf(&node), 5_000);
    let files = write_files(&node, &conf);
    let agent = Agent::start(&node, &files, Path::new(OHNOD));

    let pods: Vec<Pod> = (0..2).map(|_| Pod::new()).collect();
    let mut results = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let args = k8s_args(&format!("web-{i}"));
        let r = add_ok(&node, pod, &conf, &args);
        assert_eq!(r["interfaces"][1]["name"], format!("prod-web-{i}"), "{r}");
        assert!(
            node.host.link(&format!("prod-web-{i}")).is_some(),
            "{:?}",
            node.host.link_names()
        );
        // Between calls, only the agent serves this node.
        assert_eq!(on_demand_sockets(&node), Vec::<String>::new());
        results.push((args, r));
    }
    assert!(
        log_count(&node, THROUGH_AGENT) >= 2,
        "the ADDs did not decide through the agent:\n{}",
        node.log()
    );
    assert_eq!(log_count(&node, NO_AGENT), 0, "{}", node.log());
    let (_, st) = status_json(&node, &files);
    assert_eq!(st["pid"].as_u64(), Some(u64::from(agent.pid)), "{st}");

    let before = sample(
        &metrics(&node),
        "ohno_links_reaped_total",
        &[("result", "ok")],
    );
    for (pod, (args, r)) in pods.iter().zip(&results) {
        del_ok(&node, pod, &conf, args, r);
    }
    assert!(
        eventually(Duration::from_secs(10), || host_links(&node).is_empty()),
        "host links left after DEL: {:?}",
        host_links(&node)
    );
    for pod in &pods {
        assert!(
            eventually(Duration::from_secs(10), || pod.ns.link_names() == ["lo"]),
            "pod links left after DEL: {:?}",
            pod.ns.link_names()
        );
    }
    metric_reaches(
        &node,
        "ohno_links_reaped_total",
        &[("result", "ok")],
        before + 2.0,
    )
    .unwrap_or_else(|e| panic!("the agent did not reap both pairs: {e}"));
    assert_eq!(on_demand_sockets(&node), Vec::<String>::new());
    assert!(node.allocations(&conf).is_empty());
}

/// 2. A burst of concurrent ADDs on etcd while the agent is SIGKILLed in the
///    middle: every ADD succeeds with its own address, the store checks
///    clean, a new agent starts over the dead one's socket, and DEL of every
///    pod leaves no allocation.
#[test]
fn sigkill_of_the_agent_mid_burst_fails_no_add_and_leaks_nothing() {
    require_root();
    let _one = etcd_lock();
    let env = EtcdNode::start();
    let node = &env.node;
    let mut conf = with_lock_dir(node, env.conf("node-a"));
    // Room for 24 processes and three members on two cores; on-demand
    // servers started after the kill leave soon.
    conf["ipam"]["store"] = env.store(5000, 3);
    conf["ipam"]["store"]["persistMs"] = json!(2000);
    let files = write_files(node, &conf);
    let mut agent = Agent::start(node, &files, Path::new(OHNOD));

    const N: usize = 24;
    let pods = pods(N);
    let done = AtomicUsize::new(0);
    let barrier = Barrier::new(N + 1);
    let started = Instant::now();
    let (outs, killed_after) = thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (barrier, done, conf) = (&barrier, &done, &conf);
                s.spawn(move || {
                    barrier.wait();
                    // A quarter of a second of starts: many calls are in
                    // flight when the kill lands, some start after it.
                    thread::sleep(Duration::from_millis(10 * i as u64));
                    let out = call(node, "ADD", pod, conf, "");
                    done.fetch_add(1, Ordering::SeqCst);
                    out
                })
            })
            .collect();
        barrier.wait();
        eventually(Duration::from_secs(20), || done.load(Ordering::SeqCst) >= 3);
        let killed_after = done.load(Ordering::SeqCst);
        agent.sigkill();
        let outs: Vec<Output> = handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread panicked"))
            .collect();
        (outs, killed_after)
    });
    eprintln!(
        "{N} ADDs in {:.2} s; agent SIGKILLed after {killed_after} had finished",
        started.elapsed().as_secs_f64()
    );
    assert!(
        killed_after < N,
        "the burst was over before the kill ({killed_after} done): nothing was tested"
    );
    let failed: Vec<String> = outs
        .iter()
        .filter(|o| o.code != 0)
        .map(ToString::to_string)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {N} ADDs failed around the agent's SIGKILL:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
    let mut distinct = BTreeSet::new();
    for out in &outs {
        let (addr, _, _) = first_ipv4(out.json());
        assert!(distinct.insert(addr), "{addr} handed out twice:\n{out}");
    }
    let (through, cut, without) = (
        log_count(node, "store: through the agent at"),
        log_count(node, "store server at"),
        log_count(node, "store: no agent at"),
    );
    eprintln!(
        "store: {through} through the agent, {cut} cut off mid-call, {without} with no agent"
    );
    assert!(
        through > 0 && cut + without > 0,
        "the kill did not fall inside the burst ({through} calls through the agent, \
         {cut} cut off, {without} without):\n{}",
        node.log()
    );

    let check = env.ohnoctl(&conf, "check", &[]);
    assert_eq!(check.code, 0, "{check}\nohnoctl ipam check after the burst");
    assert_eq!(
        env.ohnoctl(&conf, "ls", &["-o", "json"])
            .json()
            .as_array()
            .map(Vec::len),
        Some(N)
    );

    // A new agent over the dead one's socket; the DELs go through it.
    let agent = Agent::start(node, &files, Path::new(OHNOD));
    for (pod, out) in pods.iter().zip(&outs) {
        call(
            node,
            "DEL",
            pod,
            &node.with_prev_result(&conf, out.json()),
            "",
        )
        .success();
    }
    let ls = env.ohnoctl(&conf, "ls", &["-o", "json"]);
    assert_eq!(ls.code, 0, "{ls}");
    assert_eq!(
        ls.json(),
        &json!([]),
        "allocations left after DEL of every pod"
    );
    let check = env.ohnoctl(&conf, "check", &[]);
    assert_eq!(check.code, 0, "{check}\nohnoctl ipam check after DEL");
    metric_reaches(
        node,
        "ohno_cni_calls_total",
        &[("verb", "DEL"), ("result", "ok")],
        N as f64,
    )
    .unwrap_or_else(|e| {
        panic!(
            "the new agent (pid {}) did not serve the DELs: {e}",
            agent.pid
        )
    });
}

/// 3. SIGTERM: the agent exits 0 promptly and removes its socket; the next
///    ADD works in-process; a restarted agent serves the next one.
#[test]
fn sigterm_stops_the_agent_and_calls_carry_on_in_process_until_it_is_back() {
    require_root();
    let node = Node::new();
    // persistMs 0: without the agent, calls are purely in-process.
    let conf = with_policy(local_conf(&node), 0);
    let files = write_files(&node, &conf);
    let mut agent = Agent::start(&node, &files, Path::new(OHNOD));
    let p1 = Pod::new();
    add_ok(&node, &p1, &conf, &k8s_args("web-1"));
    assert_eq!(log_count(&node, THROUGH_AGENT), 1, "{}", node.log());

    let asked = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("ohnod still running 5 s after SIGTERM"));
    assert!(
        status.success(),
        "ohnod exited with {status} after SIGTERM:\n{}",
        agent.stderr_text()
    );
    eprintln!(
        "ohnod stopped {:.2} s after SIGTERM",
        asked.elapsed().as_secs_f64()
    );
    assert!(!socket(&node).exists(), "the stopped agent left its socket");
    let (code, st) = status_json(&node, &files);
    assert_eq!((code, &st["running"]), (1, &json!(false)), "{st}");

    let p2 = Pod::new();
    let r2 = add_ok(&node, &p2, &conf, &k8s_args("web-2"));
    assert_eq!(r2["interfaces"][1]["name"], "prod-web-2", "{r2}");
    assert_eq!(log_count(&node, NO_AGENT), 1, "{}", node.log());
    assert_eq!(log_count(&node, THROUGH_AGENT), 1, "{}", node.log());
    assert_eq!(on_demand_sockets(&node), Vec::<String>::new());

    let again = Agent::start(&node, &files, Path::new(OHNOD));
    let p3 = Pod::new();
    add_ok(&node, &p3, &conf, &k8s_args("web-3"));
    assert_eq!(
        log_count(&node, THROUGH_AGENT),
        2,
        "the ADD after the restart did not go through the agent:\n{}",
        node.log()
    );
    metric_reaches(
        &node,
        "ohno_cni_calls_total",
        &[("verb", "ADD"), ("result", "ok"), ("code", "0")],
        1.0,
    )
    .unwrap_or_else(|e| panic!("the restarted agent (pid {}) saw no ADD: {e}", again.pid));
}

/// 4. Replacing the binary: the old agent is stopped (SIGTERM) and a copy
///    started while ADD and DEL run back to back; none fails, the old agent
///    stops accepting at once although calls keep coming, and the later
///    calls are the new agent's.
#[test]
fn replacing_the_agent_binary_under_load_loses_no_call() {
    require_root();
    let node = Node::new();
    let conf = with_policy(local_conf(&node), 0);
    let files = write_files(&node, &conf);
    let mut old = Agent::start(&node, &files, Path::new(OHNOD));
    let new_binary = node.dir.path().join("ohnod-new");
    std::fs::copy(OHNOD, &new_binary).expect("copy ohnod");

    // Three loops of ADD then DEL, each round its own pods, until told to
    // stop (or for at most 40 s): a node's steady trickle of calls.
    const LOOPS: usize = 3;
    let pods: Vec<Pod> = (0..2 * LOOPS).map(|_| Pod::new()).collect();
    let stop = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let (outs, new, stopping) = thread::scope(|s| {
        let loops: Vec<_> = pods
            .chunks(2)
            .enumerate()
            .map(|(t, mine)| {
                let (node, conf, stop, rounds) = (&node, &conf, &stop, &rounds);
                s.spawn(move || {
                    let mut outs = Vec::new();
                    let until = Instant::now() + Duration::from_secs(40);
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                        let pod = &mine[i % mine.len()];
                        let args = k8s_args(&format!("w{t}-{i}"));
                        let add = call(node, "ADD", pod, conf, &args);
                        if add.code == 0 {
                            let del_conf = node.with_prev_result(conf, add.json());
                            outs.push(call(node, "DEL", pod, &del_conf, &args));
                        }
                        outs.push(add);
                        i += 1;
                        rounds.fetch_add(1, Ordering::SeqCst);
                    }
                    outs
                })
            })
            .collect();
        let join = |loops: Vec<thread::ScopedJoinHandle<'_, Vec<Output>>>| -> Vec<Output> {
            loops
                .into_iter()
                .flat_map(|h| h.join().expect("ADD/DEL loop panicked"))
                .collect()
        };
        let at = |n: usize| {
            eventually(Duration::from_secs(30), || {
                rounds.load(Ordering::SeqCst) >= n
            })
        };
        assert!(at(3), "the ADD/DEL loop does not run");

        old.signal(nix::sys::signal::Signal::SIGTERM);
        let asked = Instant::now();
        let gone = eventually(Duration::from_secs(3), || !socket(&node).exists());
        let stopping = (gone, rounds.load(Ordering::SeqCst));
        if !gone {
            // Let the load end, to see whether the agent stops then.
            stop.store(true, Ordering::SeqCst);
            let outs = join(loops);
            let after_load = eventually(Duration::from_secs(5), || !socket(&node).exists());
            panic!(
                "the old agent still accepted (socket {} present) {:.1} s after SIGTERM while \
                 calls kept coming ({} rounds done); once the load stopped its socket was \
                 {}; {} calls failed",
                socket(&node).display(),
                asked.elapsed().as_secs_f64(),
                stopping.1,
                if after_load { "removed" } else { "still there" },
                outs.iter().filter(|o| o.code != 0).count()
            );
        }
        let status = old.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "old ohnod after SIGTERM: {status:?}\n{}",
            old.stderr_text()
        );
        let new = Agent::start(&node, &files, &new_binary);
        let started = rounds.load(Ordering::SeqCst);
        let enough = at(started + 3);
        stop.store(true, Ordering::SeqCst);
        let outs = join(loops);
        assert!(
            enough,
            "the ADD/DEL loop stalled after the new agent started"
        );
        (outs, new, stopping)
    });
    let failed: Vec<String> = outs
        .iter()
        .filter(|o| o.code != 0)
        .map(ToString::to_string)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed while the binary was replaced:\n{}",
        failed.len(),
        outs.len(),
        failed.join("\n\n")
    );
    eprintln!(
        "{} calls across the replacement; the old socket was gone after round {}",
        outs.len(),
        stopping.1
    );

    let (_, st) = status_json(&node, &files);
    assert_eq!(st["pid"].as_u64(), Some(u64::from(new.pid)), "{st}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", new.pid)).expect("the new agent's exe");
    assert_eq!(exe, new_binary);
    // The new agent counts the calls it served (it started with none).
    metric_reaches(
        &node,
        "ohno_cni_calls_total",
        &[("verb", "ADD"), ("result", "ok")],
        1.0,
    )
    .unwrap_or_else(|e| panic!("no ADD reached the new agent: {e}"));
    let p = Pod::new();
    let before = log_count(&node, THROUGH_AGENT);
    add_ok(&node, &p, &conf, &k8s_args("last"));
    assert_eq!(
        log_count(&node, THROUGH_AGENT),
        before + 1,
        "{}",
        node.log()
    );
}

/// 5. Readiness follows etcd: with no quorum the agent runs (healthz 200) but
///    is not ready (readyz 503, status ready=false); once quorum is back it is
///    ready within 15 s.
#[test]
fn the_agent_is_ready_only_once_etcd_answers() {
    require_root();
    let _one = etcd_lock();
    let mut env = EtcdNode::start();
    let conf = with_lock_dir(&env.node, env.conf("node-a"));
    let files = write_files(&env.node, &conf);
    // One member of three: no quorum, no linearizable read answers.
    env.cluster.stop_member(2);
    env.cluster.stop_member(3);
    let agent = Agent::start(&env.node, &files, Path::new(OHNOD));
    let node = &env.node;

    assert_eq!(http_get(node, "/healthz"), (200, "ok\n".to_owned()));
    thread::sleep(Duration::from_secs(2));
    let (code, body) = http_get(node, "/readyz");
    assert_eq!(code, 503, "readyz without etcd quorum: {body}");
    let (_, st) = status_json(node, &files);
    assert_eq!(st["running"], true, "{st}");
    assert_eq!(st["ready"], false, "{st}");
    assert_eq!(sample(&metrics(node), "ohno_agent_ready", &[]), 0.0);

    env.cluster.start_member(2);
    let back = Instant::now();
    let mut seen_health = Vec::new();
    let ready = eventually(Duration::from_secs(15), || {
        seen_health.push(http_get(node, "/healthz").0);
        http_get(node, "/readyz").0 == 200
    });
    assert!(
        ready,
        "not ready 15 s after etcd regained quorum; status: {}",
        status_json(node, &files).1
    );
    eprintln!(
        "ready {:.2} s after quorum was back",
        back.elapsed().as_secs_f64()
    );
    assert!(
        seen_health.iter().all(|c| *c == 200),
        "healthz while waiting: {seen_health:?}"
    );
    let (_, st) = status_json(node, &files);
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(sample(&metrics(node), "ohno_agent_ready", &[]), 1.0);
    assert_eq!(http_get(node, "/healthz").0, 200);
    drop(agent);
}

/// 6. The metrics count what went through the agent: N ADDs on etcd with a
///    policy.
#[test]
fn metrics_count_adds_allocations_etcd_requests_and_policy_decisions() {
    require_root();
    let _one = etcd_lock();
    let env = EtcdNode::start();
    let node = &env.node;
    let conf = with_policy(with_lock_dir(node, env.conf("node-a")), 5_000);
    let files = write_files(node, &conf);
    let agent = Agent::start(node, &files, Path::new(OHNOD));
    // The policy is loaded with readiness.
    assert!(
        eventually(Duration::from_secs(20), || http_get(node, "/readyz").0
            == 200),
        "agent not ready: {}",
        status_json(node, &files).1
    );

    const N: usize = 4;
    let pods: Vec<Pod> = (0..N).map(|_| Pod::new()).collect();
    for (i, pod) in pods.iter().enumerate() {
        add_ok(node, pod, &conf, &k8s_args(&format!("m{i}")));
    }
    assert!(
        log_count(node, "store: through the agent at") >= N,
        "{}",
        node.log()
    );
    assert!(log_count(node, THROUGH_AGENT) >= N, "{}", node.log());
    assert_eq!(on_demand_sockets(node), Vec::<String>::new());

    let text = metric_reaches(
        node,
        "ohno_cni_calls_total",
        &[("verb", "ADD"), ("result", "ok"), ("code", "0")],
        N as f64,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sample(&text, "ohno_cni_calls_total", &[("verb", "ADD")]),
        N as f64,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "ohno_cni_call_duration_seconds_count",
            &[("verb", "ADD")]
        ) >= N as f64,
        "{text}"
    );
    assert!(
        sample(&text, "ohno_etcd_request_duration_seconds_count", &[]) > 0.0,
        "{text}"
    );
    assert!(
        sample(&text, "ohno_policy_decisions_total", &[("outcome", "ok")]) > 0.0,
        "{text}"
    );
    assert!(
        sample(&text, "ohno_policy_decision_duration_seconds_count", &[]) > 0.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "ohno_agent_fallbacks_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(sample(&text, "ohno_agent_ready", &[]), 1.0, "{text}");
    // The pool gauges are read from the store every few seconds.
    metric_reaches(
        node,
        "ohno_ipam_allocations",
        &[("pool", "default")],
        N as f64,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let text = metrics(node);
    assert_eq!(
        sample(&text, "ohno_ipam_allocations", &[("pool", "default")]),
        N as f64,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "ohno_ipam_blocks",
            &[("pool", "default"), ("node", "node-a")]
        ) >= 1.0,
        "{text}"
    );

    let (code, st) = status_json(node, &files);
    assert_eq!(code, 0, "{st}");
    let policies = st["policies"].to_string();
    assert!(policies.contains("pod_ifname.wasm"), "{st}");
    assert_eq!(
        st["etcd_endpoints"].as_array().map(Vec::len),
        Some(3),
        "{st}"
    );
    assert!(st["etcd_endpoint_in_use"].is_string(), "{st}");
    drop(agent);
}

/// 7. `ohnoctl status`: the table for a running agent, exit 1 and
///    running=false without one.
#[test]
fn ohnoctl_status_shows_the_running_agent_and_exits_1_without_one() {
    require_root();
    let node = Node::new();
    let conf = local_conf(&node);
    let files = write_files(&node, &conf);
    let network = files.network.to_string_lossy().into_owned();

    let (code, st) = status_json(&node, &files);
    assert_eq!(code, 1, "{st}");
    assert_eq!(st["running"], false, "{st}");
    let (code, table, _) = ohnoctl(&node, &["status", "--config", &network]);
    assert_eq!(code, 1, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().eq(["RUNNING", "no"])),
        "{table}"
    );

    let mut agent = Agent::start(&node, &files, Path::new(OHNOD));
    let (code, table, stderr) = ohnoctl(&node, &["status", "--config", &network]);
    assert_eq!(code, 0, "{table}{stderr}");
    let row = |key: &str| -> Option<String> {
        table
            .lines()
            .find(|l| l.starts_with(key) && l[key.len()..].starts_with(' '))
            .map(|l| l[key.len()..].trim().to_owned())
    };
    assert_eq!(row("RUNNING").as_deref(), Some("yes"), "{table}");
    assert_eq!(row("MODE").as_deref(), Some("run"), "{table}");
    assert_eq!(row("PID"), Some(agent.pid.to_string()), "{table}");
    assert_eq!(
        row("SOCKET"),
        Some(socket(&node).display().to_string()),
        "{table}"
    );
    assert_eq!(row("METRICS").as_deref(), Some(METRICS), "{table}");

    let (code, st) = status_json(&node, &files);
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["running"], true, "{st}");
    assert_eq!(st["mode"], "run", "{st}");
    assert!(
        st["network"].as_str().is_some_and(|n| n.contains("podnet")),
        "{st}"
    );
    // Local store, no policy: ready at once.
    assert!(
        eventually(Duration::from_secs(5), || status_json(&node, &files).1
            ["ready"]
            == true),
        "{}",
        status_json(&node, &files).1
    );

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent
        .wait_exit(Duration::from_secs(5))
        .is_some_and(|s| s.success()));
    let (code, st) = status_json(&node, &files);
    assert_eq!((code, &st["running"]), (1, &json!(false)), "{st}");
    assert_eq!(
        http_get(&node, "/healthz").0,
        0,
        "HTTP still answers after the stop"
    );
}
