//! Interface addresses on the [`Netlink`] handle: list, ensure (add,
//! "already exists" is success), delete. IPv6 addresses are added with
//! `IFA_F_NODAD` so they are usable at once, not tentative for a second.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::Netlink;
use crate::error::{Error, Result};

impl Netlink {
    /// All addresses (both families) of link `index`, as (address, prefix).
    pub fn addrs(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let mut req = AddressMessage::default();
        req.header.index = index;
        let replies = self
            .dump(RouteNetlinkMessage::GetAddress(req))
            .map_err(|e| {
                Error::netlink(format!("list addresses of link {index}{}", self.in_ns()), e)
            })?;
        let mut out = Vec::new();
        for msg in replies {
            let RouteNetlinkMessage::NewAddress(msg) = msg else {
                continue;
            };
            if msg.header.index != index {
                continue; // the dump is not filtered by the kernel without strict checking
            }
            // IFA_LOCAL is the interface's own address on IPv4 (IFA_ADDRESS is
            // the peer on point-to-point links); IPv6 only has IFA_ADDRESS.
            let mut address = None;
            let mut local = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Address(a) => address = Some(*a),
                    AddressAttribute::Local(a) => local = Some(*a),
                    _ => {}
                }
            }
            if let Some(addr) = local.or(address) {
                out.push((addr, msg.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// The index of the link that holds `ip`, if any.
    pub fn address_owner(&mut self, ip: IpAddr) -> Result<Option<u32>> {
        let replies = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .map_err(|e| Error::netlink(format!("list addresses{}", self.in_ns()), e))?;
        for msg in replies {
            let RouteNetlinkMessage::NewAddress(msg) = msg else {
                continue;
            };
            let held = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(x) | AddressAttribute::Local(x) if *x == ip)
            });
            if held {
                return Ok(Some(msg.header.index));
            }
        }
        Ok(None)
    }

    /// Add `addr/prefix` to link `index`; "already exists" is success. IPv4
    /// gets the subnet's broadcast address (as `ip addr add … brd +`); IPv6
    /// gets `IFA_F_NODAD`.
    pub fn ensure_addr(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let msg = address_message(index, addr, prefix);
        match self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(Error::netlink(
                format!(
                    "add address {addr}/{prefix} to link {index}{}",
                    self.in_ns()
                ),
                e,
            )),
        }
    }

    /// Remove `addr/prefix` from link `index`. A missing address is an error
    /// with `is_not_found()` (EADDRNOTAVAIL).
    pub fn del_addr(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let msg = address_message(index, addr, prefix);
        self.request(RouteNetlinkMessage::DelAddress(msg), 0)
            .map(drop)
            .map_err(|e| {
                Error::netlink(
                    format!(
                        "delete address {addr}/{prefix} from link {index}{}",
                        self.in_ns()
                    ),
                    e,
                )
            })
    }
}

fn address_message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = prefix;
    msg.header.scope = AddressScope::Universe;
    match addr {
        IpAddr::V4(v4) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes.push(AddressAttribute::Local(addr));
            msg.attributes.push(AddressAttribute::Address(addr));
            if prefix < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(broadcast(v4, prefix)));
            }
        }
        IpAddr::V6(_) => {
            msg.header.family = AddressFamily::Inet6;
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes.push(AddressAttribute::Address(addr));
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    msg
}

/// The IPv4 broadcast address of `addr/prefix`.
pub(crate) fn broadcast(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) | host_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_sets_the_host_bits() {
        let a = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(broadcast(a, 24), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(broadcast(a, 16), Ipv4Addr::new(10, 1, 255, 255));
        assert_eq!(broadcast(a, 0), Ipv4Addr::BROADCAST);
        assert_eq!(broadcast(a, 32), a);
    }
}
