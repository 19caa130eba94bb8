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
    kill_helper(pid);
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

/// The PID of the etcd helper in `lock_dir`, once one runs (within 5 s).
fn wait_for_helper(lock_dir: &Path) -> i32 {
    assert!(
        eventually(Duration::from_secs(5), || helper_pid(lock_dir, "etcd")
            .is_some()),
        "no etcd helper in {lock_dir:?}"
    );
    helper_pid(lock_dir, "etcd").expect("helper")
}

/// SIGKILL the helper `pid` (ours: our ADD started it, and its lock names
/// it) and wait until it is gone.
fn kill_helper(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the helper");
    assert!(eventually(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
}

/// Only `ohno --helper etcd` is a helper: the plugin run with a helper's
/// environment (a stray or forged `OHNO_STORE_HELPER`) is still the plugin.
#[test]
fn the_helper_role_is_an_argument_not_an_environment_variable() {
    use std::io::Write as _;
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 10_000);
    let pod = Pod::new();
    env.ohno("ADD", &pod, &conf).success();
    let pid = wait_for_helper(&lock_dir);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert_eq!(&args[1..3], [&b"--helper"[..], b"etcd"], "{cmdline:?}");
    // The document the helper was started with, from its environment.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let doc = environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"OHNO_STORE_HELPER="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("the helper's document");

    let mut child = std::process::Command::new(common::ohno_binary())
        .env_clear()
        .env("OHNO_STORE_HELPER", &doc)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ohno");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"cniVersion":"1.1.0"}"#)
        .expect("write stdin");
    let out = child.wait_with_output().expect("ohno exits");
    assert!(out.status.success(), "{out:?}");
    let version: Value = serde_json::from_slice(&out.stdout).expect("VERSION's answer");
    assert!(version["supportedVersions"].is_array(), "{version}");
    assert_eq!(helper_pid(&lock_dir, "etcd"), Some(pid), "one helper still");
    env.ohno("DEL", &pod, &conf).success();
}

/// Stand in for the helper at `sock` (a killed helper's path): answer every
/// request with `reply` (raw bytes, framing included) until `stop`.
fn fake_helper(sock: &Path, reply: Vec<u8>) -> std::thread::JoinHandle<()> {
    use std::io::{Read as _, Write as _};
    let _ = std::fs::remove_file(sock);
    let listener = std::os::unix::net::UnixListener::bind(sock).expect("bind the fake helper");
    std::thread::spawn(move || {
        // One connection: the ADD's.
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut len = [0u8; 4];
        while s.read_exact(&mut len).is_ok() {
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            if s.read_exact(&mut body).is_err() || s.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

fn frame(json: &str) -> Vec<u8> {
    let mut v = (json.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v
}

/// Kill the helper the first ADD started; its socket path stays for a fake.
fn killed_helper(env: &EtcdNode, conf: &Value, lock_dir: &Path) -> PathBuf {
    let pod = Pod::new();
    env.ohno("ADD", &pod, conf).success();
    let pid = wait_for_helper(lock_dir);
    // DEL while the helper runs: a call that finds no helper would start one.
    env.ohno("DEL", &pod, conf).success();
    let sock = helper_socket(lock_dir, "etcd").expect("socket");
    kill_helper(pid);
    sock
}

/// A helper that answers with the wrong shape (no answer for the reads it was
/// asked, a reply of another kind) fails the call with code 105 and a message
/// — never a panic; one that announces a frame past the limit is a broken
/// helper: the call completes in-process.
#[test]
fn a_helper_answering_the_wrong_shape_is_a_store_error_never_a_panic() {
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 60_000);
    let sock = killed_helper(&env, &conf, &lock_dir);

    for wrong in [
        r#"{"Reads":[]}"#,
        r#"{"TxnOrRead":[[]]}"#,
        r#"{"Range":[]}"#,
    ] {
        let fake = fake_helper(&sock, frame(wrong));
        let pod = Pod::new();
        let out = env.ohno("ADD", &pod, &conf);
        let msg = out.error_with_code(105);
        assert!(!out.stderr.contains("panicked"), "{out}");
        let details = out.json()["details"].as_str().unwrap_or_default();
        assert!(details.contains("the etcd helper answered"), "{out}\n{msg}");
        assert!(details.len() < 1000, "{out}");
        assert!(pod.ns.link("eth0").is_none(), "{out}");
        drop(out);
        let _ = fake.join();
        assert!(!attached(&env, &pod));
    }

    // A header claiming 4 GiB: the connection is dropped, the ADD is done here.
    let fake = fake_helper(&sock, u32::MAX.to_le_bytes().to_vec());
    let pod = Pod::new();
    let out = env.ohno("ADD", &pod, &conf);
    out.success();
    assert!(attached(&env, &pod), "{out}");
    let _ = fake.join();
    env.ohno("DEL", &pod, &conf).success();
}

/// The helper serves at most a bounded number of connections at once: with
/// that many held open and silent, an ADD is turned away at once and done
/// in-process; and headers announcing huge frames cost the helper memory only
/// for the bytes that arrive.
#[test]
fn a_flood_of_silent_connections_neither_stalls_adds_nor_grows_the_helper() {
    use std::io::Write as _;
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 60_000);
    let first = Pod::new();
    env.ohno("ADD", &first, &conf).success();
    let pid = wait_for_helper(&lock_dir);
    let sock = helper_socket(&lock_dir, "etcd").expect("socket");
    let vm_data = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmData:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmData")
    };
    let before = vm_data();
    let mut held = Vec::new();
    for _ in 0..100 {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) else {
            break;
        };
        // A header for a 64 MiB body that never comes.
        let _ = s.write_all(&(64u32 << 20).to_le_bytes());
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown_kb = vm_data().saturating_sub(before);
    assert!(
        grown_kb < 256 * 1024,
        "the helper grew by {grown_kb} kB for headers alone"
    );
    let pod = Pod::new();
    let started = std::time::Instant::now();
    env.ohno("ADD", &pod, &conf).success();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ADD took {:?} behind a flood of connections",
        started.elapsed()
    );
    assert!(attached(&env, &pod));
    drop(held);
    for p in [&first, &pod] {
        env.ohno("DEL", p, &conf).success();
    }
    assert!(env.section("attachments").is_empty());
}

/// One request on the helper's socket, framed as the plugin frames it; the
/// reply's JSON.
fn ask_helper(sock: &Path, request: &str) -> Value {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to the helper");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.write_all(&frame(request)).expect("send the request");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("the reply's length");
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).expect("the reply");
    serde_json::from_slice(&body).expect("the reply is JSON")
}

/// The helper runs requests with its own client certificate for callers of
/// one configuration: keys outside that configuration's prefix are refused,
/// whoever reaches its socket.
#[test]
fn the_helper_refuses_keys_outside_its_prefix() {
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 60_000);
    let pod = Pod::new();
    env.ohno("ADD", &pod, &conf).success();
    assert!(eventually(Duration::from_secs(5), || helper_pid(
        &lock_dir, "etcd"
    )
    .is_some()));
    let sock = helper_socket(&lock_dir, "etcd").expect("socket");
    let out = env.cluster.etcdctl(
        &env.cluster.endpoints(),
        &["put", "/other/secret", "s3cret"],
    );
    assert_eq!(out.code, 0, "{out}");

    // Inside the prefix: served.
    let pool = ask_helper(&sock, r#"{"Get":"/ohno/pools/default"}"#);
    assert!(pool["Get"]["key"] == "/ohno/pools/default", "{pool}");
    // Outside it, or a range reaching past it: refused, naming the key.
    for (request, key) in [
        (r#"{"Get":"/other/secret"}"#, "/other/secret"),
        (r#"{"Range":["",false]}"#, ""),
        (r#"{"Range":["/ohno",false]}"#, "/ohno"),
        (
            r#"{"Txn":{"compares":[],"success":[{"Put":["/other/planted",[120]]}],"failure":[]}}"#,
            "/other/planted",
        ),
    ] {
        let reply = ask_helper(&sock, request);
        let why = reply["Failed"]["Store"].as_str().unwrap_or_default();
        assert!(
            why.contains(&format!("{key:?}")) && why.contains("serves keys under \"/ohno\" only"),
            "{request} -> {reply}"
        );
        assert!(!reply.to_string().contains("s3cret"), "{reply}");
    }
    assert!(
        env.cluster.keys("/other/planted").is_empty(),
        "a refused write reached etcd"
    );
    env.ohno("DEL", &pod, &conf).success();
}
