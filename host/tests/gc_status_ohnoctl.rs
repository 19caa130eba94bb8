//! GC, STATUS, requested addresses, dual stack and `ohnoctl ipam` through the real
//! binaries.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn ohnoctl(node: &Node, conf: &Value, args: &[&str]) -> (i32, String) {
    let path = node.dir.path().join("ohnoctl-conf.json");
    std::fs::write(&path, conf.to_string()).expect("write config for ohnoctl");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ohnoctl"));
    cmd.args(args).arg("--config").arg(&path);
    let out = cmd.output().expect("run ohnoctl");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn containers(node: &Node, conf: &Value) -> Vec<String> {
    let (code, out) = ohnoctl(node, conf, &["ipam", "ls", "--json"]);
    assert_eq!(code, 0, "{out}");
    let list: Vec<Value> = serde_json::from_str(&out).expect("ohnoctl ls --json");
    let mut ids: Vec<String> = list
        .iter()
        .filter_map(|a| a["containerId"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[test]
fn gc_releases_attachments_missing_from_the_valid_list() {
    require_root();
    let node = Node::new();
    let (keep, stale) = (Pod::new(), Pod::new());
    let conf = node.ohno_conf("1.1.0");
    node.add(&keep, &conf);
    node.add(&stale, &conf);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    let out = run_plugin(&node.host, &Invocation::ohno("GC", &keep), &gc.to_string());
    out.success();
    assert!(
        out.stdout.trim().is_empty(),
        "GC prints nothing on success: {out}"
    );
    assert_eq!(containers(&node, &conf), vec![keep.container_id.clone()]);
    // GC needs CNI 1.1.0.
    let old = node.ohno_conf("1.0.0");
    run_plugin(&node.host, &Invocation::ohno("GC", &keep), &old.to_string()).error_with_code(1);
}

#[test]
fn status_is_ok_until_the_pool_is_exhausted() {
    require_root();
    let node = Node::new();
    let mut conf = node.ohno_conf("1.1.0");
    // One /30 block: exactly one usable address.
    conf["ipam"]["pools"] = json!([{"name": "tiny", "subnet": "192.168.77.0/30", "blockSize": 30}]);
    let pod = Pod::new();
    let status = |n: &Node| {
        run_plugin(
            &n.host,
            &Invocation::ohno("STATUS", &pod),
            &conf.to_string(),
        )
    };
    status(&node).success();
    node.add(&pod, &conf);
    let msg = status(&node).error_with_code(50);
    assert!(msg.contains("not available"), "{msg}");
    node.ohno("DEL", &pod, &conf).success();
    status(&node).success();
}

#[test]
fn status_is_50_when_the_store_cannot_be_opened() {
    require_root();
    let node = Node::new();
    let blocker = node.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").expect("write blocker file");
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["store"]["dataDir"] = json!(blocker.join("store"));
    let pod = Pod::new();
    run_plugin(
        &node.host,
        &Invocation::ohno("STATUS", &pod),
        &conf.to_string(),
    )
    .error_with_code(50);
}

#[test]
fn requested_addresses_are_honoured_and_a_taken_one_is_refused() {
    require_root();
    let node = Node::new();
    let (a, b, c) = (Pod::new(), Pod::new(), Pod::new());
    let mut conf = node.ohno_conf("1.0.0");
    conf["runtimeConfig"] = json!({"ips": ["10.85.9.9/16"]});
    let r = node.add(&a, &conf);
    assert_eq!(r["ips"][0]["address"], "10.85.9.9/26", "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.85.9.1", "{r}");
    assert!(
        a.ns.ping("10.85.9.1"),
        "pod cannot ping the gateway of its requested block"
    );

    // CNI_ARGS IP=, as the static-IP convention has it.
    let plain = node.ohno_conf("1.0.0");
    let mut inv = Invocation::ohno("ADD", &b);
    inv.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;IP=10.85.9.10".into();
    let out = run_plugin(&node.host, &inv, &plain.to_string());
    assert_eq!(
        out.success().json()["ips"][0]["address"],
        "10.85.9.10/26",
        "{out}"
    );
    let (code, shown) = ohnoctl(&node, &plain, &["ipam", "show", "10.85.9.10"]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains(&b.container_id) && shown.contains("web-0"),
        "{shown}"
    );

    // Taken → 101, and nothing is left for the loser.
    let out = node.ohno("ADD", &c, &conf);
    let msg = out.error_with_code(101);
    assert!(msg.contains("10.85.9.9"), "{msg}");
    assert!(!containers(&node, &plain).contains(&c.container_id));
    assert!(c.ns.link("eth0").is_none());
}

#[test]
fn dual_stack_pools_give_one_address_per_family_and_both_gateways_answer() {
    require_root();
    let node = Node::new();
    let pod = Pod::new();
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["pools"] = json!([
        {"name": "v4", "subnet": "10.87.0.0/16"},
        {"name": "v6", "subnet": "fd00:87::/48"}
    ]);
    let r = node.add(&pod, &conf);
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{r}");
    let v6 = ips[1]["address"].as_str().unwrap_or_default();
    assert!(v6.starts_with("fd00:87:") && v6.ends_with("/122"), "{r}");
    let gw6 = ips[1]["gateway"].as_str().unwrap_or_default().to_owned();
    let shown = pod
        .ns
        .exec_ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains(v6), "{shown}");
    let routes = pod.ns.exec_ok(&["ip", "-6", "route", "show", "default"]);
    assert!(routes.contains(&gw6), "{routes}");
    assert!(pod.ns.ping(&gw6), "pod cannot ping its IPv6 gateway {gw6}");
    assert!(pod.ns.ping(ips[0]["gateway"].as_str().unwrap_or_default()));
    node.ohno("DEL", &pod, &conf).success();
}

#[test]
fn ohnoctl_lists_checks_and_releases() {
    require_root();
    let node = Node::new();
    let pod = Pod::new();
    let conf = node.ohno_conf("1.1.0");
    let r = node.add(&pod, &conf);
    let addr = r["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let version = Command::new(env!("CARGO_BIN_EXE_ohnoctl"))
        .arg("--version")
        .output()
        .expect("ohnoctl --version");
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));

    let (code, table) = ohnoctl(&node, &conf, &["ipam", "ls"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains(&pod.container_id) && table.contains(&addr) && table.contains("node-a"),
        "{table}"
    );
    let (code, blocks) = ohnoctl(&node, &conf, &["ipam", "blocks"]);
    assert_eq!(code, 0, "{blocks}");
    assert!(
        blocks.contains("node-a") && blocks.contains("61"),
        "{blocks}"
    );
    let (code, out) = ohnoctl(&node, &conf, &["ipam", "check"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = ohnoctl(
        &node,
        &conf,
        &[
            "ipam",
            "release",
            "--container",
            &pod.container_id,
            "--ifname",
            "eth0",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(containers(&node, &conf).is_empty());
    let (code, _) = ohnoctl(
        &node,
        &conf,
        &["ipam", "show", addr.split('/').next().unwrap_or_default()],
    );
    assert_eq!(code, 1, "a released address shows as free");
}

#[test]
fn ohnoctl_gc_releases_only_the_named_nodes_stale_attachments() {
    require_root();
    let node = Node::new();
    let (keep, stale, other) = (Pod::new(), Pod::new(), Pod::new());
    let conf = node.ohno_conf("1.1.0");
    node.add(&keep, &conf);
    node.add(&stale, &conf);
    // The same store seen from another node.
    let mut conf_b = conf.clone();
    conf_b["node"] = json!("node-b");
    conf_b["bridge"] = json!("ohno1");
    node.add(&other, &conf_b);

    let valid = node.dir.path().join("valid.json");
    std::fs::write(
        &valid,
        json!([{"containerID": keep.container_id, "ifname": "eth0"}]).to_string(),
    )
    .expect("write valid list");
    let valid = valid.display().to_string();
    let (code, out) = ohnoctl(
        &node,
        &conf,
        &["ipam", "gc", "--node", "node-a", "--valid", &valid],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&stale.container_id), "{out}");
    let mut want = vec![keep.container_id.clone(), other.container_id.clone()];
    want.sort();
    assert_eq!(
        containers(&node, &conf),
        want,
        "node-b's attachment must survive node-a's GC"
    );
}

/// `ohnoctl ipam release` checks its ids as the plugin does: they become store
/// keys, and "a/b" or "../x" would name someone else's.
#[test]
fn ohnoctl_release_refuses_ids_the_plugin_would_refuse() {
    require_root();
    let node = Node::new();
    let pod = Pod::new();
    let conf = node.ohno_conf("1.1.0");
    node.add(&pod, &conf);
    let before = file_tree(&node.store_dir());
    for args in [
        [
            "--container",
            "../x",
            "--ifname",
            "eth0",
            "--network",
            "podnet",
        ],
        [
            "--container",
            "a/b",
            "--ifname",
            "eth0",
            "--network",
            "podnet",
        ],
        [
            "--container",
            "ok",
            "--ifname",
            "eth0/x",
            "--network",
            "podnet",
        ],
        [
            "--container",
            "ok",
            "--ifname",
            "eth0",
            "--network",
            "net/../x",
        ],
    ] {
        let mut all = vec!["ipam", "release"];
        all.extend(args);
        let (code, out) = ohnoctl(&node, &conf, &all);
        assert_ne!(code, 0, "{args:?} accepted: {out}");
        assert!(out.contains("invalid"), "{args:?}: {out}");
        assert!(!out.contains("released"), "{args:?}: {out}");
    }
    assert_eq!(file_tree(&node.store_dir()), before, "store changed");
    assert_eq!(containers(&node, &conf), vec![pod.container_id.clone()]);
}

/// Every listing takes `-o json`: `ls`, `blocks` and `show` print stable field
/// names that agree with the attachment the ADD made.
#[test]
fn ohnoctl_listings_print_json_with_o_json() {
    require_root();
    let node = Node::new();
    let pod = Pod::new();
    let conf = node.ohno_conf("1.1.0");
    let (ip, len, gw) = first_ipv4(&node.add(&pod, &conf));

    let (code, out) = ohnoctl(&node, &conf, &["ipam", "ls", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let list: Vec<Value> = serde_json::from_str(&out).expect("ls -o json");
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(list[0]["containerId"], pod.container_id.as_str(), "{out}");
    assert_eq!(list[0]["ips"][0]["address"], format!("{ip}/{len}"), "{out}");

    let (code, out) = ohnoctl(&node, &conf, &["ipam", "blocks", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let blocks: Vec<Value> = serde_json::from_str(&out).expect("blocks -o json");
    assert_eq!(blocks.len(), 1, "{out}");
    let block = &blocks[0];
    assert_eq!(block["pool"], "default", "{out}");
    assert_eq!(block["node"], "node-a", "{out}");
    assert_eq!(block["used"], 1, "{out}");
    assert_eq!(block["block"], list[0]["ips"][0]["block"], "{out}");
    assert!(block["usable"].as_u64().is_some_and(|n| n > 1), "{out}");

    let (code, out) = ohnoctl(
        &node,
        &conf,
        &["ipam", "show", &ip.to_string(), "-o", "json"],
    );
    assert_eq!(code, 0, "{out}");
    let shown: Value = serde_json::from_str(&out).expect("show -o json");
    assert_eq!(shown["free"], false, "{out}");
    assert_eq!(shown["node"], "node-a", "{out}");
    assert_eq!(shown["pool"], "default", "{out}");
    assert_eq!(
        shown["owner"]["containerId"],
        pod.container_id.as_str(),
        "{out}"
    );
    // A free address of the same block: exit 1, "free": true.
    let free = std::net::Ipv4Addr::from(u32::from(ip) + 1);
    assert_ne!(Some(free), gw);
    let (code, out) = ohnoctl(
        &node,
        &conf,
        &["ipam", "show", &free.to_string(), "-o", "json"],
    );
    assert_eq!(code, 1, "{out}");
    let shown: Value = serde_json::from_str(&out).expect("show -o json");
    assert_eq!(shown["free"], true, "{out}");
    assert_eq!(shown["owner"], Value::Null, "{out}");

    // The table stays the default.
    let (code, out) = ohnoctl(&node, &conf, &["ipam", "blocks"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("POOL"), "{out}");
    node.ohno("DEL", &pod, &conf).success();
}
