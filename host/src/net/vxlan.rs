//! The vxlan device the agent routes remote blocks through: created with its
//! MAC (so it is the same after every restart and reboot, and peers' FDB
//! entries stay right), `local` = the node's underlay address, learning off
//! (every remote MAC is a permanent FDB entry), a fixed VNI and UDP port.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::link::{Link, Netlink};
use crate::error::{Error, Result};
use crate::ip::mac::format_mac;

/// What the device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination (and listening) port.
    pub port: u16,
    /// The node's underlay address: the outer source, and the family of the
    /// underlay this device carries traffic over.
    pub local: IpAddr,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// The vxlan parameters of an existing device.
#[derive(Debug, Default, PartialEq, Eq)]
struct Found {
    vni: Option<u32>,
    port: Option<u16>,
    local: Option<IpAddr>,
    learning: Option<bool>,
}

fn found(msg: &LinkMessage) -> Found {
    let mut f = Found::default();
    for attr in &msg.attributes {
        let LinkAttribute::LinkInfo(infos) = attr else {
            continue;
        };
        for info in infos {
            let LinkInfo::Data(InfoData::Vxlan(nlas)) = info else {
                continue;
            };
            for nla in nlas {
                match nla {
                    InfoVxlan::Id(v) => f.vni = Some(*v),
                    InfoVxlan::Port(p) => f.port = Some(*p),
                    InfoVxlan::Local(a) => f.local = Some(IpAddr::V4(*a)),
                    InfoVxlan::Local6(a) => f.local = Some(IpAddr::V6(*a)),
                    InfoVxlan::Learning(l) => f.learning = Some(*l),
                    _ => {}
                }
            }
        }
    }
    f
}

impl Netlink {
    /// Create the device described by `spec`, or adopt the existing one of
    /// that name when it is a vxlan device with the same VNI, port, local
    /// address and learning off (its MAC and MTU are set to the spec's); a
    /// link of that name that differs in any of those is deleted and
    /// re-created (a vxlan device's VNI and addresses cannot be changed in
    /// place). Any other kind of link of that name is an error: it is not
    /// ours. Returns the device, up, and whether it was (re-)created.
    pub fn ensure_vxlan(&mut self, spec: &VxlanSpec) -> Result<(Link, bool)> {
        let ctx = format!("ensure vxlan {}{}", spec.name, self.in_ns());
        let fail = |e: io::Error| Error::netlink(ctx.clone(), e);
        let mut created = false;
        let existing = self.link_message_by_name(&spec.name)?;
        let index = match existing {
            Some(msg) => {
                let link = Link::from_message(&msg);
                if link.kind.as_deref() != Some("vxlan") {
                    return Err(fail(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "link {} exists and is not a vxlan device (kind {})",
                            spec.name,
                            link.kind.as_deref().unwrap_or("none")
                        ),
                    )));
                }
                let want = Found {
                    vni: Some(spec.vni),
                    port: Some(spec.port),
                    local: Some(spec.local),
                    learning: Some(false),
                };
                if found(&msg) == want {
                    Some(link)
                } else {
                    log::info!(
                        "vxlan {}: VNI, port or local address changed ({:?}, want {want:?}); \
                         re-creating it",
                        spec.name,
                        found(&msg)
                    );
                    self.delete_link(link.index)?;
                    None
                }
            }
            None => None,
        };
        let link = match index {
            Some(link) => link,
            None => {
                self.create_vxlan(spec).map_err(fail)?;
                created = true;
                self.link_by_name(&spec.name)?
                    .ok_or_else(|| fail(io::Error::from_raw_os_error(libc::ENODEV)))?
            }
        };
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if link.mtu != spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        }
        if link.mac != Some(spec.mac) {
            log::info!(
                "vxlan {}: MAC {} → {}",
                spec.name,
                link.mac.as_ref().map(format_mac).unwrap_or_default(),
                format_mac(&spec.mac)
            );
            msg.attributes
                .push(LinkAttribute::Address(spec.mac.to_vec()));
        }
        if !link.up || !msg.attributes.is_empty() {
            self.request(RouteNetlinkMessage::SetLink(msg), 0)
                .map_err(fail)?;
        }
        let link = self
            .link_by_index(link.index)?
            .ok_or_else(|| fail(io::Error::from_raw_os_error(libc::ENODEV)))?;
        Ok((link, created))
    }

    fn create_vxlan(&mut self, spec: &VxlanSpec) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes
            .push(LinkAttribute::Address(spec.mac.to_vec()));
        let local = match spec.local {
            IpAddr::V4(a) => InfoVxlan::Local(a),
            IpAddr::V6(a) => InfoVxlan::Local6(a),
        };
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                local,
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::neigh::{FdbEntry, Neighbour};
    use crate::net::testns::TestNs;

    fn spec(local: &str) -> VxlanSpec {
        VxlanSpec {
            name: "ohnovxtest".into(),
            vni: 4242,
            port: 4789,
            local: local.parse().unwrap(),
            mac: [0x02, 0, 0, 0, 0x42, 0x01],
            mtu: 1450,
        }
    }

    #[test]
    fn vxlan_device_is_created_adopted_and_recreated_and_carries_entries() {
        let ns = TestNs::new("vx");
        let mut nl = Netlink::open_in(ns.netns()).unwrap();
        let s = spec("192.0.2.10");
        let (link, created) = nl.ensure_vxlan(&s).unwrap();
        assert!(created);
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(link.mac, Some(s.mac));
        assert_eq!(link.mtu, 1450);
        assert!(link.up);
        let json = ns.exec(&["ip", "-d", "-j", "link", "show", "ohnovxtest"]);
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        let data = &doc[0]["linkinfo"]["info_data"];
        assert_eq!(data["id"], 4242, "{json}");
        assert_eq!(data["port"], 4789, "{json}");
        assert_eq!(data["local"], "192.0.2.10", "{json}");
        assert_eq!(data["learning"], false, "{json}");

        // Adopted as is: same index.
        let (again, created) = nl.ensure_vxlan(&s).unwrap();
        assert!(!created);
        assert_eq!(again.index, link.index);

        // Entries on it.
        let n = Neighbour {
            ip: "fe80::1".parse().unwrap(),
            mac: [0x02, 0, 0, 0, 0x43, 0x01],
        };
        let f = FdbEntry {
            mac: n.mac,
            dst: "192.0.2.11".parse().unwrap(),
        };
        nl.replace_neighbour(link.index, &n).unwrap();
        nl.replace_neighbour(link.index, &n).unwrap();
        nl.replace_fdb(link.index, &f).unwrap();
        nl.replace_fdb(link.index, &f).unwrap();
        assert_eq!(nl.neighbours(link.index).unwrap(), vec![n.clone()]);
        assert_eq!(nl.fdb(link.index).unwrap(), vec![f.clone()]);
        let fdb = ns.exec(&["bridge", "fdb", "show", "dev", "ohnovxtest"]);
        assert!(
            fdb.contains("02:00:00:00:43:01 dst 192.0.2.11 self permanent"),
            "{fdb}"
        );
        nl.del_fdb(link.index, &f).unwrap();
        nl.del_neighbour(link.index, &n).unwrap();
        assert!(nl.neighbours(link.index).unwrap().is_empty());
        assert!(nl.fdb(link.index).unwrap().is_empty());

        // A different VNI: re-created.
        let mut other = s.clone();
        other.vni = 4243;
        let (re, created) = nl.ensure_vxlan(&other).unwrap();
        assert!(created);
        assert_eq!(re.mac, Some(s.mac));

        // Not ours: a veth of that name is refused, not deleted.
        nl.delete_link(re.index).unwrap();
        ns.exec(&[
            "ip",
            "link",
            "add",
            "ohnovxtest",
            "type",
            "veth",
            "peer",
            "name",
            "vxpeer",
        ]);
        let err = nl.ensure_vxlan(&s).unwrap_err().to_string();
        assert!(err.contains("not a vxlan device"), "{err}");
    }
}
