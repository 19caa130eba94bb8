//! The kubelet's path, end to end: CRI → containerd → Ohno.
//!
//! Each test starts Debian's containerd 1.6 with its CRI plugin and runc
//! inside its own throwaway host network namespace, with its own root,
//! state, socket, CNI bin and conf dirs (`cri_support`), and drives it with
//! `tests/cri-client` over the `runtime.v1` gRPC API the way the kubelet
//! does: `RunPodSandbox` (metadata, the kubelet's labels, annotations, log
//! directory, cgroup parent), `PodSandboxStatus`, `StopPodSandbox`,
//! `RemovePodSandbox`. containerd execs `ohno` through libcni from a
//! conflist that declares the `io.kubernetes.cri.pod-annotations`
//! capability, with the local store. The sandbox image is a pause image
//! built here from `busybox-static`, with no registry.
//!
//! Asserted as a user sees it: the sandbox's address (`PodSandboxStatus`)
//! lies in the pool and `ohnoctl ipam ls` shows it owned by the pod
//! (namespace, name, uid from `K8S_POD_*`); two pods ping each other;
//! `StopPodSandbox` releases the address and removes the host veth; a
//! sandbox re-created with the same name works; a pod annotation reaches a
//! policy and picks the pool; a denying policy fails `RunPodSandbox` with
//! Ohno's message in the CRI error and leaves nothing behind.
//!
//! Skipped, with a message, only when containerd, ctr, runc or busybox are
//! not installed (`scripts/setup.sh` installs them). Run just these with
//! `cargo test -p ohno --test cri_e2e` (as root, after `make policies`).

mod common;
mod cri_support;

use std::path::Path;

use common::{in_subnet, ohno_binary, policy_component, Node, REFERENCE_PLUGINS};
use cri_client::PodSandboxMetadata;
use cri_support::{Containerd, ContainerdConf, Sandbox};
use serde_json::{json, Value};

/// The capability containerd passes pod annotations through.
const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";

/// Skips the test, loudly, when the runtime is not installed.
macro_rules! require_cri {
    () => {
        common::require_root();
        if let Some(why) = cri_support::unavailable() {
            eprintln!("SKIPPED: the CRI end-to-end test needs containerd, ctr, runc and busybox-static: {why} (scripts/setup.sh installs them)");
            return;
        }
    };
}

/// A pod as the kubelet names it.
fn pod(namespace: &str, name: &str, attempt: u32) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: name.to_owned(),
        uid: format!("uid-{namespace}-{name}"),
        namespace: namespace.to_owned(),
        attempt,
    }
}

/// Ohno's conflist for containerd: the harness's plugin (pool "default"
/// 10.85.0.0/16, /26 blocks, local store in the node's directory) with the
/// pod-annotations capability, the lock directory in the node's directory,
/// and `edit` applied.
fn ohno_conflist(node: &Node, edit: impl FnOnce(&mut Value)) -> Value {
    let mut plugin = node.ohno_plugin();
    plugin["capabilities"] = json!({ POD_ANNOTATIONS: true });
    plugin["ipam"]["lockDir"] = json!(node.dir.path().join("lock"));
    edit(&mut plugin);
    json!({ "cniVersion": "1.0.0", "name": "podnet", "plugins": [plugin] })
}

/// containerd in `node`'s host namespace with `conflist`, `ohno` (and
/// `ohnod` beside it) and the `loopback` plugin containerd needs.
fn containerd(node: &Node, conflist: &Value) -> Containerd {
    let ohno = ohno_binary();
    let ohnod = ohno.with_file_name("ohnod");
    let plugins = [
        ("ohno", ohno),
        ("ohnod", ohnod),
        ("loopback", Path::new(REFERENCE_PLUGINS).join("loopback")),
    ];
    Containerd::start(&ContainerdConf {
        host_netns: node.host.path(),
        dir: &node.dir.path().join("cri"),
        conflist,
        plugins: &plugins,
    })
}

/// Runs a sandbox for `meta` and returns it once `PodSandboxStatus` says
/// it is ready.
fn run_ready(cri: &Containerd, meta: &PodSandboxMetadata, annotations: &[(&str, &str)]) -> Sandbox {
    let config = cri.sandbox_config(meta, annotations);
    let id = cri
        .run(config)
        .unwrap_or_else(|e| panic!("RunPodSandbox {}/{}: {e}", meta.namespace, meta.name));
    cri.ready_sandbox(&id)
}

/// The allocation `ohnoctl ipam ls -o json` lists for sandbox `id`.
fn allocation_of<'a>(allocations: &'a [Value], id: &str) -> Option<&'a Value> {
    allocations.iter().find(|a| a["containerId"] == id)
}

fn ipv4(s: &str) -> std::net::Ipv4Addr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an IPv4 address: {e}"))
}

#[test]
fn cri_pods_get_pool_addresses_reach_each_other_and_release_on_stop() {
    require_cri!();
    let node = Node::new();
    let list = ohno_conflist(&node, |_| {});
    let cri = containerd(&node, &list);

    let web = pod("shop", "web-0", 0);
    let db = pod("shop", "db-0", 0);
    let a = run_ready(&cri, &web, &[]);
    let b = run_ready(&cri, &db, &[]);

    // The addresses containerd reports are in the pool, and distinct.
    for s in [&a, &b] {
        assert!(
            in_subnet(ipv4(&s.ip), ipv4("10.85.0.0"), 16),
            "sandbox {} got {} outside 10.85.0.0/16",
            s.id,
            s.ip
        );
    }
    assert_ne!(a.ip, b.ip);

    // ohnoctl shows each address owned by its pod: K8S_POD_NAMESPACE,
    // K8S_POD_NAME and K8S_POD_UID arrived through containerd's CNI_ARGS.
    let allocations = node.allocations(&list);
    assert_eq!(allocations.len(), 2, "{allocations:#?}");
    for (s, meta) in [(&a, &web), (&b, &db)] {
        let att = allocation_of(&allocations, &s.id)
            .unwrap_or_else(|| panic!("no allocation for sandbox {}: {allocations:#?}", s.id));
        assert_eq!(att["podNamespace"], meta.namespace.as_str(), "{att}");
        assert_eq!(att["podName"], meta.name.as_str(), "{att}");
        assert_eq!(att["podUid"], meta.uid.as_str(), "{att}");
        assert_eq!(att["ifname"], "eth0", "{att}");
        let address = att["ips"][0]["address"].as_str().unwrap_or_default();
        assert!(
            address.starts_with(&format!("{}/", s.ip)),
            "ohnoctl lists {address} for sandbox {} at {}",
            s.id,
            s.ip
        );
    }

    // The pods reach each other across the node's bridge.
    assert!(a.ping(&b.ip), "web-0 cannot ping db-0 at {}", b.ip);
    assert!(b.ping(&a.ip), "db-0 cannot ping web-0 at {}", a.ip);
    assert_eq!(node.host_veths().len(), 2, "{:?}", node.host.link_names());

    // StopPodSandbox is the CNI DEL: the address is released at once, the
    // host veth goes (a detached reaper deletes it), the other pod stays.
    cri.stop(&a.id);
    let allocations = node.allocations(&list);
    assert!(
        allocation_of(&allocations, &a.id).is_none(),
        "web-0's address still allocated after StopPodSandbox: {allocations:#?}"
    );
    assert!(allocation_of(&allocations, &b.id).is_some());
    assert!(
        common::eventually(std::time::Duration::from_secs(10), || node
            .host_veths()
            .len()
            == 1),
        "web-0's host veth is still there: {:?}",
        node.host.link_names()
    );
    assert!(!cri.is_ready(&a.id), "a stopped sandbox reports ready");
    cri.remove(&a.id);

    // The same pod again (the kubelet's next attempt) works: address, owner, ping.
    let web_again = pod("shop", "web-0", 1);
    let c = run_ready(&cri, &web_again, &[]);
    assert_ne!(c.id, a.id);
    assert!(in_subnet(ipv4(&c.ip), ipv4("10.85.0.0"), 16), "{}", c.ip);
    let allocations = node.allocations(&list);
    let att = allocation_of(&allocations, &c.id)
        .unwrap_or_else(|| panic!("no allocation for {}: {allocations:#?}", c.id));
    assert_eq!(att["podName"], "web-0", "{att}");
    assert!(
        c.ping(&b.ip),
        "re-created web-0 cannot ping db-0 at {}",
        b.ip
    );

    // Everything stopped: no allocation, no host veth.
    for id in [&b.id, &c.id] {
        cri.stop(id);
        cri.remove(id);
    }
    assert_eq!(node.allocations(&list), Vec::<Value>::new());
    assert!(
        node.host_veths_eventually_gone(),
        "host veths left: {:?}",
        node.host.link_names()
    );
}

#[test]
fn cri_pod_annotation_reaches_the_policy_and_picks_the_pool() {
    require_cri!();
    let node = Node::new();
    let list = ohno_conflist(&node, |p| {
        p["ipam"]["pools"] = json!([
            {"name": "default", "subnet": "10.85.0.0/16", "blockSize": 26},
            {"name": "fast", "subnet": "10.90.0.0/16", "blockSize": 26}
        ]);
        p["policy"] = json!({
            "path": policy_component("annotation_pool"),
            "config": {"annotation": "ohno.example/pool"},
            "cacheDir": node.dir.path().join("policy-cache"),
            "persistMs": 0
        });
    });
    let cri = containerd(&node, &list);

    let fast = run_ready(
        &cri,
        &pod("shop", "cache-0", 0),
        &[("ohno.example/pool", "fast")],
    );
    let plain = run_ready(&cri, &pod("shop", "web-0", 0), &[]);
    assert!(
        in_subnet(ipv4(&fast.ip), ipv4("10.90.0.0"), 16),
        "the annotated pod got {} outside the pool \"fast\" 10.90.0.0/16",
        fast.ip
    );
    assert!(
        in_subnet(ipv4(&plain.ip), ipv4("10.85.0.0"), 16),
        "the pod without the annotation got {} outside \"default\"",
        plain.ip
    );
    let allocations = node.allocations(&list);
    let pool_of = |id: &str| allocation_of(&allocations, id).map(|a| a["ips"][0]["pool"].clone());
    assert_eq!(pool_of(&fast.id), Some(json!("fast")), "{allocations:#?}");
    assert_eq!(
        pool_of(&plain.id),
        Some(json!("default")),
        "{allocations:#?}"
    );
    assert!(
        fast.ping(&plain.ip),
        "pods in two pools cannot reach each other"
    );
}

#[test]
fn cri_denying_policy_fails_run_pod_sandbox_with_ohnos_message() {
    require_cri!();
    let node = Node::new();
    let list = ohno_conflist(&node, |p| {
        p["policy"] = json!({
            "path": policy_component("namespace_pools"),
            "config": {"rules": [{"namespaces": ["shop"], "pool": "default"}], "denyUnknown": true},
            "cacheDir": node.dir.path().join("policy-cache"),
            "persistMs": 0
        });
    });
    let cri = containerd(&node, &list);

    // A mapped namespace gets its pool: the policy itself works.
    let ok = run_ready(&cri, &pod("shop", "web-0", 0), &[]);
    assert!(in_subnet(ipv4(&ok.ip), ipv4("10.85.0.0"), 16), "{}", ok.ip);

    // An unmapped one is refused, and the kubelet sees why.
    let config = cri.sandbox_config(&pod("attic", "old-0", 0), &[]);
    let err = match cri.run(config) {
        Ok(id) => panic!("RunPodSandbox in an unmapped namespace succeeded: sandbox {id}"),
        Err(e) => e,
    };
    let status = err
        .status()
        .unwrap_or_else(|| panic!("RunPodSandbox failed without a CRI status: {err}"));
    let message = status.message();
    // containerd wraps the plugin's CNI error: `failed to setup network for
    // sandbox "<id>": plugin type="ohno" failed (add): <msg>; <details>`.
    for part in [
        "plugin type=\"ohno\" failed (add)",
        "namespace_pools.wasm denied the request",
        "namespace attic is not mapped to a pool",
    ] {
        assert!(
            message.contains(part),
            "the CRI error lacks {part:?}: {status:?}"
        );
    }

    // Nothing of the refused pod is left: one allocation (the mapped pod's),
    // one host veth.
    let allocations = node.allocations(&list);
    assert_eq!(allocations.len(), 1, "{allocations:#?}");
    assert_eq!(allocations[0]["containerId"], ok.id.as_str());
    assert!(
        common::eventually(std::time::Duration::from_secs(10), || node
            .host_veths()
            .len()
            == 1),
        "host veths: {:?}",
        node.host.link_names()
    );
}
