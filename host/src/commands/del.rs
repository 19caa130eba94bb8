//! DEL: idempotent and best-effort. The pod's interface is removed if its netns and
//! link still exist (deleting one end of a veth removes both), and the addresses are
//! released even when there is no netns at all. Masquerade rules go with the last
//! attachment of the network on this node.

use super::Invocation;
use crate::error::{Error, Result};
use crate::ipam::Allocator;
use crate::net::link::Netlink;
use crate::net::netns::NetNs;
use crate::net::nft;
use crate::store;

pub fn run(inv: &Invocation) -> Result<()> {
    let (env, conf) = (&inv.env, &inv.conf);
    let mut first_error: Option<Error> = None;

    // In IPAM-plugin mode the calling plugin owns the links.
    if let Some(path) = env.netns.as_ref().filter(|_| !conf.ipam_only()) {
        match NetNs::open(path) {
            Ok(ns) => {
                if let Err(e) = delete_pod_link(&ns, &env.ifname) {
                    log::warn!("delete {} in {}: {e}", env.ifname, path.display());
                    first_error.get_or_insert(e);
                }
            }
            // The netns is gone, and the veth with it.
            Err(e) => log::info!(
                "netns {} not usable ({e}); nothing to unplug",
                path.display()
            ),
        }
    }

    let kv = store::open(&conf.ipam.store)?;
    let alloc = Allocator::from_conf(&*kv, conf);
    match alloc.release(&inv.attachment_id())? {
        Some(rec) => log::info!(
            "released {}",
            rec.ips
                .iter()
                .map(|i| i.address.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => log::info!(
            "no addresses recorded for {}/{}",
            env.container_id,
            env.ifname
        ),
    }

    if conf.ip_masq && !conf.ipam_only() {
        let remaining = alloc
            .attachments(Some(&conf.name))?
            .into_iter()
            .filter(|a| a.owner.node == conf.node)
            .count();
        if remaining == 0 {
            if let Err(e) = nft::remove_masquerade(&conf.name) {
                log::warn!("remove masquerade of {}: {e}", conf.name);
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn delete_pod_link(ns: &NetNs, ifname: &str) -> Result<()> {
    let mut nl = Netlink::open_in(ns)?;
    match nl.link_by_name(ifname)? {
        Some(link) => match nl.delete_link(link.index) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        },
        None => Ok(()),
    }
}
