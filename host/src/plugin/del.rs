//! DEL: idempotent and best-effort. The pod's interface is unplugged if its netns
//! and link still exist, and the addresses are released even when there is no
//! netns at all. Masquerade rules go with the last attachment of the network on
//! this node.
//!
//! Only the veth this attachment's ADD made is unplugged: the link called
//! `CNI_IFNAME` in the pod must be a veth whose peer, on this host, is a veth
//! pointing back at it and carrying the attachment's alias
//! (`<containerid>/<ifname>`, set by ADD) — or, left by an ADD killed before it
//! set the alias, no alias and the built-in rule's name for this attachment. Anything else of that name (a dummy, another plugin's
//! veth, a link the pod made itself) is left alone, and DEL still releases the
//! addresses and succeeds.
//!
//! Deleting a veth costs the kernel an RCU barrier whoever asks (tens of
//! milliseconds: the reference plugin's DEL is mostly that). DEL
//! does not wait for it: it takes both ends out of service (down, renamed to
//! `ohnodel<index>`, so `CNI_IFNAME` and the host-side name are free at once and
//! a repeated ADD never adopts the dying pair), releases the addresses,
//! and hands the deletion to the agent's reaper (or a one-shot `ohnod on-demand
//! reap`), which holds the pod netns open until the pair is gone. Nothing can use the released addresses
//! meanwhile: the pod end is down. If the reaper cannot be started, DEL deletes
//! the link itself.

use super::Invocation;
use crate::config::NetConf;
use crate::error::{Error, Result};
use crate::net::link::{Link, Netlink};
use crate::net::netns::NetNs;
use crate::net::nft;

pub fn run(inv: &Invocation) -> Result<()> {
    let (env, conf) = (&inv.env, &inv.conf);
    let mut first_error: Option<Error> = None;

    // In IPAM-plugin mode the calling plugin owns the links.
    if let Some(path) = env.netns.as_ref().filter(|_| !conf.ipam_only()) {
        match NetNs::open(path) {
            Ok(ns) => {
                if let Err(e) = delete_pod_link(conf, &ns, &env.container_id, &env.ifname) {
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

    let session = super::session::Session::open(conf)?;
    let alloc = session.allocator();
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

    if conf.ip_masq && !conf.ipam_only() && super::add::node_has_no_attachments(&alloc, conf) {
        if let Err(e) = nft::remove_masquerade(&conf.name) {
            log::warn!("remove masquerade of {}: {e}", conf.name);
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Prefix of retired pod interfaces awaiting deletion.
use crate::agent::services::reaper::TOMBSTONE;

fn delete_pod_link(conf: &NetConf, ns: &NetNs, container_id: &str, ifname: &str) -> Result<()> {
    let mut nl = Netlink::open_in(ns)?;
    let Some(link) = nl.link_by_name(ifname)? else {
        return Ok(());
    };
    let mut host = Netlink::open()?;
    let peer = match host_end(&mut host, &link, container_id, ifname)? {
        Ok(peer) => peer,
        Err(why) => {
            log::warn!(
                "{ifname} in {} is not this attachment's veth ({why}); left alone",
                ns.path().display()
            );
            return Ok(());
        }
    };
    let retired = nl.retire(link.index, &format!("{TOMBSTONE}{:08x}", link.index));
    if retired.is_ok() {
        // The host end too: its name (the default rule's or a policy's) is free at
        // once, and a repeated ADD can never adopt the dying pair.
        if let Err(e) = host.retire(peer, &format!("{TOMBSTONE}{peer:08x}")) {
            log::debug!("retire host veth {peer}: {e}");
        }
        if super::session::reap(conf, ns, link.index) {
            return Ok(());
        }
        log::warn!("no link reaper could take {ifname}; deleting it now");
    }
    match nl.delete_link(link.index) {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// The index of `pod_link`'s host end when `pod_link` is the veth this
/// attachment's ADD made: a veth whose peer, in this (the host's) namespace, is
/// a veth with `pod_link` as its own peer (an interface index is unique within
/// a namespace, so the two pointing at each other is the pair) and marked as
/// this attachment's: by its alias `<containerid>/<ifname>`, or — for a pair
/// whose ADD was killed between creating it and setting the alias (the kernel
/// takes no alias at creation) — by having no alias and a name the built-in
/// rule gives this attachment. Otherwise `Ok(Err(why))`.
fn host_end(
    host: &mut Netlink,
    pod_link: &Link,
    container_id: &str,
    ifname: &str,
) -> Result<std::result::Result<u32, String>> {
    let alias = &super::add::host_veth_alias(container_id, ifname);
    if pod_link.kind.as_deref() != Some("veth") {
        return Ok(Err(format!(
            "kind {}, not veth",
            pod_link.kind.as_deref().unwrap_or("none")
        )));
    }
    let Some(peer) = pod_link.peer else {
        return Ok(Err("a veth without a peer".into()));
    };
    let Some(host_link) = host.link_by_index(peer)? else {
        return Ok(Err(format!("its peer {peer} is not on this host")));
    };
    let marked = match host_link.alias.as_deref() {
        Some(a) if !a.is_empty() => a == alias,
        _ => (0..super::add::HOST_NAME_ATTEMPTS).any(|salt| {
            host_link.name == crate::policy::default_host_ifname(container_id, ifname, salt)
        }),
    };
    let ours = host_link.kind.as_deref() == Some("veth")
        && marked
        && host_link.peer == Some(pod_link.index);
    if !ours {
        return Ok(Err(format!(
            "host link {} ({peer}) is not its peer with alias {alias:?}",
            host_link.name
        )));
    }
    Ok(Ok(peer))
}
