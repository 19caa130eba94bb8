//! The rtnetlink handle ([`Netlink`]) and link operations: look up links,
//! create or adopt the bridge, create the veth pair with its peer born in the
//! pod namespace, set up/MTU/hairpin, delete. Addresses and routes are in
//! [`super::addr`] and [`super::route`] (same handle).
//!
//! Every request carries `NLM_F_ACK` and waits for the kernel's answer, so an
//! `Ok` means the change is done. Errors keep the kernel's errno:
//! `is_exists()` / `is_not_found()` work on them.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use netlink_packet_core::{
    DefaultNla, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netns::NetNs;
use super::nl::{self, NlSocket, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP_INTR};
use crate::error::{Error, Result};

pub use super::route::Route;

pub use crate::ip::ifname::MAX_IFNAME_LEN;
/// `IFLA_BRPORT_MODE` inside `IFLA_PROTINFO` (AF_BRIDGE): hairpin mode.
const IFLA_BRPORT_MODE: u16 = 4;
/// A dump interrupted by a concurrent change is retried this many times.
const DUMP_RETRIES: usize = 5;

/// A network interface as read back from the kernel.
#[derive(Debug, Clone)]
pub struct Link {
    /// Interface index (unique within its namespace).
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND` ("bridge", "veth", …); `None` for physical devices.
    pub kind: Option<String>,
    /// Ethernet address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Index of the master device (the bridge, for a bridge port).
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFLA_IFALIAS`; Ohno stores "<containerid>/<ifname>" on host veth ends.
    pub alias: Option<String>,
    /// `IFLA_LINK`: for a veth end, the peer's index (in the peer's namespace).
    pub peer: Option<u32>,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            master: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            alias: None,
            peer: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Controller(master) => link.master = Some(*master),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
                LinkAttribute::Link(peer) => link.peer = Some(*peer),
                LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A NETLINK_ROUTE socket bound to one network namespace.
pub struct Netlink {
    sock: NlSocket,
    /// The namespace the socket was opened in, for error messages; `None` for
    /// the caller's own namespace.
    ns: Option<PathBuf>,
}

impl Netlink {
    /// Open a NETLINK_ROUTE socket in the calling thread's netns.
    pub fn open() -> Result<Netlink> {
        let sock = NlSocket::open(netlink_sys::protocols::NETLINK_ROUTE)
            .map_err(|e| Error::netlink("open netlink socket", e))?;
        Ok(Netlink { sock, ns: None })
    }

    /// Open a NETLINK_ROUTE socket inside `ns`: the socket is created on a
    /// thread that entered `ns` ([`NetNs::run`]). A netlink socket stays bound
    /// to the namespace it was created in, so the returned handle operates on
    /// `ns` from whichever thread uses it.
    pub fn open_in(ns: &NetNs) -> Result<Netlink> {
        let path = ns.path();
        let sock = ns.run(|| {
            NlSocket::open(netlink_sys::protocols::NETLINK_ROUTE).map_err(|e| {
                Error::netlink(format!("open netlink socket in {}", path.display()), e)
            })
        })?;
        Ok(Netlink {
            sock,
            ns: Some(path.to_path_buf()),
        })
    }

    /// " in <netns path>" for error contexts, or "" for the caller's netns.
    pub(crate) fn in_ns(&self) -> String {
        match &self.ns {
            Some(path) => format!(" in {}", path.display()),
            None => String::new(),
        }
    }

    /// The link named `name`, or `None` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self
            .link_message_by_name(name)?
            .map(|m| Link::from_message(&m)))
    }

    /// The link with index `index`, or `None` if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        Ok(self
            .link_message_by_index(index)?
            .map(|m| Link::from_message(&m)))
    }

    pub(crate) fn link_message_by_name(&mut self, name: &str) -> Result<Option<LinkMessage>> {
        let context = format!("get link {name}{}", self.in_ns());
        check_ifname(name).map_err(|e| Error::netlink(context.clone(), e))?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(first_link(replies)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink(context, e)),
        }
    }

    fn link_message_by_index(&mut self, index: u32) -> Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(first_link(replies)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink(
                format!("get link {index}{}", self.in_ns()),
                e,
            )),
        }
    }

    /// Create the bridge or adopt an existing one (error naming it if a link
    /// of that name is not a bridge); set `mtu` if `Some`, set promiscuous
    /// mode if `promisc` (never clears it), set it up. Returns the link re-read
    /// after the changes.
    ///
    /// A bridge we create gets its own MAC pinned (set explicitly), so it does
    /// not follow the lowest port MAC as pods come and go.
    pub fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>, promisc: bool) -> Result<Link> {
        let found = self.link_by_name(name)?;
        self.ensure_bridge_found(name, found, mtu, promisc)
    }

    /// [`Netlink::ensure_bridge`] for a caller that has just looked `name` up
    /// (`found`), so the lookup is not repeated.
    pub fn ensure_bridge_found(
        &mut self,
        name: &str,
        found: Option<Link>,
        mtu: Option<u32>,
        promisc: bool,
    ) -> Result<Link> {
        let ctx = format!("ensure bridge {name}{}", self.in_ns());
        let context = || ctx.clone();
        let mut created = false;
        let link = match found {
            Some(link) => link,
            None => {
                let mut msg = LinkMessage::default();
                msg.attributes.push(LinkAttribute::IfName(name.to_string()));
                if let Some(mtu) = mtu {
                    msg.attributes.push(LinkAttribute::Mtu(mtu));
                }
                msg.attributes
                    .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                        InfoKind::Bridge,
                    )]));
                match self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
                    Ok(_) => created = true,
                    // Another ADD created it between our lookup and create.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => {
                        return Err(Error::netlink(
                            format!("create bridge {name}{}", self.in_ns()),
                            e,
                        ))
                    }
                }
                self.link_by_name(name)?.ok_or_else(|| {
                    Error::netlink(context(), io::Error::from_raw_os_error(libc::ENODEV))
                })?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(Error::netlink(
                context(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "link {name} exists and is not a bridge (kind {})",
                        link.kind.as_deref().unwrap_or("none")
                    ),
                ),
            ));
        }

        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if promisc {
            msg.header.flags |= LinkFlags::Promisc;
            msg.header.change_mask |= LinkFlags::Promisc;
        }
        if let Some(mtu) = mtu.filter(|&m| m != link.mtu) {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if created {
            if let Some(mac) = link.mac {
                msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
            }
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| Error::netlink(context(), e))?;
        self.link_by_index(link.index)?
            .ok_or_else(|| Error::netlink(context(), io::Error::from_raw_os_error(libc::ENODEV)))
    }

    /// Create a veth pair in one RTM_NEWLINK: the host end `host_name` in this
    /// socket's netns, enslaved to `master` (a bridge index; 0 = none), with
    /// `mtu` and alias `alias`; the peer `peer_name` born directly inside
    /// `peer_ns` (IFLA_NET_NS_FD in the peer message) with `mtu` and optional
    /// `peer_mac`. Nothing is moved afterwards. The host end is set up when
    /// `up` (else left down, so it can still be renamed: see
    /// [`Netlink::rename_and_up`]); the peer is left down for the caller to
    /// configure. Returns the host end.
    ///
    /// EEXIST (either name taken) surfaces as an error with `is_exists()`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_veth(
        &mut self,
        host_name: &str,
        alias: &str,
        peer_name: &str,
        peer_ns: &NetNs,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
        master: u32,
        up: bool,
    ) -> Result<Link> {
        let ctx = format!(
            "create veth {host_name}{} (peer {peer_name} in {})",
            self.in_ns(),
            peer_ns.path().display()
        );
        let context = || ctx.clone();
        check_ifname(host_name)
            .and_then(|()| check_ifname(peer_name))
            .map_err(|e| Error::netlink(context(), e))?;

        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.fd().as_raw_fd()));
        peer.attributes.push(LinkAttribute::Mtu(mtu));
        if let Some(mac) = peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }

        let mut host = LinkMessage::default();
        if up {
            host.header.flags = LinkFlags::Up;
            host.header.change_mask = LinkFlags::Up;
        }
        host.attributes
            .push(LinkAttribute::IfName(host_name.to_string()));
        host.attributes.push(LinkAttribute::Mtu(mtu));
        if master != 0 {
            host.attributes.push(LinkAttribute::Controller(master));
        }
        host.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(host),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| Error::netlink(context(), e))?;

        // rtnl_create_link() ignores IFLA_IFALIAS, so the alias is a second
        // request. If it (or the re-read) fails, remove the pair we made.
        let finish = |nl: &mut Netlink| -> Result<Link> {
            let link = nl.link_by_name(host_name)?.ok_or_else(|| {
                Error::netlink(context(), io::Error::from_raw_os_error(libc::ENODEV))
            })?;
            nl.set_alias(link.index, alias)?;
            nl.link_by_index(link.index)?.ok_or_else(|| {
                Error::netlink(context(), io::Error::from_raw_os_error(libc::ENODEV))
            })
        };
        finish(self).inspect_err(|_| {
            if let Ok(Some(link)) = self.link_by_name(host_name) {
                let _ = self.delete_link(link.index);
            }
        })
    }

    /// Set `IFLA_IFALIAS` (an empty alias removes it).
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
            .map_err(|e| {
                Error::netlink(
                    format!("set alias {alias:?} on link {index}{}", self.in_ns()),
                    e,
                )
            })
    }

    /// Take a link out of service without deleting it: administratively down, then
    /// renamed to `new_name` so its old name is free at once. Both are cheap; the
    /// deletion (an RCU barrier in the kernel) can then happen elsewhere.
    pub fn retire(&mut self, index: u32, new_name: &str) -> Result<()> {
        check_ifname(new_name).map_err(|e| Error::netlink(format!("rename link {index}"), e))?;
        let mut down = LinkMessage::default();
        down.header.index = index;
        down.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(down), 0)
            .map_err(|e| Error::netlink(format!("set link {index} down{}", self.in_ns()), e))?;
        let mut rename = LinkMessage::default();
        rename.header.index = index;
        rename
            .attributes
            .push(LinkAttribute::IfName(new_name.to_string()));
        self.request(RouteNetlinkMessage::SetLink(rename), 0)
            .map(drop)
            .map_err(|e| {
                Error::netlink(
                    format!("rename link {index} to {new_name}{}", self.in_ns()),
                    e,
                )
            })
    }

    /// Rename a link that is down and set it up, in one request (the kernel
    /// renames before it changes flags; an up link cannot be renamed).
    pub fn rename_and_up(&mut self, index: u32, new_name: &str) -> Result<()> {
        let context = || format!("rename link {index} to {new_name}{}", self.in_ns());
        check_ifname(new_name).map_err(|e| Error::netlink(context(), e))?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(new_name.to_string()));
        let ctx = context();
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
            .map_err(|e| Error::netlink(ctx, e))
    }

    /// Set the link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
            .map_err(|e| Error::netlink(format!("set link {index} up{}", self.in_ns()), e))
    }

    /// Set the link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
            .map_err(|e| {
                Error::netlink(format!("set mtu {mtu} on link {index}{}", self.in_ns()), e)
            })
    }

    /// Set hairpin mode on a bridge port (`IFLA_PROTINFO`/`IFLA_BRPORT_MODE`
    /// in an AF_BRIDGE RTM_SETLINK, handled by the port's bridge).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)])),
        ]));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map(drop)
            .map_err(|e| {
                Error::netlink(
                    format!(
                        "set hairpin {} on bridge port {index}{}",
                        if on { "on" } else { "off" },
                        self.in_ns()
                    ),
                    e,
                )
            })
    }

    /// Hairpin mode of a bridge port, read from the port's
    /// `IFLA_INFO_SLAVE_DATA`; `None` if the link is missing or not a bridge port.
    pub fn hairpin(&mut self, index: u32) -> Result<Option<bool>> {
        let Some(msg) = self.link_message_by_index(index)? else {
            return Ok(None);
        };
        for attr in &msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos {
                    if let LinkInfo::PortData(InfoPortData::BridgePort(port)) = info {
                        for opt in port {
                            if let netlink_packet_route::link::InfoBridgePort::HairpinMode(on) = opt
                            {
                                return Ok(Some(*on));
                            }
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Delete the link (for a veth, both ends go). ENODEV surfaces as an
    /// error with `is_not_found()`.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), 0)
            .map(drop)
            .map_err(|e| Error::netlink(format!("delete link {index}{}", self.in_ns()), e))
    }

    /// Send one request with `NLM_F_REQUEST | NLM_F_ACK | flags` and wait for
    /// its ack. Returns the data messages that came before the ack (the reply
    /// to a GET).
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        let mut replies = Vec::new();
        loop {
            for raw in self.sock.recv()? {
                if raw.seq != seq {
                    continue; // a stale reply to an earlier, abandoned request
                }
                match raw.ty {
                    NLMSG_ERROR => {
                        raw.check()?;
                        return Ok(replies);
                    }
                    NLMSG_DONE => raw.check()?,
                    _ => replies.push(decode(&raw)?),
                }
            }
        }
    }

    /// Dump (`NLM_F_DUMP`) and collect every message until `NLMSG_DONE`. A
    /// dump the kernel flags as interrupted by a concurrent change is redone.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        'retry: for _ in 0..DUMP_RETRIES {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut replies = Vec::new();
            let mut interrupted = false;
            loop {
                for raw in self.sock.recv()? {
                    if raw.seq != seq {
                        continue;
                    }
                    interrupted |= raw.flags & NLM_F_DUMP_INTR != 0;
                    match raw.ty {
                        NLMSG_ERROR => {
                            raw.check()?;
                            return Ok(replies);
                        }
                        NLMSG_DONE => {
                            raw.check()?;
                            if interrupted {
                                continue 'retry;
                            }
                            return Ok(replies);
                        }
                        _ => replies.push(decode(&raw)?),
                    }
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "netlink dump kept being interrupted by concurrent changes",
        ))
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        let seq = self.sock.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf)?;
        Ok(seq)
    }
}

/// Decode an rtnetlink payload.
pub(crate) fn decode(raw: &nl::RawMessage) -> io::Result<RouteNetlinkMessage> {
    let mut header = NetlinkHeader::default();
    header.message_type = raw.ty;
    header.flags = raw.flags;
    header.sequence_number = raw.seq;
    RouteNetlinkMessage::deserialize(&header, &raw.payload)
        .map_err(|e| nl::invalid(format!("decode rtnetlink message type {}: {e}", raw.ty)))
}

fn first_link(replies: Vec<RouteNetlinkMessage>) -> Option<LinkMessage> {
    replies.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(link) => Some(link),
        _ => None,
    })
}

/// Reject names the kernel would refuse, with a clearer message than EINVAL.
fn check_ifname(name: &str) -> io::Result<()> {
    crate::ip::ifname::validate_ifname(name)
        .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testns::TestNs;

    #[test]
    fn netlink_handle_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Netlink>();
    }

    #[test]
    fn ifname_validation_matches_the_kernel_rules() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("veth0123456789a").is_ok());
        assert!(check_ifname("veth0123456789ab").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
    }

    #[test]
    fn bridge_is_created_then_adopted_and_a_non_bridge_is_refused() {
        let host = TestNs::new("br");
        let mut nl = Netlink::open_in(host.netns()).unwrap();
        assert!(nl.link_by_name("ohnotest0").unwrap().is_none());

        let br = nl.ensure_bridge("ohnotest0", Some(1400), true).unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert_eq!(br.mtu, 1400);
        assert!(br.up);
        assert!(br.mac.is_some());
        let json = host.exec(&["ip", "-j", "-d", "link", "show", "ohnotest0"]);
        assert!(json.contains("\"PROMISC\""), "{json}");
        // The MAC is pinned (NET_ADDR_SET), so ports joining cannot change it.
        let assign = host.exec(&["cat", "/sys/class/net/ohnotest0/addr_assign_type"]);
        assert_eq!(assign.trim(), "3");

        // Adopt: same index, MTU changed, not recreated.
        let again = nl.ensure_bridge("ohnotest0", Some(1300), false).unwrap();
        assert_eq!(again.index, br.index);
        assert_eq!(again.mtu, 1300);
        assert_eq!(again.mac, br.mac);
        let by_index = nl.link_by_index(br.index).unwrap().unwrap();
        assert_eq!(by_index.name, "ohnotest0");

        // A non-bridge of that name is refused, naming it.
        host.exec(&[
            "ip",
            "link",
            "add",
            "notabridge",
            "type",
            "veth",
            "peer",
            "name",
            "nbpeer",
        ]);
        let err = nl.ensure_bridge("notabridge", None, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("notabridge") && msg.contains("not a bridge (kind veth)"),
            "{msg}"
        );
        assert!(msg.contains(host.path().to_str().unwrap()), "{msg}");
    }

    #[test]
    fn veth_peer_is_born_in_the_pod_netns_with_name_mtu_and_mac() {
        let host = TestNs::new("vh");
        let pod = TestNs::new("vp");
        let mut nl = Netlink::open_in(host.netns()).unwrap();
        let br = nl.ensure_bridge("ohnotest0", Some(1450), false).unwrap();
        let mac = [0x0a, 0x58, 0x0a, 0x01, 0x02, 0x03];
        let veth = nl
            .create_veth(
                "vethohno1",
                "cid123/eth0",
                "eth0",
                pod.netns(),
                1450,
                Some(mac),
                br.index,
                true,
            )
            .unwrap();
        assert_eq!(veth.name, "vethohno1");
        assert_eq!(veth.kind.as_deref(), Some("veth"));
        assert_eq!(veth.master, Some(br.index));
        assert_eq!(veth.mtu, 1450);
        assert!(veth.up);
        assert_eq!(veth.alias.as_deref(), Some("cid123/eth0"));
        // The peer is not in the host netns...
        assert!(nl.link_by_name("eth0").unwrap().is_none());
        // ...but in the pod's, with the requested name, MTU and MAC.
        let mut pod_nl = Netlink::open_in(pod.netns()).unwrap();
        let eth0 = pod_nl.link_by_name("eth0").unwrap().unwrap();
        assert_eq!(eth0.kind.as_deref(), Some("veth"));
        assert_eq!(eth0.mtu, 1450);
        assert_eq!(eth0.mac, Some(mac));
        pod_nl.set_up(eth0.index).unwrap();
        assert!(pod_nl.link_by_index(eth0.index).unwrap().unwrap().up);
        pod_nl.set_mtu(eth0.index, 1400).unwrap();
        assert_eq!(pod_nl.link_by_index(eth0.index).unwrap().unwrap().mtu, 1400);

        // Same host name again: EEXIST, with context.
        let other = TestNs::new("vp2");
        let err = nl
            .create_veth(
                "vethohno1",
                "cid456/eth0",
                "eth0",
                other.netns(),
                1450,
                None,
                br.index,
                true,
            )
            .unwrap_err();
        assert!(err.is_exists(), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("create veth vethohno1 in "), "{msg}");
        assert!(
            msg.contains(&format!("(peer eth0 in {})", other.path().display())),
            "{msg}"
        );
        // Peer name taken in the pod: EEXIST too, and nothing is left behind.
        let err = nl
            .create_veth(
                "vethohno2",
                "cid789/eth0",
                "eth0",
                pod.netns(),
                1450,
                None,
                br.index,
                true,
            )
            .unwrap_err();
        assert!(err.is_exists(), "{err}");
        assert!(nl.link_by_name("vethohno2").unwrap().is_none());

        // Deleting the host end removes the peer in the pod too.
        nl.delete_link(veth.index).unwrap();
        assert!(pod_nl.link_by_name("eth0").unwrap().is_none());
        let err = nl.delete_link(veth.index).unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    #[test]
    fn hairpin_is_set_on_a_bridge_port() {
        let host = TestNs::new("hp");
        let pod = TestNs::new("hpp");
        let mut nl = Netlink::open_in(host.netns()).unwrap();
        let br = nl.ensure_bridge("ohnotest0", None, false).unwrap();
        let veth = nl
            .create_veth(
                "vethhp",
                "c/eth0",
                "eth0",
                pod.netns(),
                1500,
                None,
                br.index,
                true,
            )
            .unwrap();
        assert_eq!(nl.hairpin(veth.index).unwrap(), Some(false));
        nl.set_hairpin(veth.index, true).unwrap();
        assert_eq!(nl.hairpin(veth.index).unwrap(), Some(true));
        let json = host.exec(&["ip", "-j", "-d", "link", "show", "vethhp"]);
        assert!(json.contains("\"hairpin\":true"), "{json}");
        nl.set_hairpin(veth.index, false).unwrap();
        assert_eq!(nl.hairpin(veth.index).unwrap(), Some(false));
        // Not a bridge port: the bridge layer refuses.
        assert!(nl.set_hairpin(br.index, true).is_err());
    }
}
