//! Address arithmetic on `u128`, so IPv4 and IPv6 share one code path and an IPv6
//! /64 never overflows.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as a number (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`to_u128`] for the given family.
pub fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// An address with a prefix length: `10.85.0.0/16`, `fd00:85::/48`.
/// Serialized as that text.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Cidr, String> {
        Cidr::parse(&s)
    }
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than /{max}"));
        }
        Ok(Cidr { addr, prefix })
    }

    /// A single address (/32 or /128).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }

    /// Parse `addr/prefix`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation (address/prefix)"))?;
        let addr = a
            .parse::<IpAddr>()
            .map_err(|_| format!("{a:?} in {s:?} is not an IP address"))?;
        let prefix = p
            .parse::<u8>()
            .map_err(|_| format!("prefix {p:?} in {s:?} is not a number"))?;
        Cidr::new(addr, prefix).map_err(|m| format!("{s}: {m}"))
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// 32 or 128.
    pub fn bits(&self) -> u8 {
        if self.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// Number of host bits (0..=128).
    pub fn host_bits(&self) -> u8 {
        self.bits() - self.prefix
    }

    /// The mask as a number in the family's width.
    fn mask(&self) -> u128 {
        let width_mask: u128 = if self.is_ipv4() {
            u32::MAX as u128
        } else {
            u128::MAX
        };
        match self.host_bits() {
            128 => 0,
            h => width_mask & !((1u128 << h) - 1),
        }
    }

    /// First address of the network, as a number.
    pub fn first(&self) -> u128 {
        to_u128(self.addr) & self.mask()
    }

    /// Last address of the network, as a number.
    pub fn last(&self) -> u128 {
        match self.host_bits() {
            128 => u128::MAX,
            h => self.first() | ((1u128 << h) - 1),
        }
    }

    pub fn network(&self) -> IpAddr {
        from_u128(self.first(), self.is_ipv4())
    }

    /// This network with its host bits cleared.
    pub fn canonical(&self) -> Cidr {
        Cidr {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && (self.first()..=self.last()).contains(&to_u128(ip))
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && self.first() <= other.last()
            && other.first() <= self.last()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_computes_ranges() {
        let c = Cidr::parse("10.85.3.7/16").unwrap();
        assert_eq!(c.network().to_string(), "10.85.0.0");
        assert_eq!(from_u128(c.last(), true).to_string(), "10.85.255.255");
        assert!(c.contains("10.85.200.1".parse().unwrap()));
        assert!(!c.contains("10.86.0.1".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn ipv6_wide_prefixes_do_not_overflow() {
        let c = Cidr::parse("fd00:85::/48").unwrap();
        assert_eq!(
            from_u128(c.last(), false).to_string(),
            "fd00:85:0:ffff:ffff:ffff:ffff:ffff"
        );
        let all = Cidr::parse("::/0").unwrap();
        assert_eq!(all.first(), 0);
        assert_eq!(all.last(), u128::MAX);
        let slash64 = Cidr::parse("2001:db8::/64").unwrap();
        assert_eq!(slash64.last() - slash64.first(), u64::MAX as u128);
        let v4all = Cidr::parse("0.0.0.0/0").unwrap();
        assert_eq!(v4all.last(), u32::MAX as u128);
    }

    #[test]
    fn overlap() {
        let a = Cidr::parse("10.0.0.0/16").unwrap();
        assert!(a.overlaps(&Cidr::parse("10.0.5.0/24").unwrap()));
        assert!(!a.overlaps(&Cidr::parse("10.1.0.0/16").unwrap()));
    }
}
