//! This node's underlay addresses: from the agent's config, else the source
//! address the kernel picks towards the etcd endpoints (the interface that
//! holds the route to the store is the one the other nodes share), and the
//! other family's first non-link-local address on that same interface; and
//! the MTU of the interface that holds each address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

use crate::config::agent::RoutingConf;
use crate::config::StoreConf;
use crate::net::link::Netlink;

/// What was found.
#[derive(Debug, Default)]
pub struct Underlay {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// MTU of the interface holding each address ("ipv4", "ipv6").
    pub mtu: BTreeMap<&'static str, u32>,
}

/// The addresses an endpoint URL's host resolves to.
fn endpoint_addresses(endpoint: &str) -> Vec<IpAddr> {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or("");
    let with_port = if rest.contains(':') && !rest.starts_with('[') && rest.matches(':').count() > 1
    {
        // A bare IPv6 address without brackets or port.
        format!("[{rest}]:2379")
    } else if rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        rest.to_string()
    } else {
        format!("{rest}:2379")
    };
    with_port
        .to_socket_addrs()
        .map(|it| it.map(|sa| sa.ip()).collect())
        .unwrap_or_default()
}

/// The interface index holding `ip`, and its MTU.
fn holder_mtu(nl: &mut Netlink, ip: IpAddr) -> Result<Option<u32>, String> {
    let Some(index) = nl.address_owner(ip).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    Ok(nl
        .link_by_index(index)
        .map_err(|e| e.to_string())?
        .map(|l| l.mtu))
}

/// Configured addresses must be this node's; detected ones are the source
/// of the route to the store.
pub fn detect(nl: &mut Netlink, conf: &RoutingConf, store: &StoreConf) -> Result<Underlay, String> {
    let mut out = Underlay {
        ipv4: conf.ipv4,
        ipv6: conf.ipv6,
        ..Underlay::default()
    };
    if let StoreConf::Etcd(e) = store {
        for endpoint in &e.endpoints {
            for ip in endpoint_addresses(endpoint) {
                if ip.is_loopback() {
                    continue;
                }
                let Ok(found) = nl.lookup(ip) else { continue };
                // The source the kernel picks towards the store first.
                match found.source {
                    Some(IpAddr::V4(a)) if out.ipv4.is_none() => out.ipv4 = Some(a),
                    Some(IpAddr::V6(a)) if out.ipv6.is_none() => out.ipv6 = Some(a),
                    _ => {}
                }
                if let Some(oif) = found.oif {
                    // The other family from the same interface.
                    for (a, _) in nl.addrs(oif).unwrap_or_default() {
                        match a {
                            IpAddr::V4(v4) if out.ipv4.is_none() && !v4.is_link_local() => {
                                out.ipv4 = Some(v4)
                            }
                            IpAddr::V6(v6)
                                if out.ipv6.is_none() && (v6.segments()[0] & 0xffc0) != 0xfe80 =>
                            {
                                out.ipv6 = Some(v6)
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    for (key, ip) in [
        ("ipv4", out.ipv4.map(IpAddr::V4)),
        ("ipv6", out.ipv6.map(IpAddr::V6)),
    ] {
        let Some(ip) = ip else { continue };
        match holder_mtu(nl, ip)? {
            Some(mtu) => {
                out.mtu.insert(key, mtu);
            }
            None => {
                return Err(format!(
                    "underlay.{key} {ip} is not an address of this node's network namespace"
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts_resolve_with_or_without_ports() {
        assert_eq!(
            endpoint_addresses("https://192.0.2.1:2379"),
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            endpoint_addresses("http://[2001:db8::1]:2379"),
            vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            endpoint_addresses("https://127.0.0.1"),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }
}
