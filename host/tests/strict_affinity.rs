//! `strictAffinity` (the default) as two nodes sharing one store see it: a node
//! hands out addresses of its own blocks only, so an address asked for in
//! another node's block is refused (101, naming the block and its node) and
//! nothing is made on the asking node: no bridge carrying that block's
//! gateway, no veth, no pod interface.

mod common;

use common::{first_ipv4, run_plugin, Invocation, Node, Output, Pod};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

fn add_asking_for(node: &Node, pod: &Pod, conf: &Value, ip: Ipv4Addr) -> Output {
    let mut inv = Invocation::ohno("ADD", pod);
    inv.args = format!("IP={ip}");
    run_plugin(&node.host, &inv, &conf.to_string())
}

#[test]
fn an_address_in_another_nodes_block_is_refused_naming_the_block_and_its_node() {
    // Two nodes, two host namespaces, one store (the same SQLite directory).
    let node_a = Node::new();
    let conf_a = node_a.ohno_conf("1.1.0");
    let node_b = Node::new();
    let mut conf_b = conf_a.clone();
    conf_b["node"] = json!("node-b");
    conf_b["logFile"] = json!(node_b.log_file());

    let first = Pod::new();
    let result = node_a.add(&first, &conf_a);
    let (addr, len, _) = first_ipv4(&result);
    let block = Ipv4Addr::from(u32::from(addr) & (u32::MAX << (32 - u32::from(len))));
    let wanted = Ipv4Addr::from(u32::from(block) + 20);

    let pod = Pod::new();
    let links_before = node_b.host.link_names();
    let out = add_asking_for(&node_b, &pod, &conf_b, wanted);
    let msg = out.error_with_code(101);
    assert!(msg.contains(&wanted.to_string()), "{out}");
    let details = out.json()["details"].as_str().unwrap_or_default();
    assert!(
        details.contains(&format!("block {block}/{len}")) && details.contains("node node-a"),
        "{out}\ndetails do not name the block and its node"
    );
    assert_eq!(
        node_b.host.link_names(),
        links_before,
        "{out}\nnode-b's ADD left a link (a bridge with node-a's gateway?)"
    );
    assert!(pod.ns.link("eth0").is_none(), "{out}\neth0 left in the pod");

    // The same address is node-a's to give.
    let on_a = Pod::new();
    let r = add_asking_for(&node_a, &on_a, &conf_a, wanted);
    assert_eq!(first_ipv4(r.success().json()).0, wanted, "{r}");
}
