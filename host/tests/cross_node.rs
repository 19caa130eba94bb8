//! Cross-node pod networking through the real binaries: three simulated
//! nodes (two on one segment, one behind a router), one `ohnod run` each,
//! one etcd member, a pod on each node made by the plugin. The agents
//! publish node records, route every remote block (host-gw on-link, vxlan
//! across the router, both families), blackhole their own, keep the pods'
//! MTU to the vxlan device's, repair what is deleted under them, leave other
//! programs' routes alone, keep their routes when stopped, and drop the
//! routes of a node removed while they were down.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::*;
use common::*;
use serde_json::{json, Value};

const VX: &str = "ohno.vx";

/// Routes of `node` whose text contains every one of `parts`.
fn has_route(node: &SimNode, parts: &[&str]) -> bool {
    node.owned_routes()
        .iter()
        .any(|r| parts.iter().all(|p| r.contains(p)))
}

fn wait_for(what: &str, node: &SimNode, f: impl Fn() -> bool) {
    if !eventually(Duration::from_secs(15), &f) {
        panic!(
            "{}: {what} did not happen\nroutes: {:#?}\nfdb: {}\nagent log tail:\n{}",
            node.name,
            node.owned_routes(),
            node.fdb(VX),
            tail(&node.agent_log(), 4000)
        );
    }
}

/// The pod's first v4 and v6 blocks as the result gives them (`a.b.c.d/26`).
fn blocks(result: &Value) -> (String, String) {
    let mut v4 = None;
    let mut v6 = None;
    for ip in result["ips"].as_array().into_iter().flatten() {
        let a = ip["address"].as_str().unwrap_or_default();
        let cidr = ohno::ip::Cidr::parse(a).unwrap_or_else(|e| panic!("{a}: {e}"));
        let block = cidr.canonical().to_string();
        if a.contains('.') {
            v4 = Some(block);
        } else {
            v6 = Some(block);
        }
    }
    (v4.expect("v4 block"), v6.expect("v6 block"))
}

#[test]
fn agents_route_every_nodes_blocks_and_repair_what_is_removed() {
    require_root();
    let ul = Underlay::new();
    let etcd = Etcd::start(&ul);
    let mut a = SimNode::new(&ul, &etcd, SEGMENT_A, 10, "node-a", json!({}));
    let mut b = SimNode::new(&ul, &etcd, SEGMENT_A, 11, "node-b", json!({}));
    let mut c = SimNode::new(&ul, &etcd, SEGMENT_B, 12, "node-c", json!({}));
    for n in [&mut a, &mut b, &mut c] {
        n.start_agent();
    }
    let (pa, pb, pc) = (Pod::new(), Pod::new(), Pod::new());
    let (ra, rb, rc) = (a.add(&pa), b.add(&pb), c.add(&pc));
    let (a4, a6) = blocks(&ra);
    let (b4, b6) = blocks(&rb);
    let (c4, c6) = blocks(&rc);

    // A: its own blocks blackholed; B's via B's underlay addresses (on-link:
    // host-gw); C's through the vxlan device (behind the router).
    wait_for("blackholes of its own blocks", &a, || {
        has_route(&a, &["blackhole", &a4]) && has_route(&a, &["blackhole", &a6])
    });
    wait_for("host-gw routes to node-b", &a, || {
        has_route(&a, &[&b4, &format!("via {}", b.v4), "dev eth0"])
            && has_route(&a, &[&b6, &format!("via {}", b.v6), "dev eth0"])
    });
    wait_for("vxlan routes to node-c", &a, || {
        has_route(&a, &[&c4, "via inet6 fe80::", "dev ohno.vx"])
            && has_route(&a, &[&c6, "via fe80::", "dev ohno.vx"])
    });
    // One FDB entry and one neighbour entry for C; none for B (host-gw).
    let fdb = a.fdb(VX);
    assert!(
        fdb.contains(&format!("dst {} self permanent", c.v4)),
        "{fdb}"
    );
    assert!(!fdb.contains(&b.v4), "{fdb}");
    assert!(
        a.neighbours(VX).contains("PERMANENT"),
        "{}",
        a.neighbours(VX)
    );
    // The vxlan device: VNI, port, local address, learning off, MTU 1500 − 50.
    let dev = a.host().ip_json(&["-d", "link", "show", VX]);
    let info = &dev[0]["linkinfo"]["info_data"];
    assert_eq!(info["id"], 4096, "{dev:?}");
    assert_eq!(info["port"], 4789, "{dev:?}");
    assert_eq!(info["local"], a.v4.as_str(), "{dev:?}");
    assert_eq!(info["learning"], false, "{dev:?}");
    assert_eq!(dev[0]["mtu"], 1450, "{dev:?}");
    let mac = dev[0]["address"].as_str().unwrap_or_default().to_string();
    // And so do C's routes to A and B.
    wait_for("vxlan routes to node-a and node-b", &c, || {
        has_route(&c, &[&a4, "dev ohno.vx"]) && has_route(&c, &[&b4, "dev ohno.vx"])
    });

    // Pods reach each other: host-gw and vxlan, both families, and keep
    // their own source address (ipMasq excludes every pool).
    let (pa4, pb4, pc4) = (address(&ra, true), address(&rb, true), address(&rc, true));
    let (pb6, pc6) = (address(&rb, false), address(&rc, false));
    for (to, what) in [
        (&pb4, "B v4"),
        (&pb6, "B v6"),
        (&pc4, "C v4"),
        (&pc6, "C v6"),
    ] {
        assert!(pings(&pa, to), "pod on A cannot ping pod on {what} ({to})");
    }
    let seen = source_seen_by(&pc, &pc4, &pa);
    assert_eq!(seen, pa4, "pod C saw pod A's traffic from {seen}");

    // Pods on a vxlan node get the device's MTU; a larger one is refused.
    let pod_mtu = ip_link_mtu(&pa, "eth0");
    assert_eq!(pod_mtu, 1450);
    let mut big = a.conf.clone();
    big["mtu"] = json!(9000);
    let refused = a.node.ohno("ADD", &Pod::new(), &big);
    refused.error_with_code(7);
    let why = refused.json()["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("9000 is above 1450"), "{why}");

    // Node records and what ohnoctl shows of them.
    let ls = a.ohnoctl(&["node", "ls", "-o", "json"]);
    let nodes: Value = serde_json::from_slice(&ls.stdout).expect("node ls json");
    let names: Vec<&str> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(names, ["node-a", "node-b", "node-c"], "{nodes}");
    let rec_a = &nodes[0]["record"];
    assert_eq!(rec_a["ipv4"], a.v4.as_str(), "{nodes}");
    assert_eq!(rec_a["backend"], "auto", "{nodes}");
    assert_eq!(rec_a["vxlan"]["mac"], mac.as_str(), "{nodes}");
    assert_eq!(nodes[0]["blocks"], 2, "{nodes}");
    let table = a.ohnoctl(&["node", "ls"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("node-c") && table.contains(&c.v4), "{table}");
    let status = a.status();
    let peers = status["routes"]["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let peer = |n: &str| {
        peers
            .iter()
            .find(|p| p["node"] == n)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(peer("node-b")["reachable"], true, "{status}");
    assert_eq!(peer("node-b")["routed"]["host-gw"], 2, "{status}");
    assert_eq!(peer("node-c")["routed"]["vxlan"], 2, "{status}");
    let metrics = a.metrics();
    assert!(
        metrics.contains("ohno_routes{backend=\"vxlan\",state=\"installed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ohno_peers{reachability=\"reachable\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ohno_routes_last_sync_timestamp_seconds"),
        "{metrics}"
    );

    // Another program's routes: one for B's block with another protocol (a
    // worse metric than ours, so pods still use ours), one in another table
    // with our protocol number. Neither is ever touched.
    a.host().exec_ok(&[
        "ip",
        "route",
        "add",
        &b4,
        "via",
        "192.0.2.99",
        "metric",
        "700",
        "proto",
        "static",
    ]);
    a.host().exec_ok(&[
        "ip",
        "route",
        "add",
        "10.123.0.0/24",
        "via",
        "192.0.2.1",
        "proto",
        "111",
        "table",
        "100",
    ]);

    // Repair: the vxlan device deleted, an owned route deleted.
    a.host().exec_ok(&["ip", "link", "del", VX]);
    a.host()
        .exec_ok(&["ip", "route", "del", &b4, "proto", "111"]);
    wait_for("the vxlan device and its routes restored", &a, || {
        has_route(&a, &[&c4, "dev ohno.vx"]) && has_route(&a, &[&b4, "via 192.0.2.11"])
    });
    let again = a.host().ip_json(&["link", "show", VX]);
    assert_eq!(
        again[0]["address"],
        mac.as_str(),
        "the MAC must stay: {again:?}"
    );
    assert!(pings(&pa, &pc4), "pod A → pod C after the device came back");
    let theirs = a
        .host()
        .exec_ok(&["ip", "route", "show", "proto", "static"]);
    assert!(theirs.contains(&format!("{b4} via 192.0.2.99")), "{theirs}");
    let other_table = a.host().exec_ok(&["ip", "route", "show", "table", "100"]);
    assert!(other_table.contains("10.123.0.0/24"), "{other_table}");

    // Stopped agent: no flush; pods keep talking.
    a.stop_agent();
    assert!(
        has_route(&a, &[&b4, "via 192.0.2.11"]),
        "{:#?}",
        a.owned_routes()
    );
    assert!(pings(&pa, &pb4), "pod A → pod B with A's agent stopped");

    // node-c goes while A's agent is down; A drops its routes at start and
    // does not churn what is still wanted.
    c.stop_agent();
    let rm = a.ohnoctl(&["node", "rm", "node-c"]);
    assert_eq!(rm.status.code(), Some(2), "refused while it has pods");
    assert!(String::from_utf8_lossy(&rm.stderr).contains("--force"));
    let rm = a.ohnoctl(&["node", "rm", "node-c", "--force"]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let before = a.agent_log().len();
    a.start_agent();
    wait_for("node-c's routes and entries removed", &a, || {
        !has_route(&a, &[&c4]) && !a.fdb(VX).contains(&c.v4)
    });
    let since = a.agent_log()[before..].to_string();
    assert!(
        !since.contains(&format!("route added: {b4}")),
        "a wanted route was re-added at restart:\n{since}"
    );
    assert!(has_route(&a, &[&b4, "via 192.0.2.11"]));
    let theirs = a
        .host()
        .exec_ok(&["ip", "route", "show", "proto", "static"]);
    assert!(theirs.contains(&format!("{b4} via 192.0.2.99")), "{theirs}");
    drop((pa, pb, pc));
}

#[test]
fn host_gw_refuses_an_off_link_peer_and_follows_records_across_an_etcd_outage() {
    require_root();
    let ul = Underlay::new();
    let mut etcd = Etcd::start(&ul);
    let hg = json!({"backend": "host-gw"});
    let mut a = SimNode::new(&ul, &etcd, SEGMENT_A, 10, "node-a", hg.clone());
    let mut b = SimNode::new(&ul, &etcd, SEGMENT_A, 11, "node-b", hg.clone());
    let mut c = SimNode::new(&ul, &etcd, SEGMENT_B, 12, "node-c", hg);
    for n in [&mut a, &mut b, &mut c] {
        n.start_agent();
    }
    let (pa, pb, pc) = (Pod::new(), Pod::new(), Pod::new());
    let _ = a.add(&pa);
    let (b4, _) = blocks(&b.add(&pb));
    let (c4, _) = blocks(&c.add(&pc));
    wait_for("node-c seen as not on-link", &a, || {
        a.status()["routes"]["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["node"] == "node-c" && p["reachable"] == false)
        })
    });
    assert!(
        has_route(&a, &[&b4, "via 192.0.2.11"]),
        "{:#?}",
        a.owned_routes()
    );
    assert!(!has_route(&a, &[&c4]), "{:#?}", a.owned_routes());
    let status = a.status();
    assert!(status.to_string().contains("is not on-link"), "{status}");
    assert!(a.host().link(VX).is_none(), "host-gw makes no vxlan device");
    let m = a.metrics();
    assert!(
        m.contains("ohno_peers{reachability=\"unreachable\"} 1"),
        "{m}"
    );
    assert!(a.agent_log().contains("not on-link"), "{}", a.agent_log());
    // Pods on a host-gw node keep the underlay's MTU.
    assert_eq!(ip_link_mtu(&pa, "eth0"), 1500);

    // etcd goes away and comes back: the agents list again and follow on.
    etcd.kill();
    assert!(
        eventually(Duration::from_secs(15), || a
            .metrics()
            .contains("ohno_routes_watch_restarts_total 1")
            || a.agent_log().contains("following the store again")),
        "no watch restart seen:\n{}",
        tail(&a.agent_log(), 3000)
    );
    // Meanwhile nothing was flushed.
    assert!(has_route(&a, &[&b4, "via 192.0.2.11"]));
    etcd.restart(&ul);

    // node-b moves to another underlay address: its new record reaches A,
    // whose route follows.
    b.stop_agent();
    // (Deleting the primary address takes the secondaries and the default
    // route with it: delete, then add, then route again.)
    let h = b.host();
    h.exec_ok(&["ip", "addr", "del", "192.0.2.11/24", "dev", "eth0"]);
    h.exec_ok(&["ip", "addr", "add", "192.0.2.21/24", "dev", "eth0"]);
    h.exec_ok(&["ip", "route", "add", "default", "via", "192.0.2.1"]);
    b.start_agent();
    wait_for(
        "the route to node-b's block via its new address",
        &a,
        || has_route(&a, &[&b4, "via 192.0.2.21"]) && !has_route(&a, &[&b4, "via 192.0.2.11"]),
    );
    assert!(
        pings(&pa, &address(&b.add(&pb), true)),
        "pod A → pod B at B's new address"
    );
}

fn ip_link_mtu(pod: &Pod, dev: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.ns.name(),
            "ip",
            "-j",
            "link",
            "show",
            dev,
        ])
        .output()
        .expect("ip link");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v[0]["mtu"].as_u64().unwrap_or(0)
}

/// The source address `server` sees when `client` connects to `addr`:
/// a one-shot TCP listener in the server pod prints its peer.
fn source_seen_by(server: &Pod, addr: &str, client: &Pod) -> String {
    let script = format!(
        "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);\
         s.bind(('{addr}',7777));s.listen(1);s.settimeout(10);c,a=s.accept();print(a[0])"
    );
    let listener = std::process::Command::new("ip")
        .args(["netns", "exec", server.ns.name(), "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("listener");
    let connect = format!(
        "import socket,time\nfor _ in range(50):\n  try:\n    socket.create_connection(('{addr}',7777),1);break\n  except OSError: time.sleep(0.1)"
    );
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", client.ns.name(), "python3", "-c", &connect])
        .status();
    let out = listener.wait_with_output().expect("listener output");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn vxlan_backend_tunnels_even_to_on_link_peers() {
    require_root();
    let ul = Underlay::new();
    let etcd = Etcd::start(&ul);
    let vx = json!({"backend": "vxlan", "vxlan": {"vni": 77, "port": 8472}});
    let mut a = SimNode::new(&ul, &etcd, SEGMENT_A, 10, "node-a", vx.clone());
    let mut b = SimNode::new(&ul, &etcd, SEGMENT_A, 11, "node-b", vx);
    a.start_agent();
    b.start_agent();
    let (pa, pb) = (Pod::new(), Pod::new());
    let _ = a.add(&pa);
    let rb = b.add(&pb);
    let (b4, b6) = blocks(&rb);
    wait_for("vxlan routes to node-b's blocks", &a, || {
        has_route(&a, &[&b4, "via inet6 fe80::", "dev ohno.vx"])
            && has_route(&a, &[&b6, "via fe80::", "dev ohno.vx"])
    });
    let info = &a.host().ip_json(&["-d", "link", "show", VX])[0]["linkinfo"]["info_data"];
    assert_eq!(info["id"], 77);
    assert_eq!(info["port"], 8472);
    // The IPv6 underlay has its own device (unused here: both share IPv4).
    let vx6 = a.host().ip_json(&["-d", "link", "show", "ohno.vx6"]);
    assert_eq!(
        vx6[0]["linkinfo"]["info_data"]["local6"],
        a.v6.as_str(),
        "{vx6:?}"
    );
    assert_eq!(vx6[0]["mtu"], 1430, "1500 − 70: {vx6:?}");
    assert!(a.fdb(VX).contains(&format!("dst {} self permanent", b.v4)));
    assert!(
        pings(&pa, &address(&rb, true)),
        "pod A → pod B over vxlan (v4)"
    );
    assert!(
        pings(&pa, &address(&rb, false)),
        "pod A → pod B over vxlan (v6)"
    );
}
