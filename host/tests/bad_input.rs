//! Bad requests fail with the right CNI error code, one error document on
//! stdout, and no side effect: no link in the host netns, no store change.

mod common;

use common::{file_tree, run_plugin, Invocation, Node, Pod};
use serde_json::json;

/// Runs `inv` with `stdin` on a fresh node and asserts error `code` and that
/// nothing changed; returns the error's `msg`.
fn rejected(node: &Node, inv: &Invocation, stdin: &str, code: u64) -> String {
    let links_before = node.host.link_names();
    let store_before = file_tree(&node.store_dir());
    let out = run_plugin(&node.host, inv, stdin);
    let msg = out.error_with_code(code);
    assert_eq!(node.host.link_names(), links_before, "{out}\nlinks changed");
    assert_eq!(
        file_tree(&node.store_dir()),
        store_before,
        "{out}\nstore changed"
    );
    msg
}

#[test]
fn malformed_json_is_a_decode_error() {
    let node = Node::new();
    let pod = Pod::new();
    rejected(
        &node,
        &Invocation::ohno("ADD", &pod),
        "{\"cniVersion\": \"1.1.0\",",
        6,
    );
    assert!(pod.ns.link("eth0").is_none());
}

#[test]
fn unknown_cni_version_is_an_incompatible_version_error() {
    let node = Node::new();
    let pod = Pod::new();
    let conf = node.ohno_conf("9.9.9");
    rejected(&node, &Invocation::ohno("ADD", &pod), &conf.to_string(), 1);
}

#[test]
fn missing_cni_command_is_an_environment_error() {
    let node = Node::new();
    let pod = Pod::new();
    let mut inv = Invocation::ohno("ADD", &pod);
    inv.command = None;
    rejected(&node, &inv, &node.ohno_conf("1.1.0").to_string(), 4);
}

#[test]
fn ifname_longer_than_15_chars_is_an_environment_error() {
    let node = Node::new();
    let pod = Pod::new();
    let mut inv = Invocation::ohno("ADD", &pod);
    inv.ifname = "eth0123456789abc".to_owned();
    assert_eq!(inv.ifname.len(), 16);
    rejected(&node, &inv, &node.ohno_conf("1.1.0").to_string(), 4);
    assert_eq!(pod.ns.link_names(), vec!["lo".to_owned()]);
}

#[test]
fn container_id_with_a_slash_is_an_environment_error() {
    let node = Node::new();
    let pod = Pod::new();
    let mut inv = Invocation::ohno("ADD", &pod);
    inv.container_id = "../../etc/passwd".to_owned();
    rejected(&node, &inv, &node.ohno_conf("1.1.0").to_string(), 4);
}

#[test]
fn netns_path_that_does_not_exist_is_an_environment_error() {
    let node = Node::new();
    let pod = Pod::new();
    let mut inv = Invocation::ohno("ADD", &pod);
    inv.netns = format!("{}-does-not-exist", pod.ns.path());
    rejected(&node, &inv, &node.ohno_conf("1.1.0").to_string(), 4);
}

#[test]
fn subnet_with_prefix_33_is_an_invalid_config_naming_subnet() {
    let node = Node::new();
    let pod = Pod::new();
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["pools"][0]["subnet"] = json!("10.0.0.0/33");
    let msg = rejected(&node, &Invocation::ohno("ADD", &pod), &conf.to_string(), 7);
    assert!(
        msg.contains("subnet"),
        "msg does not name the field: {msg:?}"
    );
}

#[test]
fn block_larger_than_the_pool_is_an_invalid_config() {
    let node = Node::new();
    let pod = Pod::new();
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["pools"][0]["blockSize"] = json!(8);
    rejected(&node, &Invocation::ohno("ADD", &pod), &conf.to_string(), 7);
}

#[test]
fn check_with_cni_version_0_3_1_is_an_incompatible_version_error() {
    let node = Node::new();
    let pod = Pod::new();
    let conf = node.ohno_conf("0.3.1");
    rejected(
        &node,
        &Invocation::ohno("CHECK", &pod),
        &conf.to_string(),
        1,
    );
}

#[test]
fn requested_ip_with_a_malformed_prefix_is_an_environment_error() {
    let node = Node::new();
    let pod = Pod::new();
    for ip in ["10.85.0.5/garbage", "10.85.0.5/33", "10.85.0.5/"] {
        let mut inv = Invocation::ohno("ADD", &pod);
        inv.args = format!("IP={ip}");
        let msg = rejected(&node, &inv, &node.ohno_conf("1.1.0").to_string(), 4);
        assert!(msg.contains("CNI_ARGS"), "{ip}: {msg:?}");
    }
    assert_eq!(pod.ns.link_names(), vec!["lo".to_owned()]);
}

#[test]
fn etcd_endpoint_with_a_path_or_no_port_is_an_invalid_config_naming_it() {
    let node = Node::new();
    let pod = Pod::new();
    for endpoint in [
        "http://127.0.0.1:2379/v3/kv",
        "http://127.0.0.1",
        "http://127.0.0.1:99999",
        "http://user@127.0.0.1:2379",
    ] {
        let mut conf = node.ohno_conf("1.1.0");
        conf["ipam"]["store"] = json!({"type": "etcd", "endpoints": [endpoint]});
        let msg = rejected(&node, &Invocation::ohno("ADD", &pod), &conf.to_string(), 7);
        assert!(
            msg.contains("ipam.store.endpoints[0]"),
            "{endpoint}: msg does not name the field: {msg:?}"
        );
    }
}

/// Node-local paths must be absolute: the plugin and `ohnod` run
/// in different working directories, so a relative path names two places.
#[test]
fn relative_node_local_paths_are_invalid_config_naming_the_field() {
    let node = Node::new();
    let pod = Pod::new();
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 3] = [
        ("ipam.lockDir", |c| c["ipam"]["lockDir"] = json!("run/ohno")),
        ("ipam.store.dataDir", |c| {
            c["ipam"]["store"] = json!({"type": "local", "dataDir": "var/lib/ohno"})
        }),
        (
            "policy.cacheDir",
            |c| c["policy"] = json!({"path": "/nonexistent/p.wasm", "cacheDir": "cache"}),
        ),
    ];
    for (field, edit) in cases {
        let mut conf = node.ohno_conf("1.1.0");
        edit(&mut conf);
        let msg = rejected(&node, &Invocation::ohno("ADD", &pod), &conf.to_string(), 7);
        assert_eq!(msg, format!("invalid network config field {field}"));
    }
    assert!(pod.ns.link("eth0").is_none());
}

/// A lockDir too long for the servers' Unix socket paths is refused before
/// anything starts, instead of every ADD starting a server that cannot bind.
#[test]
fn lock_dir_too_long_for_a_socket_path_is_invalid_config() {
    let node = Node::new();
    let pod = Pod::new();
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["lockDir"] = json!(format!("/run/{}", "d".repeat(90)));
    let msg = rejected(&node, &Invocation::ohno("ADD", &pod), &conf.to_string(), 7);
    assert_eq!(msg, "invalid network config field ipam.lockDir");
}

/// https:// and http:// in one store: a failover would go to etcd in clear.
#[test]
fn mixed_http_and_https_endpoints_are_invalid_config() {
    let node = Node::new();
    let pod = Pod::new();
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["store"] = json!({"type": "etcd",
        "endpoints": ["https://127.0.0.1:1", "http://127.0.0.1:2"], "caFile": "/nonexistent/ca.pem"});
    let out = run_plugin(
        &node.host,
        &Invocation::ohno("ADD", &pod),
        &conf.to_string(),
    );
    let msg = out.error_with_code(7);
    assert_eq!(msg, "invalid network config field ipam.store.endpoints");
    assert!(out.stdout.contains("clear"), "{out}");
    assert!(pod.ns.link("eth0").is_none());
}
