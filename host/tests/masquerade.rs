//! `ipMasq` as an operator sees it in `nft list ruleset`: each network has a
//! chain of its own in table `ohno`, named as the network, and that chain
//! masquerades every pool of the network whichever pool an ADD allocated from.

mod common;

use common::{run_plugin, Invocation, Node, Pod};
use serde_json::{json, Value};

/// The source prefixes masqueraded by chain `chain` of table `ohno` (family
/// `ip`), sorted; `None` when there is no such chain.
fn masqueraded(node: &Node, chain: &str) -> Option<Vec<String>> {
    let ruleset = node.host.nft_ruleset();
    let items = ruleset["nftables"].as_array().cloned().unwrap_or_default();
    let has_chain = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .any(|c| c["family"] == "ip" && c["table"] == "ohno" && c["name"].as_str() == Some(chain));
    if !has_chain {
        return None;
    }
    let mut prefixes: Vec<String> = items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r["family"] == "ip" && r["table"] == "ohno" && r["chain"] == chain)
        .map(|r| {
            let exprs = r["expr"].as_array().cloned().unwrap_or_default();
            assert!(
                exprs.iter().any(|e| e.get("masquerade").is_some()),
                "not a masquerade rule: {r}"
            );
            let p = &exprs[0]["match"]["right"]["prefix"];
            format!("{}/{}", p["addr"].as_str().unwrap_or_default(), p["len"])
        })
        .collect();
    prefixes.sort();
    Some(prefixes)
}

fn add_with_args(node: &Node, pod: &Pod, conf: &Value, args: &str) -> Value {
    let mut inv = Invocation::ohno("ADD", pod);
    inv.args = args.to_owned();
    run_plugin(&node.host, &inv, &conf.to_string())
        .success()
        .json()
        .clone()
}

#[test]
fn masquerade_chain_holds_every_pool_whichever_pool_the_add_used() {
    let node = Node::new();
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipMasq"] = json!(true);
    conf["ipam"]["pools"] = json!([
        { "name": "first", "subnet": "10.85.0.0/16", "blockSize": 26 },
        { "name": "second", "subnet": "10.86.0.0/16", "blockSize": 26 },
    ]);
    let both = vec!["10.85.0.0/16".to_string(), "10.86.0.0/16".to_string()];

    // The first pool (the built-in choice), then the second (a requested address).
    let a = Pod::new();
    let result_a = node.add(&a, &conf);
    assert_eq!(masqueraded(&node, "podnet"), Some(both.clone()));
    let b = Pod::new();
    let result_b = add_with_args(&node, &b, &conf, "IP=10.86.0.10");
    assert_eq!(result_b["ips"][0]["address"], "10.86.0.10/26", "{result_b}");
    assert_eq!(
        masqueraded(&node, "podnet"),
        Some(both.clone()),
        "the ADD in the second pool dropped the first pool's masquerade"
    );

    node.ohno("DEL", &b, &node.with_prev_result(&conf, &result_b))
        .success();
    assert_eq!(masqueraded(&node, "podnet"), Some(both));
    node.ohno("DEL", &a, &node.with_prev_result(&conf, &result_a))
        .success();
    assert_eq!(masqueraded(&node, "podnet"), None);
}

#[test]
fn long_network_names_that_shared_a_hashed_chain_get_one_each() {
    // Both once became chain a-very-long-network-na-30098e2f (22 bytes and a
    // 32-bit FNV-1a hash), so each network's ADD flushed the other's rule.
    let names = [
        "a-very-long-network-name-yunw-net",
        "a-very-long-network-name-1wba-net",
    ];
    let node = Node::new();
    let conf_for = |i: usize| {
        let mut conf = node.ohno_conf("1.1.0");
        conf["name"] = json!(names[i]);
        conf["ipMasq"] = json!(true);
        conf["bridge"] = json!(format!("ohno{i}"));
        conf["ipam"]["pools"] = json!([{ "name": "default", "subnet": format!("10.{}.0.0/16", 85 + i), "blockSize": 26 }]);
        conf["ipam"]["store"]["dataDir"] = json!(node.dir.path().join(format!("store-{i}")));
        conf
    };
    let (conf_a, conf_b) = (conf_for(0), conf_for(1));
    let (a, b) = (Pod::new(), Pod::new());
    let result_a = node.add(&a, &conf_a);
    let result_b = node.add(&b, &conf_b);
    assert_eq!(
        masqueraded(&node, names[0]),
        Some(vec!["10.85.0.0/16".to_string()])
    );
    assert_eq!(
        masqueraded(&node, names[1]),
        Some(vec!["10.86.0.0/16".to_string()])
    );

    // The first network's last DEL takes its chain, not the other's.
    node.ohno("DEL", &a, &node.with_prev_result(&conf_a, &result_a))
        .success();
    assert_eq!(masqueraded(&node, names[0]), None);
    assert_eq!(
        masqueraded(&node, names[1]),
        Some(vec!["10.86.0.0/16".to_string()])
    );
    node.ohno("DEL", &b, &node.with_prev_result(&conf_b, &result_b))
        .success();
    assert_eq!(masqueraded(&node, names[1]), None);
}
