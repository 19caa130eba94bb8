//! CHECK: the attachment is still what ADD made — the allocation is recorded, the
//! pod interface exists with every address of `prevResult`, the routes are there,
//! and the host veth is still enslaved to the bridge.

use std::net::IpAddr;

use super::Invocation;
use crate::cni::result::CniResult;
use crate::error::{Error, Result};
use crate::ip::cidr::Cidr;
use crate::net::link::Netlink;

pub fn run(inv: &Invocation) -> Result<()> {
    let (env, conf) = (&inv.env, &inv.conf);
    let fail = |m: String| Error::CheckFailed(m);
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        Error::config("prevResult", "CHECK needs the result of ADD in prevResult")
    })?;
    let prev = CniResult::parse(prev)?;

    let session = super::session::Session::open(conf)?;
    let alloc = session.allocator();
    let record = alloc.find(&inv.attachment_id())?.ok_or_else(|| {
        fail(format!(
            "no allocation recorded for {}/{}",
            env.container_id, env.ifname
        ))
    })?;

    if conf.ipam_only() {
        // The calling plugin checks its links; the allocation is what we own.
        for ip in &prev.ips {
            if !record.ips.iter().any(|r| r.address == ip.address) {
                return Err(fail(format!(
                    "address {} is not recorded for this attachment",
                    ip.address
                )));
            }
        }
        return Ok(());
    }

    let netns = super::pod_netns(env)?;

    // Which prevResult interface is ours: the one in the sandbox with CNI_IFNAME.
    let ours = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            fail(format!(
                "prevResult has no interface {} in a sandbox",
                env.ifname
            ))
        })?;

    let mut pod = Netlink::open_in(&netns)?;
    let link = pod.link_by_name(&env.ifname)?.ok_or_else(|| {
        fail(format!(
            "interface {} is missing in {}",
            env.ifname,
            netns.path().display()
        ))
    })?;
    if let Some(mac) = &prev.interfaces[ours].mac {
        let have = link.mac.as_ref().map(crate::ip::mac::format_mac);
        if have.as_deref() != Some(mac.as_str()) {
            return Err(fail(format!(
                "{} has MAC {have:?}, prevResult says {mac}",
                env.ifname
            )));
        }
    }
    let have: Vec<(IpAddr, u8)> = pod.addrs(link.index)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(ours)) {
        let want =
            Cidr::parse(&ip.address).map_err(|m| fail(format!("prevResult address: {m}")))?;
        if !have.contains(&(want.addr(), want.prefix())) {
            return Err(fail(format!("{} is missing address {want}", env.ifname)));
        }
        if !record.ips.iter().any(|r| r.address == ip.address) {
            return Err(fail(format!(
                "address {want} is not recorded for this attachment"
            )));
        }
    }
    let routes = pod.routes()?;
    for r in &prev.routes {
        let dst = Cidr::parse(&r.dst).map_err(|m| fail(format!("prevResult route: {m}")))?;
        let gw = r.gw.as_deref().and_then(|g| g.parse::<IpAddr>().ok());
        let found = routes.iter().any(|x| {
            x.dst == dst.network() && x.prefix == dst.prefix() && (gw.is_none() || x.gateway == gw)
        });
        if !found {
            return Err(fail(format!(
                "route to {} via {:?} is missing in the pod",
                r.dst, r.gw
            )));
        }
    }

    // Host side: the bridge, and our veth on it.
    let mut host = Netlink::open()?;
    let bridge = host
        .link_by_name(&conf.bridge)?
        .ok_or_else(|| fail(format!("bridge {} is missing", conf.bridge)))?;
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(fail(format!("{} is not a bridge", conf.bridge)));
    }
    // Our host end is the pod interface's veth peer. Other host-side
    // interfaces in prevResult belong to later plugins of the chain
    // (bandwidth's ifb, ...) and are not ours to judge.
    let veth = match link.peer {
        Some(peer) => host.link_by_index(peer)?,
        None => None,
    }
    .filter(|l| l.kind.as_deref() == Some("veth"))
    .ok_or_else(|| fail(format!("the host end of {} is missing", env.ifname)))?;
    if veth.master != Some(bridge.index) {
        return Err(fail(format!(
            "host interface {} is not attached to {}",
            veth.name, conf.bridge
        )));
    }
    if !prev
        .interfaces
        .iter()
        .any(|i| i.sandbox.is_none() && i.name == veth.name)
    {
        return Err(fail(format!(
            "prevResult does not list the host interface {}",
            veth.name
        )));
    }
    Ok(())
}
