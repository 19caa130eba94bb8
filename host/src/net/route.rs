//! Routes in the main table on the [`Netlink`] handle: list (unicast, both
//! families), ensure (add, "already exists" is success), delete, and the MTU
//! of the IPv4 default route's link (Ohno's default MTU); the route lookup
//! (`ip route get`); and the agent's own routes ([`OwnedRoute`]), marked by
//! one protocol number so that listing and deleting never reach a route
//! another program installed, even for the same prefix.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::Netlink;
use crate::error::{Error, Result};
use crate::ip::cidr::Cidr;

/// A unicast route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network; `0.0.0.0` / `::` with prefix 0 for a default route.
    pub dst: IpAddr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop, if the destination is not on-link.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
}

impl Route {
    /// True for `0.0.0.0/0` and `::/0`.
    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev {oif}")?;
        }
        Ok(())
    }
}

/// A route as dumped, with the fields we need beyond [`Route`].
struct DumpedRoute {
    route: Route,
    priority: u32,
}

impl Netlink {
    /// Unicast routes of the main table, both families. Default routes have
    /// `dst` 0.0.0.0/0 or ::/0. For a multipath route, the first next hop's
    /// gateway and interface are reported.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        Ok(self.dump_routes()?.into_iter().map(|r| r.route).collect())
    }

    /// Every route of every table, both families, as the kernel dumps them.
    fn route_messages(&mut self) -> Result<Vec<RouteMessage>> {
        let replies = self
            .dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))
            .map_err(|e| Error::netlink(format!("list routes{}", self.in_ns()), e))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(msg) => Some(msg),
                _ => None,
            })
            .collect())
    }

    fn dump_routes(&mut self) -> Result<Vec<DumpedRoute>> {
        Ok(self
            .route_messages()?
            .iter()
            .filter_map(parse_route)
            .collect())
    }

    /// Add `route` to the main table (scope universe with a gateway, link
    /// without; protocol boot, as `ip route add`). EEXIST is success.
    pub fn ensure_route(&mut self, route: &Route) -> Result<()> {
        let msg = route_message(route);
        match self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(Error::netlink(
                format!("add route {route}{}", self.in_ns()),
                e,
            )),
        }
    }

    /// Delete `route` from the main table. A missing route is an error with
    /// `is_not_found()` (ESRCH).
    pub fn del_route(&mut self, route: &Route) -> Result<()> {
        let mut msg = route_message(route);
        // Let the kernel match any scope/protocol of the given destination.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        self.request(RouteNetlinkMessage::DelRoute(msg), 0)
            .map(drop)
            .map_err(|e| Error::netlink(format!("delete route {route}{}", self.in_ns()), e))
    }

    /// MTU of the link holding the IPv4 default route (the one with the lowest
    /// metric if several), if there is one.
    pub fn default_route_mtu(&mut self) -> Result<Option<u32>> {
        let best = self
            .dump_routes()?
            .into_iter()
            .filter(|r| r.route.is_default() && r.route.dst.is_ipv4() && r.route.oif.is_some())
            .min_by_key(|r| r.priority);
        let Some(oif) = best.and_then(|r| r.route.oif) else {
            return Ok(None);
        };
        Ok(self.link_by_index(oif)?.map(|l| l.mtu))
    }
}

/// Where an owned route sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NextHop {
    /// Through `via` on `oif` (any family: an IPv4 route may go via an IPv6
    /// link-local next hop, RFC 5549); `onlink` skips the kernel's check that
    /// `via` is reachable on `oif`.
    Gateway {
        via: IpAddr,
        oif: Option<u32>,
        onlink: bool,
    },
    /// Dropped (`blackhole`): a local block's addresses that no pod holds.
    Blackhole,
}

/// A route of the agent's, in the main table, marked by its protocol number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnedRoute {
    pub dst: Cidr,
    pub next: NextHop,
    pub metric: u32,
}

impl std::fmt::Display for OwnedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.next {
            NextHop::Blackhole => write!(f, "blackhole {}", self.dst)?,
            NextHop::Gateway { via, oif, onlink } => {
                write!(f, "{} via {via}", self.dst)?;
                if let Some(oif) = oif {
                    write!(f, " dev {oif}")?;
                }
                if *onlink {
                    write!(f, " onlink")?;
                }
            }
        }
        write!(f, " metric {}", self.metric)
    }
}

/// What the kernel would do with a packet to one address (`ip route get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub oif: Option<u32>,
    /// `None`: the destination is on-link.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would pick.
    pub source: Option<IpAddr>,
}

impl Netlink {
    /// The routes of the main table marked with `protocol`, both families.
    pub fn owned_routes(&mut self, protocol: u8) -> Result<Vec<OwnedRoute>> {
        Ok(self
            .route_messages()?
            .iter()
            .filter(|msg| u8::from(msg.header.protocol) == protocol)
            .filter_map(parse_owned)
            .collect())
    }

    /// Add `route` marked with `protocol`. Never replaces: a route of the
    /// same destination and metric (ours from before, or another program's)
    /// is EEXIST, an error with `is_exists()`.
    pub fn add_owned(&mut self, route: &OwnedRoute, protocol: u8) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(owned_message(route, protocol)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
        .map_err(|e| Error::netlink(format!("add route {route}{}", self.in_ns()), e))
    }

    /// Delete exactly `route` with `protocol` (the kernel matches protocol,
    /// type, next hop and metric, so another program's route for the same
    /// prefix is never the one removed).
    pub fn del_owned(&mut self, route: &OwnedRoute, protocol: u8) -> Result<()> {
        let mut msg = owned_message(route, protocol);
        msg.header.scope = RouteScope::NoWhere;
        self.request(RouteNetlinkMessage::DelRoute(msg), 0)
            .map(drop)
            .map_err(|e| Error::netlink(format!("delete route {route}{}", self.in_ns()), e))
    }

    /// The kernel's route to `dst`.
    pub fn lookup(&mut self, dst: IpAddr) -> Result<Lookup> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(&dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let replies = self
            .request(RouteNetlinkMessage::GetRoute(msg), 0)
            .map_err(|e| Error::netlink(format!("route get {dst}{}", self.in_ns()), e))?;
        let mut out = Lookup {
            oif: None,
            gateway: None,
            source: None,
        };
        for m in replies {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Oif(i) => out.oif = Some(*i),
                        RouteAttribute::Gateway(g) => out.gateway = ip(g),
                        RouteAttribute::Via(v) => out.gateway = via_ip(v),
                        RouteAttribute::PrefSource(s) => out.source = ip(s),
                        _ => {}
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The rtnetlink family of an address.
pub(crate) fn family_of(a: &IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn via_ip(v: &RouteVia) -> Option<IpAddr> {
    match v {
        RouteVia::Inet(a) => Some(IpAddr::V4(*a)),
        RouteVia::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn parse_owned(msg: &RouteMessage) -> Option<OwnedRoute> {
    let Parsed {
        dst,
        gateway: via,
        oif,
        priority: metric,
    } = parse_main(msg)?;
    let dst = Cidr::new(dst, msg.header.destination_prefix_length).ok()?;
    let next = match msg.header.kind {
        RouteType::BlackHole => NextHop::Blackhole,
        RouteType::Unicast => NextHop::Gateway {
            via: via?,
            oif,
            onlink: msg.header.flags.contains(RouteFlags::Onlink),
        },
        _ => return None,
    };
    Some(OwnedRoute { dst, next, metric })
}

fn owned_message(route: &OwnedRoute, protocol: u8) -> RouteMessage {
    let dst = route.dst.network();
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(&dst);
    msg.header.destination_prefix_length = route.dst.prefix();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(protocol);
    msg.header.scope = RouteScope::Universe;
    if route.dst.prefix() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    }
    msg.attributes.push(RouteAttribute::Priority(route.metric));
    match &route.next {
        NextHop::Blackhole => msg.header.kind = RouteType::BlackHole,
        NextHop::Gateway { via, oif, onlink } => {
            msg.header.kind = RouteType::Unicast;
            if via.is_ipv4() == dst.is_ipv4() {
                msg.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::from(*via)));
            } else {
                msg.attributes.push(RouteAttribute::Via(match via {
                    IpAddr::V4(a) => RouteVia::Inet(*a),
                    IpAddr::V6(a) => RouteVia::Inet6(*a),
                }));
            }
            if let Some(oif) = oif {
                msg.attributes.push(RouteAttribute::Oif(*oif));
            }
            if *onlink {
                msg.header.flags |= RouteFlags::Onlink;
            }
        }
    }
    msg
}

/// What both route parsers read of a route of the main table.
struct Parsed {
    /// 0.0.0.0 / :: for a default route.
    dst: IpAddr,
    /// `RTA_GATEWAY`, or `RTA_VIA` (another family's next hop), or the first
    /// next hop's of a multipath route.
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    priority: u32,
}

/// The attributes of `msg` when it is a route of the main table.
fn parse_main(msg: &RouteMessage) -> Option<Parsed> {
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut priority = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip(a),
            RouteAttribute::Gateway(a) => gateway = ip(a),
            RouteAttribute::Via(v) => gateway = via_ip(v),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => priority = *p,
            RouteAttribute::MultiPath(hops) => {
                if let Some(hop) = hops.first() {
                    oif = oif.or(Some(hop.interface_index));
                    for a in &hop.attributes {
                        if let RouteAttribute::Gateway(g) = a {
                            gateway = gateway.or(ip(g));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = match (dst, msg.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    Some(Parsed {
        dst,
        gateway,
        oif,
        priority,
    })
}

fn parse_route(msg: &RouteMessage) -> Option<DumpedRoute> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let Parsed {
        dst,
        gateway,
        oif,
        priority,
    } = parse_main(msg)?;
    Some(DumpedRoute {
        route: Route {
            dst,
            prefix: msg.header.destination_prefix_length,
            gateway,
            oif,
        },
        priority,
    })
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_message(route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(&route.dst);
    msg.header.destination_prefix_length = route.prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if route.prefix > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(route.dst)));
    }
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testns::TestNs;

    fn r(dst: &str, prefix: u8, gw: Option<&str>, oif: Option<u32>) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            prefix,
            gateway: gw.map(|g| g.parse().unwrap()),
            oif,
        }
    }

    #[test]
    fn pod_addresses_and_routes_with_ipv6_and_a_default_gateway() {
        let host = TestNs::new("rh");
        let pod = TestNs::new("rp");
        let mut nl = Netlink::open_in(host.netns()).unwrap();
        let br = nl.ensure_bridge("ohnotest0", Some(1500), false).unwrap();
        nl.ensure_addr(br.index, "10.88.0.1".parse().unwrap(), 24)
            .unwrap();
        nl.ensure_addr(br.index, "fd00:88::1".parse().unwrap(), 64)
            .unwrap();
        nl.create_veth(
            "vethrt",
            "c/eth0",
            "eth0",
            pod.netns(),
            1500,
            None,
            br.index,
            true,
        )
        .unwrap();

        let mut p = Netlink::open_in(pod.netns()).unwrap();
        let eth0 = p.link_by_name("eth0").unwrap().unwrap();
        p.set_up(eth0.index).unwrap();
        let v4: IpAddr = "10.88.0.5".parse().unwrap();
        let v6: IpAddr = "fd00:88::5".parse().unwrap();
        p.ensure_addr(eth0.index, v4, 24).unwrap();
        p.ensure_addr(eth0.index, v4, 24).unwrap(); // already exists: fine
        p.ensure_addr(eth0.index, v6, 64).unwrap();
        p.ensure_addr(eth0.index, v6, 64).unwrap();
        let addrs = p.addrs(eth0.index).unwrap();
        assert!(addrs.contains(&(v4, 24)), "{addrs:?}");
        assert!(addrs.contains(&(v6, 64)), "{addrs:?}");
        // NODAD: not tentative, usable at once.
        let json = pod.exec(&["ip", "-j", "-6", "addr", "show", "dev", "eth0"]);
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        let ours = doc[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["local"] == "fd00:88::5")
            .unwrap();
        assert_eq!(ours["nodad"], true, "{json}");
        assert!(ours.get("tentative").is_none(), "{json}");
        let json = pod.exec(&["ip", "-j", "-4", "addr", "show", "dev", "eth0"]);
        assert!(json.contains("\"broadcast\":\"10.88.0.255\""), "{json}");

        let gw4 = r("0.0.0.0", 0, Some("10.88.0.1"), Some(eth0.index));
        let gw6 = r("::", 0, Some("fd00:88::1"), Some(eth0.index));
        let extra = r("192.168.50.0", 24, None, Some(eth0.index));
        for route in [&gw4, &gw6, &extra] {
            p.ensure_route(route).unwrap();
            p.ensure_route(route).unwrap(); // EEXIST is success
        }
        let routes = p.routes().unwrap();
        assert!(routes.contains(&gw4), "{routes:?}");
        assert!(routes.contains(&gw6), "{routes:?}");
        assert!(routes.contains(&extra), "{routes:?}");
        // The kernel's connected route for the address.
        assert!(
            routes.contains(&r("10.88.0.0", 24, None, Some(eth0.index))),
            "{routes:?}"
        );
        assert_eq!(p.default_route_mtu().unwrap(), Some(1500));
        // The host netns has no default route.
        assert_eq!(nl.default_route_mtu().unwrap(), None);

        p.del_route(&extra).unwrap();
        assert!(!p.routes().unwrap().contains(&extra));
        assert!(p.del_route(&extra).unwrap_err().is_not_found());

        // The gateway is reachable through the bridge.
        pod.exec(&["ping", "-c", "1", "-W", "2", "10.88.0.1"]);

        p.del_addr(eth0.index, v4, 24).unwrap();
        assert!(!p.addrs(eth0.index).unwrap().contains(&(v4, 24)));
        let err = p.del_addr(eth0.index, v4, 24).unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    #[test]
    fn owned_routes_are_listed_and_deleted_by_protocol_only() {
        const PROTO: u8 = 111;
        let ns = TestNs::new("ro");
        ns.exec(&[
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ns.exec(&["ip", "link", "set", "up0", "up"]);
        ns.exec(&["ip", "link", "set", "up1", "up"]);
        ns.exec(&["ip", "addr", "add", "192.0.2.10/24", "dev", "up0"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            "2001:db8::10/64",
            "dev",
            "up0",
            "nodad",
        ]);
        let mut nl = Netlink::open_in(ns.netns()).unwrap();
        let up0 = nl.link_by_name("up0").unwrap().unwrap().index;
        let cidr = |s: &str| Cidr::parse(s).unwrap();
        let via = |v: &str, onlink| NextHop::Gateway {
            via: v.parse().unwrap(),
            oif: Some(up0),
            onlink,
        };
        let ours = [
            OwnedRoute {
                dst: cidr("10.85.1.0/26"),
                next: via("192.0.2.11", false),
                metric: 20,
            },
            OwnedRoute {
                dst: cidr("10.85.2.0/26"),
                next: via("fe80::1", false),
                metric: 20,
            },
            OwnedRoute {
                dst: cidr("fd00:85::40/122"),
                next: via("2001:db8::11", false),
                metric: 20,
            },
            OwnedRoute {
                dst: cidr("10.85.9.0/26"),
                next: via("198.51.100.1", true),
                metric: 20,
            },
            OwnedRoute {
                dst: cidr("10.85.0.0/26"),
                next: NextHop::Blackhole,
                metric: 1024,
            },
            OwnedRoute {
                dst: cidr("fd00:85::/122"),
                next: NextHop::Blackhole,
                metric: 1024,
            },
        ];
        // Another program's route for one of the same prefixes (and metric).
        ns.exec(&[
            "ip",
            "route",
            "add",
            "10.85.1.0/26",
            "via",
            "192.0.2.99",
            "metric",
            "7",
            "proto",
            "static",
        ]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "10.85.3.0/26",
            "via",
            "192.0.2.99",
            "proto",
            "static",
        ]);
        for r in &ours {
            nl.add_owned(r, PROTO).unwrap();
        }
        let err = nl.add_owned(&ours[0], PROTO).unwrap_err();
        assert!(err.is_exists(), "{err}");
        let mut listed = nl.owned_routes(PROTO).unwrap();
        listed.sort();
        let mut want = ours.to_vec();
        want.sort();
        assert_eq!(listed, want);
        let shown = ns.exec(&["ip", "route", "show", "proto", "111"]);
        assert!(
            shown.contains("10.85.2.0/26 via inet6 fe80::1 dev up0"),
            "{shown}"
        );
        assert!(shown.contains("blackhole 10.85.0.0/26"), "{shown}");
        for r in &ours {
            nl.del_owned(r, PROTO).unwrap();
        }
        assert!(nl.owned_routes(PROTO).unwrap().is_empty());
        let left = ns.exec(&["ip", "route", "show", "proto", "static"]);
        assert!(left.contains("10.85.1.0/26 via 192.0.2.99"), "{left}");
        assert!(left.contains("10.85.3.0/26 via 192.0.2.99"), "{left}");
        // Deleting ours when only theirs is left: not found, theirs stays.
        assert!(nl.del_owned(&ours[0], PROTO).unwrap_err().is_not_found());
        assert!(ns
            .exec(&["ip", "route"])
            .contains("10.85.1.0/26 via 192.0.2.99"));

        let on_link = nl.lookup("192.0.2.11".parse().unwrap()).unwrap();
        assert_eq!(on_link.oif, Some(up0));
        assert_eq!(on_link.gateway, None);
        assert_eq!(on_link.source, Some("192.0.2.10".parse().unwrap()));
        let routed = nl.lookup("10.85.3.7".parse().unwrap()).unwrap();
        assert_eq!(routed.gateway, Some("192.0.2.99".parse().unwrap()));
    }

    #[test]
    fn unreachable_gateway_is_an_error_with_context() {
        let pod = TestNs::new("rg");
        let mut p = Netlink::open_in(pod.netns()).unwrap();
        let lo = p.link_by_name("lo").unwrap().unwrap();
        let err = p
            .ensure_route(&r("0.0.0.0", 0, Some("10.99.0.1"), Some(lo.index)))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("add route 0.0.0.0/0 via 10.99.0.1 dev 1 in "),
            "{msg}"
        );
    }
}
