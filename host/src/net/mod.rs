//! Netlink plumbing: network namespace handles, links (bridge, veth), addresses,
//! routes, sysctls and nftables masquerade. Synchronous netlink sockets, no
//! shelling out. See `net/README.md` for why a socket belongs to a namespace.

pub mod addr;
pub mod link;
pub mod netns;
pub mod nft;
pub mod route;
pub mod sysctl;

mod nl;
#[cfg(test)]
pub(crate) mod testns;

pub use link::{Link, Netlink, Route};
pub use netns::NetNs;
