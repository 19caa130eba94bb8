//! DEL unplugs only the veth its attachment's ADD made, and a `CNI_NETNS` that
//! is not a network namespace fails at once instead of hanging. Whatever else
//! is called `CNI_IFNAME` in the pod (a link of another kind, someone else's
//! veth) is left as it is, and DEL still releases the addresses and succeeds,
//! as CNI wants of a DEL.

mod common;

use common::{eventually, run_plugin, Invocation, Node, Pod};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A refusal must not look like a hang.
const PROMPT: Duration = Duration::from_secs(5);

/// The container ids with an allocation, as `ohnoctl ipam ls` lists them.
fn allocated(node: &Node, conf: &Value) -> Vec<String> {
    node.allocations(conf)
        .iter()
        .filter_map(|a| a["containerId"].as_str().map(str::to_owned))
        .collect()
}

/// DEL released `pod`'s addresses, whatever it did with its links.
fn assert_released(node: &Node, conf: &Value, pod: &Pod, context: &str) {
    assert!(
        !allocated(node, conf).contains(&pod.container_id),
        "DEL did not release the addresses: {context}"
    );
}

/// `eth0` in `pod`: (ifindex, kind).
fn eth0(pod: &Pod) -> Option<(u64, String)> {
    let link = pod.ns.link("eth0")?;
    Some((
        link["ifindex"].as_u64().unwrap_or_default(),
        link["linkinfo"]["info_kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}

#[test]
fn del_leaves_an_eth0_it_did_not_make_alone_and_still_releases_the_addresses() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    // Each replaces the pod's eth0 after ADD: nothing of them is the attachment's.
    let foreign: [(&str, &[&[&str]]); 3] = [
        // A bridge: test kernels may lack the dummy driver.
        (
            "a link of another kind",
            &[&["ip", "link", "add", "eth0", "type", "bridge"]],
        ),
        (
            "a veth whose peer is in the pod too",
            &[&[
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "fpeer",
            ]],
        ),
        ("a veth whose peer is on the host under another alias", &[]),
    ];
    for (what, make) in foreign {
        let pod = Pod::new();
        let result = node.add(&pod, &conf);
        pod.ns.exec_ok(&["ip", "link", "del", "eth0"]);
        for argv in make {
            pod.ns.exec_ok(argv);
        }
        if make.is_empty() {
            // Made on the host, its pod end moved in; its host end has no alias.
            node.host.exec_ok(&[
                "ip",
                "link",
                "add",
                "fhost0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.ns.name(),
            ]);
        }
        let before = eth0(&pod).expect("the foreign eth0");
        assert!(allocated(&node, &conf).contains(&pod.container_id));

        let out = node.ohno("DEL", &pod, &node.with_prev_result(&conf, &result));
        out.success();
        // No reaper may come for it either.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(eth0(&pod), Some(before), "{what}: DEL touched it\n{out}");
        if make.is_empty() {
            assert!(node.host.link("fhost0").is_some(), "{what}: host end gone");
            node.host.exec_ok(&["ip", "link", "del", "fhost0"]);
        }
        assert_released(&node, &conf, &pod, &format!("{what}: {out}"));
    }
}

#[test]
fn del_still_unplugs_the_veth_its_add_made() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    let pod = Pod::new();
    let result = node.add(&pod, &conf);
    assert!(eth0(&pod).is_some_and(|(_, kind)| kind == "veth"));
    node.ohno("DEL", &pod, &node.with_prev_result(&conf, &result))
        .success();
    assert!(eth0(&pod).is_none(), "eth0 still in the pod");
    assert!(node.host_veths_eventually_gone(), "{:?}", node.host_veths());
}

/// An ADD killed between creating the pair and setting its alias (the kernel
/// takes no alias at creation) leaves a pair whose host end has no alias but
/// the name the built-in rule gives this attachment: DEL unplugs it. The same
/// pair under another attachment's default name is left alone.
#[test]
fn del_unplugs_a_pair_whose_add_was_killed_before_it_set_the_alias() {
    let node = Node::new();
    let conf = node.ohno_conf("1.1.0");
    for (whose, expect_gone) in [("ours", true), ("another attachment's", false)] {
        let pod = Pod::new();
        let result = node.add(&pod, &conf);
        pod.ns.exec_ok(&["ip", "link", "del", "eth0"]);
        assert!(node.host_veths_eventually_gone(), "{:?}", node.host_veths());
        let cid = if expect_gone {
            pod.container_id.clone()
        } else {
            format!("{}-other", pod.container_id)
        };
        let host_name = ohno::policy::default_host_ifname(&cid, "eth0", 0);
        node.host.exec_ok(&[
            "ip",
            "link",
            "add",
            &host_name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.ns.name(),
        ]);
        let out = node.ohno("DEL", &pod, &node.with_prev_result(&conf, &result));
        out.success();
        if expect_gone {
            assert!(
                eth0(&pod).is_none(),
                "{whose}: eth0 still in the pod\n{out}"
            );
            assert!(
                eventually(Duration::from_secs(10), || node
                    .host
                    .link(&host_name)
                    .is_none()),
                "{whose}: host end {host_name} left"
            );
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert!(eth0(&pod).is_some(), "{whose}: DEL touched it\n{out}");
            assert!(
                node.host.link(&host_name).is_some(),
                "{whose}: host end gone"
            );
            node.host.exec_ok(&["ip", "link", "del", &host_name]);
        }
        assert_released(&node, &conf, &pod, &format!("{whose}: {out}"));
    }
}

#[test]
fn a_netns_path_that_is_a_fifo_fails_add_at_once_and_del_does_not_hang() {
    let node = Node::new();
    let pod = Pod::new();
    let fifo = node.dir.path().join("not-a-netns");
    common::run_ok("mkfifo", &[&fifo.to_string_lossy()]);
    let conf = node.ohno_conf("1.1.0").to_string();
    let links_before = node.host.link_names();

    let mut inv = Invocation::ohno("ADD", &pod);
    inv.netns = fifo.to_string_lossy().into_owned();
    let started = Instant::now();
    let out = run_plugin(&node.host, &inv, &conf);
    let took = started.elapsed();
    let msg = out.error_with_code(4);
    assert!(took < PROMPT, "{out}\nrefused only after {took:?}");
    assert!(msg.contains("CNI_NETNS"), "{out}");
    let details = out.json()["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("not a network namespace") && details.contains("not-a-netns"),
        "{out}"
    );
    assert_eq!(node.host.link_names(), links_before, "{out}\nlinks changed");

    inv.command = Some("DEL".into());
    let started = Instant::now();
    let out = run_plugin(&node.host, &inv, &conf);
    let took = started.elapsed();
    out.success();
    assert!(took < PROMPT, "{out}\nDEL took {took:?}");
}
