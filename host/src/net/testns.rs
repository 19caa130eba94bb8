//! Test-only throwaway network namespaces: `ip netns add ohno-nettest-<pid>-<n>`,
//! deleted on drop. Tests create links, addresses, routes, sysctls and nft
//! rules only inside these, never in the machine's own namespace.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::netns::NetNs;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named netns that exists for the lifetime of the value.
pub(crate) struct TestNs {
    name: String,
    ns: Option<NetNs>,
}

impl TestNs {
    /// Create `ohno-nettest-<pid>-<n>-<what>` (panics on failure: test setup).
    pub fn new(what: &str) -> TestNs {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("ohno-nettest-{}-{n}-{what}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut guard = TestNs { name, ns: None };
        guard.ns = Some(NetNs::open(&guard.path()).expect("open test netns"));
        guard
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// The open namespace.
    pub fn netns(&self) -> &NetNs {
        self.ns.as_ref().expect("test netns is open until drop")
    }

    /// Run `argv` via `ip netns exec <name>` and return stdout (panics on failure).
    pub fn exec(&self, argv: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "ip netns exec {} {argv:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        self.ns = None;
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
