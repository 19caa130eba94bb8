//! The etcd store's failure modes as a user meets them: wrong or missing client
//! certificates are refused quickly with an error that says TLS; a store that
//! does not answer is "try again later" (11) within `timeoutMs` × `retries`;
//! bad store settings and a pool that disagrees with the stored definition
//! are invalid config (7) naming the field or the pool. None of them leaves a
//! key, a link or a pod interface behind.

mod common;
mod etcd_support;

use common::{Background, Node, Output, Pod};
use etcd_support::{details, repo_root, EtcdNode, PREFIX};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A refused handshake must not look like a hang.
const TLS_LIMIT: Duration = Duration::from_secs(5);
/// `timeoutMs` × `retries` of the default store settings, plus process start
/// and back-off on a loaded machine.
const STORE_BUDGET: Duration = Duration::from_millis(1000 * 3);
const MARGIN: Duration = Duration::from_millis(1500);

/// Runs ADD for a fresh pod, timed; asserts the pod got no interface and the
/// host namespace no link.
fn failed_add(node: &Node, conf: &Value) -> (Output, Duration) {
    let pod = Pod::new();
    let links_before = node.host.link_names();
    let started = Instant::now();
    let out = node.ohno("ADD", &pod, conf);
    let took = started.elapsed();
    assert_ne!(out.code, 0, "{out}\nexpected the ADD to fail");
    assert!(pod.ns.link("eth0").is_none(), "{out}\neth0 left in the pod");
    assert_eq!(
        node.host.link_names(),
        links_before,
        "{out}\nhost links changed"
    );
    (out, took)
}

/// The ADD failed on TLS: code 7, quickly, saying why, and wrote nothing.
fn assert_refused_on_tls(env: &EtcdNode, conf: &Value) {
    let (out, took) = failed_add(&env.node, conf);
    assert!(took < TLS_LIMIT, "{out}\nrefused only after {took:?}");
    out.error_with_code(7);
    let why = details(&out).to_ascii_lowercase();
    assert!(
        ["tls", "handshake", "certificate"]
            .iter()
            .any(|w| why.contains(w)),
        "{out}\ndetails do not say TLS, handshake or certificate"
    );
    assert_eq!(env.cluster.keys(""), BTreeMap::new(), "{out}\nkeys written");
    eprintln!("refused in {took:?}: {why}");
}

#[test]
fn client_without_a_certificate_is_refused_quickly_with_a_tls_error() {
    let env = EtcdNode::start();
    let mut conf = env.conf("node-a");
    let store = conf["ipam"]["store"].as_object_mut().expect("store object");
    store.remove("certFile");
    store.remove("keyFile");
    assert_refused_on_tls(&env, &conf);
}

#[test]
fn client_certificate_of_another_ca_is_refused_quickly_with_a_tls_error() {
    let env = EtcdNode::start();
    let mut conf = env.conf("node-a");
    conf["ipam"]["store"]["certFile"] = json!(env.cluster.cert("other-client.pem"));
    conf["ipam"]["store"]["keyFile"] = json!(env.cluster.cert("other-client-key.pem"));
    assert_refused_on_tls(&env, &conf);
}

/// Accepts TCP connections on 127.0.0.1 and never says a word.
const SILENT_SERVER: &str = r#"
import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
"#;

/// A node with certificates from `myclusters/gen-certs.sh` in its `pki` dir.
fn node_with_pki() -> (Node, PathBuf) {
    let node = Node::new();
    let pki = node.dir.path().join("pki");
    common::run_ok(
        &repo_root()
            .join("myclusters/gen-certs.sh")
            .to_string_lossy(),
        &[&pki.to_string_lossy()],
    );
    (node, pki)
}

/// An etcd store section for `endpoint` with `pki`'s client certificate,
/// `timeoutMs` 1000 and 3 retries.
fn tls_store(pki: &Path, endpoint: &str) -> Value {
    json!({
        "type": "etcd", "endpoints": [endpoint], "prefix": PREFIX,
        "caFile": pki.join("ca.pem"), "certFile": pki.join("client.pem"),
        "keyFile": pki.join("client-key.pem"), "timeoutMs": 1000, "retries": 3,
    })
}

#[test]
fn unreachable_or_silent_store_is_try_again_later_within_the_budget() {
    let (node, pki) = node_with_pki();
    let (_server, port) = Background::start(&node.host, &[common::PYTHON, "-c", SILENT_SERVER]);
    let conf_for = |endpoint: String| {
        let mut conf = node.ohno_conf("1.1.0");
        conf["ipam"]["store"] = tls_store(&pki, &endpoint);
        conf
    };
    // Nothing listens on port 1: refused at once.
    let (out, took) = failed_add(&node, &conf_for("https://127.0.0.1:1".into()));
    out.error_with_code(11);
    assert!(
        took < STORE_BUDGET + MARGIN,
        "{out}\nrefused endpoint took {took:?}"
    );
    eprintln!("refused endpoint: 11 after {took:?}");
    // A listener that never answers: every attempt runs into timeoutMs.
    let (out, took) = failed_add(&node, &conf_for(format!("https://127.0.0.1:{port}")));
    out.error_with_code(11);
    assert!(
        took < STORE_BUDGET + MARGIN,
        "{out}\nsilent endpoint took {took:?}, budget {STORE_BUDGET:?} + {MARGIN:?}"
    );
    eprintln!("silent endpoint: 11 after {took:?}");
}

#[test]
fn prefix_without_a_leading_slash_is_invalid_config_naming_the_field() {
    let env = EtcdNode::start();
    let mut conf = env.conf("node-a");
    conf["ipam"]["store"]["prefix"] = json!("ohno");
    let (out, _) = failed_add(&env.node, &conf);
    let msg = out.error_with_code(7);
    assert!(
        msg.contains("ipam.store.prefix"),
        "{out}\nmsg does not name ipam.store.prefix"
    );
    assert_eq!(env.cluster.keys(""), BTreeMap::new(), "{out}\nkeys written");
}

#[test]
fn missing_ca_file_is_invalid_config_naming_the_field() {
    let env = EtcdNode::start();
    let mut conf = env.conf("node-a");
    let missing = env.node.dir.path().join("no-such-ca.pem");
    conf["ipam"]["store"]["caFile"] = json!(missing);
    let (out, took) = failed_add(&env.node, &conf);
    let msg = out.error_with_code(7);
    assert!(msg.contains("caFile"), "{out}\nmsg does not name caFile");
    assert!(took < TLS_LIMIT, "{out}\nrejected only after {took:?}");
    assert_eq!(env.cluster.keys(""), BTreeMap::new(), "{out}\nkeys written");
}

#[test]
fn pool_that_differs_from_the_stored_definition_is_rejected_naming_the_pool() {
    let env = EtcdNode::start();
    let pool = |subnet: &str, block_size: u8| json!([{ "name": "shared-pool", "subnet": subnet, "blockSize": block_size }]);
    let mut node_a = env.conf("node-a");
    node_a["ipam"]["pools"] = pool("10.90.0.0/16", 26);
    let first = Pod::new();
    env.ohno("ADD", &first, &node_a).success();
    let stored = env.cluster.keys(&format!("{PREFIX}/pools/"));
    let keys_before = env.cluster.keys("");

    for (subnet, block_size) in [("10.90.0.0/16", 24), ("10.91.0.0/16", 26)] {
        let mut node_b = env.conf("node-b");
        node_b["ipam"]["pools"] = pool(subnet, block_size);
        let (out, _) = failed_add(&env.node, &node_b);
        out.error_with_code(7);
        assert!(
            details(&out).contains("shared-pool"),
            "{out}\ndetails do not name the pool"
        );
        eprintln!("{subnet} /{block_size}: {}", details(&out));
        assert_eq!(
            env.cluster.keys(""),
            keys_before,
            "{out}\nthe rejected ADD changed the store"
        );
    }
    assert_eq!(
        env.cluster.keys(&format!("{PREFIX}/pools/")),
        stored,
        "the stored pool definition changed"
    );
    env.ohno("DEL", &first, &node_a).success();
}

/// A TLS server (the test's own certificates) that completes the handshake of
/// its first connection, then closes it under the client's first request; every
/// later connection it accepts and never answers, not even the handshake.
const CLOSE_THEN_STALL_SERVER: &str = r#"
import socket, ssl, sys, time
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ctx.set_alpn_protocols(["h2"])
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
c, _ = s.accept()
try:
    t = ctx.wrap_socket(c, server_side=True)
    t.recv(1)
    time.sleep(0.2)
    t.close()
except Exception:
    c.close()
while True:
    c, _ = s.accept()
    held.append(c)
"#;

/// A connection closed under a request makes the client probe the TLS session
/// (to tell a refused certificate from a dropped link); a member that then
/// accepts and never completes the handshake must not hold the ADD past
/// `timeoutMs` × `retries`.
#[test]
fn a_member_that_stalls_the_tls_probe_is_try_again_later_within_the_budget() {
    let (node, pki) = node_with_pki();
    let (_server, port) = Background::start(
        &node.host,
        &[
            common::PYTHON,
            "-c",
            CLOSE_THEN_STALL_SERVER,
            &pki.join("etcd.pem").to_string_lossy(),
            &pki.join("etcd-key.pem").to_string_lossy(),
        ],
    );
    let mut conf = node.ohno_conf("1.1.0");
    conf["ipam"]["store"] = tls_store(&pki, &format!("https://127.0.0.1:{port}"));
    conf["ipam"]["store"]["persistMs"] = json!(0);
    let (out, took) = failed_add(&node, &conf);
    out.error_with_code(11);
    assert!(
        took < STORE_BUDGET + MARGIN,
        "{out}\nthe stalled probe held the ADD {took:?}, budget {STORE_BUDGET:?} + {MARGIN:?}"
    );
    assert!(
        node.log().contains("failed (attempt 1)"),
        "the first attempt did not see its connection closed:\n{}",
        node.log()
    );
    eprintln!("stalled TLS probe: 11 after {took:?}");
}
