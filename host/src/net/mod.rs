//! Netlink plumbing: network namespace handles, links (bridge, veth, vxlan),
//! addresses, routes (the CNI's, and the agent's own by protocol number),
//! neighbour and FDB entries, sysctls and nftables masquerade. Synchronous netlink sockets, no
//! shelling out. See `net/README.md` for why a socket belongs to a namespace.

pub mod addr;
pub mod events;
pub mod link;
pub mod neigh;
pub mod netns;
pub mod nft;
pub mod route;
pub mod sysctl;
pub mod vxlan;

mod nl;
#[cfg(test)]
pub(crate) mod testns;

pub use link::{Link, Netlink, Route};
pub use netns::NetNs;
