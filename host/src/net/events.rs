//! Kernel change notifications (rtnetlink multicast): links, routes and
//! neighbour entries, so the agent notices at once when its vxlan device is
//! deleted or one of its routes removed, instead of at the next resync.

use std::io;
use std::time::Duration;

use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourState};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::decode;
use super::nl::NlSocket;
use crate::error::{Error, Result};

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// One change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A link was created, changed or (`removed`) deleted.
    Link { name: String, removed: bool },
    /// A route with this protocol number was added or removed.
    Route { protocol: u8, removed: bool },
    /// A permanent IPv6 neighbour or a vxlan FDB entry (one with a remote
    /// destination) on link `ifindex` changed.
    Neighbour { ifindex: u32, removed: bool },
}

impl Event {
    /// Whether this is about one of the links `names` or a route of `protocol`.
    pub fn concerns(&self, names: &[String], protocol: u8) -> bool {
        match self {
            Event::Link { name, .. } => names.iter().any(|n| n == name),
            Event::Route { protocol: p, .. } => *p == protocol,
            Event::Neighbour { .. } => true,
        }
    }
}

/// A subscription to link, neighbour and route events of the calling
/// thread's netns.
pub struct Events {
    sock: NlSocket,
}

impl Events {
    /// Subscribe; each [`Events::wait`] waits at most `tick`.
    pub fn open_with(tick: Duration) -> Result<Events> {
        let groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
        let sock = NlSocket::subscribe(netlink_sys::protocols::NETLINK_ROUTE, groups, tick)
            .map_err(|e| Error::netlink("subscribe to kernel events", e))?;
        Ok(Events { sock })
    }

    pub fn open() -> Result<Events> {
        Events::open_with(Duration::from_millis(200))
    }

    /// The events of the next datagram, or none after the tick. An error
    /// (ENOBUFS: the kernel dropped events) means something may be missed.
    pub fn wait(&mut self) -> io::Result<Vec<Event>> {
        let raws = match self.sock.recv() {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for raw in raws {
            let Ok(msg) = decode(&raw) else { continue };
            match msg {
                RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                    let removed = raw.ty == libc::RTM_DELLINK;
                    for a in &l.attributes {
                        if let LinkAttribute::IfName(name) = a {
                            out.push(Event::Link {
                                name: name.clone(),
                                removed,
                            });
                        }
                    }
                }
                RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                    out.push(Event::Route {
                        protocol: u8::from(r.header.protocol),
                        removed: raw.ty == libc::RTM_DELROUTE,
                    });
                }
                RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                    let permanent_v6 = n.header.family == AddressFamily::Inet6
                        && n.header.state == NeighbourState::Permanent;
                    let remote_fdb = n.header.family == AddressFamily::Bridge
                        && n.header.flags.contains(NeighbourFlags::Own)
                        && n.attributes
                            .iter()
                            .any(|a| matches!(a, NeighbourAttribute::Destination(_)));
                    if permanent_v6 || remote_fdb {
                        out.push(Event::Neighbour {
                            ifindex: n.header.ifindex,
                            removed: raw.ty == libc::RTM_DELNEIGH,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testns::TestNs;

    #[test]
    fn link_and_route_events_arrive() {
        let ns = TestNs::new("ev");
        let mut events = ns
            .netns()
            .run(|| Events::open_with(Duration::from_millis(50)))
            .unwrap();
        ns.exec(&[
            "ip", "link", "add", "evx0", "type", "veth", "peer", "name", "evx1",
        ]);
        ns.exec(&["ip", "link", "set", "evx0", "up"]);
        ns.exec(&["ip", "link", "set", "evx1", "up"]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "10.99.0.0/24",
            "dev",
            "evx0",
            "proto",
            "111",
        ]);
        ns.exec(&["ip", "link", "del", "evx0"]);
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline
            && !seen.contains(&Event::Link {
                name: "evx0".into(),
                removed: true,
            })
        {
            seen.extend(events.wait().unwrap());
        }
        assert!(
            seen.contains(&Event::Route {
                protocol: 111,
                removed: false
            }),
            "{seen:?}"
        );
        assert!(
            seen.contains(&Event::Link {
                name: "evx0".into(),
                removed: true
            }),
            "{seen:?}"
        );
        let names = vec!["evx0".to_string()];
        assert!(seen.iter().any(|e| e.concerns(&names, 111)));
        assert!(!Event::Link {
            name: "eth0".into(),
            removed: true
        }
        .concerns(&names, 111));
        assert!(!Event::Route {
            protocol: 2,
            removed: true
        }
        .concerns(&names, 111));
    }
}
