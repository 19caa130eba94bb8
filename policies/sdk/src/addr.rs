//! Address arithmetic on pools, with the host's rules: a pool's subnet is cut
//! into blocks of `/block-size`; in every block, offset 0 (the block's network
//! address) and offset 1 (its gateway, set on the node's bridge) are never
//! handed out, nor, for IPv4, the block's last address (its broadcast).
//!
//! The host may refuse more than these rules show: the pool record does not
//! carry its `exclude` list nor `rangeStart`/`rangeEnd`, and an address may be
//! in use. [`crate::host::is_free`] answers for a concrete address.
//!
//! Addresses are numbers here (`u128`, IPv4 in the low 32 bits), so offsets are
//! plain arithmetic. Every function returns `None` rather than panicking when a
//! pool's geometry is inconsistent (prefix longer than the address, blocks
//! larger than the subnet, subnet of the other family).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Family, IpAddress, Pool};

impl From<IpAddress> for IpAddr {
    fn from(a: IpAddress) -> IpAddr {
        match a {
            IpAddress::V4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            IpAddress::V6((a, b, c, d, e, f, g, h)) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
        }
    }
}

impl From<IpAddr> for IpAddress {
    fn from(ip: IpAddr) -> IpAddress {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                IpAddress::V4((a, b, c, d))
            }
            IpAddr::V6(v6) => {
                let [a, b, c, d, e, f, g, h] = v6.segments();
                IpAddress::V6((a, b, c, d, e, f, g, h))
            }
        }
    }
}

impl std::fmt::Display for IpAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        IpAddr::from(*self).fmt(f)
    }
}

/// The family of an address.
pub fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

/// Address length in bits: 32 or 128.
pub fn bits(family: Family) -> u8 {
    match family {
        Family::Ipv4 => 32,
        Family::Ipv6 => 128,
    }
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `n` of `family`; `None` when `n` does not fit (IPv4 above 2^32-1).
pub fn from_u128(family: Family, n: u128) -> Option<IpAddr> {
    match family {
        Family::Ipv4 => u32::try_from(n).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        Family::Ipv6 => Some(IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// `2^exp`, or `None` when it does not fit in a `u128`.
fn pow2(exp: u8) -> Option<u128> {
    1u128.checked_shl(u32::from(exp))
}

/// A pool's geometry as numbers, checked once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    family: Family,
    /// First address of the subnet (host bits cleared).
    first: u128,
    /// Number of addresses in the subnet.
    size: u128,
    /// Number of addresses in a block.
    block_len: u128,
}

impl Geometry {
    fn of(pool: &Pool) -> Option<Geometry> {
        let subnet = IpAddr::from(pool.subnet);
        let bits = bits(pool.family);
        if family_of(subnet) != pool.family
            || pool.prefix_len > bits
            || pool.block_size < pool.prefix_len
            || pool.block_size > bits
        {
            return None;
        }
        let size = pow2(bits - pool.prefix_len)?;
        let block_len = pow2(bits - pool.block_size)?;
        // Clear host bits: `size - 1` is the host mask of the subnet.
        let first = to_u128(subnet) & !(size - 1);
        Some(Geometry {
            family: pool.family,
            first,
            size,
            block_len,
        })
    }

    /// Addresses at the start of a block that are reserved, and at its end.
    fn reserved(&self) -> (u128, u128) {
        match self.family {
            Family::Ipv4 => (2, 1),
            Family::Ipv6 => (2, 0),
        }
    }

    /// Usable addresses per block.
    fn usable_per_block(&self) -> u128 {
        let (head, tail) = self.reserved();
        self.block_len.saturating_sub(head + tail)
    }
}

/// Whether `ip` lies in the pool's subnet (of the pool's family).
pub fn contains(pool: &Pool, ip: IpAddr) -> bool {
    offset(pool, ip).is_some()
}

/// The offset of `ip` from the start of the pool's subnet; `None` when `ip` is
/// outside the pool or of the other family.
pub fn offset(pool: &Pool, ip: IpAddr) -> Option<u128> {
    let g = Geometry::of(pool)?;
    if family_of(ip) != g.family {
        return None;
    }
    let off = to_u128(ip).checked_sub(g.first)?;
    (off < g.size).then_some(off)
}

/// The address at `offset` from the start of the pool's subnet; `None` past
/// the end of the subnet.
pub fn at_offset(pool: &Pool, offset: u128) -> Option<IpAddr> {
    let g = Geometry::of(pool)?;
    if offset >= g.size {
        return None;
    }
    from_u128(g.family, g.first + offset)
}

/// Whether the host would refuse `ip` by the block rules alone: a block's
/// network address, its gateway, or (IPv4) its broadcast. `None` when `ip` is
/// not in the pool.
pub fn is_reserved(pool: &Pool, ip: IpAddr) -> Option<bool> {
    let g = Geometry::of(pool)?;
    let in_block = offset(pool, ip)? % g.block_len;
    let (head, tail) = g.reserved();
    Some(in_block < head || in_block >= g.block_len - tail)
}

/// How many addresses of the pool pass the block rules (saturating at
/// `u128::MAX` for absurdly large IPv6 pools).
pub fn usable_count(pool: &Pool) -> Option<u128> {
    let g = Geometry::of(pool)?;
    let blocks = g.size / g.block_len;
    Some(blocks.saturating_mul(g.usable_per_block()))
}

/// The `n`-th (0-based) address of the pool that passes the block rules,
/// counting block by block from the start of the subnet: with `/24` blocks of
/// `10.85.0.0/16`, n = 0 is 10.85.0.2, n = 252 is 10.85.0.254 and n = 253 is
/// 10.85.1.2. `None` when the pool has fewer usable addresses.
pub fn nth_usable(pool: &Pool, n: u128) -> Option<IpAddr> {
    let g = Geometry::of(pool)?;
    let per_block = g.usable_per_block();
    if per_block == 0 {
        return None;
    }
    let block = n / per_block;
    if block >= g.size / g.block_len {
        return None;
    }
    let (head, _) = g.reserved();
    let off = block * g.block_len + head + n % per_block;
    from_u128(g.family, g.first + off)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(subnet: &str, prefix_len: u8, block_size: u8) -> Pool {
        let ip: IpAddr = subnet.parse().unwrap();
        Pool {
            name: "p".into(),
            family: family_of(ip),
            subnet: ip.into(),
            prefix_len,
            block_size,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ip_address_round_trips_through_std() {
        for s in [
            "10.85.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "fd00::1",
            "2001:db8:1:2:3:4:5:6",
        ] {
            let a = IpAddress::from(ip(s));
            assert_eq!(IpAddr::from(a), ip(s));
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            IpAddress::from(ip("10.85.0.1")),
            IpAddress::V4((10, 85, 0, 1))
        );
        assert_eq!(
            IpAddress::from(ip("fd00::1")),
            IpAddress::V6((0xfd00, 0, 0, 0, 0, 0, 0, 1))
        );
    }

    #[test]
    fn offset_and_at_offset_are_inverse_inside_the_pool() {
        let p = pool("10.85.0.0", 16, 24);
        assert_eq!(offset(&p, ip("10.85.0.0")), Some(0));
        assert_eq!(offset(&p, ip("10.85.1.2")), Some(258));
        assert_eq!(offset(&p, ip("10.85.255.255")), Some(65535));
        assert_eq!(offset(&p, ip("10.86.0.0")), None);
        assert_eq!(offset(&p, ip("10.84.255.255")), None);
        assert_eq!(offset(&p, ip("fd00::1")), None);
        assert_eq!(at_offset(&p, 258), Some(ip("10.85.1.2")));
        assert_eq!(at_offset(&p, 65536), None);
        assert!(contains(&p, ip("10.85.3.3")));
    }

    #[test]
    fn subnet_host_bits_are_ignored() {
        let p = pool("10.85.3.7", 16, 24);
        assert_eq!(offset(&p, ip("10.85.0.0")), Some(0));
    }

    #[test]
    fn nth_usable_skips_network_gateway_and_broadcast_of_every_v4_block() {
        let p = pool("10.85.0.0", 16, 24);
        assert_eq!(nth_usable(&p, 0), Some(ip("10.85.0.2")));
        assert_eq!(nth_usable(&p, 252), Some(ip("10.85.0.254")));
        assert_eq!(nth_usable(&p, 253), Some(ip("10.85.1.2")));
        assert_eq!(usable_count(&p), Some(256 * 253));
        assert_eq!(nth_usable(&p, 256 * 253 - 1), Some(ip("10.85.255.254")));
        assert_eq!(nth_usable(&p, 256 * 253), None);
    }

    #[test]
    fn nth_usable_never_lands_on_a_reserved_address() {
        let p = pool("10.85.0.0", 24, 28);
        for n in 0..usable_count(&p).unwrap() {
            let a = nth_usable(&p, n).unwrap();
            assert_eq!(is_reserved(&p, a), Some(false), "{a}");
        }
        // 16 blocks of 16 addresses, 13 usable each.
        assert_eq!(usable_count(&p), Some(16 * 13));
    }

    #[test]
    fn v6_blocks_keep_their_last_address() {
        let p = pool("fd00::", 112, 120);
        assert_eq!(nth_usable(&p, 0), Some(ip("fd00::2")));
        assert_eq!(nth_usable(&p, 253), Some(ip("fd00::ff")));
        assert_eq!(nth_usable(&p, 254), Some(ip("fd00::102")));
        assert_eq!(is_reserved(&p, ip("fd00::ff")), Some(false));
        assert_eq!(is_reserved(&p, ip("fd00::101")), Some(true));
    }

    #[test]
    fn is_reserved_names_the_block_rules() {
        let p = pool("10.85.0.0", 16, 26);
        assert_eq!(is_reserved(&p, ip("10.85.0.64")), Some(true));
        assert_eq!(is_reserved(&p, ip("10.85.0.65")), Some(true));
        assert_eq!(is_reserved(&p, ip("10.85.0.127")), Some(true));
        assert_eq!(is_reserved(&p, ip("10.85.0.66")), Some(false));
        assert_eq!(is_reserved(&p, ip("10.86.0.66")), None);
    }

    #[test]
    fn tiny_blocks_have_no_usable_address() {
        assert_eq!(nth_usable(&pool("10.0.0.0", 24, 31), 0), None);
        assert_eq!(
            nth_usable(&pool("10.0.0.0", 24, 30), 0),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            nth_usable(&pool("10.0.0.0", 24, 30), 1),
            Some(ip("10.0.0.6"))
        );
        assert_eq!(nth_usable(&pool("fd00::", 120, 127), 0), None);
    }

    #[test]
    fn inconsistent_geometry_is_none_not_a_panic() {
        assert_eq!(nth_usable(&pool("10.0.0.0", 24, 16), 0), None);
        assert_eq!(nth_usable(&pool("10.0.0.0", 33, 33), 0), None);
        let mut p = pool("10.0.0.0", 24, 26);
        p.family = Family::Ipv6;
        assert_eq!(nth_usable(&p, 0), None);
        assert_eq!(offset(&p, ip("10.0.0.1")), None);
        // An IPv6 /0 with /0 blocks does not fit the arithmetic.
        assert_eq!(nth_usable(&pool("::", 0, 0), 0), None);
        // A huge but legal IPv6 pool works.
        let big = pool("fd00::", 8, 64);
        assert_eq!(nth_usable(&big, 0), Some(ip("fd00::2")));
        assert!(usable_count(&big).is_some());
    }
}
