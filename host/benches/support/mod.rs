//! What both benchmarks (`cni`, `policy`) share: interrupt handling, nearest-rank
//! statistics, Markdown tables and the report, the machine line, env knobs.
//! Included with `#[path = "support/mod.rs"] mod support;`.

#![allow(dead_code)] // each bench uses its own subset

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

// ------------------------------------------------------------------ signals

/// Set by SIGINT/SIGTERM/SIGHUP.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP set a flag that [`checkpoint`] turns into a panic,
/// so the guards (namespaces, clusters, directories) run on the way out.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// True once a signal asked the bench to stop.
pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub fn checkpoint() {
    if interrupted() {
        panic!("interrupted by a signal: cleaning up before exiting");
    }
}

// ------------------------------------------------------------------ exec

/// A contender's host namespace, open (O_CLOEXEC) for `setns` in spawned
/// children and for threads that work inside it.
pub struct Host {
    pub name: String,
    pub ns: ohno::net::netns::NetNs,
}

impl Host {
    pub fn of(ns: &crate::common::NetNs) -> Host {
        let path = PathBuf::from(ns.path());
        let handle = ohno::net::netns::NetNs::open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Host {
            name: ns.name().to_owned(),
            ns: handle,
        }
    }

    /// Make `cmd`'s child enter this namespace between fork and exec (setns
    /// on the fd opened before the fork), as a runtime execs a plugin.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let fd: RawFd = self.ns.fd().as_raw_fd();
        // SAFETY: only setns(2) runs between fork and exec, and it is
        // async-signal-safe. If it fails, spawn fails and the program never
        // runs, so nothing ever runs in the machine's own namespace.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}

// ------------------------------------------------------------------ contenders

/// Debian's reference `bridge` + `host-local` as the benches run it against
/// Ohno: bridge `cni0` as gateway, MTU 1500, no masquerade, host-local's
/// files in `node`'s directory. A network config of its own; inside a
/// conflist the runtime overrides `name` and `cniVersion` with the list's.
pub fn reference_conf(node: &crate::common::Node, network: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": crate::common::REFERENCE_VERSION,
        "name": network,
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

// ------------------------------------------------------------------ stats

/// Nearest-rank percentile, in milliseconds.
pub fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

pub fn p50(s: &[Duration]) -> f64 {
    percentile(s, 50.0)
}

pub fn p95(s: &[Duration]) -> f64 {
    percentile(s, 95.0)
}

/// Milliseconds, two decimals.
pub fn ms(v: f64) -> String {
    format!("{v:.2}")
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

// ------------------------------------------------------------------ report

/// A Markdown table, padded so it also reads well in a terminal.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .chain(std::iter::once(&self.headers[i]))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = " ".repeat(w - c.chars().count());
                if i == 0 {
                    let _ = write!(s, " {c}{pad} |");
                } else {
                    let _ = write!(s, " {pad}{c} |");
                }
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.headers);
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            let dashes = "-".repeat(w + 1);
            if i == 0 {
                let _ = write!(out, ":{dashes}|");
            } else {
                let _ = write!(out, "{dashes}:|");
            }
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// The report, printed section by section as it is produced.
pub struct Report {
    pub text: String,
}

impl Report {
    pub fn new() -> Report {
        Report {
            text: String::new(),
        }
    }

    pub fn add(&mut self, s: &str) {
        print!("{s}");
        let _ = std::io::stdout().flush();
        self.text.push_str(s);
    }

    pub fn para(&mut self, s: &str) {
        self.add(&format!("{s}\n\n"));
    }

    pub fn table(&mut self, t: &Table) {
        self.add(&format!("{}\n", t.render()));
    }
}

/// `target/bench/<file>`, next to the bench executable's target dir
/// (`target/release/deps/<bench>-*`), so `CARGO_TARGET_DIR` is honoured.
pub fn report_path(file: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("bench")
        .join(file)
}

// ------------------------------------------------------------------ machine

/// `Machine: nproc …, kernel …, CPU …; load average <when> …`.
pub fn machine(when: &str) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "Machine: nproc {nproc}, kernel {}, CPU {cpu}; load average{when} {}",
        kernel.trim(),
        loadavg()
    )
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A positive integer from the environment, else `default`.
pub fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
