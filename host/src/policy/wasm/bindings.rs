//! The one `bindgen!` (over `wit/policy.wit`): Rust types and traits for the
//! `policy` world, and the conversions between its types and the crate's,
//! answers bounded on the way in ([`limits`]).

use std::net::IpAddr;

use super::{limits, HostState};
use crate::config::PoolConf;
use crate::policy::{Allocation, Pod};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
});

use self::ohno::policy::types as t;

pub(super) fn to_wit_ip(ip: IpAddr) -> t::IpAddress {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            t::IpAddress::V4((o[0], o[1], o[2], o[3]))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            t::IpAddress::V6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

pub(super) fn from_wit_ip(ip: &t::IpAddress) -> IpAddr {
    match *ip {
        t::IpAddress::V4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        t::IpAddress::V6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

/// `ohno:policy/types` has no functions.
impl t::Host for HostState {}

/// A policy's error in words, its message bounded.
pub(super) fn wit_error(e: t::Error) -> String {
    match e {
        t::Error::InvalidConfig(m) => format!("invalid config: {}", limits::answered_reason(m)),
        t::Error::Internal(m) => format!("internal error: {}", limits::answered_reason(m)),
    }
}

/// An allocation answer, its strings bounded: a name too long for any pool is
/// refused (`Err` says why), a deny reason is cut.
pub(super) fn from_wit_allocation(a: t::Allocation) -> std::result::Result<Allocation, String> {
    let pool = |p| limits::answered_name("pool name", p);
    Ok(match a {
        t::Allocation::Default => Allocation::Default,
        t::Allocation::Pool(p) => Allocation::Pool(pool(p)?),
        t::Allocation::Address((p, ip)) => Allocation::Address {
            pool: pool(p)?,
            address: from_wit_ip(&ip),
        },
        t::Allocation::Deny(reason) => Allocation::Deny(limits::answered_reason(reason)),
    })
}

pub(super) fn to_wit_pod(pod: &Pod) -> t::Pod {
    t::Pod {
        container_id: pod.container_id.clone(),
        ifname: pod.ifname.clone(),
        netns: pod.netns.clone(),
        network: pod.network.clone(),
        node: pod.node.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        annotations: pod
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        args: pod.args.clone(),
    }
}

pub(super) fn to_wit_pool(p: &PoolConf) -> t::Pool {
    t::Pool {
        name: p.name.clone(),
        family: if p.subnet.is_ipv4() {
            t::Family::Ipv4
        } else {
            t::Family::Ipv6
        },
        subnet: to_wit_ip(p.subnet.network()),
        prefix_len: p.subnet.prefix(),
        block_size: p.block_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_addresses_round_trip() {
        for s in ["10.85.0.1", "fd00:85::1", "255.255.255.255", "::"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from_wit_ip(&to_wit_ip(ip)), ip);
        }
    }
}
