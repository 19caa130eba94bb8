//! Releasing the blocks of Nodes deleted from Kubernetes, through the real
//! binaries: `ohnod run` agents on simulated nodes (namespaces), one etcd
//! member, and a test double of the Kubernetes API that speaks its real
//! JSON (NodeList pages with a resourceVersion, watch events with
//! bookmarks and 410 errors, Status documents). What is asserted is what an
//! operator sees: the keys in etcd, the lease's holder, the agents'
//! metrics, and the requests the API received.

mod cluster_support;
mod common;
mod kube_support;

use std::time::{Duration, Instant};

use cluster_support::*;
use common::*;
use kube_support::ApiServer;
use serde_json::{json, Value};

const API_IP: &str = "192.0.2.1";
const LEASE_KEY: &str = "/ohno/leases/node-cleanup";

/// Every key under the prefix, as `etcdctl get --prefix --keys-only` lists them.
fn keys(ul: &Underlay, etcd: &Etcd) -> Vec<String> {
    let out = etcd.etcdctl(ul, &["get", "--prefix", "--keys-only", "/ohno/"]);
    assert!(out.status.success(), "etcdctl get: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The keys that belong to `node`: its affinities and its record.
fn node_keys(ul: &Underlay, etcd: &Etcd, node: &str) -> Vec<String> {
    keys(ul, etcd)
        .into_iter()
        .filter(|k| {
            k.starts_with(&format!("/ohno/affinity/{node}/")) || k == &format!("/ohno/nodes/{node}")
        })
        .collect()
}

/// The attachment key of a pod ADDed on network `podnet`.
fn attachment_key(pod: &Pod) -> String {
    format!(
        "/ohno/attachments/{NETWORK}/{}/{}",
        pod.container_id, pod.ifname
    )
}

fn lease_holder(ul: &Underlay, etcd: &Etcd) -> Option<String> {
    let out = etcd.etcdctl(ul, &["get", LEASE_KEY, "--print-value-only"]);
    let doc: Value = serde_json::from_slice(&out.stdout).ok()?;
    doc["holder"].as_str().map(str::to_string)
}

fn is_leader(node: &SimNode) -> bool {
    node.metrics()
        .lines()
        .any(|l| l.trim() == "ohno_node_cleanup_leader 1")
}

fn released_total(node: &SimNode) -> String {
    node.metrics()
        .lines()
        .find(|l| l.starts_with("ohno_node_cleanup_released_nodes_total"))
        .unwrap_or_default()
        .to_string()
}

fn wait(what: &str, timeout: Duration, logs: &[&SimNode], f: impl FnMut() -> bool) {
    if !eventually(timeout, f) {
        let mut msg = format!("{what} did not happen within {timeout:?}");
        for n in logs {
            msg.push_str(&format!(
                "\n--- {} agent log (tail):\n{}",
                n.name,
                tail(&n.agent_log(), 3000)
            ));
        }
        panic!("{msg}");
    }
}

#[test]
fn a_deleted_nodes_blocks_are_released_by_one_agent_after_the_grace_period() {
    require_root();
    let ul = Underlay::new();
    let etcd = Etcd::start(&ul);
    let api = ApiServer::start(&ul.ns, API_IP, &["node-a", "node-b", "node-c"]);
    let cleanup = json!({ "nodeCleanup": api.cleanup_conf(3, 2) });
    let mut a = SimNode::new(&ul, &etcd, SEGMENT_A, 10, "node-a", cleanup.clone());
    let mut b = SimNode::new(&ul, &etcd, SEGMENT_A, 11, "node-b", cleanup);
    let mut c = SimNode::new(&ul, &etcd, SEGMENT_A, 12, "node-c", json!({}));
    for n in [&mut a, &mut b, &mut c] {
        n.start_agent();
    }
    let (pa, pc) = (Pod::new(), Pod::new());
    a.add(&pa);
    let c_addr = address(&c.add(&pc), true);
    wait("node-c's record", Duration::from_secs(15), &[&c], || {
        keys(&ul, &etcd).contains(&"/ohno/nodes/node-c".to_string())
    });
    assert!(keys(&ul, &etcd).contains(&attachment_key(&pc)));
    // node-c's machine goes away: its agent stops, its record stops being
    // confirmed.
    c.stop_agent();

    // One agent holds the lease, and only that one says it leads.
    wait("a lease holder", Duration::from_secs(10), &[&a, &b], || {
        lease_holder(&ul, &etcd).is_some()
    });
    let holder = lease_holder(&ul, &etcd).expect("holder");
    assert!(holder == "node-a" || holder == "node-b", "{holder}");
    wait(
        "the holder's leader gauge",
        Duration::from_secs(5),
        &[&a, &b],
        || is_leader(&a) != is_leader(&b),
    );
    assert_eq!(is_leader(&a), holder == "node-a");

    // Deleted from Kubernetes: kept through the grace period, then its
    // blocks, its pod's attachment and address, and its record go.
    assert!(!node_keys(&ul, &etcd, "node-c").is_empty());
    api.delete_node("node-c");
    let deleted = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        node_keys(&ul, &etcd, "node-c")
            .iter()
            .any(|k| k.starts_with("/ohno/affinity/node-c/")),
        "released within the grace period: {:?}",
        keys(&ul, &etcd)
    );
    wait(
        "node-c released",
        Duration::from_secs(20),
        &[&a, &b],
        || node_keys(&ul, &etcd, "node-c").is_empty(),
    );
    assert!(
        deleted.elapsed() >= Duration::from_secs(3),
        "released before the grace period ended ({:?})",
        deleted.elapsed()
    );
    let left = keys(&ul, &etcd);
    assert!(!left.contains(&attachment_key(&pc)), "{left:#?}");
    assert!(
        !left.iter().any(|k| k.ends_with(&format!("/{c_addr}"))),
        "node-c's pod address still held: {left:#?}"
    );
    assert!(
        left.contains(&attachment_key(&pa)),
        "node-a's pod: {left:#?}"
    );
    assert!(
        left.contains(&"/ohno/nodes/node-a".to_string()),
        "{left:#?}"
    );
    assert!(
        left.contains(&"/ohno/nodes/node-b".to_string()),
        "{left:#?}"
    );
    assert!(
        left.iter().any(|k| k.starts_with("/ohno/affinity/node-a/")),
        "{left:#?}"
    );
    // The release was re-checked by name first.
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r == "GET /api/v1/nodes/node-c"),
        "{requests:#?}"
    );
    assert!(requests
        .iter()
        .any(|r| r.starts_with("GET /api/v1/nodes?watch=true")));
    let (leader, other) = if holder == "node-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(
        released_total(leader),
        "ohno_node_cleanup_released_nodes_total 1"
    );
    assert_eq!(
        released_total(other),
        "ohno_node_cleanup_released_nodes_total 0"
    );

    // The holder stops cleanly: it hands the lease on, the other agent
    // takes it at once and releases the old holder's node once that is
    // deleted.
    leader.stop_agent();
    let other_name = other.name.clone();
    wait("the lease moving", Duration::from_secs(6), &[other], || {
        lease_holder(&ul, &etcd).as_deref() == Some(other_name.as_str())
    });
    api.delete_node(&leader.name);
    let gone = leader.name.clone();
    wait(
        "the old holder's node released",
        Duration::from_secs(25),
        &[other],
        || node_keys(&ul, &etcd, &gone).is_empty(),
    );
    assert!(!node_keys(&ul, &etcd, &other_name).is_empty());
}

#[test]
fn nothing_is_released_on_a_partial_view_or_while_the_node_answers_by_name() {
    require_root();
    let ul = Underlay::new();
    let etcd = Etcd::start(&ul);
    let api = ApiServer::start(&ul.ns, API_IP, &["node-a", "node-g"]);
    // The API fails every list: the agent never has a whole view.
    api.fail_lists(1000);
    let mut a = SimNode::new(
        &ul,
        &etcd,
        SEGMENT_A,
        10,
        "node-a",
        json!({ "nodeCleanup": api.cleanup_conf(2, 2) }),
    );
    a.start_agent();
    // Addresses of two other nodes: node-x was never a Kubernetes node,
    // node-g is one.
    let (px, pg) = (Pod::new(), Pod::new());
    for (pod, node) in [(&px, "node-x"), (&pg, "node-g")] {
        let mut conf = a.conf.clone();
        conf["node"] = json!(node);
        a.node.add(pod, &conf);
    }
    assert!(!node_keys(&ul, &etcd, "node-x").is_empty());
    assert!(!node_keys(&ul, &etcd, "node-g").is_empty());
    wait("lists tried", Duration::from_secs(10), &[&a], || {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/nodes?limit="))
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !node_keys(&ul, &etcd, "node-x").is_empty(),
        "released without a whole view"
    );

    // The API answers again: node-x, absent from the whole view, goes;
    // node-g, present, stays.
    api.fail_lists(0);
    wait("node-x released", Duration::from_secs(40), &[&a], || {
        node_keys(&ul, &etcd, "node-x").is_empty()
    });
    assert!(!keys(&ul, &etcd).contains(&attachment_key(&px)));
    assert!(keys(&ul, &etcd).contains(&attachment_key(&pg)));

    // The watch says node-g is gone, but the API still has it by name:
    // asked for, and kept.
    api.ghost_node("node-g");
    assert!(
        api.wait_requests(Duration::from_secs(15), |r| {
            r.iter().any(|r| r == "GET /api/v1/nodes/node-g")
        }),
        "node-g was never asked for by name:\n{}",
        tail(&a.agent_log(), 3000)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !node_keys(&ul, &etcd, "node-g").is_empty(),
        "released while the API still had it"
    );
    assert!(keys(&ul, &etcd).contains(&attachment_key(&pg)));

    // The watch falls behind (410): the agent lists again.
    let lists = |r: &[String]| {
        r.iter()
            .filter(|r| r.starts_with("GET /api/v1/nodes?limit="))
            .count()
    };
    let before = lists(&api.requests());
    api.compact();
    assert!(
        api.wait_requests(Duration::from_secs(15), |r| lists(r) > before),
        "no list after the watch expired:\n{}",
        tail(&a.agent_log(), 3000)
    );
    // Now really gone: released.
    api.delete_node("node-g");
    wait("node-g released", Duration::from_secs(20), &[&a], || {
        node_keys(&ul, &etcd, "node-g").is_empty()
    });
    assert!(!keys(&ul, &etcd).contains(&attachment_key(&pg)));
    assert!(!node_keys(&ul, &etcd, "node-a").is_empty());
}
