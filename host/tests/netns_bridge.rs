//! Bridge mode end to end: the real `ohno` binary wiring pods into a
//! throwaway host namespace, checked against what `ip` and `ping` see.

mod common;

use common::{first_ipv4, in_subnet, is_ohno_veth_name, parse_cidr, Node, Pod};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

fn lower(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_ascii_lowercase()
}

/// Checks one ADD result against the host and pod namespaces; returns the
/// pod's address and the gateway.
fn assert_result_matches_namespaces(
    node: &Node,
    pod: &Pod,
    result: &Value,
) -> (Ipv4Addr, Ipv4Addr) {
    let interfaces = result["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("result has no interfaces: {result}"));
    let (addr, len, gateway) = first_ipv4(result);
    let gateway = gateway.unwrap_or_else(|| panic!("ips[0] has no gateway: {result}"));
    assert!(
        in_subnet(addr, "10.85.0.0".parse().unwrap(), 16),
        "{addr} outside the pool"
    );
    assert!(
        in_subnet(gateway, addr, len),
        "gateway {gateway} outside {addr}/{len}"
    );
    assert_eq!(len, 26, "prefix length is the block's: {result}");

    // The bridge: in the host namespace, up, holding the gateway address.
    let bridge = interfaces
        .iter()
        .find(|i| i["name"] == "ohno0")
        .unwrap_or_else(|| panic!("no ohno0 in interfaces: {result}"));
    assert!(
        bridge.get("sandbox").is_none(),
        "bridge has a sandbox: {result}"
    );
    let link = node
        .host
        .link("ohno0")
        .expect("bridge ohno0 in the host netns");
    assert_eq!(link["linkinfo"]["info_kind"], "bridge", "{link}");
    assert_eq!(lower(&link["address"]), lower(&bridge["mac"]), "bridge mac");
    assert!(
        link["flags"].as_array().unwrap().contains(&json!("UP")),
        "bridge is not up: {link}"
    );
    assert!(
        node.host.ipv4_addrs("ohno0").contains(&(gateway, len)),
        "bridge lacks {gateway}/{len}: {:?}",
        node.host.ipv4_addrs("ohno0")
    );

    // The host veth: named veth + 11 hex, enslaved to the bridge, up.
    let host_veth = interfaces
        .iter()
        .find(|i| i.get("sandbox").is_none() && i["name"] != "ohno0")
        .unwrap_or_else(|| panic!("no host veth in interfaces: {result}"));
    let veth_name = host_veth["name"].as_str().unwrap();
    assert!(is_ohno_veth_name(veth_name), "host veth name {veth_name:?}");
    let link = node
        .host
        .link(veth_name)
        .unwrap_or_else(|| panic!("{veth_name} missing in the host netns"));
    assert_eq!(link["linkinfo"]["info_kind"], "veth", "{link}");
    assert_eq!(
        link["master"], "ohno0",
        "{veth_name} not on the bridge: {link}"
    );
    assert!(
        link["flags"].as_array().unwrap().contains(&json!("UP")),
        "{veth_name} is not up: {link}"
    );
    assert_eq!(
        lower(&link["address"]),
        lower(&host_veth["mac"]),
        "host veth mac"
    );

    // The pod interface: eth0 in the pod netns with the address and a default route.
    let (pod_index, pod_if) = interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.get("sandbox").is_some())
        .unwrap_or_else(|| panic!("no sandbox interface: {result}"));
    assert_eq!(pod_if["name"], "eth0", "{result}");
    assert_eq!(pod_if["sandbox"], json!(pod.ns.path()), "{result}");
    assert_eq!(
        result["ips"][0]["interface"],
        json!(pod_index),
        "ips[0].interface must index the pod interface: {result}"
    );
    let link = pod.ns.link("eth0").expect("eth0 in the pod netns");
    assert_eq!(lower(&link["address"]), lower(&pod_if["mac"]), "pod mac");
    assert_eq!(link["mtu"], 1500, "{link}");
    assert!(
        pod.ns.ipv4_addrs("eth0").contains(&(addr, len)),
        "eth0 lacks {addr}/{len}: {:?}",
        pod.ns.ipv4_addrs("eth0")
    );
    assert_eq!(
        pod.ns.default_route(),
        Some((gateway.to_string(), "eth0".to_owned())),
        "pod routes: {:?}",
        pod.ns.routes()
    );
    let routes = result["routes"].as_array().expect("result routes");
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "0.0.0.0/0" && r["gw"] == json!(gateway.to_string())),
        "result lacks the default route via {gateway}: {result}"
    );
    (addr, gateway)
}

#[test]
fn two_pods_are_wired_as_their_results_say_and_ping_each_other() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    let (a, b) = (Pod::new(), Pod::new());

    let result_a = node.add(&a, &conf);
    let result_b = node.add(&b, &conf);
    assert_eq!(result_a["cniVersion"], "1.1.0");

    let (addr_a, gw_a) = assert_result_matches_namespaces(&node, &a, &result_a);
    let (addr_b, gw_b) = assert_result_matches_namespaces(&node, &b, &result_b);
    assert_ne!(addr_a, addr_b, "two pods share an address");
    assert_eq!(gw_a, gw_b, "one node, one block, one gateway");
    assert_ne!(addr_a, gw_a, "a pod got the gateway address");
    assert_eq!(node.host_veths().len(), 2, "{:?}", node.host.link_names());

    assert!(
        a.ns.ping(&addr_b.to_string()),
        "pod a cannot ping pod b {addr_b}"
    );
    assert!(
        b.ns.ping(&addr_a.to_string()),
        "pod b cannot ping pod a {addr_a}"
    );
    assert!(
        a.ns.ping(&gw_a.to_string()),
        "pod a cannot ping the gateway {gw_a}"
    );
    assert!(
        node.host.ping(&addr_b.to_string()),
        "host cannot ping pod b {addr_b}"
    );
}

#[test]
fn repeated_add_returns_the_same_address() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    let pod = Pod::new();
    let first = node.add(&pod, &conf);
    let second = node.add(&pod, &conf);
    assert_eq!(first["ips"], second["ips"]);
    assert_eq!(node.host_veths().len(), 1, "{:?}", node.host.link_names());
}

#[test]
fn check_passes_after_add_and_fails_once_the_pod_address_is_removed() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    let pod = Pod::new();
    let result = node.add(&pod, &conf);
    let check_conf = node.with_prev_result(&conf, &result);

    let out = node.ohno("CHECK", &pod, &check_conf);
    out.success();
    assert_eq!(out.stdout.trim(), "", "CHECK prints nothing on success");

    let address = result["ips"][0]["address"].as_str().unwrap();
    pod.ns
        .exec_ok(&["ip", "addr", "del", address, "dev", "eth0"]);
    let out = node.ohno("CHECK", &pod, &check_conf);
    assert_ne!(out.code, 0, "{out}\nCHECK passed without the address");
    let code = out.json()["code"].as_u64().unwrap_or_default();
    out.error_with_code(code);
}

#[test]
fn del_is_idempotent() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    let pod = Pod::new();
    let result = node.add(&pod, &conf);
    assert_eq!(node.host_veths().len(), 1, "{:?}", node.host.link_names());
    assert!(pod.ns.link("eth0").is_some(), "ADD made no eth0");
    let del_conf = node.with_prev_result(&conf, &result);

    let first = node.ohno("DEL", &pod, &del_conf);
    first.success();
    assert_eq!(first.stdout.trim(), "", "DEL prints nothing on success");
    assert!(
        node.host_veths_eventually_gone(),
        "host veth left: {:?}",
        node.host.link_names()
    );
    assert!(pod.ns.link("eth0").is_none(), "eth0 left in the pod");

    node.ohno("DEL", &pod, &del_conf).success();
    // Without a prevResult too, as a runtime that lost its cache would call it.
    node.ohno("DEL", &pod, &conf).success();
}

#[test]
fn del_succeeds_when_the_netns_is_already_gone() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    let pod = Pod::new();
    let result = node.add(&pod, &conf);
    assert_eq!(node.host_veths().len(), 1, "{:?}", node.host.link_names());
    let inv = common::Invocation::ohno("DEL", &pod);
    drop(pod);
    assert!(!std::path::Path::new(&inv.netns).exists());

    let del_conf = node.with_prev_result(&conf, &result);
    common::run_plugin(&node.host, &inv, &del_conf.to_string()).success();
    common::run_plugin(&node.host, &inv, &del_conf.to_string()).success();
    assert!(
        node.host_veths_eventually_gone(),
        "host veth left: {:?}",
        node.host.link_names()
    );
}

/// A pool with a single /29 block: the gateway plus a handful of pods.
fn tiny_pool_conf(node: &Node) -> Value {
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["pools"] = json!([{ "name": "tiny", "subnet": "10.86.0.0/29", "blockSize": 29 }]);
    conf
}

#[test]
fn exhausted_pool_fails_add_with_code_100_and_leaves_no_link() {
    let node = Node::new();
    let conf = tiny_pool_conf(&node);
    let mut pods = Vec::new();
    let exhausted = loop {
        let pod = Pod::new();
        let out = node.ohno("ADD", &pod, &conf);
        if out.code != 0 {
            break out;
        }
        pods.push(pod);
        assert!(pods.len() <= 6, "a /29 holds at most 6 hosts");
    };
    assert!(!pods.is_empty(), "{exhausted}\nno pod fit in a /29");
    exhausted.error_with_code(100);
    assert_eq!(
        node.host_veths().len(),
        pods.len(),
        "failed ADD left a link"
    );
}

#[test]
fn del_releases_the_address_even_when_the_netns_is_gone() {
    let node = Node::new();
    let conf = tiny_pool_conf(&node);
    let mut pods = Vec::new();
    let mut results = Vec::new();
    loop {
        let pod = Pod::new();
        let out = node.ohno("ADD", &pod, &conf);
        if out.code != 0 {
            out.error_with_code(100);
            break;
        }
        results.push(out.json().clone());
        pods.push(pod);
        assert!(pods.len() <= 6, "a /29 holds at most 6 hosts");
    }
    let gone = pods.remove(0);
    let freed = results[0]["ips"][0]["address"].clone();
    let inv = common::Invocation::ohno("DEL", &gone);
    drop(gone);
    common::run_plugin(&node.host, &inv, &conf.to_string()).success();

    let newcomer = Pod::new();
    let result = node.add(&newcomer, &conf);
    assert_eq!(
        result["ips"][0]["address"], freed,
        "the freed address is the only one left"
    );
}

#[test]
fn twenty_concurrent_adds_get_twenty_distinct_addresses() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    let pods: Vec<Pod> = (0..20).map(|_| Pod::new()).collect();
    let outputs: Vec<common::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| s.spawn(|| node.ohno("ADD", pod, &conf)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses = BTreeSet::new();
    for (pod, out) in pods.iter().zip(&outputs) {
        out.success();
        let (addr, _, _) = first_ipv4(out.json());
        assert!(
            pod.ns.ipv4_addrs("eth0").iter().any(|(a, _)| *a == addr),
            "{} lacks {addr}",
            pod.ns.name()
        );
        addresses.insert(addr);
    }
    assert_eq!(addresses.len(), 20, "duplicate addresses: {addresses:?}");
    assert_eq!(node.host_veths().len(), 20);
}

/// Whether the ruleset has a masquerade rule whose address match covers `addr`.
fn masquerades(ruleset: &Value, addr: Ipv4Addr) -> bool {
    fn prefixes(v: &Value, out: &mut Vec<(Ipv4Addr, u8)>) {
        match v {
            Value::Object(map) => {
                if let Some(p) = map.get("prefix") {
                    if let (Some(a), Some(l)) = (p["addr"].as_str(), p["len"].as_u64()) {
                        if let Ok(a) = a.parse() {
                            out.push((a, l as u8));
                        }
                    }
                }
                map.values().for_each(|v| prefixes(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| prefixes(v, out)),
            Value::String(s) => {
                if let Ok(a) = s.parse() {
                    out.push((a, 32));
                } else if s.contains('/')
                    && s.split('/')
                        .next()
                        .is_some_and(|a| a.parse::<Ipv4Addr>().is_ok())
                {
                    out.push(parse_cidr(s));
                }
            }
            _ => {}
        }
    }
    let rules = ruleset["nftables"].as_array().into_iter().flatten();
    rules.filter_map(|item| item.get("rule")).any(|rule| {
        let text = rule["expr"].to_string();
        if !text.contains("\"masquerade\"") {
            return false;
        }
        let mut found = Vec::new();
        prefixes(&rule["expr"], &mut found);
        found.iter().any(|(net, len)| in_subnet(addr, *net, *len))
    })
}

fn any_masquerade(ruleset: &Value) -> bool {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("rule"))
        .any(|rule| rule["expr"].to_string().contains("\"masquerade\""))
}

#[test]
fn ip_masq_installs_a_masquerade_rule_until_the_last_pod_is_deleted() {
    let node = Node::new();
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipMasq"] = json!(true);
    assert!(
        !any_masquerade(&node.host.nft_ruleset()),
        "fresh netns already masquerades"
    );
    let (a, b) = (Pod::new(), Pod::new());
    let result_a = node.add(&a, &conf);
    let result_b = node.add(&b, &conf);
    let (addr_a, _, _) = first_ipv4(&result_a);
    let (addr_b, _, _) = first_ipv4(&result_b);
    let ruleset = node.host.nft_ruleset();
    assert!(
        masquerades(&ruleset, addr_a),
        "no masquerade for {addr_a}: {ruleset}"
    );
    assert!(
        masquerades(&ruleset, addr_b),
        "no masquerade for {addr_b}: {ruleset}"
    );

    node.ohno("DEL", &a, &node.with_prev_result(&conf, &result_a))
        .success();
    let ruleset = node.host.nft_ruleset();
    assert!(
        masquerades(&ruleset, addr_b),
        "pod b lost its masquerade: {ruleset}"
    );

    node.ohno("DEL", &b, &node.with_prev_result(&conf, &result_b))
        .success();
    let ruleset = node.host.nft_ruleset();
    assert!(
        !any_masquerade(&ruleset),
        "masquerade left after the last DEL: {ruleset}"
    );
}
