//! Many nodes, one etcd: four simulated nodes (separate `ohno` processes with
//! different `node`, sharing one host namespace and bridge) ADD 25 pods each,
//! all at once, against the 3-member mutual-TLS cluster. Every pod gets its
//! own address, the store holds exactly one address key and one attachment
//! key per pod, each address sits in a block its node has claimed, and DEL
//! leaves no allocation behind.

mod common;
mod etcd_support;

use common::{first_ipv4, Output, Pod};
use etcd_support::{bare, pods, value_json, EtcdNode, NETWORK, PREFIX};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];
const PODS_PER_NODE: usize = 25;

/// The config of simulated node `node` with one pool of /28 blocks (13 pod
/// addresses each): every node needs at least two blocks for its 25 pods, so
/// each node claims blocks while its own ADDs race.
fn race_conf(env: &EtcdNode, node: &str, subnet: &str) -> Value {
    let mut conf = env.conf(node);
    conf["ipam"]["pools"] = json!([{ "name": "default", "subnet": subnet, "blockSize": 28 }]);
    conf["ipam"]["routes"] = json!([]);
    // 100 plugin processes and three etcd members share two cores here: give
    // each request room, so that the test is about the race, not CPU starvation.
    conf["ipam"]["store"] = env.store(5000, 3);
    conf
}

/// One burst at a time per test binary: two bursts of 100 processes at once
/// would starve each other (and etcd) of CPU.
static BURST: Mutex<()> = Mutex::new(());

/// 100 pods, each in its own netns, spread over the four nodes.
fn four_nodes_of_pods() -> Vec<Pod> {
    let started = Instant::now();
    let pods = pods(NODES.len() * PODS_PER_NODE);
    eprintln!(
        "{} pod namespaces in {:.2} s",
        pods.len(),
        started.elapsed().as_secs_f64()
    );
    pods
}

fn assign(pods: &[Pod]) -> Vec<(&'static str, &Pod)> {
    pods.iter()
        .enumerate()
        .map(|(i, pod)| (NODES[i % NODES.len()], pod))
        .collect()
}

/// ADDs every (node, pod) at once, asserts they all succeeded with distinct
/// addresses; returns the results in `work` order.
fn add_all(env: &EtcdNode, work: &[(&'static str, &Pod)], subnet: &str) -> Vec<Output> {
    let started = Instant::now();
    let adds = {
        let _one_burst = BURST.lock().unwrap_or_else(|p| p.into_inner());
        burst(env, work, "ADD", |node, _| race_conf(env, node, subnet))
    };
    eprintln!(
        "{} concurrent ADDs in {:.2} s",
        adds.len(),
        started.elapsed().as_secs_f64()
    );
    assert_all_succeeded(env, "ADD", &adds);
    let mut distinct = BTreeSet::new();
    for out in &adds {
        let (addr, _, _) = first_ipv4(out.json());
        assert!(distinct.insert(addr), "{addr} handed out twice:\n{out}");
    }
    eprintln!(
        "blocks claimed per node (addresses in use): {:?}",
        block_usage(env)
    );
    adds
}

/// Runs `command` for every (node, pod) at once (a barrier releases them
/// together); returns the outputs in the same order.
fn burst(
    env: &EtcdNode,
    work: &[(&'static str, &Pod)],
    command: &str,
    conf_of: impl Fn(&str, &Pod) -> Value + Sync,
) -> Vec<Output> {
    let barrier = Barrier::new(work.len());
    thread::scope(|s| {
        let handles: Vec<_> = work
            .iter()
            .map(|(node, pod)| {
                let (barrier, conf_of) = (&barrier, &conf_of);
                s.spawn(move || {
                    let conf = conf_of(node, pod);
                    barrier.wait();
                    env.ohno(command, pod, &conf)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("{command} thread panicked"))
            })
            .collect()
    })
}

/// Which blocks each node holds and how many addresses each block has in use:
/// what to look at when a burst runs out of addresses.
fn block_usage(env: &EtcdNode) -> BTreeMap<String, BTreeMap<String, usize>> {
    let ips = env.section("ips");
    let mut usage: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (key, value) in env.section("blocks") {
        let block = key.rsplit('/').next().unwrap_or_default().to_owned();
        let node = value_json(&key, &value)["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let used = ips
            .keys()
            .filter(|k| k.starts_with(&format!("{PREFIX}/ips/default/{block}/")))
            .count();
        usage.entry(node).or_default().insert(block, used);
    }
    usage
}

fn assert_all_succeeded(env: &EtcdNode, command: &str, outs: &[Output]) {
    let failed: Vec<String> = outs
        .iter()
        .filter(|o| o.code != 0)
        .map(ToString::to_string)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} concurrent {command}s failed; blocks claimed per node (addresses in use): \
         {:?}\nthe first failures:\n{}",
        failed.len(),
        outs.len(),
        block_usage(env),
        failed
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

const ROOMY: &str = "10.86.0.0/16";
const TWICE_THE_NEED: &str = "10.87.0.0/24";

#[test]
fn concurrent_adds_from_four_nodes_get_distinct_addresses_in_blocks_their_node_claimed() {
    let env = EtcdNode::start();
    let pods = four_nodes_of_pods();
    let work = assign(&pods);
    let adds = add_all(&env, &work, ROOMY);
    let expected: BTreeMap<String, (&str, String)> = work
        .iter()
        .zip(&adds)
        .map(|((node, pod), out)| {
            let (addr, len, _) = first_ipv4(out.json());
            (pod.container_id.clone(), (*node, format!("{addr}/{len}")))
        })
        .collect();

    // What etcd holds.
    let ips = env.section("ips");
    let attachments = env.section("attachments");
    let blocks = env.section("blocks");
    let affinity = env.section("affinity");
    assert_eq!(ips.len(), 100, "address keys: {:#?}", ips.keys());
    assert_eq!(
        attachments.len(),
        100,
        "attachment keys: {:#?}",
        attachments.keys()
    );

    // Every attachment is one of ours, on the node that added it, listing the
    // address its ADD returned.
    let mut listed: Vec<(String, String, String, Value)> = Vec::new(); // (pool, block id, ip, attachment)
    for (key, value) in &attachments {
        let att = value_json(key, value);
        let rest = key
            .strip_prefix(&format!("{PREFIX}/attachments/{NETWORK}/"))
            .unwrap_or_else(|| panic!("unexpected attachment key {key}"));
        let (cid, ifname) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("unexpected attachment key {key}"));
        assert_eq!(ifname, "eth0", "{key}");
        let (node, address) = expected
            .get(cid)
            .unwrap_or_else(|| panic!("{key} is not one of the ADDed pods"));
        assert_eq!(att["node"], json!(node), "{key}: {att}");
        assert_eq!(att["containerId"], json!(cid), "{key}: {att}");
        let att_ips = att["ips"].as_array().cloned().unwrap_or_default();
        assert_eq!(att_ips.len(), 1, "{key}: {att}");
        assert_eq!(att_ips[0]["address"], json!(address), "{key}: {att}");
        for ip in &att_ips {
            listed.push((
                ip["pool"].as_str().unwrap_or_default().to_owned(),
                ip["block"].as_str().unwrap_or_default().replace('/', "-"),
                bare(ip["address"].as_str().unwrap_or_default()).to_owned(),
                att.clone(),
            ));
        }
    }

    // Every address key is listed by exactly one attachment, whose owner it
    // names, and lies in a block claimed by (and indexed under) that node.
    for (key, value) in &ips {
        let owner = value_json(key, value);
        let segments: Vec<&str> = key
            .strip_prefix(&format!("{PREFIX}/ips/"))
            .unwrap_or_else(|| panic!("unexpected address key {key}"))
            .split('/')
            .collect();
        let [pool, block, ip] = segments[..] else {
            panic!("unexpected address key {key}");
        };
        let holders: Vec<&Value> = listed
            .iter()
            .filter(|(p, b, a, _)| p == pool && b == block && a == ip)
            .map(|(_, _, _, att)| att)
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "{key} is listed by {} attachments: {holders:#?}",
            holders.len()
        );
        assert_eq!(owner["containerId"], holders[0]["containerId"], "{key}");
        assert_eq!(owner["node"], holders[0]["node"], "{key}");
        let node = owner["node"].as_str().unwrap_or_default();
        let block_key = format!("{PREFIX}/blocks/{pool}/{block}");
        let claim = blocks
            .get(&block_key)
            .map(|v| value_json(&block_key, v))
            .unwrap_or_else(|| panic!("{key}: its block {block_key} is not claimed"));
        assert_eq!(
            claim["node"], owner["node"],
            "{key} (owner {owner}) lies in {block_key}, claimed by {claim}"
        );
        let affinity_key = format!("{PREFIX}/affinity/{node}/{pool}/{block}");
        assert!(
            affinity.contains_key(&affinity_key),
            "{key}: no {affinity_key} in {:#?}",
            affinity.keys()
        );
    }

    let check = env.ohnoctl(&race_conf(&env, "node-a", ROOMY), "check", &[]);
    assert_eq!(check.code, 0, "{check}\nohnoctl ipam check found problems");

    // DEL, all at once, with the cached results as libcni sends them.
    let started = Instant::now();
    let dels = {
        let _one_burst = BURST.lock().unwrap_or_else(|p| p.into_inner());
        burst(&env, &work, "DEL", |node, pod| {
            let i = work
                .iter()
                .position(|(_, p)| p.container_id == pod.container_id)
                .unwrap_or_default();
            let mut conf = race_conf(&env, node, ROOMY);
            conf["prevResult"] = adds[i].json().clone();
            conf
        })
    };
    eprintln!(
        "{} concurrent DELs in {:.2} s",
        dels.len(),
        started.elapsed().as_secs_f64()
    );
    assert_all_succeeded(&env, "DEL", &dels);
    assert_eq!(env.section("ips"), BTreeMap::new(), "address keys left");
    assert_eq!(
        env.section("attachments"),
        BTreeMap::new(),
        "attachment keys left"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || env.node.host_veths().is_empty()),
        "host veths left: {:?}",
        env.node.host_veths()
    );
}

/// The same burst in a pool with room for twice the pods (16 blocks of 13
/// addresses for 100 pods, at least 8 blocks needed): a node claims a new block
/// only when its blocks are full, so the pool must not run out.
#[test]
fn concurrent_adds_do_not_exhaust_a_pool_with_room_for_twice_the_pods() {
    let env = EtcdNode::start();
    let pods = four_nodes_of_pods();
    let work = assign(&pods);
    add_all(&env, &work, TWICE_THE_NEED);
    assert_eq!(env.section("ips").len(), 100);
    assert_eq!(env.section("attachments").len(), 100);
    let check = env.ohnoctl(&race_conf(&env, "node-a", TWICE_THE_NEED), "check", &[]);
    assert_eq!(check.code, 0, "{check}\nohnoctl ipam check found problems");
}
