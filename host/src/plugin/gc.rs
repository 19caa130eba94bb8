//! GC (CNI 1.1): release this node's attachments on this network that the runtime
//! no longer lists in `cni.dev/valid-attachments`. Never another node's.

use std::collections::HashSet;

use super::Invocation;
use crate::error::{Error, Result};
use crate::net::nft;

pub fn run(inv: &Invocation) -> Result<()> {
    let conf = &inv.conf;
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            Error::config(
                "cni.dev/valid-attachments",
                "missing: GC needs the list of valid attachments",
            )
        })?
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let session = super::session::Session::open(conf)?;
    let alloc = session.allocator();
    let report = alloc.gc(&conf.name, &conf.node, &valid)?;
    log::info!(
        "gc: released {}, kept {} attachments of {} on {}",
        report.released.len(),
        report.kept,
        conf.name,
        conf.node
    );
    if conf.ip_masq && !conf.ipam_only() && report.kept == 0 && !report.released.is_empty() {
        nft::remove_masquerade(&conf.name)?;
    }
    Ok(())
}
