//! Address math used everywhere: CIDRs and their arithmetic, the address
//! family, the interface-name rule, the stable hash.

pub mod cidr;
pub mod family;
pub mod hash;
pub mod ifname;

pub use cidr::Cidr;
pub use family::Family;
pub use hash::fnv1a64;
