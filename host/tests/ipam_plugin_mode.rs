//! Ohno as the IPAM plugin of Debian's reference `bridge`
//! (`"ipam": {"type": "ohno", ...}`): the bridge execs `ohno` from CNI_PATH,
//! the pod gets Ohno's address and reaches the gateway, CHECK and DEL go
//! through Ohno, and Ohno itself creates no link. Once with the local store
//! and once with the 3-member etcd cluster.

mod common;
mod etcd_support;

use common::{
    default_cni_path, first_ipv4, in_subnet, is_ohno_veth_name, run_plugin, Invocation, NetNs,
    Node, Output, Pod, REFERENCE_PLUGINS, REFERENCE_VERSION,
};
use etcd_support::{ohnoctl, EtcdNode};
use serde_json::{json, Value};
use std::path::Path;

const SUBNET: &str = "10.88.0.0";
const SUBNET_LEN: u8 = 16;

/// The reference bridge with Ohno as its IPAM plugin, storing in `store`.
fn bridge_conf(node: &Node, store: Value) -> Value {
    json!({
        "cniVersion": REFERENCE_VERSION,
        "name": "brnet",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipam": {
            "type": "ohno",
            "node": "n1",
            "logFile": node.log_file(),
            "logLevel": "debug",
            "pools": [ { "name": "default", "subnet": format!("{SUBNET}/{SUBNET_LEN}"), "blockSize": 26 } ],
            "store": store,
        }
    })
}

/// Runs the reference bridge (which execs `ohno` for IPAM) in `host`.
fn bridge(host: &NetNs, command: &str, pod: &Pod, conf: &Value) -> Output {
    let inv = Invocation {
        binary: Path::new(REFERENCE_PLUGINS).join("bridge"),
        command: Some(command.to_owned()),
        container_id: pod.container_id.clone(),
        netns: pod.ns.path(),
        ifname: pod.ifname.clone(),
        args: String::new(),
        cni_path: default_cni_path(),
    };
    run_plugin(host, &inv, &conf.to_string())
}

/// Ohno made no link of its own: no `ohno0` bridge and no Ohno-named veth.
fn assert_no_ohno_links(host: &NetNs) {
    let names = host.link_names();
    assert!(
        !names.iter().any(|n| n == "ohno0" || is_ohno_veth_name(n)),
        "links made by Ohno in the host netns: {names:?}"
    );
}

/// ADD, CHECK and DEL through the reference bridge; `allocations` lists what
/// the store holds for the network (empty when nothing is allocated).
fn bridge_with_ohno_ipam(node: &Node, conf: &Value, allocations: impl Fn() -> Vec<String>) {
    let pod = Pod::new();
    assert!(
        Path::new(default_cni_path().split(':').next().unwrap_or_default())
            .join("ohno")
            .is_file(),
        "ohno is not in CNI_PATH {}",
        default_cni_path()
    );

    let added = bridge(&node.host, "ADD", &pod, conf);
    let result = added.success().json().clone();
    let (addr, len, gateway) = first_ipv4(&result);
    let gateway = gateway.unwrap_or_else(|| panic!("{added}\nno gateway in the result"));
    assert!(
        in_subnet(addr, SUBNET.parse().unwrap(), SUBNET_LEN),
        "{added}\n{addr} is not from Ohno's pool"
    );
    assert_eq!(len, 26, "{added}\nthe prefix is Ohno's block's");
    assert!(
        in_subnet(gateway, addr, len),
        "{added}\ngateway outside the block"
    );
    assert_eq!(
        allocations(),
        vec![format!("{addr}/{len}")],
        "{added}\nthe store does not record the result's address"
    );

    // The reference bridge wired it: the pod has the address, the bridge the
    // gateway, and the pod reaches the gateway.
    assert!(
        pod.ns.ipv4_addrs("eth0").contains(&(addr, len)),
        "{added}\npod eth0 has {:?}",
        pod.ns.ipv4_addrs("eth0")
    );
    let cni0 = node
        .host
        .link("cni0")
        .expect("the reference bridge made cni0");
    assert_eq!(cni0["linkinfo"]["info_kind"], "bridge", "{cni0}");
    assert!(
        node.host.ipv4_addrs("cni0").contains(&(gateway, len)),
        "cni0 has {:?}",
        node.host.ipv4_addrs("cni0")
    );
    assert!(
        pod.ns.ping(&gateway.to_string()),
        "pod cannot ping its gateway {gateway}"
    );
    assert_no_ohno_links(&node.host);

    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    bridge(&node.host, "CHECK", &pod, &with_prev).success();

    bridge(&node.host, "DEL", &pod, &with_prev).success();
    assert_eq!(
        allocations(),
        Vec::<String>::new(),
        "allocations left after DEL"
    );
    assert!(pod.ns.link("eth0").is_none(), "eth0 left in the pod");
    assert_no_ohno_links(&node.host);
    // DEL again: idempotent.
    bridge(&node.host, "DEL", &pod, &with_prev).success();
}

/// The addresses `ohnoctl ipam ls --json` lists for the network.
fn listed(node: &Node, conf: &Value) -> Vec<String> {
    let out = ohnoctl(node, conf, "ls", &["--json"]);
    assert_eq!(out.code, 0, "{out}");
    out.json()
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{out}\nnot a list"))
        .iter()
        .flat_map(|a| a["ips"].as_array().cloned().unwrap_or_default())
        .filter_map(|ip| ip["address"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn reference_bridge_with_ohno_ipam_on_the_local_store_adds_checks_and_deletes() {
    let node = Node::new();
    let conf = bridge_conf(
        &node,
        json!({ "type": "local", "dataDir": node.store_dir() }),
    );
    bridge_with_ohno_ipam(&node, &conf, || listed(&node, &conf));
}

#[test]
fn reference_bridge_with_ohno_ipam_on_etcd_adds_checks_and_deletes() {
    let env = EtcdNode::start();
    let conf = bridge_conf(&env.node, env.store(1000, 3));
    bridge_with_ohno_ipam(&env.node, &conf, || {
        // The addresses the attachment keys list, each with its address key.
        let mut listed = Vec::new();
        for (key, value) in env.section("attachments") {
            assert!(key.contains("/attachments/brnet/"), "{key}");
            let att = etcd_support::value_json(&key, &value);
            for ip in att["ips"].as_array().cloned().unwrap_or_default() {
                listed.push(ip["address"].as_str().unwrap_or_default().to_owned());
            }
        }
        assert_eq!(
            env.section("ips").len(),
            listed.len(),
            "address keys and attachments disagree"
        );
        listed
    });
}
