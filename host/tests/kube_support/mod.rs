//! A test double of the Kubernetes API (`apiserver.py`: Nodes list, watch
//! and get in the API's real JSON shapes, over HTTPS with a bearer token)
//! running in a namespace of the test's, with its own CA and server
//! certificate made by openssl for the address it listens on. Stopped by
//! its PID on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

pub const TOKEN: &str = "ohno-test-token.sa";

pub struct ApiServer {
    child: Child,
    ns: String,
    dir: TempDir,
    pub url: String,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ApiServer {
    /// Serve on `ip:6443` in `ns`, with `nodes` registered.
    pub fn start(ns: &NetNs, ip: &str, nodes: &[&str]) -> ApiServer {
        let dir = TempDir::new();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=kubernetes-test-ca",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "apiserver-key.pem",
                "-out",
                "apiserver.csr",
                "-subj",
                "/CN=kube-apiserver",
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            format!(
                "subjectAltName=IP:{ip},DNS:kubernetes.default.svc\n\
                 basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("write ext.cnf");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "apiserver.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                "apiserver.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        std::fs::write(d.join("token"), format!("{TOKEN}\n")).expect("write token");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kube_support/apiserver.py");
        let listen = format!("{ip}:6443");
        let cert = d.join("apiserver.pem");
        let key = d.join("apiserver-key.pem");
        let mut argv: Vec<String> = vec![
            "python3".into(),
            script.to_string_lossy().into_owned(),
            "--listen".into(),
            listen.clone(),
            "--cert".into(),
            cert.to_string_lossy().into_owned(),
            "--key".into(),
            key.to_string_lossy().into_owned(),
            "--token".into(),
            TOKEN.into(),
        ];
        for n in nodes {
            argv.push("--node".into());
            argv.push((*n).into());
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = std::fs::File::create(d.join("apiserver.log")).expect("api log");
        let mut child = ns
            .command(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start apiserver.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let server = ApiServer {
            child,
            ns: ns.name().to_string(),
            dir,
            url: format!("https://{listen}"),
        };
        assert!(
            line.starts_with("listening"),
            "the API double did not start: {}",
            server.stderr()
        );
        server
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    /// The agent config's `nodeCleanup` section for this server.
    pub fn cleanup_conf(&self, grace_seconds: u64, lease_seconds: u64) -> Value {
        json!({
            "apiServer": self.url,
            "tokenFile": self.dir.path().join("token"),
            "caFile": self.dir.path().join("ca.crt"),
            "graceSeconds": grace_seconds,
            "leaseSeconds": lease_seconds,
        })
    }

    fn curl(&self, method: &str, path: &str) -> String {
        let ca = self.dir.path().join("ca.crt");
        let url = format!("{}{path}", self.url);
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "curl",
                "-sS",
                "--fail-with-body",
                "--cacert",
            ])
            .arg(&ca)
            .args([
                "-H",
                &format!("Authorization: Bearer {TOKEN}"),
                "-X",
                method,
                &url,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "{method} {path}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn create_node(&self, name: &str) {
        self.curl("POST", &format!("/_control/nodes/{name}"));
    }

    pub fn delete_node(&self, name: &str) {
        self.curl("DELETE", &format!("/_control/nodes/{name}"));
    }

    /// Gone from lists and watches, but still found by name.
    pub fn ghost_node(&self, name: &str) {
        self.curl("POST", &format!("/_control/ghost/{name}"));
    }

    pub fn fail_lists(&self, n: u32) {
        self.curl("POST", &format!("/_control/fail-lists/{n}"));
    }

    pub fn compact(&self) {
        self.curl("POST", "/_control/compact");
    }

    /// The API requests served so far (`GET <path>`).
    pub fn requests(&self) -> Vec<String> {
        let doc: Value =
            serde_json::from_str(&self.curl("GET", "/_control/log")).unwrap_or_default();
        doc.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap_or_default(),
                    r["path"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Wait until `f` holds for the request log.
    pub fn wait_requests(&self, timeout: Duration, f: impl Fn(&[String]) -> bool) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if f(&self.requests()) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // SAFETY: a signal to the child this test started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
