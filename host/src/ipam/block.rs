//! Pure block arithmetic of one pool: which block holds an address, which
//! addresses of a block may be handed out, the first free one. No I/O.
//!
//! In each block, offset 0 (the block's network address) and offset 1 (the gateway,
//! set on the node's bridge) are never handed out, nor is the last address of an
//! IPv4 block (its broadcast: pods get the block's prefix). Neither are `exclude`d
//! addresses or those outside `rangeStart`..`rangeEnd`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::PoolConf;
use crate::ip::cidr::{from_u128, to_u128, Cidr};

/// The one gateway rule: a block's gateway is its first address after the
/// network address. It goes on the node's bridge and is never handed out.
pub fn gateway_of(block: &Cidr) -> IpAddr {
    from_u128(block.first() + 1, block.is_ipv4())
}

/// The blocks of a pool.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    pub pool: &'a PoolConf,
}

impl<'a> Layout<'a> {
    pub fn new(pool: &'a PoolConf) -> Layout<'a> {
        Layout { pool }
    }

    fn v4(&self) -> bool {
        self.pool.subnet.is_ipv4()
    }

    fn block_bits(&self) -> u8 {
        self.pool.subnet.bits() - self.pool.block_size
    }

    /// How many blocks the pool has.
    pub fn block_count(&self) -> u128 {
        1u128 << (self.pool.block_size - self.pool.subnet.prefix())
    }

    /// Block number `idx` (0-based).
    pub fn block_at(&self, idx: u128) -> Cidr {
        let first = self.pool.subnet.first() + (idx << self.block_bits());
        Cidr::new(from_u128(first, self.v4()), self.pool.block_size)
            .unwrap_or_else(|_| Cidr::host(from_u128(first, self.v4())))
    }

    /// The index of a block of this pool.
    pub fn block_index(&self, block: &Cidr) -> u128 {
        (block.first() - self.pool.subnet.first()) >> self.block_bits()
    }

    /// The block holding `ip`, if `ip` is in the pool.
    pub fn block_of(&self, ip: IpAddr) -> Option<Cidr> {
        if !self.pool.subnet.contains(ip) {
            return None;
        }
        Cidr::new(ip, self.pool.block_size)
            .ok()
            .map(|c| c.canonical())
    }

    /// True if `block` is one of this pool's blocks.
    pub fn owns_block(&self, block: &Cidr) -> bool {
        block.prefix() == self.pool.block_size
            && self.pool.subnet.contains(block.addr())
            && block.addr() == block.network()
    }

    /// The gateway of a block: [`gateway_of`].
    pub fn gateway(&self, block: &Cidr) -> IpAddr {
        gateway_of(block)
    }

    /// Address ranges of `block` that are never handed out, sorted by start.
    fn reserved(&self, block: &Cidr) -> Vec<(u128, u128)> {
        let (lo, hi) = (block.first(), block.last());
        let mut out = vec![(lo, lo + 1)];
        if self.v4() {
            out.push((hi, hi));
        }
        for e in &self.pool.exclude {
            if e.first() <= hi && lo <= e.last() {
                out.push((e.first().max(lo), e.last().min(hi)));
            }
        }
        if let Some(s) = self.pool.range_start.map(to_u128) {
            if s > lo {
                out.push((lo, (s - 1).min(hi)));
            }
        }
        if let Some(e) = self.pool.range_end.map(to_u128) {
            if e < hi {
                out.push(((e + 1).max(lo), hi));
            }
        }
        out.sort_unstable();
        out
    }

    /// Why `ip` may not be handed out, or Ok.
    pub fn check_usable(&self, ip: IpAddr) -> Result<Cidr, String> {
        let pool = &self.pool;
        let block = self
            .block_of(ip)
            .ok_or_else(|| format!("{ip} is outside pool {:?} ({})", pool.name, pool.subnet))?;
        let n = to_u128(ip);
        if n == block.first() {
            return Err(format!("{ip} is the network address of block {block}"));
        }
        if n == block.first() + 1 {
            return Err(format!("{ip} is the gateway of block {block}"));
        }
        if self.v4() && n == block.last() {
            return Err(format!("{ip} is the broadcast address of block {block}"));
        }
        if let Some(e) = pool.exclude.iter().find(|e| e.contains(ip)) {
            return Err(format!("{ip} is excluded ({e}) in pool {:?}", pool.name));
        }
        if pool.range_start.is_some_and(|s| n < to_u128(s))
            || pool.range_end.is_some_and(|e| n > to_u128(e))
        {
            return Err(format!("{ip} is outside the range of pool {:?}", pool.name));
        }
        Ok(block)
    }

    /// The lowest usable address of `block` not in `used` and greater than `after`.
    pub fn first_free(
        &self,
        block: &Cidr,
        used: &BTreeSet<u128>,
        after: Option<u128>,
    ) -> Option<u128> {
        let reserved = self.reserved(block);
        let mut c = match after {
            Some(a) => a.checked_add(1)?.max(block.first()),
            None => block.first(),
        };
        'next: loop {
            if c > block.last() {
                return None;
            }
            for &(s, e) in &reserved {
                if s <= c && c <= e {
                    c = e.checked_add(1)?;
                    continue 'next;
                }
            }
            if used.contains(&c) {
                c = c.checked_add(1)?;
                continue;
            }
            return Some(c);
        }
    }

    /// The first free address of `block`, or — on a retry after lost races — the
    /// one `skip` free addresses further (the last free one when there are fewer),
    /// so racing allocators spread over the block instead of colliding again.
    pub fn nth_free(&self, block: &Cidr, used: &BTreeSet<u128>, skip: usize) -> Option<u128> {
        let mut ip = self.first_free(block, used, None)?;
        for _ in 0..skip {
            match self.first_free(block, used, Some(ip)) {
                Some(next) => ip = next,
                None => break,
            }
        }
        Some(ip)
    }

    /// How many addresses of `block` may ever be handed out.
    pub fn usable_count(&self, block: &Cidr) -> u128 {
        let mut reserved = self.reserved(block);
        let total = block.last() - block.first() + 1;
        // Merge overlapping ranges, then subtract.
        reserved.sort_unstable();
        let mut taken = 0u128;
        let mut cur: Option<(u128, u128)> = None;
        for (s, e) in reserved {
            cur = match cur {
                Some((cs, ce)) if s <= ce.saturating_add(1) => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    taken += ce - cs + 1;
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            taken += ce - cs + 1;
        }
        total.saturating_sub(taken)
    }

    /// Indices of the blocks that can hold usable addresses at all (rangeStart/End).
    pub fn candidate_blocks(&self) -> (u128, u128) {
        let first = self
            .pool
            .range_start
            .and_then(|s| self.block_of(s))
            .map_or(0, |b| self.block_index(&b));
        let last = self
            .pool
            .range_end
            .and_then(|e| self.block_of(e))
            .map_or(self.block_count() - 1, |b| self.block_index(&b));
        (first, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(subnet: &str, block: u8) -> PoolConf {
        PoolConf {
            name: "p".into(),
            subnet: Cidr::parse(subnet).unwrap(),
            block_size: block,
            exclude: vec![],
            range_start: None,
            range_end: None,
        }
    }

    fn ip(s: &str) -> u128 {
        to_u128(s.parse().unwrap())
    }

    #[test]
    fn blocks_of_a_v4_pool() {
        let p = pool("10.85.0.0/16", 26);
        let l = Layout::new(&p);
        assert_eq!(l.block_count(), 1024);
        assert_eq!(l.block_at(5).to_string(), "10.85.1.64/26");
        let b = l.block_of("10.85.1.70".parse().unwrap()).unwrap();
        assert_eq!(b.to_string(), "10.85.1.64/26");
        assert_eq!(l.block_index(&b), 5);
        assert_eq!(l.gateway(&b).to_string(), "10.85.1.65");
        assert_eq!(l.usable_count(&b), 61);
        assert_eq!(
            l.first_free(&b, &BTreeSet::new(), None),
            Some(ip("10.85.1.66"))
        );
    }

    #[test]
    fn first_free_skips_used_reserved_and_excluded() {
        let mut p = pool("10.85.0.0/24", 26);
        p.exclude = vec![Cidr::parse("10.85.0.2/31").unwrap()];
        let l = Layout::new(&p);
        let b = l.block_at(0);
        let used: BTreeSet<u128> = [ip("10.85.0.4")].into();
        assert_eq!(l.first_free(&b, &used, None), Some(ip("10.85.0.5")));
        assert_eq!(l.usable_count(&b), 64 - 3 - 2);
        // Full block → None, and never the broadcast.
        let all: BTreeSet<u128> = (ip("10.85.0.0")..=ip("10.85.0.63")).collect();
        assert_eq!(l.first_free(&b, &all, None), None);
        assert!(l
            .check_usable("10.85.0.63".parse().unwrap())
            .unwrap_err()
            .contains("broadcast"));
        assert!(l
            .check_usable("10.85.0.1".parse().unwrap())
            .unwrap_err()
            .contains("gateway"));
        assert!(l
            .check_usable("10.85.0.3".parse().unwrap())
            .unwrap_err()
            .contains("excluded"));
        assert!(l
            .check_usable("10.86.0.3".parse().unwrap())
            .unwrap_err()
            .contains("outside"));
        assert!(l.check_usable("10.85.0.9".parse().unwrap()).is_ok());
    }

    #[test]
    fn range_limits_blocks_and_addresses() {
        let mut p = pool("10.85.0.0/16", 26);
        p.range_start = Some("10.85.1.10".parse().unwrap());
        p.range_end = Some("10.85.2.3".parse().unwrap());
        let l = Layout::new(&p);
        assert_eq!(l.candidate_blocks(), (4, 8));
        let b = l.block_at(4);
        assert_eq!(
            l.first_free(&b, &BTreeSet::new(), None),
            Some(ip("10.85.1.10"))
        );
        let last = l.block_at(8);
        assert_eq!(l.usable_count(&last), 2); // .2 and .3
        assert!(l.check_usable("10.85.2.4".parse().unwrap()).is_err());
    }

    #[test]
    fn ipv6_slash64_pool_does_not_overflow() {
        let p = pool("2001:db8::/64", 122);
        let l = Layout::new(&p);
        assert_eq!(l.block_count(), 1u128 << 58);
        let last = l.block_at(l.block_count() - 1);
        assert_eq!(last.to_string(), "2001:db8::ffff:ffff:ffff:ffc0/122");
        let f = l.first_free(&last, &BTreeSet::new(), None).unwrap();
        assert_eq!(
            from_u128(f, false).to_string(),
            "2001:db8::ffff:ffff:ffff:ffc2"
        );
        // No broadcast in IPv6: the last address is usable.
        assert_eq!(l.usable_count(&last), 62);
        let top = pool("ffff:ffff:ffff:ffff::/64", 122);
        let lt = Layout::new(&top);
        let b = lt.block_at(lt.block_count() - 1);
        let used: BTreeSet<u128> = (b.first()..=b.last()).collect();
        assert_eq!(lt.first_free(&b, &used, None), None);
        assert_eq!(lt.first_free(&b, &BTreeSet::new(), Some(u128::MAX)), None);
    }
}
