//! Kernel parameters under `/proc/sys`. Network sysctls (`net/…`) resolve
//! against the network namespace of the thread that *opens* the file, so
//! calling these inside [`super::netns::NetNs::run`] reads and writes the
//! pod's (or test's) values, not the host's.

use std::io;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// `/proc/sys/<key>`. The key is a slash path ("net/ipv4/ip_forward"); a
/// dotted key ("net.ipv4.ip_forward") is accepted when it has no slash (an
/// interface name with a dot must use the slash form, as with `sysctl -w`).
fn path(key: &str) -> io::Result<PathBuf> {
    let key = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    if key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid sysctl key",
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(key))
}

/// Write a sysctl like "net/ipv4/ip_forward" = "1" (applies to the calling
/// thread's netns). Skips the write when the value is already equal
/// (whitespace-insensitive), which also avoids needless writes to read-only
/// `/proc/sys` when nothing changes.
pub fn set(key: &str, value: &str) -> Result<()> {
    let context = || format!("set sysctl {key}={value}");
    let path = path(key).map_err(|e| Error::netlink(context(), e))?;
    let current = std::fs::read_to_string(&path).map_err(|e| Error::netlink(context(), e))?;
    if current.split_whitespace().eq(value.split_whitespace()) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| Error::netlink(context(), e))
}

/// Read a sysctl, without the trailing newline.
pub fn get(key: &str) -> Result<String> {
    let context = || format!("get sysctl {key}");
    let path = path(key).map_err(|e| Error::netlink(context(), e))?;
    let value = std::fs::read_to_string(&path).map_err(|e| Error::netlink(context(), e))?;
    Ok(value.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testns::TestNs;

    #[test]
    fn keys_map_to_proc_sys_and_traversal_is_refused() {
        assert_eq!(
            path("net/ipv4/ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        assert!(path("net/../../etc/passwd").is_err());
        assert!(path("/etc/passwd").is_err());
        assert!(path("").is_err());
    }

    #[test]
    fn set_applies_to_the_namespace_of_the_calling_thread() {
        let ns = TestNs::new("sysctl");
        let host_before = get("net/ipv4/ip_forward").unwrap();
        let inside = ns
            .netns()
            .run(|| {
                let before = get("net/ipv4/ip_forward")?;
                let target = if before == "1" { "0" } else { "1" };
                set("net/ipv4/ip_forward", target)?;
                set("net.ipv4.ip_forward", target)?; // equal: no write
                Ok((target.to_string(), get("net/ipv4/ip_forward")?))
            })
            .unwrap();
        assert_eq!(inside.0, inside.1);
        assert_eq!(get("net/ipv4/ip_forward").unwrap(), host_before);
        let err = get("net/ipv4/no_such_knob").unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err
            .to_string()
            .starts_with("get sysctl net/ipv4/no_such_knob: "));
    }
}
