//! Whole-process ADD/DEL latency: Ohno (local store) beside Debian's
//! reference `bridge` + `host-local` on an equivalent config, in one run,
//! reported as medians, p95s and ratios.
//!
//! Each plugin gets its own throwaway host netns; pods are pre-created netns
//! (creation is not timed). N pods (env `OHNO_BENCH_N`, default 50) are added
//! one after another, then deleted one after another; the two plugins
//! alternate per pod so machine noise hits both alike. Every sample is a full
//! process exec through `ip netns exec`, as a runtime pays it; that launcher's
//! own cost is measured and printed so it can be subtracted by eye.
//!
//! Run with `make bench` (root: it creates network namespaces).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{run_plugin, Invocation, NetNs, Node, Pod, Runtime, REFERENCE_VERSION};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Contender {
    label: &'static str,
    node: Node,
    conf: Value,
    binary: std::path::PathBuf,
    pods: Vec<Pod>,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

impl Contender {
    fn new(
        label: &'static str,
        plugin_type: &str,
        conf: impl Fn(&Node) -> Value,
        n: usize,
    ) -> Self {
        let node = Node::new();
        let conf = conf(&node);
        let binary = Runtime::new(&node.host).find_plugin(plugin_type);
        let pods = (0..n).map(|_| Pod::new()).collect();
        Contender {
            label,
            node,
            conf,
            binary,
            pods,
            add: Vec::with_capacity(n),
            del: Vec::with_capacity(n),
        }
    }

    fn invoke(&self, command: &str, pod: &Pod) -> Duration {
        let mut inv = Invocation::ohno(command, pod);
        inv.binary = self.binary.clone();
        let start = Instant::now();
        let out = run_plugin(&self.node.host, &inv, &self.conf.to_string());
        let elapsed = start.elapsed();
        if out.code != 0 {
            panic!("{}: {out}", self.label);
        }
        elapsed
    }

    /// One untimed ADD/DEL: creates the bridge and the store, warms caches.
    fn warm_up(&self) {
        let pod = Pod::new();
        self.invoke("ADD", &pod);
        self.invoke("DEL", &pod);
    }

    fn add(&mut self, i: usize) {
        let t = self.invoke("ADD", &self.pods[i]);
        self.add.push(t);
    }

    fn del(&mut self, i: usize) {
        let t = self.invoke("DEL", &self.pods[i]);
        self.del.push(t);
    }
}

fn ohno_conf(node: &Node) -> Value {
    let mut conf = node.ohno_conf(REFERENCE_VERSION);
    conf["logLevel"] = json!("info");
    conf
}

fn reference_conf(node: &Node) -> Value {
    json!({
        "cniVersion": REFERENCE_VERSION,
        "name": "podnet",
        "type": "bridge",
        "bridge": "cni0",
        "mtu": 1500,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": false,
        "hairpinMode": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": "10.88.0.0/16" }]],
            "dataDir": node.dir.path().join("host-local")
        }
    })
}

/// Nearest-rank percentile, in milliseconds.
fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

fn launcher_overhead(ns: &NetNs, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            let out = ns.exec(&["true"]);
            let elapsed = start.elapsed();
            assert!(out.status.success(), "ip netns exec true failed");
            elapsed
        })
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument means "not us".
    if std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        return;
    }
    let n: usize = std::env::var("OHNO_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(50);

    let mut ohno = Contender::new("ohno (local store)", "ohno", ohno_conf, n);
    let mut reference = Contender::new("bridge + host-local", "bridge", reference_conf, n);
    ohno.warm_up();
    reference.warm_up();

    for i in 0..n {
        ohno.add(i);
        reference.add(i);
    }
    for i in 0..n {
        ohno.del(i);
        reference.del(i);
    }
    let overhead = launcher_overhead(&ohno.node.host, n);

    println!();
    println!("CNI whole-process latency: {n} sequential ADDs, then {n} DELs (ms)");
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9}",
        "plugin", "ADD p50", "ADD p95", "DEL p50", "DEL p95"
    );
    let row = |c: &Contender| {
        [
            percentile(&c.add, 50.0),
            percentile(&c.add, 95.0),
            percentile(&c.del, 50.0),
            percentile(&c.del, 95.0),
        ]
    };
    let (a, b) = (row(&ohno), row(&reference));
    for (label, r) in [(ohno.label, a), (reference.label, b)] {
        println!(
            "{:<24} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            label, r[0], r[1], r[2], r[3]
        );
    }
    println!(
        "{:<24} {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x",
        "ohno / reference",
        a[0] / b[0],
        a[1] / b[1],
        a[2] / b[2],
        a[3] / b[3]
    );
    println!(
        "every sample includes `ip netns exec` itself: p50 {:.2} ms, p95 {:.2} ms",
        percentile(&overhead, 50.0),
        percentile(&overhead, 95.0)
    );
}
