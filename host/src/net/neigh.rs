//! Permanent neighbour (ARP/NDP) and FDB entries on one device: what a vxlan
//! device needs so that no packet waits for address resolution or floods
//! (learning stays off). Only entries on the given device are listed or
//! deleted, so a caller that owns a device never touches anyone else's.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::Netlink;
use super::route::family_of;
use crate::error::{Error, Result};
use crate::ip::mac::format_mac as mac_string;

/// A permanent neighbour entry: `ip` resolves to `mac` on the device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

impl std::fmt::Display for Neighbour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} lladdr {}", self.ip, mac_string(&self.mac))
    }
}

/// A permanent FDB entry of a vxlan device (`NTF_SELF`): frames for `mac`
/// are encapsulated to `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

impl std::fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} dst {}", mac_string(&self.mac), self.dst)
    }
}

fn address(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // AF_BRIDGE entries carry their destination untyped: by length.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// An entry's destination address and link-layer address, when it has both.
fn entry(msg: &NeighbourMessage) -> Option<(IpAddr, [u8; 6])> {
    let mut ip = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = address(d),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    Some((ip?, mac?))
}

fn neighbour_message(index: u32, n: &Neighbour) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(&n.ip);
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(NeighbourAttribute::Destination(n.ip.into()));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
    msg
}

fn fdb_message(index: u32, e: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(e.dst.into()));
    msg
}

impl Netlink {
    fn dump_neighbours(&mut self, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        let mut req = NeighbourMessage::default();
        req.header.family = family;
        let replies = self
            .dump(RouteNetlinkMessage::GetNeighbour(req))
            .map_err(|e| Error::netlink(format!("list neighbours{}", self.in_ns()), e))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// The permanent neighbour entries of device `index`, both families.
    pub fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            for msg in self.dump_neighbours(fam)? {
                if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                    continue;
                }
                if let Some((ip, mac)) = entry(&msg) {
                    out.push(Neighbour { ip, mac });
                }
            }
        }
        Ok(out)
    }

    /// Add or replace a permanent neighbour entry on device `index`.
    pub fn replace_neighbour(&mut self, index: u32, n: &Neighbour) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(neighbour_message(index, n)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
        .map_err(|e| Error::netlink(format!("set neighbour {n} dev {index}{}", self.in_ns()), e))
    }

    /// Delete the neighbour entry for `n.ip` on device `index`.
    pub fn del_neighbour(&mut self, index: u32, n: &Neighbour) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelNeighbour(neighbour_message(index, n)),
            0,
        )
        .map(drop)
        .map_err(|e| {
            Error::netlink(
                format!("delete neighbour {n} dev {index}{}", self.in_ns()),
                e,
            )
        })
    }

    /// The permanent `NTF_SELF` FDB entries with a destination of device
    /// `index` (a vxlan device's remote entries).
    pub fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut out = Vec::new();
        for msg in self.dump_neighbours(AddressFamily::Bridge)? {
            if msg.header.ifindex != index
                || msg.header.state != NeighbourState::Permanent
                || !msg.header.flags.contains(NeighbourFlags::Own)
            {
                continue;
            }
            if let Some((dst, mac)) = entry(&msg) {
                out.push(FdbEntry { mac, dst });
            }
        }
        Ok(out)
    }

    /// Add or replace the FDB entry for `e.mac` on vxlan device `index`.
    pub fn replace_fdb(&mut self, index: u32, e: &FdbEntry) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, e)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
        .map_err(|err| Error::netlink(format!("set fdb {e} dev {index}{}", self.in_ns()), err))
    }

    /// Delete the FDB entry `e` of vxlan device `index`.
    pub fn del_fdb(&mut self, index: u32, e: &FdbEntry) -> Result<()> {
        self.request(RouteNetlinkMessage::DelNeighbour(fdb_message(index, e)), 0)
            .map(drop)
            .map_err(|err| {
                Error::netlink(format!("delete fdb {e} dev {index}{}", self.in_ns()), err)
            })
    }
}
