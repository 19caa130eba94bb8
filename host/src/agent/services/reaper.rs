//! The reaper service: finishes deleting a veth pair DEL has retired.
//!
//! Deleting a veth costs the kernel an RCU barrier whoever asks (tens of
//! milliseconds). DEL takes both ends out of service (down, renamed to
//! `ohnodel<index>`) and hands the pod's network namespace — its descriptor,
//! passed over the socket, since the runtime may unmount the namespace's path
//! as soon as DEL returns — to the reaper, which deletes the link when it
//! can. Only links with the tombstone name are deleted: an index reused by a
//! new link in the meantime is left alone.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use crate::agent::metrics::Metrics;
use crate::error::Result;
use crate::net::link::Netlink;
use crate::net::netns::NetNs;

/// The prefix DEL renames a retired link to.
pub const TOMBSTONE: &str = "ohnodel";

/// Receive the namespace descriptor on `stream` and delete link `index` in it.
pub fn serve(metrics: &Metrics, index: u32, stream: UnixStream) {
    let fd = match crate::agent::protocol::receive_fd(&stream) {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("reaper: no namespace descriptor for link {index}: {e}");
            return;
        }
    };
    // The caller does not wait for the deletion.
    drop(stream);
    match reap(fd, index) {
        Ok(()) => metrics.link_reaped(true),
        Err(e) => {
            metrics.link_reaped(false);
            log::warn!("reaper: delete link {index}: {e}");
        }
    }
}

/// Delete the retired link `index` in the namespace open on `fd` (checked to
/// be a network namespace first, as any path DEL is given).
pub fn reap(fd: OwnedFd, index: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let ns = NetNs::open(&path)?;
    drop(fd);
    let mut nl = Netlink::open_in(&ns)?;
    match nl.link_by_index(index)? {
        Some(l) if l.name.starts_with(TOMBSTONE) => match nl.delete_link(index) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        },
        _ => Ok(()),
    }
}
