//! Running a CNI plugin binary the way a runtime does, and what it left.

use super::netns::NetNs;
use super::node::Pod;
use super::util::tail;
use serde_json::Value;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// The plugin cargo built for these integration tests and benches.
pub const OHNO: &str = env!("CARGO_BIN_EXE_ohno");

/// The plugin under test: `$OHNO_BIN` when set (an installed or saved
/// binary), else the one cargo built.
pub fn ohno_binary() -> PathBuf {
    std::env::var_os("OHNO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(OHNO))
}
/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// Every result version Ohno writes.
pub const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The highest version Debian's reference plugins (1.1.1) speak.
pub const REFERENCE_VERSION: &str = "1.0.0";
/// A plugin that hangs longer than this is killed (by its PID) and the test fails.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// What a plugin process left: its exit code and stdout (parsed when it is
/// exactly one JSON document).
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_json: Option<Value>,
    /// What was asked, for failure messages.
    pub what: String,
}

impl Output {
    /// The single JSON document on stdout; panics if there is not exactly one.
    pub fn json(&self) -> &Value {
        match &self.stdout_json {
            Some(v) => v,
            None => panic!("{self}\nstdout is not exactly one JSON document"),
        }
    }

    /// Panics unless the plugin exited 0; returns the output for chaining.
    pub fn success(&self) -> &Self {
        assert_eq!(self.code, 0, "{self}\nexpected success");
        self
    }

    /// Asserts a CNI error: non-zero exit and exactly one error document
    /// `{cniVersion, code, msg, details?}` carrying `code`; returns its `msg`.
    pub fn error_with_code(&self, code: u64) -> String {
        assert_ne!(self.code, 0, "{self}\nexpected a non-zero exit");
        let doc = self.json();
        let obj = doc
            .as_object()
            .unwrap_or_else(|| panic!("{self}\nerror is not a JSON object"));
        for key in obj.keys() {
            assert!(
                ["cniVersion", "code", "msg", "details"].contains(&key.as_str()),
                "{self}\nunexpected key {key:?} in the error document"
            );
        }
        assert!(
            doc["cniVersion"].is_string(),
            "{self}\nerror has no cniVersion"
        );
        assert_eq!(doc["code"].as_u64(), Some(code), "{self}\nwrong error code");
        let msg = doc["msg"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{self}\nerror has no msg");
        msg.to_owned()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code,
            self.stdout.trim_end(),
            tail(&self.stderr, 4000)
        )
    }
}

/// Parses stdout only when it holds exactly one JSON document.
pub fn one_json_document(stdout: &str) -> Option<Value> {
    let mut docs = serde_json::Deserializer::from_str(stdout).into_iter::<Value>();
    let first = docs.next()?.ok()?;
    docs.next().is_none().then_some(first)
}

/// One plugin execution as a runtime would do it.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub binary: PathBuf,
    /// `None` leaves `CNI_COMMAND` unset.
    pub command: Option<String>,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub cni_path: String,
}

impl Invocation {
    /// Ohno, with `CNI_PATH` set as a runtime would.
    pub fn ohno(command: &str, pod: &Pod) -> Invocation {
        Invocation {
            binary: ohno_binary(),
            command: Some(command.to_owned()),
            container_id: pod.container_id.clone(),
            netns: pod.ns.path(),
            ifname: pod.ifname.clone(),
            args: String::new(),
            cni_path: default_cni_path(),
        }
    }
}

/// `<dir of the ohno binary>:/usr/lib/cni`.
pub fn default_cni_path() -> String {
    let binary = ohno_binary();
    let dir = binary.parent().unwrap_or(Path::new("."));
    format!("{}:{REFERENCE_PLUGINS}", dir.display())
}

/// Execs a plugin inside `host` (via `ip netns exec`) with the CNI environment
/// and `stdin`, and collects its exit code and stdout.
pub fn run_plugin(host: &NetNs, inv: &Invocation, stdin: &str) -> Output {
    let binary = inv.binary.to_string_lossy().into_owned();
    let mut cmd = host.command(&[&binary]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(key);
        }
    }
    if let Some(command) = &inv.command {
        cmd.env("CNI_COMMAND", command);
    }
    cmd.env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.args)
        .env("CNI_PATH", &inv.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!(
        "{} {} (container {}, netns {}, ifname {})",
        inv.binary.file_name().unwrap_or_default().to_string_lossy(),
        inv.command.as_deref().unwrap_or("<no CNI_COMMAND>"),
        inv.container_id,
        inv.netns,
        inv.ifname
    );

    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut child_stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let input = stdin.as_bytes().to_vec();
    let writer = thread::spawn(move || {
        if let Some(pipe) = child_stdin.as_mut() {
            // A plugin may exit without reading stdin (VERSION, early errors).
            let _ = pipe.write_all(&input);
        }
    });
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = stdout.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = done_tx.send(buf);
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });

    // stdout closes when the plugin exits; the child is not reaped until
    // `wait`, so a kill on timeout can only reach our own child.
    let (stdout, timed_out) = match done_rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(buf) => (buf, false),
        Err(_) => {
            let _ = child.kill();
            (done_rx.recv().unwrap_or_default(), true)
        }
    };
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("wait for {what}: {e}"));
    let _ = writer.join();
    let stderr = err_reader.join().unwrap_or_default();
    let mut stderr = String::from_utf8_lossy(&stderr).into_owned();
    if timed_out {
        stderr.push_str(&format!("\n[harness] killed after {PLUGIN_TIMEOUT:?}"));
    }
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    Output {
        code: status.code().unwrap_or(-1),
        stdout_json: one_json_document(&stdout),
        stdout,
        stderr,
        what,
    }
}
