//! Throwaway network namespaces: names, creation, inspection, deletion and
//! the sweep of namespaces left behind by dead harness processes.

use serde_json::Value;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

const NETNS_DIR: &str = "/var/run/netns";
pub(super) const NAME_PREFIX: &str = "ohno-t-";

/// A name unique to this process and call: `ohno-t-<pid>-<n>-<role>`.
pub fn unique_name(role: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{n}-{role}", std::process::id())
}

/// Fails the test early, with a reason, when it cannot create namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "netns integration tests create network namespaces: run them as root \
         (CAP_NET_ADMIN and CAP_SYS_ADMIN), e.g. `sudo -E make test`"
    );
}

/// Runs a command to completion and panics, with its stderr, if it fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces older than this whose creator is gone are leftovers.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Deletes `ohno-t-<pid>-*` namespaces whose harness process is gone.
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Age as well as a dead PID: a run in another PID namespace sharing
        // /var/run/netns must not lose namespaces it is still using.
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A network namespace created with `ip netns add` and deleted on drop.
///
/// Deleting a namespace removes everything in it: links (and their veth
/// peers elsewhere), addresses, routes, nftables rules, sysctls.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `ohno-t-<pid>-<n>-<role>` with `lo` up.
    pub fn create(role: &str) -> NetNs {
        require_root();
        SWEEP.call_once(sweep_stale_namespaces);
        let name = unique_name(role);
        run_ok("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("{NETNS_DIR}/{}", self.name)
    }

    /// `ip netns exec NAME argv...`, not yet started.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its output, whatever the status.
    pub fn exec(&self, argv: &[&str]) -> std::process::Output {
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {}: {e}", self.name))
    }

    /// Runs `argv` inside the namespace, panics if it fails, returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in netns {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j -d <args>` inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut argv = vec!["ip", "-j", "-d"];
        argv.extend_from_slice(args);
        let out = self.exec_ok(&argv);
        if out.trim().is_empty() {
            return Vec::new();
        }
        match serde_json::from_str(&out) {
            Ok(Value::Array(items)) => items,
            other => panic!("unexpected output of {argv:?} in {}: {other:?}", self.name),
        }
    }

    /// Every link, as `ip -j -d link show` describes it.
    pub fn links(&self) -> Vec<Value> {
        self.ip_json(&["link", "show"])
    }

    /// Names of every link, sorted.
    pub fn link_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    /// One link by name, if it exists.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.links()
            .into_iter()
            .find(|l| l["ifname"].as_str() == Some(name))
    }

    /// IPv4 addresses on `dev` as `(address, prefix length)`.
    pub fn ipv4_addrs(&self, dev: &str) -> Vec<(Ipv4Addr, u8)> {
        let links = self.ip_json(&["-4", "addr", "show", "dev", dev]);
        let mut addrs = Vec::new();
        for link in &links {
            for info in link["addr_info"].as_array().into_iter().flatten() {
                let local = info["local"].as_str().and_then(|a| a.parse().ok());
                let len = info["prefixlen"]
                    .as_u64()
                    .and_then(|l| u8::try_from(l).ok());
                if let (Some(local), Some(len)) = (local, len) {
                    addrs.push((local, len));
                }
            }
        }
        addrs
    }

    /// The main table's IPv4 routes, as `ip -j route show` describes them.
    pub fn routes(&self) -> Vec<Value> {
        self.ip_json(&["-4", "route", "show"])
    }

    /// The default route's gateway and device, if there is a default route.
    pub fn default_route(&self) -> Option<(String, String)> {
        self.routes().into_iter().find_map(|r| {
            (r["dst"].as_str() == Some("default")).then(|| {
                (
                    r["gateway"].as_str().unwrap_or_default().to_owned(),
                    r["dev"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
    }

    /// Pings `addr` once from inside the namespace; three tries, one second each.
    pub fn ping(&self, addr: &str) -> bool {
        (0..3).any(|_| self.exec(&["ping", "-c1", "-W1", addr]).status.success())
    }

    /// Reads a sysctl as the namespace sees it.
    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec_ok(&["cat", &path]).trim().to_owned()
    }

    /// `nft -j list ruleset` inside the namespace.
    pub fn nft_ruleset(&self) -> Value {
        let out = self.exec_ok(&["nft", "-j", "list", "ruleset"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j output: {e}: {out}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete netns {}", self.name);
        }
    }
}

impl fmt::Debug for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
