//! The on-demand store server (`ohnod on-demand store`, what the plugin starts
//! when no agent answers and `persistMs` > 0), through the real binaries
//! against the 3-member TLS cluster: the first call starts it, later calls go
//! through it, a server killed under the plugin's feet costs nothing but the
//! speed-up, one that answers nonsense fails the call with code 107, and an
//! idle server leaves on its own with its socket. (The file keeps the name of
//! the connection helper this server replaced.)

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
/// on-demand server's socket goes) and `persistMs` `persist`.
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
fn the_first_call_starts_a_server_that_carries_later_calls_and_leaves_when_idle() {
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, PERSIST.as_millis() as u64);
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let mut addresses = BTreeSet::new();

    // No server yet: the first ADD talks to etcd itself and starts one.
    let first = env.ohno("ADD", &pods[0], &conf);
    addresses.insert(first_ipv4(first.success().json()).0);
    assert!(
        env.node.log().contains("store: no server at"),
        "the first ADD did not look for a server:\n{}",
        env.node.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || helper_pid(&lock_dir, "etcd")
            .is_some()),
        "no on-demand server after the first ADD; {:?} holds {:?}",
        lock_dir,
        std::fs::read_dir(&lock_dir).map(|d| d.count())
    );
    let pid = helper_pid(&lock_dir, "etcd").expect("server");
    let sock = helper_socket(&lock_dir, "etcd").expect("socket");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock)
            .expect("socket metadata")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the server's socket is root's alone");

    // The second ADD goes through it, and its keys are in etcd.
    let second = env.ohno("ADD", &pods[1], &conf);
    addresses.insert(first_ipv4(second.success().json()).0);
    assert!(
        env.node
            .log()
            .contains(&format!("store: through {}", sock.display())),
        "the second ADD did not use the server:\n{}",
        env.node.log()
    );
    assert!(attached(&env, &pods[1]), "{second}");

    // The server dies (SIGKILL, by the PID it recorded; our ADD started it):
    // the next ADD still works, and a new server takes over.
    kill_server(pid);
    let third = env.ohno("ADD", &pods[2], &conf);
    addresses.insert(first_ipv4(third.success().json()).0);
    assert!(attached(&env, &pods[2]), "{third}");
    assert_eq!(addresses.len(), 3, "an address was handed out twice");
    assert!(
        eventually(Duration::from_secs(5), || helper_pid(&lock_dir, "etcd")
            .is_some_and(|p| p != pid)),
        "no new server after the old one was killed"
    );

    // DEL through the server (or without it): nothing is left in etcd.
    for pod in &pods {
        env.ohno("DEL", pod, &conf).success();
    }
    assert!(env.section("attachments").is_empty());
    assert!(env.section("ips").is_empty());

    // Idle for persistMs: the server goes, and its socket with it.
    let last = helper_pid(&lock_dir, "etcd").expect("server");
    assert!(
        eventually(PERSIST + Duration::from_secs(3), || {
            !Path::new(&format!("/proc/{last}")).exists()
                && helper_socket(&lock_dir, "etcd").is_none()
        }),
        "the server {last} outlived persistMs"
    );
}

#[test]
fn persist_ms_zero_starts_no_server() {
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
        "persistMs 0 started a server"
    );
    for pod in &pods {
        env.ohno("DEL", pod, &conf).success();
    }
    assert!(env.section("attachments").is_empty());
}

/// The PID of the on-demand store server in `lock_dir`, once one runs
/// (within 5 s).
fn wait_for_server(lock_dir: &Path) -> i32 {
    assert!(
        eventually(Duration::from_secs(5), || helper_pid(lock_dir, "etcd")
            .is_some()),
        "no on-demand store server in {lock_dir:?}"
    );
    helper_pid(lock_dir, "etcd").expect("server")
}

/// SIGKILL the server `pid` (ours: our ADD started it, and its lock names
/// it) and wait until it is gone.
fn kill_server(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the server");
    assert!(eventually(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
}

fn frame(json: &str) -> Vec<u8> {
    let mut v = (json.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v
}

/// One frame's body from `s` (u32 LE length, then the body); `None` at the
/// end of the stream.
fn read_frame(s: &mut impl std::io::Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// The greeting a server that serves the caller sends.
const WELCOME: &str = r#"{"Welcome":{"protocol":1,"agent":"fake"}}"#;
/// The greeting a server that will not serve the caller sends.
const REFUSED: &str = r#"{"Refused":{"Refused":"the fake will not"}}"#;

/// Stand in for the on-demand server at `sock` (a killed server's path) for
/// one connection (the ADD's): read its `Hello`, answer `greeting` (raw
/// bytes, framing included), then answer every request with `reply` (raw
/// bytes; none: read requests until the plugin hangs up). Joins to the
/// `Hello` it was sent.
fn fake_server(sock: &Path, greeting: Vec<u8>, reply: Vec<u8>) -> std::thread::JoinHandle<Value> {
    use std::io::Write as _;
    let _ = std::fs::remove_file(sock);
    let listener = std::os::unix::net::UnixListener::bind(sock).expect("bind the fake server");
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("the plugin connects");
        let hello = read_frame(&mut s).expect("the plugin's Hello");
        let hello: Value = serde_json::from_slice(&hello).expect("Hello is JSON");
        if s.write_all(&greeting).is_err() {
            return hello;
        }
        while read_frame(&mut s).is_some() {
            if !reply.is_empty() && s.write_all(&reply).is_err() {
                break;
            }
        }
        hello
    })
}

/// Kill the server the first ADD started; its socket path stays for a fake.
fn killed_server(env: &EtcdNode, conf: &Value, lock_dir: &Path) -> PathBuf {
    let pod = Pod::new();
    env.ohno("ADD", &pod, conf).success();
    let pid = wait_for_server(lock_dir);
    // DEL while the server runs: a call that finds no server would start one.
    env.ohno("DEL", &pod, conf).success();
    let sock = helper_socket(lock_dir, "etcd").expect("socket");
    kill_server(pid);
    sock
}

/// The `Hello` the plugin sends a store server at `sock` (a killed server's
/// path): one ADD of a pod, against a fake that refuses it — the ADD is done
/// in-process and succeeds. (Hello, the pod, which the caller DELs.)
fn plugin_hello(env: &EtcdNode, conf: &Value, sock: &Path) -> (Value, Pod) {
    let fake = fake_server(sock, frame(REFUSED), Vec::new());
    let pod = Pod::new();
    let out = env.ohno("ADD", &pod, conf);
    out.success();
    assert!(attached(env, &pod), "{out}");
    let hello = fake.join().expect("the fake server");
    assert_eq!(hello["protocol"], 1, "{hello}");
    assert!(hello["service"]["Store"]["identity"].is_string(), "{hello}");
    // The fake is gone: the next call finds no server and starts one.
    let _ = std::fs::remove_file(sock);
    (hello, pod)
}

/// The plugin is the plugin whatever its environment: `ohno` run with the old
/// helpers' variables holding a real start document, or any other `OHNO_*`,
/// answers VERSION and starts nothing. The on-demand server is
/// `ohnod on-demand store` (the `ohnod` beside the plugin), started with an
/// empty environment: its start document came on stdin.
#[test]
fn the_plugin_is_the_plugin_whatever_its_environment_and_the_server_has_none() {
    use std::io::Write as _;
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 10_000);
    let sock = killed_server(&env, &conf, &lock_dir);
    let (hello, pod) = plugin_hello(&env, &conf, &sock);
    let second = Pod::new();
    env.ohno("ADD", &second, &conf).success();
    let pid = wait_for_server(&lock_dir);

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert_eq!(
        &args[1..],
        [&b"on-demand"[..], b"store", b""],
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the server's executable");
    assert_eq!(
        exe.file_name(),
        Some(std::ffi::OsStr::new("ohnod")),
        "{exe:?}"
    );
    let plugin = std::fs::canonicalize(common::ohno_binary()).expect("the plugin's path");
    assert_eq!(exe.parent(), plugin.parent(), "not the ohnod beside ohno");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        environ.is_empty(),
        "the server has an environment: {:?}",
        String::from_utf8_lossy(&environ)
    );

    // The server's start document, as the plugin writes it on its stdin.
    let doc = json!({
        "socket": sock,
        "persist_ms": 10_000,
        "service": hello["service"],
    })
    .to_string();
    let mut child = std::process::Command::new(common::ohno_binary())
        .env_clear()
        .env("OHNO_STORE_HELPER", &doc)
        .env("OHNO_POLICY_HELPER", &doc)
        .env("OHNO_HELPER", "store")
        .env("OHNO_ON_DEMAND", &doc)
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
    assert_eq!(helper_pid(&lock_dir, "etcd"), Some(pid), "one server still");
    for p in [&pod, &second] {
        env.ohno("DEL", p, &conf).success();
    }
}

/// A server that answers with the wrong shape (no answer for the reads it was
/// asked, a reply of another kind) fails the call with code 107 (an agent
/// failure) and a message — never a panic; one that announces a frame past
/// the limit is a broken server, and one that refuses the caller is not
/// serving it: either way the call completes in-process.
#[test]
fn a_server_answering_the_wrong_shape_is_an_agent_error_never_a_panic() {
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 60_000);
    let sock = killed_server(&env, &conf, &lock_dir);

    for wrong in [
        r#"{"Reads":[]}"#,
        r#"{"TxnOrRead":[[]]}"#,
        r#"{"Range":[]}"#,
    ] {
        let fake = fake_server(&sock, frame(WELCOME), frame(wrong));
        let pod = Pod::new();
        let out = env.ohno("ADD", &pod, &conf);
        let msg = out.error_with_code(107);
        assert!(!out.stderr.contains("panicked"), "{out}");
        let details = out.json()["details"].as_str().unwrap_or_default();
        assert!(details.contains("the agent answered"), "{out}\n{msg}");
        assert!(details.len() < 1000, "{out}");
        assert!(pod.ns.link("eth0").is_none(), "{out}");
        drop(out);
        let _ = fake.join();
        assert!(!attached(&env, &pod));
    }

    // A header claiming 4 GiB, as a reply or as the greeting, and a refusal:
    // the connection is dropped, the ADD is done here. (The DELs come last: a
    // call that finds no server starts one, which would take the fakes' path.)
    let mut done_here = Vec::new();
    for (greeting, reply) in [
        (frame(WELCOME), u32::MAX.to_le_bytes().to_vec()),
        (u32::MAX.to_le_bytes().to_vec(), Vec::new()),
        (frame(REFUSED), Vec::new()),
    ] {
        let fake = fake_server(&sock, greeting, reply);
        let pod = Pod::new();
        let out = env.ohno("ADD", &pod, &conf);
        out.success();
        assert!(attached(&env, &pod), "{out}");
        let _ = fake.join();
        done_here.push(pod);
    }
    for pod in &done_here {
        env.ohno("DEL", pod, &conf).success();
    }
    assert!(env.section("attachments").is_empty());
}

/// The server serves at most a bounded number of connections at once: with
/// that many held open and silent, an ADD is turned away at once and done
/// in-process; and headers announcing huge frames cost the server memory only
/// for the bytes that arrive.
#[test]
fn a_flood_of_silent_connections_neither_stalls_adds_nor_grows_the_server() {
    use std::io::Write as _;
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 60_000);
    let first = Pod::new();
    env.ohno("ADD", &first, &conf).success();
    let pid = wait_for_server(&lock_dir);
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
        // A header for a 64 MiB Hello that never comes.
        let _ = s.write_all(&(64u32 << 20).to_le_bytes());
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown_kb = vm_data().saturating_sub(before);
    assert!(
        grown_kb < 256 * 1024,
        "the server grew by {grown_kb} kB for headers alone"
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

/// A connection to the server at `sock` opened with `hello`, as the plugin
/// opens one: the greeting's JSON, and a reply's JSON to each of `requests`
/// (none when the greeting is not a welcome).
fn ask_server(sock: &Path, hello: &Value, requests: &[&str]) -> (Value, Vec<Value>) {
    use std::io::Write as _;
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to the server");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s.write_all(&frame(&hello.to_string()))
        .expect("send the Hello");
    let greeting = read_frame(&mut s).expect("the greeting");
    let greeting: Value = serde_json::from_slice(&greeting).expect("the greeting is JSON");
    if greeting.get("Welcome").is_none() {
        return (greeting, Vec::new());
    }
    let replies = requests
        .iter()
        .map(|request| {
            s.write_all(&frame(request)).expect("send the request");
            let reply = read_frame(&mut s).expect("the reply");
            serde_json::from_slice(&reply).expect("the reply is JSON")
        })
        .collect();
    (greeting, replies)
}

/// The server runs requests with its own client certificate for callers of
/// one configuration: keys outside that configuration's prefix are refused,
/// whoever reaches its socket; and a caller naming another configuration
/// (another prefix, say) or another protocol is not served at all.
#[test]
fn the_server_refuses_keys_outside_its_prefix() {
    let env = EtcdNode::start();
    let (conf, lock_dir) = conf_with(&env, 60_000);
    let sock = killed_server(&env, &conf, &lock_dir);
    let (hello, pod) = plugin_hello(&env, &conf, &sock);
    let other = Pod::new();
    env.ohno("ADD", &other, &conf).success();
    wait_for_server(&lock_dir);
    let out = env.cluster.etcdctl(
        &env.cluster.endpoints(),
        &["put", "/other/secret", "s3cret"],
    );
    assert_eq!(out.code, 0, "{out}");

    // Inside the prefix: served.
    let (greeting, replies) = ask_server(&sock, &hello, &[r#"{"Get":"/ohno/pools/default"}"#]);
    assert_eq!(greeting["Welcome"]["protocol"], 1, "{greeting}");
    assert!(
        replies[0]["Get"]["key"] == "/ohno/pools/default",
        "{replies:?}"
    );
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
        let (_, replies) = ask_server(&sock, &hello, &[request]);
        let reply = &replies[0];
        let why = reply["Failed"]["Store"].as_str().unwrap_or_default();
        assert!(
            why.contains(&format!("{key:?}")) && why.contains("serves keys under \"/ohno\" only"),
            "{request} -> {reply}"
        );
        assert!(!reply.to_string().contains("s3cret"), "{reply}");
    }
    // A Hello for the whole keyspace, or in another protocol: refused.
    let mut everything = hello.clone();
    everything["service"]["Store"]["conf"]["prefix"] = json!("");
    let mut newer = hello.clone();
    newer["protocol"] = json!(2);
    for forged in [everything, newer] {
        let (greeting, _) = ask_server(&sock, &forged, &[r#"{"Get":"/other/secret"}"#]);
        assert!(greeting["Refused"].is_object(), "{forged} -> {greeting}");
        assert!(!greeting.to_string().contains("s3cret"), "{greeting}");
    }
    assert!(
        env.cluster.keys("/other/planted").is_empty(),
        "a refused write reached etcd"
    );
    for p in [&pod, &other] {
        env.ohno("DEL", p, &conf).success();
    }
}
