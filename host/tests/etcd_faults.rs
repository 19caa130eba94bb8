//! Ohno against an etcd cluster that loses members, and plugin processes that
//! are killed mid-ADD: ADDs ride out one member down, fail fast with "try
//! again later" (11) and change nothing without quorum, work again once the
//! members are back; and what SIGKILLed ADDs leave is cleaned up by DEL and
//! GC, with `ohnoctl ipam check` agreeing.

mod common;
mod etcd_support;

use common::{eventually, first_ipv4, Output, Pod};
use etcd_support::{pods, spawn_plugin, EtcdNode, Rng};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// `timeoutMs` × `retries` of `EtcdNode::conf`.
const STORE_BUDGET: Duration = Duration::from_millis(1000 * 3);
/// Process start, back-off between attempts, a loaded machine.
const MARGIN: Duration = Duration::from_millis(1500);

fn assert_ok(out: &Output) -> &Value {
    out.success().json()
}

/// Links of kind veth in `env`'s host namespace (whatever their names).
fn host_veths(env: &EtcdNode) -> Vec<String> {
    env.host()
        .links()
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "veth")
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn adds_ride_out_a_member_down_fail_fast_without_quorum_and_recover() {
    let mut env = EtcdNode::start();
    let conf = env.conf("node-a");
    let burst_pods = pods(20);
    let no_quorum_pod = Pod::new();
    let recovery_pod = Pod::new();

    // (a) 20 ADDs, started 250 ms apart; the leader stops (a graceful stop
    // hands leadership over first, ~1-3 s) while they run.
    let first = env.cluster.leader(&[1, 2, 3]);
    let barrier = Barrier::new(burst_pods.len() + 1);
    let (adds, stopped_at) = thread::scope(|s| {
        let handles: Vec<_> = burst_pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (env, conf, barrier) = (&env, &conf, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    thread::sleep(Duration::from_millis(250 * i as u64));
                    (Instant::now(), env.ohno("ADD", pod, conf))
                })
            })
            .collect();
        barrier.wait();
        thread::sleep(Duration::from_millis(300));
        let stopping = Instant::now();
        env.cluster.stop_member(first);
        let stopped = Instant::now();
        let adds: Vec<(Instant, Output)> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panic!("ADD thread panicked")))
            .collect();
        (adds, (stopping, stopped))
    });
    let (stopping, stopped) = stopped_at;
    let before = adds.iter().filter(|(t, _)| *t < stopping).count();
    let after = adds.iter().filter(|(t, _)| *t >= stopped).count();
    eprintln!(
        "leader (member {first}) stopped in {:.2} s; ADDs started before the stop: {before}, \
         during: {}, after: {after}",
        (stopped - stopping).as_secs_f64(),
        adds.len() - before - after
    );
    assert!(
        after >= 2,
        "the burst should outlast the stop; only {after} ADDs started after it"
    );
    let mut addresses = BTreeSet::new();
    for (_, out) in &adds {
        let (addr, _, _) = first_ipv4(assert_ok(out));
        assert!(addresses.insert(addr), "{addr} handed out twice:\n{out}");
    }

    // (b) A second member down: no quorum. ADD fails with 11 within the
    // store's budget and leaves no key, no link and no pod interface.
    let alive: Vec<usize> = (1..=3).filter(|n| *n != first).collect();
    let (second, last) = (alive[0], alive[1]);
    let keys_before = env.cluster.keys("");
    let veths_before = host_veths(&env);
    // STATUS: an ADD could succeed with two of three members…
    let mut status = conf.clone();
    status["cniVersion"] = json!("1.1.0");
    env.ohno("STATUS", &no_quorum_pod, &status).success();
    env.cluster.stop_member(second);
    // …and cannot without quorum: 50.
    let started = Instant::now();
    env.ohno("STATUS", &no_quorum_pod, &status)
        .error_with_code(50);
    assert!(
        started.elapsed() < STORE_BUDGET + MARGIN,
        "STATUS without quorum took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let out = env.ohno("ADD", &no_quorum_pod, &conf);
    let took = started.elapsed();
    out.error_with_code(11);
    assert!(
        took < STORE_BUDGET + MARGIN,
        "{out}\nADD without quorum took {took:?}, more than timeoutMs × retries ({STORE_BUDGET:?}) + {MARGIN:?}"
    );
    eprintln!("ADD without quorum failed with 11 in {took:?}");
    assert_eq!(
        env.cluster.keys_on_member(last, ""),
        keys_before,
        "{out}\nthe failed ADD changed the surviving member's keys"
    );
    assert_eq!(host_veths(&env), veths_before, "{out}\nhost veths changed");
    assert!(
        no_quorum_pod.ns.link("eth0").is_none(),
        "{out}\nthe failed ADD left eth0 in the pod"
    );

    // (c) Both members back: nothing was committed while quorum was lost, and
    // ADD works again.
    env.cluster.start_member(first);
    env.cluster.start_member(second);
    assert_eq!(
        env.cluster.keys(""),
        keys_before,
        "keys changed while the cluster had no quorum"
    );
    env.ohno("STATUS", &recovery_pod, &status).success();
    let recovered = env.ohno("ADD", &recovery_pod, &conf);
    let (addr, _, _) = first_ipv4(assert_ok(&recovered));
    assert!(addresses.insert(addr), "{addr} handed out twice");

    // Everything DELs cleanly and the store agrees.
    let mut all: Vec<(&Pod, Value)> = burst_pods
        .iter()
        .zip(adds.iter().map(|(_, o)| o.json().clone()))
        .collect();
    all.push((&recovery_pod, recovered.json().clone()));
    for (pod, result) in &all {
        let mut del = conf.clone();
        del["prevResult"] = result.clone();
        env.ohno("DEL", pod, &del).success();
    }
    env.ohno("DEL", &no_quorum_pod, &conf).success();
    let check = env.ohnoctl(&conf, "check", &[]);
    assert_eq!(check.code, 0, "{check}");
    assert!(env.section("ips").is_empty(), "{:?}", env.section("ips"));
    assert!(
        env.section("attachments").is_empty(),
        "{:?}",
        env.section("attachments")
    );
}

#[test]
fn adds_killed_midway_leave_nothing_after_del_and_gc() {
    let env = EtcdNode::start();
    let conf = env.conf("node-a");
    let pods = pods(10);
    let mut rng = Rng::from_env_or_clock();

    // How long one whole ADD takes here (it also claims the node's block, so
    // the killed ADDs below go straight to allocating).
    let calibration = Pod::new();
    let started = Instant::now();
    let calibrated = env.ohno("ADD", &calibration, &conf);
    let whole_add = started.elapsed();
    calibrated.success();
    env.ohno("DEL", &calibration, &conf).success();

    // One ADD at a time, each SIGKILLed after a delay drawn from its own
    // tenth of [0, max(40 ms, one whole ADD)): the kills land all along the
    // ADD, from before it reads its config to after it has written the store.
    let span = whole_add.as_millis().max(40) as u64;
    let mut delays = Vec::new();
    let mut finished_before_kill = 0;
    for (i, pod) in pods.iter().enumerate() {
        let delay = (span * i as u64 + rng.below(span)) / pods.len() as u64;
        let mut child = spawn_plugin(env.host(), "ADD", pod, &conf);
        thread::sleep(Duration::from_millis(delay));
        if matches!(child.try_wait(), Ok(Some(_))) {
            finished_before_kill += 1;
        }
        // Our own child, by its PID; a no-op if it has already exited.
        let _ = child.kill();
        let _ = child.wait();
        delays.push(delay);
    }
    eprintln!(
        "one whole ADD: {whole_add:?}; kill delays {delays:?} ms; \
         {finished_before_kill} of {} ADDs finished before their SIGKILL",
        pods.len()
    );
    eprintln!(
        "left behind by the killed ADDs: {} attachment keys, {} address keys, host veths {:?}, \
         pods with eth0: {}",
        env.section("attachments").len(),
        env.section("ips").len(),
        host_veths(&env),
        pods.iter().filter(|p| p.ns.link("eth0").is_some()).count()
    );

    // The runtime cleans up: DEL for each container, then GC with no valid
    // attachments.
    for pod in &pods {
        env.ohno("DEL", pod, &conf).success();
    }
    env.gc(&conf, &[]).success();

    let check = env.ohnoctl(&conf, "check", &[]);
    assert_eq!(check.code, 0, "{check}");
    let attachments = env.section("attachments");
    assert!(
        attachments.is_empty(),
        "attachment keys left: {attachments:?}"
    );
    let ips = env.section("ips");
    assert!(ips.is_empty(), "address keys left: {ips:?}");
    assert!(
        eventually(Duration::from_secs(5), || host_veths(&env).is_empty()),
        "veths left in the host netns: {:?}",
        host_veths(&env)
    );
    for pod in &pods {
        assert!(pod.ns.link("eth0").is_none(), "eth0 left in {:?}", pod.ns);
    }
}
