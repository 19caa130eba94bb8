//! WebAssembly policy benchmark, one run (`cargo bench -p ohno --bench policy`,
//! as root; `make bench` runs it after the CNI bench):
//!
//! 1. ADD latency (median, p95) of N sequential pods (env `OHNO_BENCH_N`,
//!    default 30) with each example policy, its precompiled component in a warm
//!    cache, next to ADD with the built-in default policy on the same config
//!    otherwise (same pools, same `CNI_ARGS`); ratio and absolute difference of
//!    the medians against the targets (≤ 1.1× and ≤ 2 ms more). Contenders are
//!    interleaved pod by pod, so drift in the machine's load hits all alike.
//! 2. The first ADD with a cold cache (a fresh `cacheDir`: compile, check,
//!    serialize and write the entry), per policy.
//! 3. In-process costs through the `ohno` library, median of 100 each:
//!    `engine()`, `load_component` from a warm cache (read, verify,
//!    deserialize), `WasmPolicy::load` (engine + component + linker +
//!    instantiate + `configure`), and one decision call (`Policy::allocate`,
//!    plus `name_interface` for pod-ifname).
//! 4. Where those go: `load_component`'s steps one by one (read the component,
//!    cache key, read and verify the entry, deserialize, contract check), the
//!    WASI linker, and instantiation in a fresh store (host imports stubbed).
//!
//! The report is printed and written as Markdown to `target/bench/policy.md`.
//!
//! Isolation: each contender has its own throwaway host network namespace,
//! store and cache directory; pods are pre-created namespaces (creation is not
//! timed). The plugin is exec'd as a runtime execs it: the bench forks, the
//! child `setns()`es into the host namespace (an fd opened before the fork)
//! and execs the binary, no `ip netns exec`; if `setns` fails the plugin never
//! runs. Guards delete namespaces and directories on every exit, including a
//! panic or SIGINT/SIGTERM/SIGHUP (turned into a panic at the next checkpoint).

#[path = "support/agent.rs"]
mod agent;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::Agent;
use common::{default_cni_path, ohno_binary, Node, Pod};
use ohno::config::NetConf;
use ohno::ipam::{Allocator, Owner, Want};
use ohno::policy::wasm::{self, HostView, PolicyConf, WasmPolicy};
use ohno::policy::{cache, Family, Policy};
use serde_json::{json, Value};
use support::{
    checkpoint, env_usize, install_signal_handlers, loadavg, ms, p50, p95, verdict, Host, Report,
    Table,
};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// In-process repetitions per measurement.
const REPS: usize = 100;
/// Cold-cache ADDs per policy (each with a fresh cache directory).
const COLD: usize = 3;
/// Targets for a policy ADD against the built-in default.
const TARGET_RATIO: f64 = 1.1;
/// The target through a running `ohnod run` (the component stays loaded there).
const TARGET_RATIO_AGENT: f64 = 1.05;
const TARGET_EXTRA_MS: f64 = 2.0;

// ------------------------------------------------------------------ signals

// ------------------------------------------------------------------ setup

/// An example policy: label, component file name, `policy.config`.
struct Example {
    label: &'static str,
    file: &'static str,
    config: Value,
}

fn examples() -> Vec<Example> {
    vec![
        Example {
            label: "namespace-pools",
            file: "namespace_pools",
            config: json!({"rules": [{"namespaces": ["prod"], "pool": "prod"}]}),
        },
        Example {
            label: "sticky-statefulset",
            file: "sticky_statefulset",
            config: json!({"pool": "sts", "sets": [{"namespace": "prod", "name": "web", "base": 0}]}),
        },
        Example {
            label: "no-quick-reuse",
            file: "no_quick_reuse",
            config: Value::Null,
        },
        Example {
            label: "pod-ifname",
            file: "pod_ifname",
            config: Value::Null,
        },
    ]
}

fn wasm_path(file: &str) -> PathBuf {
    common::policy_component(file)
}

/// The same pools for every contender: every policy has what it needs.
fn pools() -> Value {
    json!([
        {"name": "default", "subnet": "10.85.0.0/16", "blockSize": 26},
        {"name": "prod", "subnet": "10.90.0.0/16", "blockSize": 26},
        {"name": "sts", "subnet": "10.86.0.0/20", "blockSize": 26}
    ])
}

/// The node's config (logLevel info, as in production), with `policy` when given.
fn conf_for(node: &Node, policy: Option<(&Path, &Value, &Path)>) -> Value {
    let mut conf = node.ohno_conf("1.1.0");
    conf["logLevel"] = json!("info");
    conf["ipam"]["pools"] = pools();
    // The node's own lock directory: claim locks, hints, the on-demand policy server.
    conf["ipam"]["lockDir"] = json!(node.dir.path().join("locks"));
    if let Some((file, config, cache)) = policy {
        conf["policy"] = json!({"path": file, "config": config, "cacheDir": cache});
    }
    conf
}

fn args_for(pod_name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME={pod_name}")
}

// ------------------------------------------------------------------ exec

/// One contender: a node (host netns, store, cache) and its config, and the
/// node's `ohnod run` when it has one.
struct Contender {
    label: String,
    // Dropped (stopped) before the node it runs in.
    agent: Option<Agent>,
    node: Node,
    host: Host,
    conf: Value,
}

impl Contender {
    /// `helper`: the default `persistMs` (ADDs go through `ohnod on-demand policy`);
    /// otherwise `persistMs` 0 (every ADD loads the component itself).
    fn new(label: &str, policy: Option<&Example>, helper: bool) -> Contender {
        let node = Node::new();
        let host = Host::of(&node.host);
        let cache = node.dir.path().join("policy-cache");
        let mut conf = match policy {
            None => conf_for(&node, None),
            Some(ex) => {
                let file = wasm_path(ex.file);
                conf_for(&node, Some((&file, &ex.config, &cache)))
            }
        };
        if policy.is_some() && !helper {
            conf["policy"]["persistMs"] = json!(0);
        }
        Contender {
            label: label.to_owned(),
            agent: None,
            node,
            host,
            conf,
        }
    }

    /// `policy` decided by an `ohnod run` serving this node's network.
    fn through_agent(label: &str, policy: &Example) -> Contender {
        let mut c = Contender::new(label, Some(policy), true);
        c.agent = Some(Agent::start(&c.node, &c.conf));
        c
    }

    /// ADD `pod` (K8S_POD_NAME `pod_name`) with `conf`, exec'd directly in the
    /// host namespace; returns the wall time from fork to reap.
    fn add(&self, pod: &Pod, pod_name: &str, conf: &Value) -> Duration {
        checkpoint();
        let netns = pod.ns.path();
        let cni_path = default_cni_path();
        let args = args_for(pod_name);
        let mut cmd = Command::new(ohno_binary());
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", &pod.ifname)
            .env("CNI_ARGS", &args)
            .env("CNI_PATH", &cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.host.enter_on_exec(&mut cmd);
        let stdin = conf.to_string();
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ohno in netns {}: {e}", self.host.name));
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("wait for ohno");
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{} ADD ({pod_name}, container {}) failed: {}\n--- stdout\n{}\n--- stderr\n{}\n--- log tail\n{}",
            self.label,
            pod.container_id,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.node.log(), 3000)
        );
        took
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

// ------------------------------------------------------------------ stats

fn us(v: f64) -> String {
    format!("{:.1}", v * 1e3)
}

/// `f` run `REPS` times; the samples.
fn repeat(mut f: impl FnMut()) -> Vec<Duration> {
    (0..REPS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

// ------------------------------------------------------------------ tables

/// Table 1: warm-cache ADD per policy against the built-in default.
fn warm_adds(report: &mut Report, n: usize, problems: &mut Vec<String>) {
    let exs = examples();
    let mut contenders = vec![Contender::new("built-in default", None, false)];
    for ex in &exs {
        contenders.push(Contender::new(ex.label, Some(ex), true));
        contenders.push(Contender::through_agent(
            &format!("{}, through `ohnod run`", ex.label),
            ex,
        ));
        contenders.push(Contender::new(
            &format!("{}, in-process (persistMs 0)", ex.label),
            Some(ex),
            false,
        ));
    }
    // Warm-up, not timed: creates the bridge, compiles into the cache, pages
    // the binary and the store in, and starts the on-demand policy servers (a second
    // ADD once the server's socket is there).
    for c in &contenders {
        let pod = Pod::new();
        c.add(&pod, "warmup", &c.conf);
        let Some(policy) = c.conf.get("policy") else {
            continue;
        };
        if c.agent.is_some() {
            // The agent loaded the component when it started: the plugin
            // neither compiles nor starts an on-demand server.
            continue;
        }
        if !c.node.log().contains(".wasm: compiled in") {
            problems.push(format!("{}: the warm-up ADD did not compile", c.label));
        }
        if policy["persistMs"].is_null() {
            let locks = c.node.dir.path().join("locks");
            let up = common::eventually(Duration::from_secs(10), || {
                std::fs::read_dir(&locks).is_ok_and(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("policy-"))
                })
            });
            if !up {
                problems.push(format!(
                    "{}: no on-demand policy server after the warm-up",
                    c.label
                ));
            }
            c.add(&Pod::new(), "warmup-2", &c.conf);
        }
    }
    // Pods, created before anything is timed: one round is a pod per contender.
    let rounds: Vec<Vec<Pod>> = (0..n)
        .map(|_| contenders.iter().map(|_| Pod::new()).collect())
        .collect();
    let mut samples: Vec<Vec<Duration>> = contenders.iter().map(|_| Vec::new()).collect();
    for (i, round) in rounds.iter().enumerate() {
        let name = format!("web-{i}");
        for ((c, pod), s) in contenders.iter().zip(round).zip(samples.iter_mut()) {
            s.push(c.add(pod, &name, &c.conf));
        }
    }
    for c in contenders.iter().skip(1) {
        // logLevel info: a compile is logged ("loaded from cache" is debug).
        let log = c.node.log();
        let compiled = log.matches(".wasm: compiled in").count();
        if c.agent.is_some() {
            let on_demand = std::fs::read_dir(c.node.dir.path().join("locks")).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("policy-"))
            });
            if compiled != 0 || log.contains("the agent failed") || on_demand {
                problems.push(format!(
                    "{}: not every ADD was decided by the agent ({compiled} compiles here, \
                     on-demand server: {on_demand})",
                    c.label
                ));
            }
            continue;
        }
        if compiled != 1 {
            problems.push(format!(
                "{}: {compiled} compiles in {} ADDs (expected only the warm-up's)",
                c.label,
                n + 1
            ));
        }
    }
    drop(rounds);

    let base = p50(&samples[0]);
    let mut t = Table::new(&[
        "ADD (warm cache)",
        "median ms",
        "p95 ms",
        "min ms",
        "× default",
        "+ms vs default",
        "target ≤1.1× (via ohnod run ≤1.05×) / ≤+2 ms",
    ]);
    for (k, c) in contenders.iter().enumerate() {
        let s = &samples[k];
        let med = p50(s);
        let min = s.iter().min().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        if k == 0 {
            t.row(vec![
                c.label.clone(),
                ms(med),
                ms(p95(s)),
                ms(min),
                "1.00×".into(),
                "—".into(),
                "—".into(),
            ]);
            continue;
        }
        let ratio = med / base;
        let extra = med - base;
        let target = if c.agent.is_some() {
            TARGET_RATIO_AGENT
        } else {
            TARGET_RATIO
        };
        let ok_ratio = ratio <= target;
        let ok_extra = extra <= TARGET_EXTRA_MS;
        t.row(vec![
            c.label.clone(),
            ms(med),
            ms(p95(s)),
            ms(min),
            format!("{ratio:.2}×"),
            format!("{extra:+.2}"),
            format!("{} / {}", verdict(ok_ratio), verdict(ok_extra)),
        ]);
    }
    report.para(&format!(
        "## 1. ADD with a policy (warm cache) vs the built-in default\n\n\
         {n} sequential ADDs per contender, interleaved pod by pod (one pod of each \
         contender in turn), after one untimed warm-up ADD each (bridge creation, \
         the policy's compile into its cache). Same config for all (pools default \
         10.85.0.0/16, prod 10.90.0.0/16, sts 10.86.0.0/20, /26 blocks; local store; \
         logLevel info), same CNI_ARGS (K8S_POD_NAMESPACE=prod, K8S_POD_NAME=web-<i>); \
         only `policy` differs. Wall time from fork to reap of `ohno` exec'd directly \
         in the contender's host namespace (pre_exec setns). Each policy runs twice: \
         with the default `persistMs` (its ADDs get a fresh store in the node's policy \
         server `ohnod on-demand policy`, README \"The node agent\"; the warm-up starts it) and with \
         `persistMs` 0 (every ADD maps, links and instantiates the component itself). \
         A third run has an `ohnod run` serving the node's network (started before the \
         warm-up; it loads the component when it starts, so none of that run's ADDs \
         compiles or starts an on-demand server, which the bench checks)."
    ));
    report.table(&t);
}

/// Table 2: the first ADD with a cold cache, per policy.
fn cold_adds(report: &mut Report) {
    let mut t = Table::new(&[
        "first ADD, cold cache",
        "median ms",
        "min ms",
        "max ms",
        "compile (log) ms",
        "then warm ms",
    ]);
    for ex in examples() {
        // In-process by definition: a cold cache is what a process that finds
        // no server loads from (a server would compile beside it).
        let c = Contender::new(ex.label, Some(&ex), false);
        // The bridge exists before anything is timed.
        c.add(&Pod::new(), "warmup", &c.conf);
        let file = wasm_path(ex.file);
        let mut cold = Vec::new();
        let mut compile_ms = Vec::new();
        for k in 0..COLD {
            let cache = c.node.dir.path().join(format!("cold-{k}"));
            let mut conf = conf_for(&c.node, Some((&file, &ex.config, &cache)));
            conf["policy"]["persistMs"] = json!(0);
            let pod = Pod::new();
            let before = c.node.log().len();
            cold.push(c.add(&pod, &format!("web-{k}"), &conf));
            let log = c.node.log();
            if let Some(v) = log[before..]
                .lines()
                .find_map(|l| l.split(".wasm: compiled in ").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
            {
                compile_ms.push(v);
            }
        }
        // One more ADD on the last (now warm) cache, for comparison.
        let cache = c.node.dir.path().join(format!("cold-{}", COLD - 1));
        let mut conf = conf_for(&c.node, Some((&file, &ex.config, &cache)));
        conf["policy"]["persistMs"] = json!(0);
        let warm = c.add(&Pod::new(), &format!("web-{COLD}"), &conf);
        compile_ms.sort_by(f64::total_cmp);
        let compile = compile_ms
            .get(compile_ms.len() / 2)
            .map_or("?".into(), |v| format!("{v:.1}"));
        t.row(vec![
            ex.label.to_owned(),
            ms(p50(&cold)),
            ms(cold
                .iter()
                .min()
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)),
            ms(cold
                .iter()
                .max()
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)),
            compile,
            ms(warm.as_secs_f64() * 1e3),
        ]);
    }
    report.para(&format!(
        "## 2. First ADD with a cold cache\n\n\
         {COLD} ADDs per policy, each with a fresh `cacheDir` (the component is \
         compiled with Cranelift, checked, serialized and written), on a node whose \
         bridge already exists. \"compile (log)\" is the plugin's own `compiled in` \
         figure; \"then warm\" is one ADD right after, loading that entry."
    ));
    report.table(&t);
}

/// Table 3: in-process costs through the library.
fn in_process(report: &mut Report) {
    let dir = common::TempDir::new();
    let cache = dir.path().join("policy-cache");
    // A memory store in which node-a holds a few addresses of each pool.
    let conf_json = json!({
        "cniVersion": "1.1.0", "name": "bench", "type": "ohno", "node": "node-a",
        "logLevel": "off", "ipam": {"type": "ohno", "pools": pools()}
    });
    let net =
        NetConf::parse(conf_json.to_string().as_bytes(), &[]).expect("parse the bench config");
    let kv: Arc<dyn ohno::store::Kv> = Arc::new(ohno::store::memory::MemoryStore::new());
    let alloc = Allocator::new(&*kv, "/ohno", "node-a");
    for pool in &net.ipam.pools {
        for i in 0..8 {
            let owner = Owner {
                network: "bench".into(),
                container_id: format!("filler-{}-{i}", pool.name),
                ifname: "eth0".into(),
                node: "node-a".into(),
                pod_namespace: None,
                pod_name: None,
                pod_uid: None,
                created: 0,
            };
            alloc
                .allocate(
                    &owner,
                    &[Want {
                        pool,
                        address: None,
                    }],
                )
                .expect("allocate a filler address");
        }
    }
    let view = || HostView::new(kv.clone(), "/ohno", "node-a", net.ipam.pools.clone());
    let pod = ohno::policy::Pod {
        container_id: "bench-container".into(),
        ifname: "eth0".into(),
        netns: "/var/run/netns/bench".into(),
        network: "bench".into(),
        node: "node-a".into(),
        namespace: Some("prod".into()),
        name: Some("web-3".into()),
        uid: None,
        annotations: Default::default(),
        args: vec![
            ("K8S_POD_NAMESPACE".into(), "prod".into()),
            ("K8S_POD_NAME".into(), "web-3".into()),
        ],
    };
    let v4: Vec<&ohno::config::PoolConf> = net
        .ipam
        .pools
        .iter()
        .filter(|p| p.family() == Family::V4)
        .collect();

    let engine_t = repeat(|| {
        wasm::engine().expect("engine");
    });
    let engine = wasm::engine().expect("engine");
    let mut t = Table::new(&[
        "in-process, median of 100",
        "engine() µs",
        "load_component (warm cache) µs",
        "WasmPolicy::load µs",
        "≈ link+instantiate+configure µs",
        "allocate µs",
        "name_interface µs",
        "answer",
    ]);
    for ex in examples() {
        let file = wasm_path(ex.file);
        let (_, outcome) = wasm::load_component(&engine, &file, Some(&cache)).expect("compile");
        assert_ne!(
            outcome,
            wasm::CacheOutcome::Hit,
            "{}: cache not cold",
            ex.label
        );
        let load_t = repeat(|| {
            let (_, o) =
                wasm::load_component(&engine, &file, Some(&cache)).expect("load_component");
            assert_eq!(o, wasm::CacheOutcome::Hit);
        });
        let pconf = PolicyConf::parse(&json!({
            "path": file, "config": ex.config, "cacheDir": cache,
        }))
        .expect("policy config");
        let full_t = repeat(|| {
            WasmPolicy::load(&pconf, view()).expect("WasmPolicy::load");
        });
        let mut policy = WasmPolicy::load(&pconf, view()).expect("WasmPolicy::load");
        let answer = format!(
            "{:?}",
            policy.allocate(&pod, Family::V4, &v4).expect("allocate")
        );
        let alloc_t = repeat(|| {
            policy.allocate(&pod, Family::V4, &v4).expect("allocate");
        });
        let name_t = repeat(|| {
            policy.name_interface(&pod).expect("name_interface");
        });
        let naming = format!("{:?}", policy.name_interface(&pod).expect("name"));
        let derived = p50(&full_t) - p50(&engine_t) - p50(&load_t);
        t.row(vec![
            ex.label.to_owned(),
            us(p50(&engine_t)),
            us(p50(&load_t)),
            us(p50(&full_t)),
            us(derived),
            us(p50(&alloc_t)),
            us(p50(&name_t)),
            format!("{answer}; {naming}"),
        ]);
        checkpoint();
    }
    report.para(
        "## 3. In-process costs (the `ohno` library, this process)\n\n\
         `engine()` builds the wasmtime engine (fuel, epochs, bounded stack). \
         `load_component` with a warm cache reads the entry, verifies its length and \
         checksum, deserializes it and checks the contract. `WasmPolicy::load` is what \
         an ADD pays before the first decision: engine + load_component + WASI and host \
         linker + instantiate in a fresh store + `configure`; the next column subtracts \
         the first two medians. Decisions are called repeatedly on one instance \
         (pod prod/web-3, IPv4 pools default, prod, sts; node-a holds 8 addresses of \
         each pool in a memory store); each call runs under its store's own deadline (the engine's ticker thread ticks the epoch while a call runs).",
    );
    report.table(&t);
}

/// The WASI half of the plugin's store state, for the breakdown.
struct BenchState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for BenchState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Table 4: the steps of `load_component` (warm cache) and of instantiation.
fn breakdown(report: &mut Report) {
    let dir = common::TempDir::new();
    let cache = dir.path().join("policy-cache");
    let engine = wasm::engine().expect("engine");
    let mut t = Table::new(&[
        "step, median of 100 µs",
        "read .wasm",
        "cache key (sha256)",
        "read+verify entry",
        "deserialize",
        "check_contract",
        "Σ",
        "WASI linker",
        "store+instantiate",
        "entry KiB",
    ]);
    for ex in examples() {
        let file = wasm_path(ex.file);
        let name = file.display().to_string();
        wasm::load_component(&engine, &file, Some(&cache)).expect("compile");
        let bytes = std::fs::read(&file).expect("read the component");
        let dir = cache::CacheDir::open(&cache).expect("the cache directory");
        let key = cache::key(&engine, &bytes);
        let read = || dir.read(&key).ok().flatten().expect("a valid cache entry");
        let payload = read();
        let read_t = repeat(|| {
            std::fs::read(&file).expect("read the component");
        });
        let key_t = repeat(|| {
            cache::key(&engine, &bytes);
        });
        let entry_t = repeat(|| {
            read();
        });
        let deser = || cache::deserialize(&engine, &payload);
        let deser_t = repeat(|| {
            deser().expect("deserialize");
        });
        let component = deser().expect("deserialize");
        let check_t = repeat(|| {
            wasm::check_contract(&engine, &component, &name).expect("contract");
        });
        let linker_t = repeat(|| {
            let mut l: Linker<BenchState> = Linker::new(&engine);
            wasm::link_wasi(&engine, &component, &mut l).expect("link WASI");
        });
        let mut linker: Linker<BenchState> = Linker::new(&engine);
        wasm::link_wasi(&engine, &component, &mut linker).expect("link WASI");
        linker
            .define_unknown_imports_as_traps(&component)
            .expect("stub the host imports");
        let inst_t = repeat(|| {
            let mut store = Store::new(
                &engine,
                BenchState {
                    wasi: WasiCtxBuilder::new().build(),
                    table: ResourceTable::new(),
                },
            );
            store.set_fuel(1_000_000_000).expect("fuel");
            store.set_epoch_deadline(1);
            linker
                .instantiate(&mut store, &component)
                .expect("instantiate");
        });
        let parts = [&read_t, &key_t, &entry_t, &deser_t, &check_t];
        let sum: f64 = parts.iter().map(|s| p50(s)).sum();
        let mut row = vec![ex.label.to_owned()];
        row.extend(parts.iter().map(|s| us(p50(s))));
        row.push(us(sum));
        row.push(us(p50(&linker_t)));
        row.push(us(p50(&inst_t)));
        row.push(format!("{}", (payload.len() + 24) / 1024));
        t.row(row);
        checkpoint();
    }
    report.para(
        "## 4. Where the load goes\n\n\
         `load_component` with a warm cache, step by step (one engine): read the \
         component file, the cache key (sha256 of the component and the engine's \
         compatibility hash), read the entry (check the descriptor's owner, mode and \
         links, copy it into a memfd, seal it, verify length and checksum there), \
         `cache::deserialize` (wasmtime maps the sealed memfd), \
         `check_contract`. Then the linker every ADD builds (the WASI p2 interfaces the \
         component imports, sync; the \
         plugin adds the ohno:policy host imports to it) and instantiation in a \
         fresh store (WASI context, fuel, epoch deadline; the ohno:policy host \
         imports stubbed as traps here, so no `configure`).",
    );
    report.table(&t);
}

// ------------------------------------------------------------------ main

fn main() {
    // `cargo bench` passes `--bench`; a filter argument means "not us".
    if std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        return;
    }
    common::require_root();
    install_signal_handlers();
    let started = Instant::now();
    let n = env_usize("OHNO_BENCH_N", 30);
    let mut problems = Vec::new();
    let mut report = Report::new();
    report.add("# Ohno policy benchmark\n\n");
    report.para(&support::machine(""));
    report.para(&format!(
        "Plugin: `{}` (release). Components: `target/wasm32-wasip2/release/*.wasm`. \
         N = {n} (`OHNO_BENCH_N`).",
        ohno_binary().display()
    ));

    warm_adds(&mut report, n, &mut problems);
    checkpoint();
    cold_adds(&mut report);
    checkpoint();
    in_process(&mut report);
    checkpoint();
    breakdown(&mut report);

    if !problems.is_empty() {
        report.para(&format!("Problems:\n\n- {}", problems.join("\n- ")));
    }
    report.para(&format!(
        "Run took {:.1} s; load average at the end {}.",
        started.elapsed().as_secs_f64(),
        loadavg()
    ));
    let path = support::report_path("policy.md");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, &report.text) {
        Ok(()) => println!("report written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
