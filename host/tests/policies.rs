//! WebAssembly policies through the real binaries: the example policies
//! (`namespace-pools`, `sticky-statefulset`, `pod-ifname`, `no-quick-reuse`),
//! the hostile fixtures (every misbehaviour fails the ADD cleanly, or falls back
//! to the built-in decision with failurePolicy "default"), copies of `hostile`
//! made by binary surgery ([`wasm_surgery`]) that break the store's limits at
//! instantiation, the precompile cache, and `ohnoctl policy check|test`.
//!
//! Each test has its own throwaway host namespace, pod namespaces and temp
//! directory; `policy.cacheDir` is inside that directory. The components are
//! the ones `make policies` builds into `target/wasm32-wasip2/release/`.
//!
//! One test measures the wall time of an ADD (the endless loop must be cut at
//! `timeoutMs`); it takes [`CPU`] exclusively so the other tests of this binary
//! do not compile components beside it.

mod common;
mod wasm_surgery;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Shared by every test; the timing test holds it exclusively.
static CPU: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(|e| e.into_inner())
}

/// A component built by `make policies` (crate name with underscores).
fn wasm(crate_name: &str) -> PathBuf {
    policy_component(crate_name)
}

fn cache_dir(node: &Node) -> PathBuf {
    node.dir.path().join("policy-cache")
}

/// The harness's config (CNI 1.1.0, one pool "default" 10.85.0.0/16 with /26
/// blocks) with `policy` set: `file`, `config`, the cache in the test's directory.
fn policy_conf(node: &Node, file: &Path, config: Value) -> Value {
    let mut conf = node.ohno_conf("1.1.0");
    conf["policy"] = json!({
        "path": file,
        "config": config,
        "cacheDir": cache_dir(node),
    });
    conf
}

/// Two IPv4 pools: "default" 10.85.0.0/16 and "prod" 10.90.0.0/16.
fn two_pools() -> Value {
    json!([
        {"name": "default", "subnet": "10.85.0.0/16", "blockSize": 26},
        {"name": "prod", "subnet": "10.90.0.0/16", "blockSize": 26}
    ])
}

/// CNI_ARGS as a Kubernetes runtime passes them.
fn k8s_args(namespace: &str, name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
}

/// Runs `command` for `pod` on `node` with `args` as CNI_ARGS.
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

/// The CNI error's msg and details, for matching.
fn error_text(out: &Output, code: u64) -> String {
    let msg = out.error_with_code(code);
    let details = out.json()["details"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    format!("{msg} | {details}")
}

/// `ohnoctl ARGS`, with TMPDIR and HOME in the test's directory (offline runs
/// cache in `$HOME/.cache/ohno/policy`): (exit code, stdout, stderr).
fn ohnoctl(tmp: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ohnoctl"))
        .args(args)
        .env("TMPDIR", tmp)
        .env("HOME", tmp)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .expect("run ohnoctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ohnoctl ipam ls --json --config F`, parsed.
fn allocations(node: &Node, conf: &Value) -> Vec<Value> {
    let path = node.dir.path().join("ohnoctl-conf.json");
    std::fs::write(&path, conf.to_string()).expect("write config for ohnoctl");
    let path = path.to_string_lossy().into_owned();
    let (code, stdout, stderr) = ohnoctl(
        node.dir.path(),
        &["ipam", "ls", "--json", "--config", &path],
    );
    assert_eq!(code, 0, "ohnoctl ipam ls: {stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("ohnoctl ls --json: {e}: {stdout}"))
}

/// `ohnoctl policy compile FILE --cache-dir DIR` (warms the plugin's cache).
fn warm_cache(node: &Node, file: &Path) {
    let (code, stdout, stderr) = ohnoctl(
        node.dir.path(),
        &[
            "policy",
            "compile",
            &file.to_string_lossy(),
            "--cache-dir",
            &cache_dir(node).to_string_lossy(),
        ],
    );
    assert_eq!(code, 0, "ohnoctl policy compile: {stdout}{stderr}");
}

/// Host links other than `lo` and the bridge.
fn host_links(node: &Node) -> Vec<String> {
    node.host
        .link_names()
        .into_iter()
        .filter(|n| n != "lo" && n != "ohno0")
        .collect()
}

/// A failed ADD left nothing: no allocation, no host link, no pod interface.
fn assert_nothing_left(node: &Node, pod: &Pod, conf: &Value, what: &str) {
    let atts = allocations(node, conf);
    assert!(atts.is_empty(), "{what}: allocations left: {atts:?}");
    assert!(
        host_links(node).is_empty(),
        "{what}: host links left: {:?}",
        host_links(node)
    );
    assert_eq!(
        pod.ns.link_names(),
        vec!["lo".to_owned()],
        "{what}: pod interfaces left"
    );
}

fn ipv4(result: &Value) -> std::net::Ipv4Addr {
    first_ipv4(result).0
}

// ------------------------------------------------------------------ examples

#[test]
fn namespace_pools_puts_namespaces_in_their_pools_and_can_deny_the_rest() {
    let _cpu = shared();
    require_root();
    let file = wasm("namespace_pools");
    let rules = json!([{"namespaces": ["prod"], "pool": "prod"}]);

    let node = Node::new();
    let mut conf = policy_conf(&node, &file, json!({"rules": rules}));
    conf["ipam"]["pools"] = two_pools();
    let (prod, dev) = (Pod::new(), Pod::new());
    let r = add_ok(&node, &prod, &conf, &k8s_args("prod", "web-0"));
    let a = ipv4(&r);
    assert!(in_subnet(a, [10, 90, 0, 0].into(), 16), "prod pod: {r}");
    assert_eq!(prod.ns.ipv4_addrs("eth0")[0].0, a);
    let r = add_ok(&node, &dev, &conf, &k8s_args("dev", "web-0"));
    let b = ipv4(&r);
    assert!(in_subnet(b, [10, 85, 0, 0].into(), 16), "dev pod: {r}");
    assert_eq!(dev.ns.ipv4_addrs("eth0")[0].0, b);
    assert_eq!(allocations(&node, &conf).len(), 2);

    // denyUnknown: an unmapped namespace is refused with the reason.
    let node = Node::new();
    let mut conf = policy_conf(&node, &file, json!({"rules": rules, "denyUnknown": true}));
    conf["ipam"]["pools"] = two_pools();
    let pod = Pod::new();
    let out = call(&node, "ADD", &pod, &conf, &k8s_args("dev", "web-0"));
    let text = error_text(&out, 103);
    assert!(
        text.contains("namespace dev is not mapped to a pool"),
        "{out}"
    );
    assert!(text.contains("namespace_pools.wasm"), "{out}");
    assert_nothing_left(&node, &pod, &conf, "denyUnknown");
    // A mapped namespace still works on that network.
    let ok = Pod::new();
    let r = add_ok(&node, &ok, &conf, &k8s_args("prod", "web-1"));
    assert!(in_subnet(ipv4(&r), [10, 90, 0, 0].into(), 16), "{r}");
}

fn sticky_conf(node: &Node) -> Value {
    let mut conf = policy_conf(
        node,
        &wasm("sticky_statefulset"),
        json!({"pool": "sts", "sets": [{"namespace": "prod", "name": "web", "base": 0}]}),
    );
    conf["ipam"]["pools"] = json!([
        {"name": "default", "subnet": "10.85.0.0/16", "blockSize": 26},
        {"name": "sts", "subnet": "10.86.0.0/24", "blockSize": 26}
    ]);
    conf
}

#[test]
fn sticky_statefulset_keeps_the_address_across_readd_and_nodes() {
    let _cpu = shared();
    require_root();
    let node_a = Node::new();
    let conf_a = sticky_conf(&node_a);
    let args = k8s_args("prod", "web-2");
    // web-2: ordinal 2 of 10.86.0.0/24 in /26 blocks (.0 network, .1 gateway).
    let sticky: std::net::Ipv4Addr = [10, 86, 0, 4].into();

    let first = Pod::new();
    let r1 = add_ok(&node_a, &first, &conf_a, &args);
    assert_eq!(ipv4(&r1), sticky, "{r1}");
    assert_eq!(first.ns.ipv4_addrs("eth0")[0].0, sticky);
    // Another pod of the namespace that is not of the set gets the default pool.
    let other = Pod::new();
    let r = add_ok(&node_a, &other, &conf_a, &k8s_args("prod", "api-0"));
    assert!(in_subnet(ipv4(&r), [10, 85, 0, 0].into(), 16), "{r}");

    // A second node sharing the store (one SQLite file, two host namespaces).
    let node_b = Node::new();
    let mut conf_b = conf_a.clone();
    conf_b["node"] = json!("node-b");
    conf_b["logFile"] = json!(node_b.log_file());
    conf_b["policy"]["cacheDir"] = json!(cache_dir(&node_b));

    // While web-2 holds it, a second web-2 is refused, not given another address.
    let early = Pod::new();
    let out = call(&node_b, "ADD", &early, &conf_b, &args);
    let text = error_text(&out, 101);
    assert!(text.contains("10.86.0.4"), "{out}");
    assert!(host_links(&node_b).is_empty(), "{:?}", host_links(&node_b));

    // DEL, then ADD again with a new container id: the same address.
    del_ok(&node_a, &first, &conf_a, &args, &r1);
    let second = Pod::new();
    let r2 = add_ok(&node_a, &second, &conf_a, &args);
    assert_eq!(ipv4(&r2), sticky, "{r2}");
    del_ok(&node_a, &second, &conf_a, &args, &r2);

    // Rescheduled on node-b: the address lies in node-a's block, which strict
    // affinity (the default) keeps node-a's alone: refused, naming the block
    // and its node, and nothing made on node-b.
    let strict = Pod::new();
    let out = call(&node_b, "ADD", &strict, &conf_b, &args);
    let text = error_text(&out, 101);
    assert!(
        text.contains("block 10.86.0.0/26") && text.contains("node node-a"),
        "{out}"
    );
    assert!(host_links(&node_b).is_empty(), "{:?}", host_links(&node_b));
    assert!(strict.ns.link("eth0").is_none(), "{out}");
    // Without strict affinity the address follows the pod: the same address again.
    conf_b["ipam"]["strictAffinity"] = json!(false);
    let moved = Pod::new();
    let r3 = add_ok(&node_b, &moved, &conf_b, &args);
    assert_eq!(ipv4(&r3), sticky, "{r3}");
    assert_eq!(moved.ns.ipv4_addrs("eth0")[0].0, sticky);
    let atts = allocations(&node_a, &conf_a);
    let holder = atts
        .iter()
        .find(|a| a["ips"].to_string().contains("10.86.0.4"))
        .unwrap_or_else(|| panic!("no holder of 10.86.0.4 in {atts:?}"));
    assert_eq!(holder["node"], "node-b", "{holder}");
    assert_eq!(holder["containerId"], moved.container_id.as_str());
}

#[test]
fn pod_ifname_names_the_host_veth_after_the_pod() {
    let _cpu = shared();
    require_root();
    let node = Node::new();
    let conf = policy_conf(&node, &wasm("pod_ifname"), Value::Null);
    let args = k8s_args("prod", "web-0");

    let pod = Pod::new();
    let r = add_ok(&node, &pod, &conf, &args);
    assert_eq!(r["interfaces"][1]["name"], "prod-web-0", "{r}");
    let link = node
        .host
        .link("prod-web-0")
        .unwrap_or_else(|| panic!("no host link prod-web-0: {:?}", node.host.link_names()));
    assert_eq!(link["master"], "ohno0", "{link}");
    assert_eq!(link["linkinfo"]["info_kind"], "veth", "{link}");
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    let (addr, _, gw) = first_ipv4(&r);
    assert_eq!(pod.ns.ipv4_addrs("eth0")[0].0, addr);
    let gw = gw.expect("gateway").to_string();
    assert!(pod.ns.ping(&gw), "pod cannot reach its gateway {gw}");
    let flags = link["flags"].to_string();
    assert!(flags.contains("\"UP\""), "host veth not up: {link}");

    // A repeated ADD adopts the named pair: same answer, no second pair.
    let repeated = add_ok(&node, &pod, &conf, &args);
    assert_eq!(
        repeated["interfaces"][1]["name"], "prod-web-0",
        "{repeated}"
    );
    assert_eq!(repeated["ips"], r["ips"], "{repeated}");
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(
        pod.ns.ping(&gw),
        "pod cannot reach its gateway after a repeated ADD"
    );

    // DEL removes it; the pod (a new container) comes back under the same name.
    del_ok(&node, &pod, &conf, &args, &r);
    assert!(
        eventually(Duration::from_secs(10), || node
            .host
            .link("prod-web-0")
            .is_none()),
        "prod-web-0 still exists after DEL"
    );
    let again = Pod::new();
    let r = add_ok(&node, &again, &conf, &args);
    assert_eq!(r["interfaces"][1]["name"], "prod-web-0", "{r}");
    assert_eq!(
        node.host.link("prod-web-0").map(|l| l["master"].clone()),
        Some(json!("ohno0"))
    );
    assert!(
        again.ns.ping(&gw),
        "re-added pod cannot reach its gateway {gw}"
    );
    // A pod without Kubernetes args gets the host's default name.
    let plain = Pod::new();
    let r = add_ok(&node, &plain, &conf, "");
    assert!(
        is_ohno_veth_name(r["interfaces"][1]["name"].as_str().unwrap_or_default()),
        "{r}"
    );
}

/// ADD a, b, c; DEL b; ADD d on `conf`: (b's address, d's address).
fn release_and_reuse(node: &Node, conf: &Value, tag: &str) -> (String, String) {
    // Fixed container ids: no-quick-reuse picks by a hash of the id, so the
    // run is the same every time. (Its own picks lie above the `skipLowest`
    // lowest free addresses, so a release of one of them is protected by the
    // spread of the pick, not by the skip: with other ids d could land on b's
    // address with a chance of about 1/60.)
    let pods: Vec<Pod> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| {
            let mut p = Pod::new();
            p.container_id = format!("{tag}-{name}");
            p
        })
        .collect();
    let results: Vec<Value> = pods[..3]
        .iter()
        .map(|p| add_ok(node, p, conf, ""))
        .collect();
    let addrs: Vec<String> = results.iter().map(|r| ipv4(r).to_string()).collect();
    let distinct: std::collections::BTreeSet<&String> = addrs.iter().collect();
    assert_eq!(distinct.len(), 3, "{addrs:?}");
    del_ok(node, &pods[1], conf, "", &results[1]);
    let d = add_ok(node, &pods[3], conf, "");
    (addrs[1].clone(), ipv4(&d).to_string())
}

#[test]
fn no_quick_reuse_does_not_hand_out_a_just_released_address() {
    let _cpu = shared();
    require_root();
    let node = Node::new();
    let conf = policy_conf(&node, &wasm("no_quick_reuse"), Value::Null);
    let (freed, got) = release_and_reuse(&node, &conf, "nqr");
    assert_ne!(got, freed, "no-quick-reuse handed out the released address");

    // The same steps with the built-in policy, on a second network and store
    // in the same host namespace: the released address is the next one given.
    let mut plain = node.ohno_conf("1.1.0");
    plain["name"] = json!("plainnet");
    plain["bridge"] = json!("ohno1");
    plain["ipam"]["pools"] =
        json!([{"name": "default", "subnet": "10.87.0.0/16", "blockSize": 26}]);
    plain["ipam"]["store"]["dataDir"] = json!(node.dir.path().join("store-plain"));
    let (freed, got) = release_and_reuse(&node, &plain, "plain");
    assert_eq!(
        got, freed,
        "the built-in policy reuses the lowest free address"
    );
}

// ------------------------------------------------------------------ hostile

/// ADD with `file` and `config` (cache warmed when `warm`) on a fresh node must
/// fail with `code`, its message containing each of `needles` (case-insensitive)
/// and the policy file, leaving nothing behind. Returns the ADD's wall time
/// and the error's text.
fn expect_refused(
    file: &Path,
    config: Value,
    tweak: impl FnOnce(&mut Value),
    warm: bool,
    code: u64,
    needles: &[&str],
) -> (Duration, String) {
    let node = Node::new();
    let pod = Pod::new();
    let mut conf = policy_conf(&node, file, config);
    // Generous, so that the fault under test (memory, trap, bad answer), not
    // the clock on a loaded machine, is what stops the policy; the loop test
    // sets 100 ms.
    conf["policy"]["timeoutMs"] = json!(10_000);
    tweak(&mut conf);
    if warm {
        warm_cache(&node, file);
    }
    let started = Instant::now();
    let out = call(&node, "ADD", &pod, &conf, &k8s_args("prod", "web-0"));
    let took = started.elapsed();
    let text = error_text(&out, code);
    eprintln!(
        "{}: code {code} in {took:?}: {text}",
        conf["policy"]["config"]
    );
    let lower = text.to_lowercase();
    for needle in needles {
        assert!(
            lower.contains(&needle.to_lowercase()),
            "expected {needle:?} in the error\n{out}"
        );
    }
    assert!(
        text.contains(&file.display().to_string()),
        "the error does not name the policy file\n{out}"
    );
    assert_nothing_left(&node, &pod, &conf, &conf["policy"].to_string());
    (took, text)
}

fn hostile(mode: &str) -> (PathBuf, Value) {
    (wasm("hostile"), json!({"mode": mode}))
}

fn refused(mode: &str, code: u64, needles: &[&str]) {
    let _cpu = shared();
    require_root();
    let (file, config) = hostile(mode);
    expect_refused(&file, config, |_| {}, true, code, needles);
}

#[test]
fn hostile_loop_is_cut_at_the_time_limit() {
    let _cpu = exclusive();
    require_root();
    let (file, config) = hostile("loop");
    let (took, text) = expect_refused(
        &file,
        config,
        |c| c["policy"]["timeoutMs"] = json!(100),
        true,
        104,
        &[],
    );
    // The message says which limit stopped it.
    assert!(
        text.contains("fuel") || text.contains("time limit"),
        "{text}"
    );
    eprintln!("loop: the ADD took {took:?} ({text})");
    // 100 ms of timeoutMs plus process start, cache load and plumbing (debug
    // build, `ip netns exec`).
    assert!(
        took < Duration::from_millis(100 + 400),
        "the ADD took {took:?}; timeoutMs is 100"
    );
}

#[test]
fn hostile_oom_is_stopped_at_the_memory_limit() {
    refused("oom", 104, &["memory"]);
}

#[test]
fn hostile_panic_is_reported_as_a_panic() {
    refused("panic", 104, &["panicked"]);
}

#[test]
fn hostile_stack_overflow_is_a_trap() {
    refused("stack", 104, &["trapped"]);
}

#[test]
fn hostile_address_outside_the_pool_is_refused() {
    refused("outside", 104, &["192.0.2.1", "outside"]);
}

#[test]
fn hostile_gateway_address_is_refused() {
    refused("gateway", 104, &["10.85.0.1", "gateway"]);
}

#[test]
fn hostile_network_address_is_refused() {
    refused("network", 104, &["10.85.0.0", "network"]);
}

#[test]
fn hostile_excluded_address_is_refused() {
    let _cpu = shared();
    require_root();
    let file = wasm("hostile");
    expect_refused(
        &file,
        json!({"mode": "excluded", "address": "10.85.255.7"}),
        |c| c["ipam"]["pools"][0]["exclude"] = json!(["10.85.255.0/28"]),
        true,
        104,
        &["10.85.255.7", "excluded"],
    );
}

#[test]
fn hostile_long_name_is_refused() {
    refused("long-name", 104, &["abcdefghijklmnop"]);
}

#[test]
fn hostile_slash_name_is_refused() {
    refused("slash-name", 104, &["a/b"]);
}

#[test]
fn hostile_dot_name_is_refused() {
    refused("dot-name", 104, &["name"]);
}

#[test]
fn hostile_name_of_an_existing_interface_is_refused() {
    let _cpu = shared();
    require_root();
    let file = wasm("hostile");
    // `lo` exists in the host namespace the plugin runs in.
    expect_refused(
        &file,
        json!({"mode": "dup-name", "name": "lo"}),
        |_| {},
        true,
        104,
        &["\"lo\"", "already uses"],
    );
}

#[test]
fn hostile_unknown_pool_is_refused() {
    refused("bad-pool", 104, &["no-such-pool"]);
}

#[test]
fn hostile_deny_is_a_denial() {
    refused("deny", 103, &["hostile: deny mode"]);
}

#[test]
fn hostile_configure_error_is_a_fault() {
    refused("configure-error", 104, &["invalid config"]);
}

#[test]
fn a_component_importing_sockets_is_refused_at_load() {
    let _cpu = shared();
    require_root();
    expect_refused(
        &wasm("hostile_net"),
        Value::Null,
        |_| {},
        false,
        104,
        &["wasi:sockets"],
    );
}

#[test]
fn a_component_of_another_major_version_is_refused() {
    let _cpu = shared();
    require_root();
    expect_refused(
        &wasm("policy_v1"),
        Value::Null,
        |_| {},
        false,
        104,
        &["supports ohno:policy@0.1.x"],
    );
}

#[test]
fn a_missing_component_is_a_fault_naming_the_path() {
    let _cpu = shared();
    require_root();
    let dir = TempDir::new();
    let missing = dir.path().join("no-such-policy.wasm");
    expect_refused(&missing, Value::Null, |_| {}, false, 104, &["read"]);
}

/// The ADD of `pod` that answered `r` under failurePolicy "default" got the
/// built-in decision (the first free address of the block, `taken` addresses
/// after the gateway being held already; on the pod's eth0); returns the last
/// line of the log saying why.
fn assert_built_in_decision(node: &Node, pod: &Pod, r: &Value, taken: u32, what: &str) -> String {
    let (addr, _, gw) = first_ipv4(r);
    assert!(in_subnet(addr, [10, 85, 0, 0].into(), 16), "{what}: {r}");
    assert_eq!(
        Some(u32::from(addr)),
        gw.map(|g| u32::from(g) + 1 + taken),
        "{what}: {r}"
    );
    assert_eq!(pod.ns.ipv4_addrs("eth0")[0].0, addr, "{what}");
    let log = node.log();
    log.lines()
        .rev()
        .find(|l| l.contains("failurePolicy is \"default\""))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{what}: no fallback in the log:\n{log}"))
}

#[test]
fn failure_policy_default_falls_back_to_the_built_in_decision() {
    let _cpu = shared();
    require_root();
    for (mode, fault) in [("loop", "time limit"), ("gateway", "gateway")] {
        let node = Node::new();
        let pod = Pod::new();
        let file = wasm("hostile");
        let mut conf = policy_conf(&node, &file, json!({"mode": mode}));
        conf["policy"]["failurePolicy"] = json!("default");
        conf["policy"]["timeoutMs"] = json!(100);
        // Fuel high enough that the wall-clock deadline, not the budget, stops the loop.
        conf["policy"]["fuel"] = json!(1_000_000_000_000u64);
        warm_cache(&node, &file);
        let r = add_ok(&node, &pod, &conf, "");
        let line = assert_built_in_decision(&node, &pod, &r, 0, mode);
        assert!(line.contains(fault), "{mode}: {line}");
        assert!(line.contains("hostile.wasm"), "{mode}: {line}");
    }
}

// ------------------------------------------------------------------ waits and volume

/// `hostile` in `mode`, with `more` config fields.
fn hostile_with(mode: &str, more: Value) -> (PathBuf, Value) {
    let mut config = json!({ "mode": mode });
    if let (Some(c), Some(m)) = (config.as_object_mut(), more.as_object()) {
        c.extend(m.clone());
    }
    (wasm("hostile"), config)
}

/// The policy's log lines (at most this many per ADD: the host's budget).
const LOG_LINES: usize = 100;

/// What a `log-flood` of `written` log lines and as many `println!`s and
/// `eprintln!`s (two lines each: the text has a newline) leaves in `log`:
/// [`LOG_LINES`] of them, each escaped in place, no raw control character, no
/// forged line, and one line counting the rest.
fn assert_flood_in_log(log: &str, written: usize) {
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{9b}'),
        "a raw control character in the log:\n{log}"
    );
    let theirs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hostile.wasm") && l.contains(": line "))
        .collect();
    assert_eq!(theirs.len(), LOG_LINES, "{theirs:#?}");
    for l in &theirs {
        assert!(
            l.contains(r"\n2026-01-01T00:00:00.000Z INFO  [ADD forged] \x1b[2J\u{9b}31m owned"),
            "not escaped: {l}"
        );
    }
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line in the log:\n{log}"
    );
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hostile.wasm: dropped"))
        .collect();
    assert_eq!(dropped.len(), 1, "{dropped:#?}");
    let n = 5 * written - LOG_LINES;
    assert!(
        dropped[0].contains(&format!("dropped {n} lines")),
        "{}",
        dropped[0]
    );
}

#[test]
fn a_policy_waiting_in_a_host_call_fails_at_its_time_limit() {
    let _cpu = exclusive();
    require_root();
    for mode in ["sleep", "poll", "configure-sleep"] {
        let (file, config) = hostile(mode);
        let (took, text) = expect_refused(
            &file,
            config,
            |c| {
                c["policy"]["timeoutMs"] = json!(300);
                c["policy"]["persistMs"] = json!(0);
            },
            true,
            104,
            &["exceeded its time limit of 300 ms"],
        );
        eprintln!("{mode}: the ADD took {took:?} ({text})");
        assert!(
            took < Duration::from_millis(300 + 700),
            "{mode}: the ADD took {took:?}; timeoutMs is 300"
        );
    }
}

#[test]
fn a_sleeping_policy_falls_back_under_failure_policy_default() {
    let _cpu = exclusive();
    require_root();
    let node = Node::new();
    let pod = Pod::new();
    let (file, config) = hostile("sleep");
    let mut conf = policy_conf(&node, &file, config);
    conf["policy"]["failurePolicy"] = json!("default");
    conf["policy"]["timeoutMs"] = json!(200);
    conf["policy"]["persistMs"] = json!(0);
    warm_cache(&node, &file);
    let started = Instant::now();
    let r = add_ok(&node, &pod, &conf, "");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(200 + 700),
        "the ADD took {took:?}"
    );
    let line = assert_built_in_decision(&node, &pod, &r, 0, "sleep");
    assert!(line.contains("time limit of 200 ms"), "{line}");
}

#[test]
fn hostile_resource_hoarding_stops_at_the_resource_table_limit() {
    refused("resources", 104, &["resource table has no free keys"]);
}

#[test]
fn hostile_random_bytes_are_bounded() {
    refused(
        "random",
        104,
        &["requested len 1073741824 exceeds limit 65536"],
    );
}

#[test]
fn a_log_flood_is_bounded_escaped_and_counted() {
    let _cpu = shared();
    require_root();
    let node = Node::new();
    let pod = Pod::new();
    let (file, config) = hostile_with("log-flood", json!({"count": 2000}));
    let mut conf = policy_conf(&node, &file, config);
    conf["policy"]["persistMs"] = json!(0);
    conf["policy"]["timeoutMs"] = json!(10_000);
    warm_cache(&node, &file);
    add_ok(&node, &pod, &conf, "");
    assert_flood_in_log(&node.log(), 2000);
}

/// Bytes a giant answer may put on stdout or in the log.
const BOUNDED: u64 = 16 * 1024;

#[test]
fn giant_answers_are_bounded_in_the_error_document_and_the_log() {
    let _cpu = shared();
    require_root();
    let file = wasm("hostile");
    for (mode, code, needle) in [
        ("giant-pool", 104, "pool name of 52428800 bytes"),
        ("giant-deny", 103, "(52428800 bytes)"),
        ("giant-error", 104, "internal error: ggg"),
        ("giant-name", 104, "interface name of 52428800 bytes"),
    ] {
        let node = Node::new();
        let pod = Pod::new();
        let mut conf = policy_conf(&node, &file, json!({ "mode": mode }));
        conf["policy"]["memoryMB"] = json!(256);
        conf["policy"]["timeoutMs"] = json!(10_000);
        conf["policy"]["persistMs"] = json!(0);
        warm_cache(&node, &file);
        let out = call(&node, "ADD", &pod, &conf, "");
        let text = error_text(&out, code);
        assert!(
            (out.stdout.len() as u64) < BOUNDED,
            "{mode}: {} bytes on stdout",
            out.stdout.len()
        );
        assert!(text.contains(needle), "{mode}: {text}");
        let logged = std::fs::metadata(node.log_file()).map_or(0, |m| m.len());
        assert!(logged < 4 * BOUNDED, "{mode}: a log of {logged} bytes");
        assert_nothing_left(&node, &pod, &conf, mode);
    }
    // One giant log line: cut, and the ADD goes on.
    let node = Node::new();
    let pod = Pod::new();
    let mut conf = policy_conf(&node, &file, json!({ "mode": "giant-log" }));
    conf["policy"]["memoryMB"] = json!(256);
    // Like the cases above: building a 50 MB line is not what is timed.
    conf["policy"]["timeoutMs"] = json!(10_000);
    conf["policy"]["persistMs"] = json!(0);
    add_ok(&node, &pod, &conf, "");
    let logged = std::fs::metadata(node.log_file()).map_or(0, |m| m.len());
    assert!(logged < 4 * BOUNDED, "a log of {logged} bytes");
    assert!(
        node.log().contains("ggg… (52428800 bytes)"),
        "{}",
        node.log()
    );
}

#[test]
fn control_characters_in_the_container_id_are_escaped_in_the_log_tag() {
    let _cpu = shared();
    require_root();
    let node = Node::new();
    let mut pod = Pod::new();
    pod.container_id = "c1\u{1b}[2J\n2026-01-01T00:00:00.000Z INFO  forged".into();
    let conf = node.ohno_conf("1.1.0");
    let out = call(&node, "ADD", &pod, &conf, "");
    assert_ne!(out.code, 0, "{out}");
    let log = node.log();
    assert!(!log.contains('\u{1b}'), "a raw escape in the log:\n{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line:\n{log}"
    );
    assert!(
        log.contains(r"[ADD c1\x1b[2J\n2026-01-01T00:00:00.000Z INFO  forged/eth0 pid"),
        "{log}"
    );
}

/// An on-demand policy server for `hostile` in `mode` (misbehaving only for
/// pod `web-0`), started by a benign ADD: (node, conf, server pid, the pod of
/// that ADD).
fn hostile_server(mode: &str, more: Value, timeout_ms: u64) -> (Node, Value, i32, Pod) {
    let node = Node::new();
    let mut extra = json!({ "only": "web-0" });
    if let (Some(e), Some(m)) = (extra.as_object_mut(), more.as_object()) {
        e.extend(m.clone());
    }
    let (file, config) = hostile_with(mode, extra);
    let (mut conf, lock_dir) = with_server(&node, policy_conf(&node, &file, config));
    conf["policy"]["timeoutMs"] = json!(timeout_ms);
    conf["policy"]["persistMs"] = json!(5_000);
    conf["policy"]["memoryMB"] = json!(256);
    warm_cache(&node, &file);
    let starter = Pod::new();
    add_ok(&node, &starter, &conf, &k8s_args("prod", "starter"));
    assert!(
        eventually(SERVER_STARTS_WITHIN, || helper_pid(&lock_dir, "policy")
            .is_some()),
        "{mode}: no policy server after the first ADD"
    );
    let pid = helper_pid(&lock_dir, "policy").expect("server");
    (node, conf, pid, starter)
}

/// A failed ADD of `pod` left nothing: no allocation of its own, no host link
/// beyond `links` (those of the ADDs before it), no pod interface.
fn assert_pod_left_nothing(node: &Node, pod: &Pod, conf: &Value, links: &[String], what: &str) {
    let atts = allocations(node, conf);
    assert!(
        !atts
            .iter()
            .any(|a| a["containerId"] == pod.container_id.as_str()),
        "{what}: an allocation left: {atts:?}"
    );
    assert_eq!(host_links(node), links, "{what}: host links left");
    assert_eq!(
        pod.ns.link_names(),
        vec!["lo".to_owned()],
        "{what}: pod interfaces left"
    );
}

/// The server that served the hostile ADD serves a benign one normally, and
/// is the same process; nothing fell back to an in-process load.
fn assert_server_serves_on(node: &Node, conf: &Value, pid: i32, what: &str) {
    let lock_dir = PathBuf::from(conf["ipam"]["lockDir"].as_str().unwrap_or_default());
    let sock = helper_socket(&lock_dir, "policy").expect("the server's socket");
    let pod = Pod::new();
    let r = add_ok(node, &pod, conf, &k8s_args("prod", "web-1"));
    assert!(
        in_subnet(ipv4(&r), [10, 85, 0, 0].into(), 16),
        "{what}: {r}"
    );
    assert_eq!(
        helper_pid(&lock_dir, "policy"),
        Some(pid),
        "{what}: the server did not survive"
    );
    let log = node.log();
    assert!(
        log.matches(&through(&sock)).count() >= 2,
        "{what}: the ADDs did not go through the server:\n{log}"
    );
    assert!(
        !log.contains("loading the policy here"),
        "{what}: an ADD fell back to an in-process load:\n{log}"
    );
}

#[test]
fn the_policy_server_cuts_waits_at_the_time_limit_and_serves_the_next_add() {
    let _cpu = exclusive();
    require_root();
    for mode in ["sleep", "poll"] {
        let (node, conf, pid, _starter) = hostile_server(mode, json!({}), 300);
        let links = host_links(&node);
        let pod = Pod::new();
        let started = Instant::now();
        let out = call(&node, "ADD", &pod, &conf, &k8s_args("prod", "web-0"));
        let took = started.elapsed();
        let text = error_text(&out, 104);
        assert!(
            text.contains("exceeded its time limit of 300 ms"),
            "{mode}: {text}"
        );
        assert!(
            took < Duration::from_millis(300 + 700),
            "{mode}: the ADD took {took:?}; timeoutMs is 300"
        );
        assert_pod_left_nothing(&node, &pod, &conf, &links, mode);
        assert_server_serves_on(&node, &conf, pid, mode);
    }
}

#[test]
fn the_policy_server_bounds_log_floods_and_giant_answers() {
    let _cpu = shared();
    require_root();
    let (node, conf, pid, _starter) = hostile_server("log-flood", json!({"count": 2000}), 10_000);
    add_ok(&node, &Pod::new(), &conf, &k8s_args("prod", "web-0"));
    assert_flood_in_log(&node.log(), 2000);
    assert_server_serves_on(&node, &conf, pid, "log-flood");

    let (node, conf, pid, _starter) = hostile_server("giant-deny", json!({}), 10_000);
    let links = host_links(&node);
    let pod = Pod::new();
    let out = call(&node, "ADD", &pod, &conf, &k8s_args("prod", "web-0"));
    let text = error_text(&out, 103);
    assert!(text.contains("(52428800 bytes)"), "{text}");
    assert!(
        (out.stdout.len() as u64) < BOUNDED,
        "{} bytes",
        out.stdout.len()
    );
    assert_pod_left_nothing(&node, &pod, &conf, &links, "giant-deny");
    assert_server_serves_on(&node, &conf, pid, "giant-deny");
}

#[test]
fn the_policy_server_runs_the_calls_of_concurrent_adds_at_once() {
    let _cpu = exclusive();
    require_root();
    let timeout = Duration::from_millis(1500);
    let (node, conf, pid, _starter) = hostile_server("sleep", json!({}), 1500);
    let (sleepers, benign) = std::thread::scope(|s| {
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let pod = Pod::new();
                    let started = Instant::now();
                    let out = call(&node, "ADD", &pod, &conf, &k8s_args("prod", "web-0"));
                    (started.elapsed(), error_text(&out, 104))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let pod = Pod::new();
        let started = Instant::now();
        add_ok(&node, &pod, &conf, &k8s_args("prod", "web-9"));
        let benign = started.elapsed();
        let sleepers: Vec<(Duration, String)> = sleepers
            .into_iter()
            .map(|h| h.join().expect("a sleeping ADD"))
            .collect();
        (sleepers, benign)
    });
    eprintln!("benign ADD beside three sleeping ones: {benign:?}; sleepers: {sleepers:?}");
    // Serialized, the benign ADD would wait for a sleeper's whole timeout.
    assert!(
        benign < timeout - Duration::from_millis(300),
        "the benign ADD took {benign:?} beside sleeping ones (timeoutMs 1500)"
    );
    for (took, text) in &sleepers {
        assert!(
            text.contains("exceeded its time limit of 1500 ms"),
            "{text}"
        );
        assert!(
            *took < timeout + Duration::from_millis(1000),
            "a sleeping ADD took {took:?}: the calls were serialized"
        );
    }
    assert_server_serves_on(&node, &conf, pid, "concurrent sleepers");
}

// ------------------------------------------------------------------ store limits

/// How long an ADD refused at instantiation may take: process start, the
/// cached component, and the refusal. A tenth of the `timeoutMs` the tests
/// set, so the limit, not the clock, is what refuses it.
const REFUSED_WITHIN: Duration = Duration::from_millis(1000);

/// The sandbox's limits that hold at instantiation, each broken by a copy of
/// `hostile.wasm` (the Rust toolchain builds no such component; see
/// `wasm_surgery`), written to `dir`: (file, what the ADD's error says).
/// - `second_memory.wasm`: its main core module defines one more memory (one
///   page); a store may have one.
/// - `huge_table.wasm`: its main core module's function table starts at
///   200 000 elements; a table may have 100 000.
fn limit_fixtures(dir: &Path) -> Vec<(PathBuf, &'static [&'static str])> {
    let hostile = std::fs::read(wasm("hostile")).expect("read hostile.wasm");
    let (memories, table) = wasm_surgery::main_module_shape(&hostile);
    let second_memory = wasm_surgery::with_second_memory(&hostile);
    assert_eq!(
        wasm_surgery::main_module_shape(&second_memory),
        (memories + 1, table)
    );
    let huge_table = wasm_surgery::with_table_min(&hostile, 200_000);
    assert_eq!(
        wasm_surgery::main_module_shape(&huge_table),
        (memories, Some((200_000, None)))
    );
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    };
    vec![
        (
            write("second_memory.wasm", &second_memory),
            &[
                "instantiate: exceeded a sandbox limit (one memory, few tables and instances)",
                "memory count too high at 2",
            ],
        ),
        (
            write("huge_table.wasm", &huge_table),
            &[
                "instantiate: exceeded its table limit of 100000 elements",
                "growing table to 200000 elements",
            ],
        ),
    ]
}

/// The file name of `path`, for messages and log lines.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn assert_says(text: &str, needles: &[&str], what: &str) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "{what}: expected {needle:?} in\n{text}"
        );
    }
}

#[test]
fn a_second_memory_or_a_huge_table_fails_the_add_at_instantiation() {
    let _cpu = exclusive();
    require_root();
    let dir = TempDir::new();
    for (file, needles) in limit_fixtures(dir.path()) {
        let what = file_name(&file);
        let config = json!({"mode": "ok"});
        let (took, text) = expect_refused(
            &file,
            config.clone(),
            |c| c["policy"]["persistMs"] = json!(0),
            true,
            104,
            needles,
        );
        assert_says(&text, needles, &what);
        assert!(took < REFUSED_WITHIN, "{what}: the ADD took {took:?}");

        let node = Node::new();
        let pod = Pod::new();
        let mut conf = policy_conf(&node, &file, config);
        conf["policy"]["failurePolicy"] = json!("default");
        conf["policy"]["persistMs"] = json!(0);
        warm_cache(&node, &file);
        let r = add_ok(&node, &pod, &conf, "");
        let line = assert_built_in_decision(&node, &pod, &r, 0, &what);
        assert_says(&line, needles, &what);
    }
}

/// A node whose policy is `file` through an on-demand server (`persistMs` 5 s,
/// `timeoutMs` 10 s, `failurePolicy` as given): (node, conf, lock dir).
fn server_node(file: &Path, failure_policy: &str) -> (Node, Value, PathBuf) {
    let node = Node::new();
    let conf = policy_conf(&node, file, json!({"mode": "ok"}));
    let (mut conf, lock_dir) = with_server(&node, conf);
    conf["policy"]["timeoutMs"] = json!(10_000);
    conf["policy"]["persistMs"] = json!(5_000);
    conf["policy"]["failurePolicy"] = json!(failure_policy);
    warm_cache(&node, file);
    (node, conf, lock_dir)
}

/// The on-demand policy server in `lock_dir`, once the node's first ADD
/// started it: (its pid, its socket).
fn started_server(lock_dir: &Path, what: &str) -> (i32, PathBuf) {
    assert!(
        eventually(SERVER_STARTS_WITHIN, || helper_pid(lock_dir, "policy")
            .is_some()),
        "{what}: no policy server after the first ADD"
    );
    let pid = helper_pid(lock_dir, "policy").expect("server");
    let sock = helper_socket(lock_dir, "policy").expect("the server's socket");
    (pid, sock)
}

/// Whether `pid` is still a policy server (`ohnod on-demand policy`).
fn is_policy_server(pid: i32) -> bool {
    common::is_on_demand_server(pid, "policy")
}

/// What the plugin logs (at debug) when a call's policy goes through the
/// on-demand server on `sock`.
fn through(sock: &Path) -> String {
    format!("policy: through {}", sock.display())
}

#[test]
fn the_policy_server_refuses_a_second_memory_or_a_huge_table_and_serves_on() {
    let _cpu = exclusive();
    require_root();
    let dir = TempDir::new();
    for (file, needles) in limit_fixtures(dir.path()) {
        let what = file_name(&file);
        let (node, conf, lock_dir) = server_node(&file, "fail");
        // The benign component below, precompiled (see there).
        warm_cache(&node, &wasm("hostile"));
        // The first ADD loads the component itself (refused the same way) and
        // starts the server.
        let first = Pod::new();
        let text = error_text(&call(&node, "ADD", &first, &conf, ""), 104);
        assert_says(&text, needles, &what);
        let (pid, sock) = started_server(&lock_dir, &what);
        // Each ADD through the server gets a fresh store, refused at the same
        // limit; the server stays.
        for _ in 0..2 {
            let pod = Pod::new();
            let started = Instant::now();
            let out = call(&node, "ADD", &pod, &conf, "");
            let took = started.elapsed();
            let text = error_text(&out, 104);
            assert_says(&text, needles, &what);
            assert!(
                took < REFUSED_WITHIN,
                "{what}: the ADD through the server took {took:?}"
            );
            assert_nothing_left(&node, &pod, &conf, &what);
            assert_eq!(
                helper_pid(&lock_dir, "policy"),
                Some(pid),
                "{what}: the server did not survive"
            );
        }
        let log = node.log();
        assert_eq!(
            log.matches(&through(&sock)).count(),
            2,
            "{what}: the ADDs did not go through the server:\n{log}"
        );
        assert!(
            !log.contains("loading the policy here"),
            "{what}: an ADD fell back to an in-process load:\n{log}"
        );
        // A benign ADD on the node (the unmodified component, its own server)
        // is served normally, beside the server that refuses (its component
        // precompiled at the start: a compile here as long as persistMs would
        // see the refusing server leave, idle).
        let benign = with_server(
            &node,
            policy_conf(&node, &wasm("hostile"), json!({"mode": "ok"})),
        )
        .0;
        let pod = Pod::new();
        let r = add_ok(&node, &pod, &benign, &k8s_args("prod", "web-1"));
        assert!(
            in_subnet(ipv4(&r), [10, 85, 0, 0].into(), 16),
            "{what}: {r}"
        );
        assert_eq!(pod.ns.ipv4_addrs("eth0")[0].0, ipv4(&r), "{what}");
        assert!(is_policy_server(pid), "{what}: the refusing server is gone");

        // failurePolicy "default": the built-in decision, in-process (the
        // first ADD) and through the server.
        let (node, conf, lock_dir) = server_node(&file, "default");
        let pod = Pod::new();
        let r = add_ok(&node, &pod, &conf, "");
        let line = assert_built_in_decision(&node, &pod, &r, 0, &what);
        assert_says(&line, needles, &what);
        let (_, sock) = started_server(&lock_dir, &what);
        let pod = Pod::new();
        let r = add_ok(&node, &pod, &conf, "");
        let line = assert_built_in_decision(&node, &pod, &r, 1, &what);
        assert_says(&line, needles, &what);
        assert!(
            line.contains("using the built-in decision"),
            "{what}: not the server's refusal: {line}"
        );
        assert!(
            node.log().contains(&through(&sock)),
            "{what}: the second ADD did not go through the server"
        );
    }
}

// ------------------------------------------------------------------ cache

#[test]
fn the_precompile_cache_is_used_and_a_damaged_entry_is_recompiled() {
    let _cpu = shared();
    require_root();
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new();
    let mut conf = policy_conf(&node, &wasm("pod_ifname"), Value::Null);
    // Every ADD loads the component itself (no policy server): this is the
    // cache a process without a server, and each server's start, loads from.
    conf["policy"]["persistMs"] = json!(0);
    // The plugin's own lines about the component: at logLevel debug the log
    // also carries Cranelift's ("`wasm[0]::function[3]` compiled in 0.4ms").
    let ours = || -> Vec<String> {
        node.log()
            .lines()
            .filter(|l| l.contains("pod_ifname.wasm: "))
            .map(str::to_owned)
            .collect()
    };
    let count = |what: &str| ours().iter().filter(|l| l.contains(what)).count();
    let entries = || -> Vec<PathBuf> {
        std::fs::read_dir(cache_dir(&node))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                    .collect()
            })
            .unwrap_or_default()
    };

    let p1 = Pod::new();
    add_ok(&node, &p1, &conf, &k8s_args("prod", "web-1"));
    assert_eq!(count("compiled in"), 1, "{:#?}", ours());
    assert_eq!(count("loaded from cache"), 0, "{:#?}", ours());
    let cached = entries();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let entry = &cached[0];
    let meta = std::fs::metadata(entry).expect("stat the cache entry");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{}",
        entry.display()
    );
    let size = meta.len();

    let p2 = Pod::new();
    add_ok(&node, &p2, &conf, &k8s_args("prod", "web-2"));
    assert_eq!(count("loaded from cache"), 1, "{:#?}", ours());
    assert_eq!(count("compiled in"), 1, "{:#?}", ours());

    // Truncated: detected, recompiled, rewritten; the ADD works.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(entry)
        .expect("open the cache entry");
    f.set_len(size / 2).expect("truncate the cache entry");
    drop(f);
    let p3 = Pod::new();
    let r = add_ok(&node, &p3, &conf, &k8s_args("prod", "web-3"));
    assert_eq!(r["interfaces"][1]["name"], "prod-web-3", "{r}");
    assert_eq!(count("damaged"), 1, "{:#?}", ours());
    assert_eq!(count("compiled in"), 2, "{:#?}", ours());
    assert_eq!(entries(), cached);
    let meta = std::fs::metadata(entry).expect("stat the cache entry");
    assert_eq!(meta.len(), size);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let p4 = Pod::new();
    add_ok(&node, &p4, &conf, &k8s_args("prod", "web-4"));
    assert_eq!(count("loaded from cache"), 2, "{:#?}", ours());
}

/// The one `.cwasm` entry in `dir`.
fn only_entry(dir: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(entries.len(), 1, "{}: {entries:?}", dir.display());
    entries[0].clone()
}

/// Entries only root could have written into `policy.cacheDir` are loaded;
/// one another user could have planted there — valid wasmtime code of another
/// policy, under this policy's key — is refused for what makes it untrusted,
/// never run (the ADD has this policy's decision), and replaced.
#[test]
fn a_planted_cache_entry_is_refused_never_run_and_replaced() {
    let _cpu = shared();
    require_root();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let node = Node::new();
    let mut conf = policy_conf(&node, &wasm("pod_ifname"), Value::Null);
    conf["policy"]["persistMs"] = json!(0);
    warm_cache(&node, &wasm("pod_ifname"));
    let entry = only_entry(&cache_dir(&node));
    // The planted code: no_quick_reuse, which leaves interface names to the
    // host, precompiled by the same engine into a directory of its own.
    let elsewhere = node.dir.path().join("elsewhere");
    let (code, stdout, stderr) = ohnoctl(
        node.dir.path(),
        &[
            "policy",
            "compile",
            &wasm("no_quick_reuse").to_string_lossy(),
            "--cache-dir",
            &elsewhere.to_string_lossy(),
        ],
    );
    assert_eq!(code, 0, "ohnoctl policy compile: {stdout}{stderr}");
    let planted = only_entry(&elsewhere);
    let planted_bytes = std::fs::read(&planted).expect("read the planted entry");
    let plant_copy = || {
        std::fs::remove_file(&entry).ok();
        std::fs::write(&entry, &planted_bytes).expect("plant");
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the planted entry");
    };
    let refusals = |why: &str| {
        node.log()
            .lines()
            .filter(|l| l.contains("pod_ifname.wasm: cache entry") && l.contains("refused"))
            .filter(|l| l.contains(why))
            .count()
    };
    let host_name = |r: &Value| r["interfaces"][1]["name"].as_str().unwrap_or("").to_owned();

    // Control: planted as root would write it, the planted code runs (the
    // host names the interface) — what every case below must prevent.
    plant_copy();
    let r = add_ok(&node, &Pod::new(), &conf, &k8s_args("prod", "web-0"));
    assert_ne!(
        host_name(&r),
        "prod-web-0",
        "the planted entry did not run: {r}"
    );

    let cases: [(&str, &str, &dyn Fn()); 4] = [
        (
            "group-writable",
            "writable by group or others (mode 0660)",
            &|| {
                plant_copy();
                std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o660))
                    .expect("chmod");
            },
        ),
        ("another uid's", "owned by uid 65534", &|| {
            plant_copy();
            std::os::unix::fs::chown(&entry, Some(65534), Some(65534)).expect("chown");
        }),
        ("a symbolic link", "is a symbolic link", &|| {
            std::fs::remove_file(&entry).ok();
            std::os::unix::fs::symlink(&planted, &entry).expect("symlink");
        }),
        ("a hard link", "has 2 hard links", &|| {
            std::fs::remove_file(&entry).ok();
            std::fs::hard_link(&planted, &entry).expect("hard link");
        }),
    ];
    for (n, (what, why, plant)) in cases.iter().enumerate() {
        plant();
        let name = format!("web-{}", n + 1);
        let r = add_ok(&node, &Pod::new(), &conf, &k8s_args("prod", &name));
        assert_eq!(
            host_name(&r),
            format!("prod-{name}"),
            "{what}: the planted entry ran: {r}\n{}",
            node.log()
        );
        assert_eq!(
            refusals(why),
            1,
            "{what}: no refusal saying {why:?}:\n{}",
            node.log()
        );
        // Replaced by the policy's own code, as root writes it.
        let meta = std::fs::symlink_metadata(&entry).expect("stat the entry");
        assert!(meta.file_type().is_file(), "{what}: {meta:?}");
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777, meta.nlink()),
            (0, 0o600, 1),
            "{what}"
        );
        assert_ne!(
            std::fs::read(&entry).expect("read the entry"),
            planted_bytes,
            "{what}"
        );
        assert_eq!(
            std::fs::read(&planted).expect("read the planted entry"),
            planted_bytes,
            "{what}: written through"
        );
    }
    // The replaced entry is loaded as any other.
    let loaded = || {
        node.log()
            .lines()
            .filter(|l| l.contains("pod_ifname.wasm: loaded from cache"))
            .count()
    };
    let before = loaded();
    add_ok(&node, &Pod::new(), &conf, &k8s_args("prod", "web-9"));
    assert_eq!(loaded(), before + 1, "{}", node.log());
}

// ------------------------------------------------------------------ on-demand server

/// How long an on-demand policy server may take to serve after the ADD that
/// started it: it compiles the component (when no cache holds it) alongside
/// that ADD, single-threaded, on what may be a busy machine.
const SERVER_STARTS_WITHIN: Duration = Duration::from_secs(30);

/// `conf` with the node's own lock directory (where the on-demand server's
/// socket goes) and a short `persistMs`.
fn with_server(node: &Node, mut conf: Value) -> (Value, PathBuf) {
    let lock_dir = node.dir.path().join("locks");
    conf["ipam"]["lockDir"] = json!(lock_dir);
    conf["policy"]["persistMs"] = json!(1500);
    (conf, lock_dir)
}

#[test]
fn the_policy_server_decides_later_adds_and_leaves_when_idle() {
    let _cpu = shared();
    require_root();
    let node = Node::new();
    let (conf, lock_dir) = with_server(&node, policy_conf(&node, &wasm("pod_ifname"), Value::Null));
    let host_name = |r: &Value| r["interfaces"][1]["name"].clone();

    // The first ADD loads the component itself and starts the server.
    let p1 = Pod::new();
    let r1 = add_ok(&node, &p1, &conf, &k8s_args("prod", "web-1"));
    assert_eq!(host_name(&r1), "prod-web-1", "{r1}");
    assert!(
        eventually(SERVER_STARTS_WITHIN, || helper_pid(&lock_dir, "policy")
            .is_some()),
        "no policy server after the first ADD"
    );
    let pid = helper_pid(&lock_dir, "policy").expect("server");
    let sock = helper_socket(&lock_dir, "policy").expect("the server's socket");

    // The second ADD's decisions come from the server: the same policy, a
    // fresh instance; its lines (at the plugin's debug level) are in our log.
    let p2 = Pod::new();
    let r2 = add_ok(&node, &p2, &conf, &k8s_args("prod", "web-2"));
    assert_eq!(host_name(&r2), "prod-web-2", "{r2}");
    assert!(node.host.link("prod-web-2").is_some(), "{r2}");
    let log = node.log();
    let at = log
        .find(&through(&sock))
        .unwrap_or_else(|| panic!("the second ADD did not use the server:\n{log}"));
    assert!(
        log[at..].contains("pod_ifname.wasm: name-interface took"),
        "the server's lines did not reach the plugin's log:\n{log}"
    );

    // The server dies: the next ADD decides in-process (or through a new
    // server), with the same answer.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(eventually(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
    let p3 = Pod::new();
    let r3 = add_ok(&node, &p3, &conf, &k8s_args("prod", "web-3"));
    assert_eq!(host_name(&r3), "prod-web-3", "{r3}");

    for (pod, r) in [(&p1, &r1), (&p2, &r2), (&p3, &r3)] {
        del_ok(&node, pod, &conf, "", r);
    }
    // Idle for persistMs: the server leaves, and its socket with it.
    assert!(
        eventually(Duration::from_secs(8), || helper_pid(&lock_dir, "policy")
            .is_none()
            && helper_socket(&lock_dir, "policy").is_none()),
        "the policy server outlived persistMs"
    );
}

#[test]
fn a_hostile_policy_in_the_server_fails_the_add_and_not_the_server() {
    let _cpu = shared();
    require_root();
    let node = Node::new();
    let (file, config) = hostile("loop");
    let (mut conf, lock_dir) = with_server(&node, policy_conf(&node, &file, config));
    conf["policy"]["timeoutMs"] = json!(100);
    let first = Pod::new();
    error_text(&call(&node, "ADD", &first, &conf, ""), 104);
    assert!(
        eventually(SERVER_STARTS_WITHIN, || helper_pid(&lock_dir, "policy")
            .is_some()),
        "no policy server after the first ADD"
    );
    let pid = helper_pid(&lock_dir, "policy").expect("server");
    let sock = helper_socket(&lock_dir, "policy").expect("the server's socket");
    let pod = Pod::new();
    let out = call(&node, "ADD", &pod, &conf, "");
    let text = error_text(&out, 104);
    assert!(
        text.contains("time limit") || text.contains("fuel"),
        "{text}"
    );
    assert!(text.contains("hostile.wasm"), "{text}");
    assert!(node.log().contains(&through(&sock)), "{}", node.log());
    assert_nothing_left(&node, &pod, &conf, "a looping policy in the server");
    assert_eq!(
        helper_pid(&lock_dir, "policy"),
        Some(pid),
        "the server did not survive"
    );
}

// ------------------------------------------------------------------ ohnoctl

#[test]
fn ohnoctl_policy_check_lists_exports_and_refuses_sockets() {
    let _cpu = shared();
    let dir = TempDir::new();
    for (file, config) in [
        (wasm("pod_ifname"), "null".to_owned()),
        (
            wasm("namespace_pools"),
            json!({"rules": [{"namespaces": ["prod"], "pool": "prod"}]}).to_string(),
        ),
    ] {
        let (code, stdout, stderr) = ohnoctl(
            dir.path(),
            &[
                "policy",
                "check",
                &file.to_string_lossy(),
                "--config",
                &config,
            ],
        );
        assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
        assert!(
            stdout.contains("ohno:policy/decisions@0.1.0"),
            "{stdout}{stderr}"
        );
    }
    let (code, stdout, stderr) = ohnoctl(
        dir.path(),
        &["policy", "check", &wasm("hostile_net").to_string_lossy()],
    );
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("wasi:sockets"), "{stdout}{stderr}");
    let (code, stdout, stderr) = ohnoctl(
        dir.path(),
        &["policy", "check", &wasm("policy_v1").to_string_lossy()],
    );
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("0.1.x"), "{stdout}{stderr}");
}

/// `ohnoctl policy check FILE` with exactly `env` (and PATH): (exit code,
/// stdout, stderr).
fn ohnoctl_check_with_env(file: &Path, env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ohnoctl"));
    cmd.args(["policy", "check", &file.to_string_lossy()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ohnoctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ohnoctl_caches_offline_runs_privately_for_its_user_and_never_in_tmp() {
    let _cpu = shared();
    require_root();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new();
    let (home, tmp) = (dir.path().join("home"), dir.path().join("tmp"));
    for d in [&home, &tmp] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let file = wasm("pod_ifname");
    let mode = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.mode() & 0o7777);
    let cwasm_count = |d: &Path| {
        std::fs::read_dir(d).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                .count()
        })
    };

    // $HOME/.cache/ohno/policy, each directory made 0700; nothing in TMPDIR.
    let private = home.join(".cache/ohno/policy");
    let (code, stdout, stderr) =
        ohnoctl_check_with_env(&file, &[("HOME", &home), ("TMPDIR", &tmp)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("cache:     {}\n", private.display())),
        "{stdout}{stderr}"
    );
    for d in [".cache", ".cache/ohno", ".cache/ohno/policy"] {
        assert_eq!(mode(&home.join(d)).ok(), Some(0o700), "{d}");
    }
    let entry = only_entry(&private);
    assert_eq!(mode(&entry).ok(), Some(0o600));
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "ohnoctl wrote into TMPDIR"
    );

    // $XDG_CACHE_HOME first.
    let xdg = dir.path().join("xdg");
    let (code, stdout, stderr) = ohnoctl_check_with_env(
        &file,
        &[("HOME", &home), ("XDG_CACHE_HOME", &xdg), ("TMPDIR", &tmp)],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "cache:     {}\n",
            xdg.join("ohno/policy").display()
        )),
        "{stdout}"
    );
    only_entry(&xdg.join("ohno/policy"));

    // A private cache that another user took over (or pre-created) is not
    // used: the check still works, compiled in memory, and says why.
    std::os::unix::fs::chown(&private, Some(65534), Some(65534)).expect("chown");
    std::fs::remove_file(&entry).expect("remove the entry");
    let (code, stdout, stderr) =
        ohnoctl_check_with_env(&file, &[("HOME", &home), ("TMPDIR", &tmp)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("cache:     none (") && stdout.contains("owned by uid 65534"),
        "{stdout}"
    );
    assert!(stdout.contains("configure: ok"), "{stdout}");
    assert_eq!(cwasm_count(&private), 0, "an entry was written");
    // So is one group or others can write.
    std::os::unix::fs::chown(&private, Some(0), Some(0)).expect("chown");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (_, stdout, _) = ohnoctl_check_with_env(&file, &[("HOME", &home), ("TMPDIR", &tmp)]);
    assert!(stdout.contains("writable by group or others"), "{stdout}");
    assert_eq!(cwasm_count(&private), 0, "an entry was written");

    // Without a home there is no cache at all, and no directory anywhere.
    let (code, stdout, stderr) = ohnoctl_check_with_env(&file, &[("TMPDIR", &tmp)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("cache:     none ("), "{stdout}");
    assert_eq!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0), 0);
}

/// `ohnoctl policy test FILE --pod P --pools Q --config C`, parsed.
fn policy_test(dir: &Path, file: &Path, pod: Value, pools: Value, config: Value) -> Value {
    let pod_path = dir.join("pod.json");
    let pools_path = dir.join("pools.json");
    std::fs::write(&pod_path, pod.to_string()).expect("write pod.json");
    std::fs::write(&pools_path, pools.to_string()).expect("write pools.json");
    let (code, stdout, stderr) = ohnoctl(
        dir,
        &[
            "policy",
            "test",
            &file.to_string_lossy(),
            "--pod",
            &pod_path.to_string_lossy(),
            "--pools",
            &pools_path.to_string_lossy(),
            "--config",
            &config.to_string(),
        ],
    );
    assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn ohnoctl_policy_test_prints_the_decisions() {
    let _cpu = shared();
    let dir = TempDir::new();
    let prod_pod = json!({"namespace": "prod", "name": "web-0", "containerId": "c1"});

    let out = policy_test(
        dir.path(),
        &wasm("namespace_pools"),
        prod_pod.clone(),
        two_pools(),
        json!({"rules": [{"namespaces": ["prod"], "pool": "prod"}]}),
    );
    assert_eq!(out["allocation"]["ipv4"], json!({"pool": "prod"}), "{out}");
    assert_eq!(out["naming"], "default", "{out}");

    let out = policy_test(
        dir.path(),
        &wasm("pod_ifname"),
        prod_pod.clone(),
        two_pools(),
        Value::Null,
    );
    assert_eq!(out["naming"]["name"], "prod-web-0", "{out}");
    assert_eq!(out["naming"]["hostWouldReject"], Value::Null, "{out}");
    assert_eq!(out["allocation"]["ipv4"], "default", "{out}");

    // A node whose block has a hole at .5 (released) among used addresses.
    let used = [
        "10.85.0.2",
        "10.85.0.3",
        "10.85.0.4",
        "10.85.0.6",
        "10.85.0.7",
    ];
    let pools =
        json!([{"name": "default", "subnet": "10.85.0.0/16", "blockSize": 26, "used": used}]);
    let out = policy_test(
        dir.path(),
        &wasm("no_quick_reuse"),
        prod_pod,
        pools,
        Value::Null,
    );
    let answer = &out["allocation"]["ipv4"];
    let address = answer["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address answer: {out}"));
    assert_eq!(answer["pool"], "default", "{out}");
    assert_eq!(answer["hostWouldReject"], Value::Null, "{out}");
    assert!(!used.contains(&address), "{address} is used: {out}");
    // The lowest free addresses (the hole first) are skipped (skipLowest 4).
    for skipped in ["10.85.0.5", "10.85.0.8", "10.85.0.9", "10.85.0.10"] {
        assert_ne!(address, skipped, "{out}");
    }
    let (a, _) = parse_cidr(&format!("{address}/26"));
    assert!(in_subnet(a, [10, 85, 0, 0].into(), 26), "{out}");
}

/// `--pod` and `--pools` take inline JSON or `-` (standard input) as well as a
/// file, and the output says which address the host would then give.
#[test]
fn ohnoctl_policy_test_takes_inline_json_and_stdin_and_says_what_the_host_gives() {
    let _cpu = shared();
    let dir = TempDir::new();
    let pod = json!({"namespace": "prod", "name": "web-0", "containerId": "c1"}).to_string();
    let used = json!([{"name": "default", "subnet": "10.85.0.0/16", "blockSize": 26,
                       "used": ["10.85.0.2", "10.85.0.3"]},
                      {"name": "prod", "subnet": "10.90.0.0/16", "blockSize": 26}])
    .to_string();
    let file = wasm("namespace_pools");
    let config = json!({"rules": [{"namespaces": ["prod"], "pool": "prod"}]}).to_string();
    let args = |pod: &str, pools: &str| -> Vec<String> {
        [
            "policy",
            "test",
            &file.to_string_lossy(),
            "--pod",
            pod,
            "--pools",
            pools,
            "--config",
            &config,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&pod, &used);
    let (code, stdout, stderr) = ohnoctl(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(out["allocation"]["ipv4"], json!({"pool": "prod"}), "{out}");
    // A block of prod newly claimed for the node (which one is the
    // allocator's pick): its gateway is the block's first address, and the
    // pod gets the one after it.
    let gives = &out["hostWouldGive"]["ipv4"];
    assert_eq!(gives["pool"], "prod", "{out}");
    let (addr, len) = parse_cidr(gives["address"].as_str().unwrap_or_default());
    assert_eq!(len, 26, "{out}");
    assert!(in_subnet(addr, [10, 90, 0, 0].into(), 16), "{out}");
    let gateway: std::net::Ipv4Addr = gives["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no gateway: {out}"));
    assert_eq!(u32::from(gateway) % 64, 1, "{out}");
    assert_eq!(u32::from(addr), u32::from(gateway) + 1, "{out}");

    // The pools on standard input; a pod outside prod gets the default pool,
    // where .2 and .3 are used on this node.
    let other = json!({"namespace": "dev", "name": "x"}).to_string();
    let a = args(&other, "-");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ohnoctl"))
        .args(&a)
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ohnoctl");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), used.as_bytes())
        .expect("write stdin");
    let done = child.wait_with_output().expect("ohnoctl exits");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let out: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(out["allocation"]["ipv4"], "default", "{out}");
    assert_eq!(
        out["hostWouldGive"]["ipv4"]["address"], "10.85.0.4/26",
        "{out}"
    );

    // Both on standard input cannot be: a clear error, not a hang.
    let a = args("-", "-");
    let (code, stdout, stderr) = ohnoctl(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("standard input"), "{stderr}");
    // Broken inline JSON names the flag, not a file.
    let a = args("{\"namespace\": ", &used);
    let (code, _, stderr) = ohnoctl(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--pod (inline JSON)"), "{stderr}");
}
