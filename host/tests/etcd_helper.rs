//! The etcd connection helper, through the real binary against the 3-member TLS
//! cluster: the first call starts it, later calls go through it, a helper
//! killed under the plugin's feet costs nothing but the speed-up, and an idle
//! helper leaves on its own with its socket.

mod common;
mod etcd_support;

use common::{eventually, first_ipv4, helper_pid, helper_socket, Pod};
use etcd_support::EtcdNode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `persistMs` in these tests.
const PERSIST: Duration = Duration::from_millis(1500);

/// `env`'s config for node-a with the node's own lock directory (where the
/// helper's socket goes) and `persistMs` `persist`.
fn conf_with(env: &EtcdNode, persist: u64) -> (Value, PathBuf) {
    let lock_dir = env.node.dir.path().join("locks");
    let mut conf: Value = env.conf("node-a");
    conf["ipam"]["lockDir"] = json!(lock_dir);
    conf["ipam"]["store"]["persistMs"] = json!(persist);
    (conf, lock_dir)
}

fn attached(env: &EtcdNode, pod: &Pod) -> bool {
    env.section("attachments")
        .keys()
        .any(|k| k.contains(&pod.container_id))
}

#[test]
fn the_first_call_starts_a_helper_that_carries_later_calls_and_leaves_when_idle() {
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, PERSIST.as_millis() as u64);
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let mut addresses = BTreeSet::new();

    // No helper yet: the first ADD talks to etcd itself and starts one.
    let first = env.ohno("ADD", &pods[0], &conf);
    addresses.insert(first_ipv4(first.success().json()).0);
    assert!(
        eventually(Duration::from_secs(5), || helper_pid(&lock_dir, "etcd")
            .is_some()),
        "no helper after the first ADD; {:?} holds {:?}",
        lock_dir,
        std::fs::read_dir(&lock_dir).map(|d| d.count())
    );
    let pid = helper_pid(&lock_dir, "etcd").expect("helper");
    let sock = helper_socket(&lock_dir, "etcd").expect("socket");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock)
            .expect("socket metadata")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the helper's socket is root's alone");

    // The second ADD goes through it, and its keys are in etcd.
    let second = env.ohno("ADD", &pods[1], &conf);
    addresses.insert(first_ipv4(second.success().json()).0);
    assert!(
        env.node.log().contains("etcd: through the helper at"),
        "the second ADD did not use the helper:\n{}",
        env.node.log()
    );
    assert!(attached(&env, &pods[1]), "{second}");

    // The helper dies (SIGKILL, by the PID it recorded; our ADD started it):
    // the next ADD still works, and a new helper takes over.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the helper");
    assert!(eventually(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
    let third = env.ohno("ADD", &pods[2], &conf);
    addresses.insert(first_ipv4(third.success().json()).0);
    assert!(attached(&env, &pods[2]), "{third}");
    assert_eq!(addresses.len(), 3, "an address was handed out twice");
    assert!(
        eventually(Duration::from_secs(5), || helper_pid(&lock_dir, "etcd")
            .is_some_and(|p| p != pid)),
        "no new helper after the old one was killed"
    );

    // DEL through the helper (or without it): nothing is left in etcd.
    for pod in &pods {
        env.ohno("DEL", pod, &conf).success();
    }
    assert!(env.section("attachments").is_empty());
    assert!(env.section("ips").is_empty());

    // Idle for persistMs: the helper goes, and its socket with it.
    let last = helper_pid(&lock_dir, "etcd").expect("helper");
    assert!(
        eventually(PERSIST + Duration::from_secs(3), || {
            !Path::new(&format!("/proc/{last}")).exists()
                && helper_socket(&lock_dir, "etcd").is_none()
        }),
        "the helper {last} outlived persistMs"
    );
}

#[test]
fn persist_ms_zero_starts_no_helper() {
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 0);
    let pods: Vec<Pod> = (0..2).map(|_| Pod::new()).collect();
    for pod in &pods {
        env.ohno("ADD", pod, &conf).success();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        helper_socket(&lock_dir, "etcd"),
        None,
        "persistMs 0 started a helper"
    );
    for pod in &pods {
        env.ohno("DEL", pod, &conf).success();
    }
    assert!(env.section("attachments").is_empty());
}
