//! GC (CNI 1.1): release this node's attachments on this network that the runtime
//! no longer lists in `cni.dev/valid-attachments`. Never another node's.

use std::collections::HashSet;

use super::Invocation;
use crate::error::{Error, Result};
use crate::ipam::Allocator;
use crate::net::nft;
use crate::store;

pub fn run(inv: &Invocation) -> Result<()> {
    let conf = &inv.conf;
    let valid: HashSet<(&str, &str)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            Error::config(
                "cni.dev/valid-attachments",
                "missing: GC needs the list of valid attachments",
            )
        })?
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let kv = store::open(&conf.ipam.store)?;
    let alloc = Allocator::new(&*kv, conf.ipam.store.prefix(), &conf.node);
    let mut released = 0;
    let mut kept = 0;
    for att in alloc.attachments(Some(&conf.name))? {
        let o = &att.owner;
        if o.node != conf.node {
            continue;
        }
        if valid.contains(&(o.container_id.as_str(), o.ifname.as_str())) {
            kept += 1;
            continue;
        }
        log::info!(
            "gc: releasing stale attachment {}/{}",
            o.container_id,
            o.ifname
        );
        alloc.release(&o.id())?;
        released += 1;
    }
    log::info!(
        "gc: released {released}, kept {kept} attachments of {} on {}",
        conf.name,
        conf.node
    );
    if conf.ip_masq && kept == 0 && released > 0 {
        nft::remove_masquerade(&conf.name)?;
    }
    Ok(())
}
