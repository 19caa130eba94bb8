//! MAC addresses as people write them: `aa:bb:cc:dd:ee:ff`.

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Format a MAC as lower-case `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A locally administered unicast MAC derived from `seed`: the same seed
/// gives the same address on every boot (a device that keeps its MAC keeps
/// its peers' FDB entries valid).
pub fn stable_mac(seed: &str) -> [u8; 6] {
    let h = super::fnv1a64(&[seed.as_bytes()]).to_be_bytes();
    // Bit 1 of the first octet: locally administered; bit 0 clear: unicast.
    [(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("AA:bb:0c:00:01:ff").unwrap();
        assert_eq!(format_mac(&m), "aa:bb:0c:00:01:ff");
        assert!(parse_mac("aa:bb:cc:dd:ee").is_none());
        assert!(parse_mac("aa:bb:cc:dd:ee:ff:00").is_none());
    }

    #[test]
    fn stable_macs_are_local_unicast_and_repeatable() {
        let a = stable_mac("node-a/ohno.vx");
        assert_eq!(a, stable_mac("node-a/ohno.vx"));
        assert_ne!(a, stable_mac("node-b/ohno.vx"));
        assert_eq!(a[0] & 0x03, 0x02, "{}", format_mac(&a));
    }
}
