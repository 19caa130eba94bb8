//! Address math used everywhere: CIDRs and their arithmetic, the address
//! family, the interface-name rule, MAC addresses, the stable hash.

pub mod cidr;
pub mod family;
pub mod hash;
pub mod ifname;
pub mod mac;

pub use cidr::Cidr;
pub use family::Family;
pub use hash::fnv1a64;
