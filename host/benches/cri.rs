//! The kubelet's path, timed (`make bench`, as root): CRI `RunPodSandbox`
//! through containerd 1.6 to a ready sandbox, with Ohno and with Debian's
//! reference `bridge` + `host-local`, in one run.
//!
//! 1. Sequential: N sandboxes one after the other (env `OHNO_BENCH_CRI_N`,
//!    default 20) per contender, alternating between the contenders pod by
//!    pod so both see the same machine. A sample is the time from sending
//!    `RunPodSandbox` to the first `PodSandboxStatus` that says
//!    `SANDBOX_READY` (containerd answers `RunPodSandbox` once the sandbox is
//!    ready, so this is the call plus one status round trip). Then
//!    `StopPodSandbox` (the CNI DEL) of each, timed too.
//! 2. Burst: N concurrent `RunPodSandbox` calls on one connection against
//!    each contender; the wall time until all are ready. Fails the run if a
//!    call failed or two sandboxes got the same address.
//!
//! Each contender has its own containerd (`tests/cri_support`) in its own
//! throwaway host namespace with its own directories and a pause image built
//! from busybox-static; the conflists match `benches/cni.rs` (bridge mode,
//! no masquerade, the local store for Ohno). The report goes to
//! `target/bench/cri.md`, which `scripts/bench-report.sh` puts in
//! docs/bench/README.md.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/cri_support/mod.rs"]
mod cri_support;
#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ohno_binary, Node, REFERENCE_PLUGINS, REFERENCE_VERSION};
use cri_client::PodSandboxMetadata;
use cri_support::{Containerd, ContainerdConf};
use serde_json::{json, Value};
use support::{checkpoint, env_usize, install_signal_handlers, ms, p50, p95, Report, Table};

/// How long a sandbox may take to report ready after `RunPodSandbox`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One contender: a label, its node and its containerd.
struct Contender {
    label: &'static str,
    node: Node,
    cri: Option<Containerd>,
}

impl Contender {
    fn cri(&self) -> &Containerd {
        self.cri
            .as_ref()
            .unwrap_or_else(|| panic!("{}: containerd is not running", self.label))
    }
}

/// Ohno's conflist, as in the CNI bench: bridge mode, local store, claim
/// locks in the node's directory, the pod-annotations capability declared.
fn ohno_conflist(node: &Node) -> Value {
    let mut plugin = node.ohno_plugin();
    plugin["logLevel"] = json!("info");
    plugin["capabilities"] = json!({ "io.kubernetes.cri.pod-annotations": true });
    plugin["ipam"]["lockDir"] = json!(node.dir.path().join("locks"));
    json!({ "cniVersion": REFERENCE_VERSION, "name": "podnet", "plugins": [plugin] })
}

/// The reference `bridge` + `host-local`, as in the CNI bench.
fn reference_conflist(node: &Node) -> Value {
    json!({ "cniVersion": REFERENCE_VERSION, "name": "podnet",
            "plugins": [support::reference_conf(node, "podnet")] })
}

fn start(
    label: &'static str,
    conflist: fn(&Node) -> Value,
    plugins: &[(&str, &Path)],
) -> Contender {
    let node = Node::new();
    let list = conflist(&node);
    let plugins: Vec<(&str, std::path::PathBuf)> =
        plugins.iter().map(|(n, p)| (*n, p.to_path_buf())).collect();
    let cri = Containerd::start(&ContainerdConf {
        host_netns: node.host.path(),
        dir: &node.dir.path().join("cri"),
        conflist: &list,
        plugins: &plugins,
    });
    Contender {
        label,
        node,
        cri: Some(cri),
    }
}

fn pod(name: String) -> PodSandboxMetadata {
    PodSandboxMetadata {
        uid: format!("uid-{name}"),
        name,
        namespace: "bench".into(),
        attempt: 0,
    }
}

/// `RunPodSandbox`, then `PodSandboxStatus` until ready: (id, elapsed).
fn run_until_ready(cri: &Containerd, meta: &PodSandboxMetadata) -> (String, Duration) {
    let config = cri.sandbox_config(meta, &[]);
    let t0 = Instant::now();
    let id = cri
        .run(config)
        .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", meta.name));
    wait_ready(cri, &id);
    (id, t0.elapsed())
}

fn wait_ready(cri: &Containerd, id: &str) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !cri.is_ready(id) {
        assert!(
            Instant::now() < deadline,
            "sandbox {id} not ready in {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `YYYY-MM-DD` (UTC), as `date -u` prints it.
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument means "not us".
    if std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        return;
    }
    common::require_root();
    if let Some(why) = cri_support::unavailable() {
        eprintln!("bench cri: SKIPPED: {why} (scripts/setup.sh installs containerd, runc, busybox-static)");
        return;
    }
    install_signal_handlers();
    let n = env_usize("OHNO_BENCH_CRI_N", 20);
    let mut report = Report::new();
    report.add("# CRI bench: the kubelet's path\n\n");
    report.para(&format!(
        "Run on {} (`cargo bench -p ohno --bench cri`, part of `make bench`).",
        today()
    ));
    report.para(&support::machine(" at start"));

    let ohno = ohno_binary();
    let ohnod = ohno.with_file_name("ohnod");
    let reference = Path::new(REFERENCE_PLUGINS);
    let loopback = reference.join("loopback");
    let bridge = reference.join("bridge");
    let host_local = reference.join("host-local");
    let mut contenders = [
        start(
            "ohno (local store)",
            ohno_conflist,
            &[("ohno", &ohno), ("ohnod", &ohnod), ("loopback", &loopback)],
        ),
        start(
            "reference bridge + host-local",
            reference_conflist,
            &[
                ("bridge", &bridge),
                ("host-local", &host_local),
                ("loopback", &loopback),
            ],
        ),
    ];
    checkpoint();
    let version = contenders[0]
        .cri()
        .cri
        .version()
        .map(|v| format!("{} {}", v.runtime_name, v.runtime_version))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    report.para(&format!(
        "Runtime: {version} (CRI {}), runc shim v2, overlayfs, a pause image of busybox-static; \
         one containerd per contender, each in its own throwaway host namespace. Plugins: ohno \
         `{}` (local store, default policy); reference `bridge` + `host-local` from \
         {REFERENCE_PLUGINS}.",
        cri_client::CRI_VERSION,
        ohno.display()
    ));

    // 1. Sequential, alternating between the contenders.
    let mut ready: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    let mut stop: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); contenders.len()];
    // One warm-up sandbox each (first-use costs: the pause image's snapshot,
    // the bridge, the store), not counted.
    for (i, c) in contenders.iter().enumerate() {
        let (id, _) = run_until_ready(c.cri(), &pod(format!("warm-{i}")));
        ids[i].push(id);
    }
    for k in 0..n {
        for (i, c) in contenders.iter().enumerate() {
            checkpoint();
            let (id, took) = run_until_ready(c.cri(), &pod(format!("seq-{k}")));
            ready[i].push(took);
            ids[i].push(id);
        }
    }
    for (i, c) in contenders.iter().enumerate() {
        for id in ids[i].drain(..) {
            let t0 = Instant::now();
            c.cri().stop(&id);
            stop[i].push(t0.elapsed());
            c.cri().remove(&id);
        }
    }
    let mut table = Table::new(&[
        "contender",
        "RunPodSandbox→Ready p50 (ms)",
        "p95 (ms)",
        "ratio p50",
        "StopPodSandbox p50 (ms)",
        "p95 (ms)",
    ]);
    let ref_p50 = p50(&ready[1]);
    for (i, c) in contenders.iter().enumerate() {
        table.row(vec![
            c.label.into(),
            ms(p50(&ready[i])),
            ms(p95(&ready[i])),
            ratio(p50(&ready[i]), ref_p50),
            ms(p50(&stop[i])),
            ms(p95(&stop[i])),
        ]);
    }
    report.add(&format!(
        "## {n} sequential sandboxes\n\nFrom sending `RunPodSandbox` to the first \
         `PodSandboxStatus` reporting `SANDBOX_READY`; the contenders alternate pod by pod \
         (one warm-up sandbox each, not counted). The ratio is to the reference.\n\n"
    ));
    report.table(&table);

    // 2. Burst: n concurrent RunPodSandbox calls on one connection.
    let mut problems = Vec::new();
    let mut table = Table::new(&[
        "contender",
        "sandboxes",
        "failed",
        "distinct addresses",
        "all ready (ms)",
    ]);
    for c in &contenders {
        checkpoint();
        let cri = c.cri();
        let configs = (0..n)
            .map(|k| cri.sandbox_config(&pod(format!("burst-{k}")), &[]))
            .collect();
        let t0 = Instant::now();
        let results = cri.run_concurrently(configs);
        let mut addresses = BTreeSet::new();
        let mut failed = 0;
        for r in &results {
            match r {
                Ok(id) => {
                    wait_ready(cri, id);
                }
                Err(e) => {
                    failed += 1;
                    problems.push(format!("{}: {e}", c.label));
                }
            }
        }
        let took = t0.elapsed();
        for id in results.iter().flatten() {
            let status = cri.ready_sandbox(id);
            addresses.insert(status.ip);
        }
        let ok = results.len() - failed;
        if addresses.len() != ok {
            problems.push(format!(
                "{}: {} addresses for {ok} sandboxes",
                c.label,
                addresses.len()
            ));
        }
        table.row(vec![
            c.label.into(),
            n.to_string(),
            failed.to_string(),
            addresses.len().to_string(),
            ms(took.as_secs_f64() * 1e3),
        ]);
        for e in cri.remove_all() {
            problems.push(format!("{}: clean-up: {e}", c.label));
        }
    }
    report.add(&format!(
        "## Burst: {n} concurrent RunPodSandbox\n\nOne CRI connection, every call sent at \
         once (as a kubelet starting many pods); the wall time until every sandbox is ready.\n\n"
    ));
    report.table(&table);
    report.para(&support::machine(" at end"));

    for c in &mut contenders {
        // containerd stops before the node's namespace and directory go.
        c.cri = None;
        if !c.node.host_veths_eventually_gone() && c.label.starts_with("ohno") {
            problems.push(format!("{}: host veths left", c.label));
        }
    }
    let path = support::report_path("cri.md");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, &report.text) {
        Ok(()) => eprintln!("bench cri: wrote {}", path.display()),
        Err(e) => eprintln!("bench cri: cannot write {}: {e}", path.display()),
    }
    assert!(problems.is_empty(), "bench cri: {problems:#?}");
}
