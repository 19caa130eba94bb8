//! What the kernel of this node should hold, from what the store says: a
//! pure function of the node records, the block claims and the answers of
//! the node's own routing table (is a peer on-link, through which device),
//! so every rule below is tested without a kernel.
//!
//! - Every local block: a blackhole route, below the bridge's connected
//!   route (an address no pod holds is dropped, not sent to the default
//!   route).
//! - Every remote block, per family, over the configured backend:
//!   - host-gw: `block via <peer's underlay address of that family>` on the
//!     interface that reaches it; the peer must be on-link (no gateway on
//!     the way), else that peer is in error, never a silently wrong route;
//!   - vxlan: `block via <peer's VTEP link-local address> dev <our vxlan
//!     device>`, plus per peer one permanent neighbour entry (that address →
//!     the peer's VTEP MAC) and one permanent FDB entry (that MAC → the
//!     peer's underlay address). The VTEP address is the IPv6 link-local
//!     address of the peer's MAC (EUI-64), also as the next hop of IPv4
//!     routes (RFC 5549): one neighbour entry per peer whatever its blocks,
//!     and no VTEP address inside any routed block. The IPv4 underlay device
//!     carries both pod families; the IPv6 one is used when a peer and this
//!     node share only an IPv6 underlay;
//!   - auto: host-gw to on-link peers, vxlan to the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use crate::ip::mac::parse_mac;
use crate::ip::{Cidr, Family};
use crate::ipam::nodes::{Backend, NodeRecord};
use crate::net::neigh::{FdbEntry, Neighbour};
use crate::net::route::{Lookup, NextHop, OwnedRoute};

/// Metric of the routes to remote blocks.
pub const REMOTE_METRIC: u32 = 20;
/// Metric of a local block's blackhole: above the bridge's connected route
/// (0 for IPv4, 256 for IPv6), so it only catches what that route does not.
pub const BLACKHOLE_METRIC: u32 = 4096;

/// One of this node's vxlan devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    /// The underlay family it runs over.
    pub underlay: Family,
}

/// How a route reaches its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    HostGw,
    Vxlan,
    Blackhole,
}

impl Path {
    pub fn as_str(&self) -> &'static str {
        match self {
            Path::HostGw => "host-gw",
            Path::Vxlan => "vxlan",
            Path::Blackhole => "blackhole",
        }
    }
}

/// A peer as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    pub node: String,
    /// Its blocks (every family).
    pub blocks: usize,
    /// The blocks routed, by path.
    pub routed: BTreeMap<&'static str, usize>,
    /// Why some of its blocks have no route.
    pub errors: Vec<String>,
}

impl Peer {
    /// Every block of the peer has a route.
    pub fn reachable(&self) -> bool {
        self.errors.is_empty()
    }
}

/// The kernel state this node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Every owned route and how it goes.
    pub routes: BTreeMap<OwnedRoute, Path>,
    /// Per vxlan device index: its neighbour entries.
    pub neighbours: BTreeMap<u32, BTreeSet<Neighbour>>,
    /// Per vxlan device index: its FDB entries.
    pub fdb: BTreeMap<u32, BTreeSet<FdbEntry>>,
    /// Every other node with a record or a block.
    pub peers: Vec<Peer>,
}

/// What [`desired`] is computed from.
pub struct Inputs<'a> {
    /// This node's name and its own record (as it publishes it).
    pub me: &'a NodeRecord,
    pub backend: Backend,
    /// Every node record (this node's own is skipped).
    pub records: &'a [NodeRecord],
    /// Every claimed block and the node that holds it.
    pub blocks: &'a [(Cidr, String)],
    /// This node's vxlan devices (none in host-gw).
    pub devices: &'a [Device],
    /// The kernel's route to an address (`ip route get`).
    pub route_to: &'a dyn Fn(IpAddr) -> Option<Lookup>,
}

/// The IPv6 link-local address of a MAC (modified EUI-64): a peer's VTEP
/// address, the next hop of every route through its vxlan device.
pub fn vtep_address(mac: &[u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// The peer's VTEP MAC of the device over `underlay`.
fn peer_mac(peer: &NodeRecord, underlay: Family) -> Option<[u8; 6]> {
    let vx = peer.vxlan.as_ref()?;
    let text = match underlay {
        Family::V4 => vx.mac.as_deref()?,
        Family::V6 => vx.mac6.as_deref()?,
    };
    parse_mac(text)
}

/// host-gw to `peer` for pod family `fam`: the next hop, or why not.
fn host_gw(inp: &Inputs<'_>, peer: &NodeRecord, fam: Family) -> Result<NextHop, String> {
    let Some(gw) = peer.underlay(fam) else {
        return Err(format!(
            "host-gw for {} pods needs an {} underlay address on {} (it has none)",
            family_name(fam),
            family_name(fam),
            peer.node
        ));
    };
    if inp.me.underlay(fam).is_none() {
        return Err(format!(
            "host-gw for {} pods needs an {} underlay address on this node (it has none)",
            family_name(fam),
            family_name(fam)
        ));
    }
    match (inp.route_to)(gw) {
        Some(Lookup {
            gateway: None,
            oif: Some(oif),
            ..
        }) => Ok(NextHop::Gateway {
            via: gw,
            oif: Some(oif),
            onlink: false,
        }),
        Some(Lookup {
            gateway: Some(g), ..
        }) => Err(format!(
            "{} ({gw}) is not on-link (reached via {g}): host-gw needs peers on one segment",
            peer.node
        )),
        _ => Err(format!("{} ({gw}) has no route from this node", peer.node)),
    }
}

/// vxlan to `peer`: the device, the peer's MAC and underlay address, or why not.
fn vxlan<'d>(
    inp: &'d Inputs<'_>,
    peer: &NodeRecord,
) -> Result<(&'d Device, [u8; 6], IpAddr), String> {
    let Some(ours) = inp.me.vxlan.as_ref() else {
        return Err("this node has no vxlan device".into());
    };
    let Some(theirs) = peer.vxlan.as_ref() else {
        return Err(format!(
            "{} has no vxlan device (backend {})",
            peer.node, peer.backend
        ));
    };
    if (theirs.vni, theirs.port) != (ours.vni, ours.port) {
        return Err(format!(
            "{} uses VNI {} port {}, this node VNI {} port {}",
            peer.node, theirs.vni, theirs.port, ours.vni, ours.port
        ));
    }
    for underlay in [Family::V4, Family::V6] {
        let Some(dev) = inp.devices.iter().find(|d| d.underlay == underlay) else {
            continue;
        };
        if let (Some(mac), Some(dst)) = (peer_mac(peer, underlay), peer.underlay(underlay)) {
            return Ok((dev, mac, dst));
        }
    }
    Err(format!(
        "{} shares no underlay family with this node's vxlan devices",
        peer.node
    ))
}

/// The kernel state for `inp`.
pub fn desired(inp: &Inputs<'_>) -> Desired {
    let mut out = Desired::default();
    let me = inp.me.node.as_str();
    for (block, owner) in inp.blocks {
        if owner == me {
            out.routes.insert(
                OwnedRoute {
                    dst: block.canonical(),
                    next: NextHop::Blackhole,
                    metric: BLACKHOLE_METRIC,
                },
                Path::Blackhole,
            );
        }
    }
    let records: BTreeMap<&str, &NodeRecord> = inp
        .records
        .iter()
        .filter(|r| r.node != me)
        .map(|r| (r.node.as_str(), r))
        .collect();
    let mut by_node: BTreeMap<&str, Vec<Cidr>> = BTreeMap::new();
    for (block, owner) in inp.blocks {
        if owner != me {
            by_node.entry(owner).or_default().push(block.canonical());
        }
    }
    for name in records.keys() {
        by_node.entry(name).or_default();
    }
    for (node, blocks) in by_node {
        let mut peer = Peer {
            node: node.to_string(),
            blocks: blocks.len(),
            ..Peer::default()
        };
        let Some(rec) = records.get(node) else {
            if !blocks.is_empty() {
                peer.errors.push(format!(
                    "{node} holds {} block(s) but has no node record (no agent has run there)",
                    blocks.len()
                ));
            }
            out.peers.push(peer);
            continue;
        };
        let mut used_vxlan: Option<(&Device, [u8; 6], IpAddr)> = None;
        for fam in [Family::V4, Family::V6] {
            let mine: Vec<&Cidr> = blocks
                .iter()
                .filter(|b| Family::of(b.network()) == fam)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let chosen = match inp.backend {
                Backend::HostGw => host_gw(inp, rec, fam).map(|h| (h, Path::HostGw, None)),
                Backend::Vxlan => vxlan(inp, rec).map(|v| (via_vtep(&v), Path::Vxlan, Some(v))),
                Backend::Auto => match host_gw(inp, rec, fam) {
                    Ok(h) => Ok((h, Path::HostGw, None)),
                    Err(direct) => vxlan(inp, rec)
                        .map(|v| (via_vtep(&v), Path::Vxlan, Some(v)))
                        .map_err(|tunnel| format!("{direct}; and vxlan: {tunnel}")),
                },
            };
            match chosen {
                Ok((next, path, v)) => {
                    for b in &mine {
                        out.routes.insert(
                            OwnedRoute {
                                dst: **b,
                                next: next.clone(),
                                metric: REMOTE_METRIC,
                            },
                            path,
                        );
                    }
                    *peer.routed.entry(path.as_str()).or_default() += mine.len();
                    if v.is_some() {
                        used_vxlan = v;
                    }
                }
                Err(e) => peer.errors.push(e),
            }
        }
        if let Some((dev, mac, dst)) = used_vxlan {
            out.neighbours
                .entry(dev.index)
                .or_default()
                .insert(Neighbour {
                    ip: IpAddr::V6(vtep_address(&mac)),
                    mac,
                });
            out.fdb
                .entry(dev.index)
                .or_default()
                .insert(FdbEntry { mac, dst });
        }
        out.peers.push(peer);
    }
    out
}

fn via_vtep((dev, mac, _): &(&Device, [u8; 6], IpAddr)) -> NextHop {
    NextHop::Gateway {
        via: IpAddr::V6(vtep_address(mac)),
        oif: Some(dev.index),
        onlink: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::nodes::VxlanRecord;

    fn rec(node: &str, v4: Option<&str>, v6: Option<&str>, mac: &str) -> NodeRecord {
        NodeRecord {
            node: node.into(),
            ipv4: v4.map(|a| a.parse().unwrap()),
            ipv6: v6.map(|a| a.parse().unwrap()),
            backend: Backend::Auto,
            vxlan: Some(VxlanRecord {
                vni: 4096,
                port: 4789,
                mac: v4.map(|_| mac.to_string()),
                mac6: v6.map(|_| mac.replace("02:", "06:")),
                mtu: 1450,
            }),
            mtu: Some(1500),
            version: "t".into(),
            seen: 0,
        }
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    /// 192.0.2.0/24 and 2001:db8::/64 are on-link on ifindex 2; everything
    /// else goes via 192.0.2.1 / 2001:db8::1.
    fn table(ip: IpAddr) -> Option<Lookup> {
        let on_link = match ip {
            IpAddr::V4(a) => a.octets()[..3] == [192, 0, 2],
            IpAddr::V6(a) => a.segments()[..4] == [0x2001, 0xdb8, 0, 0],
        };
        Some(Lookup {
            oif: Some(2),
            gateway: (!on_link).then(|| {
                if ip.is_ipv4() {
                    "192.0.2.1".parse().unwrap()
                } else {
                    "2001:db8::1".parse().unwrap()
                }
            }),
            source: None,
        })
    }

    const VX: Device = Device {
        index: 9,
        name: String::new(),
        underlay: Family::V4,
    };

    fn run(backend: Backend, records: &[NodeRecord], blocks: &[(&str, &str)]) -> Desired {
        let me = records[0].clone();
        let blocks: Vec<(Cidr, String)> = blocks
            .iter()
            .map(|(b, n)| (cidr(b), n.to_string()))
            .collect();
        let devices = if backend.has_vxlan() {
            vec![VX]
        } else {
            vec![]
        };
        desired(&Inputs {
            me: &me,
            backend,
            records,
            blocks: &blocks,
            devices: &devices,
            route_to: &table,
        })
    }

    #[test]
    fn vtep_address_is_the_macs_link_local() {
        let a = vtep_address(&[0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(a.to_string(), "fe80::42:acff:fe11:2");
    }

    #[test]
    fn host_gw_routes_remote_blocks_via_on_link_peers_and_blackholes_local_ones() {
        let recs = [
            rec(
                "a",
                Some("192.0.2.10"),
                Some("2001:db8::10"),
                "02:00:00:00:00:0a",
            ),
            rec(
                "b",
                Some("192.0.2.11"),
                Some("2001:db8::11"),
                "02:00:00:00:00:0b",
            ),
        ];
        let d = run(
            Backend::HostGw,
            &recs,
            &[
                ("10.85.0.0/26", "a"),
                ("10.85.0.64/26", "b"),
                ("10.85.0.128/26", "b"),
                ("fd00:85::40/122", "b"),
            ],
        );
        let routes: Vec<String> = d.routes.keys().map(|r| r.to_string()).collect();
        assert_eq!(
            routes,
            vec![
                "blackhole 10.85.0.0/26 metric 4096",
                "10.85.0.64/26 via 192.0.2.11 dev 2 metric 20",
                "10.85.0.128/26 via 192.0.2.11 dev 2 metric 20",
                "fd00:85::40/122 via 2001:db8::11 dev 2 metric 20",
            ]
        );
        assert!(d.neighbours.is_empty() && d.fdb.is_empty());
        assert_eq!(d.peers.len(), 1);
        assert!(d.peers[0].reachable());
        assert_eq!(d.peers[0].routed["host-gw"], 3);
    }

    #[test]
    fn host_gw_refuses_an_off_link_peer_and_ipv6_pods_without_an_ipv6_underlay() {
        let recs = [
            rec("a", Some("192.0.2.10"), None, "02:00:00:00:00:0a"),
            rec("b", Some("198.51.100.11"), None, "02:00:00:00:00:0b"),
            rec("c", Some("192.0.2.12"), None, "02:00:00:00:00:0c"),
        ];
        let d = run(
            Backend::HostGw,
            &recs,
            &[("10.85.0.64/26", "b"), ("fd00:85::80/122", "c")],
        );
        assert!(d.routes.is_empty(), "{:?}", d.routes);
        let b = d.peers.iter().find(|p| p.node == "b").unwrap();
        assert!(
            b.errors[0].contains("not on-link (reached via 192.0.2.1)"),
            "{b:?}"
        );
        let c = d.peers.iter().find(|p| p.node == "c").unwrap();
        assert!(
            c.errors[0].contains("host-gw for IPv6 pods needs an IPv6 underlay address"),
            "{c:?}"
        );
    }

    #[test]
    fn vxlan_routes_both_families_over_the_ipv4_device_with_one_neighbour_and_fdb_per_peer() {
        let recs = [
            rec("a", Some("192.0.2.10"), None, "02:00:00:00:00:0a"),
            rec("b", Some("198.51.100.11"), None, "02:00:00:00:00:0b"),
        ];
        let d = run(
            Backend::Vxlan,
            &recs,
            &[
                ("10.85.0.64/26", "b"),
                ("10.85.1.0/26", "b"),
                ("fd00:85::40/122", "b"),
            ],
        );
        let routes: Vec<String> = d.routes.keys().map(|r| r.to_string()).collect();
        assert_eq!(
            routes,
            vec![
                "10.85.0.64/26 via fe80::ff:fe00:b dev 9 metric 20",
                "10.85.1.0/26 via fe80::ff:fe00:b dev 9 metric 20",
                "fd00:85::40/122 via fe80::ff:fe00:b dev 9 metric 20",
            ]
        );
        let n: Vec<String> = d.neighbours[&9].iter().map(|n| n.to_string()).collect();
        assert_eq!(n, vec!["fe80::ff:fe00:b lladdr 02:00:00:00:00:0b"]);
        let f: Vec<String> = d.fdb[&9].iter().map(|f| f.to_string()).collect();
        assert_eq!(f, vec!["02:00:00:00:00:0b dst 198.51.100.11"]);
        assert!(d.peers[0].reachable());
    }

    #[test]
    fn auto_takes_host_gw_on_link_and_vxlan_elsewhere() {
        let recs = [
            rec("a", Some("192.0.2.10"), None, "02:00:00:00:00:0a"),
            rec("b", Some("192.0.2.11"), None, "02:00:00:00:00:0b"),
            rec("c", Some("198.51.100.12"), None, "02:00:00:00:00:0c"),
        ];
        let d = run(
            Backend::Auto,
            &recs,
            &[
                ("10.85.0.64/26", "b"),
                ("fd00:85::40/122", "b"),
                ("10.85.0.128/26", "c"),
            ],
        );
        let paths: Vec<(String, Path)> = d
            .routes
            .iter()
            .map(|(r, p)| (r.dst.to_string(), *p))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("10.85.0.64/26".into(), Path::HostGw),
                ("10.85.0.128/26".into(), Path::Vxlan),
                // b is on-link but has no IPv6 underlay: its IPv6 pods go by vxlan.
                ("fd00:85::40/122".into(), Path::Vxlan),
            ]
        );
        assert_eq!(d.fdb[&9].len(), 2, "{:?}", d.fdb);
    }

    #[test]
    fn a_peer_sharing_only_an_ipv6_underlay_goes_through_the_ipv6_device() {
        let recs = [
            rec(
                "a",
                Some("192.0.2.10"),
                Some("2001:db8:5::10"),
                "02:00:00:00:00:0a",
            ),
            rec("b", None, Some("2001:db8:7::11"), "02:00:00:00:00:0b"),
        ];
        let me = recs[0].clone();
        let blocks = vec![(cidr("10.85.0.64/26"), "b".to_string())];
        let devices = vec![
            VX,
            Device {
                index: 10,
                name: "ohno.vx6".into(),
                underlay: Family::V6,
            },
        ];
        let d = desired(&Inputs {
            me: &me,
            backend: Backend::Vxlan,
            records: &recs,
            blocks: &blocks,
            devices: &devices,
            route_to: &table,
        });
        let routes: Vec<String> = d.routes.keys().map(|r| r.to_string()).collect();
        // b's IPv6 device MAC (rec() derives it with 06:): its link-local.
        assert_eq!(
            routes,
            vec!["10.85.0.64/26 via fe80::400:ff:fe00:b dev 10 metric 20"]
        );
        let f: Vec<String> = d.fdb[&10].iter().map(|f| f.to_string()).collect();
        assert_eq!(f, vec!["06:00:00:00:00:0b dst 2001:db8:7::11"]);
        assert!(!d.fdb.contains_key(&9));
    }

    #[test]
    fn a_peer_with_blocks_and_no_record_or_another_vni_is_an_error_not_a_route() {
        let mut other = rec("c", Some("192.0.2.12"), None, "02:00:00:00:00:0c");
        other.vxlan.as_mut().unwrap().vni = 7;
        let recs = [
            rec("a", Some("192.0.2.10"), None, "02:00:00:00:00:0a"),
            other,
        ];
        let d = run(
            Backend::Vxlan,
            &recs,
            &[("10.85.0.64/26", "ghost"), ("10.85.0.128/26", "c")],
        );
        assert!(d.routes.is_empty());
        let ghost = d.peers.iter().find(|p| p.node == "ghost").unwrap();
        assert!(ghost.errors[0].contains("no node record"), "{ghost:?}");
        let c = d.peers.iter().find(|p| p.node == "c").unwrap();
        assert!(c.errors[0].contains("VNI 7"), "{c:?}");
    }
}
