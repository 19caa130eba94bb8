//! Ohno first in a chain with Debian's reference `portmap` and `tuning`,
//! driven the way libcni drives a conflist: prevResult flows, CHECK and DEL
//! see the cached result, the sysctl lands in the pod, the host port forwards.
//!
//! The same scenario runs with the reference `bridge` + `host-local` as a
//! control: if it fails too, suspect the harness or the machine, not Ohno.

mod common;

use common::{
    first_ipv4, Background, NetNs, Node, Pod, Runtime, RuntimeConf, PYTHON, REFERENCE_VERSION,
};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

const HOST_PORT: u16 = 18080;
const REPLY: &str = "ohno-pong";

/// Answers every connection on port 80 with `REPLY` and prints "ready" once listening.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[1].encode() + b"\n")
    c.close()
"#;

/// Connects to argv[1]:argv[2] and prints the first line it reads.
const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(c.makefile().readline().strip())
"#;

fn fetch(from: &NetNs, addr: Ipv4Addr, port: u16) -> Result<String, String> {
    let out = from.exec(&[PYTHON, "-c", CLIENT, &addr.to_string(), &port.to_string()]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn conflist(main_plugin: Value) -> Value {
    json!({
        "cniVersion": REFERENCE_VERSION,
        "name": "podnet",
        "plugins": [
            main_plugin,
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
            { "type": "tuning", "sysctl": { "net.core.somaxconn": "512" } }
        ]
    })
}

fn chain_add_check_del(node: &Node, list: &Value) {
    let runtime = Runtime::new(&node.host);
    let (server_pod, client_pod) = (Pod::new(), Pod::new());
    let mut server_rt = RuntimeConf::for_pod(&server_pod);
    server_rt.capability_args.insert(
        "portMappings".to_owned(),
        json!([{ "hostPort": HOST_PORT, "containerPort": 80, "protocol": "tcp" }]),
    );
    let client_rt = RuntimeConf::for_pod(&client_pod);

    let result = runtime
        .add_list(list, &server_rt)
        .unwrap_or_else(|e| panic!("ADD server pod: {e}"));
    let client_result = runtime
        .add_list(list, &client_rt)
        .unwrap_or_else(|e| panic!("ADD client pod: {e}"));

    // The last plugin's result still carries the first plugin's address.
    assert_eq!(result["cniVersion"], REFERENCE_VERSION, "{result}");
    let (addr, len, gateway) = first_ipv4(&result);
    let gateway = gateway.unwrap_or_else(|| panic!("no gateway: {result}"));
    assert!(
        server_pod.ns.ipv4_addrs("eth0").contains(&(addr, len)),
        "the pod lacks {addr}/{len} from the chained result"
    );
    assert_eq!(
        server_pod.ns.sysctl("net.core.somaxconn"),
        "512",
        "tuning did not apply"
    );

    // Debian's portmap 1.1.1 fails CHECK for every IPv4-only attachment: it
    // looks for an ip6tables chain it never made (containernetworking/plugins#819).
    // CHECK the rest of the chain.
    runtime
        .check_list(list, &server_rt, &result, &["portmap"])
        .unwrap_or_else(|e| panic!("CHECK: {e}"));

    let (_server, ready) = Background::start(&server_pod.ns, &[PYTHON, "-c", SERVER, REPLY]);
    assert_eq!(ready, "ready");
    // Straight to the pod, then through the host port on the gateway
    // address, from the node and from another pod.
    assert_eq!(
        fetch(&client_pod.ns, addr, 80).as_deref(),
        Ok(REPLY),
        "pod to pod"
    );
    assert_eq!(
        fetch(&node.host, gateway, HOST_PORT).as_deref(),
        Ok(REPLY),
        "node to {gateway}:{HOST_PORT}"
    );
    assert_eq!(
        fetch(&client_pod.ns, gateway, HOST_PORT).as_deref(),
        Ok(REPLY),
        "pod to {gateway}:{HOST_PORT}"
    );

    runtime
        .del_list(list, &client_rt, Some(&client_result))
        .unwrap_or_else(|e| panic!("DEL client pod: {e}"));
    runtime
        .del_list(list, &server_rt, Some(&result))
        .unwrap_or_else(|e| panic!("DEL server pod: {e}"));
    assert!(server_pod.ns.link("eth0").is_none(), "eth0 left after DEL");
    assert!(
        fetch(&node.host, gateway, HOST_PORT).is_err(),
        "host port still forwards after DEL"
    );
    runtime
        .del_list(list, &server_rt, Some(&result))
        .unwrap_or_else(|e| panic!("second DEL: {e}"));
}

#[test]
fn ohno_chains_with_portmap_and_tuning() {
    let node = Node::new();
    chain_add_check_del(&node, &conflist(node.ohno_plugin()));
}

#[test]
fn control_reference_bridge_chains_with_portmap_and_tuning() {
    let node = Node::new();
    let bridge = json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": "10.88.0.0/24" }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": node.dir.path().join("host-local")
        }
    });
    chain_add_check_del(&node, &conflist(bridge));
}
