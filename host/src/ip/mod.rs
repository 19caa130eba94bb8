//! Address math used everywhere: CIDRs and their arithmetic.

pub mod cidr;

pub use cidr::Cidr;
