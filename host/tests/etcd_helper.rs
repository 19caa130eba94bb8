//! The etcd connection helper, through the real binary against the 3-member TLS
//! cluster: the first call starts it, later calls go through it, a helper
//! killed under the plugin's feet costs nothing but the speed-up, and an idle
//! helper leaves on its own with its socket.

mod common;
mod etcd_support;

use common::{eventually, first_ipv4, Pod};
use etcd_support::EtcdNode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `persistMs` in these tests.
const PERSIST: Duration = Duration::from_millis(1500);

/// The helper's socket in `dir`, if there is one.
fn socket(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("etcd-") && n.ends_with(".sock"))
        })
}

/// The PID the helper wrote into its lock file, while that process is alive
/// and is a helper.
fn helper_pid(dir: &Path) -> Option<i32> {
    let lock = socket(dir)?.with_extension("lock");
    let pid: i32 = std::fs::read_to_string(lock).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline.starts_with(b"ohno-etcd-helper\0").then_some(pid)
}

fn attached(env: &EtcdNode, pod: &Pod) -> bool {
    env.section("attachments")
        .keys()
        .any(|k| k.contains(&pod.container_id))
}

#[test]
fn the_first_call_starts_a_helper_that_carries_later_calls_and_leaves_when_idle() {
    let env = EtcdNode::start();
    let lock_dir = env.node.dir.path().join("locks");
    let mut conf: Value = env.conf("node-a");
    conf["ipam"]["lockDir"] = json!(lock_dir);
    conf["ipam"]["store"]["persistMs"] = json!(PERSIST.as_millis() as u64);
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let mut addresses = BTreeSet::new();

    // No helper yet: the first ADD talks to etcd itself and starts one.
    let first = env.ohno("ADD", &pods[0], &conf);
    addresses.insert(first_ipv4(first.success().json()).0);
    assert!(
        eventually(Duration::from_secs(5), || helper_pid(&lock_dir).is_some()),
        "no helper after the first ADD; {:?} holds {:?}",
        lock_dir,
        std::fs::read_dir(&lock_dir).map(|d| d.count())
    );
    let pid = helper_pid(&lock_dir).expect("helper");
    let sock = socket(&lock_dir).expect("socket");
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
        eventually(Duration::from_secs(5), || helper_pid(&lock_dir)
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
    let last = helper_pid(&lock_dir).expect("helper");
    assert!(
        eventually(PERSIST + Duration::from_secs(3), || {
            !Path::new(&format!("/proc/{last}")).exists() && socket(&lock_dir).is_none()
        }),
        "the helper {last} outlived persistMs"
    );
}

#[test]
fn persist_ms_zero_starts_no_helper() {
    let env = EtcdNode::start();
    let lock_dir = env.node.dir.path().join("locks");
    let mut conf: Value = env.conf("node-a");
    conf["ipam"]["lockDir"] = json!(lock_dir);
    conf["ipam"]["store"]["persistMs"] = json!(0);
    let pods: Vec<Pod> = (0..2).map(|_| Pod::new()).collect();
    for pod in &pods {
        env.ohno("ADD", pod, &conf).success();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(socket(&lock_dir), None, "persistMs 0 started a helper");
    for pod in &pods {
        env.ohno("DEL", pod, &conf).success();
    }
    assert!(env.section("attachments").is_empty());
}
