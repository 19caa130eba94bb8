//! Interface names a policy can hand the host without it refusing them:
//! 1–15 characters of `[a-z0-9-]`, deterministic, readable when short, and with
//! a hash of the whole input when anything had to be cut or rewritten.

/// The longest Linux interface name (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// Hex digits of the hash appended to names that were shortened or rewritten.
const HASH_LEN: usize = 6;

/// A stable 64-bit hash (FNV-1a, then the SplitMix64 finalizer so that every
/// bit depends on every input byte).
///
/// Stable across SDK versions, platforms and runs: interface names and
/// per-container choices are derived from it, and changing it would rename
/// interfaces of running pods. Not a cryptographic hash.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Lower-cases `part`, turns every character outside `[a-z0-9-]` into `-`,
/// collapses runs of `-` and trims them at both ends.
fn sanitize(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// An interface name built from `parts`, joined with `-`: `["prod", "web-0"]`
/// gives `prod-web-0`.
///
/// The result always has 1–15 characters from `[a-z0-9-]`, so the host's
/// syntax check passes (uniqueness on the node is still the host's to check).
/// It is a pure function of `parts`: the same pod gets the same name after a
/// restart or on another node.
///
/// When the plain join does not fit, or when characters had to be rewritten
/// (upper case, `.`, `_`, …) or parts were empty, the name is cut and a hash
/// of the whole input is appended: `["production", "frontend-0"]` becomes `producti-7c7540`
/// (8 characters of the join, `-`, 6 hex digits). Two different inputs then
/// share a name only if their hashes collide (about one pair in 16 million).
///
/// Inputs that are already clean and short are used as they are, so parts
/// that themselves contain `-` can join to the same name: `["team-a", "web"]`
/// and `["team", "a-web"]` both give `team-a-web`; the host refuses the second
/// as a duplicate rather than reusing the interface.
pub fn ifname(parts: &[&str]) -> String {
    let cleaned: Vec<String> = parts.iter().map(|p| sanitize(p)).collect();
    let lossless = parts
        .iter()
        .zip(&cleaned)
        .all(|(p, c)| !c.is_empty() && p == c);
    let joined = cleaned
        .iter()
        .filter(|c| !c.is_empty())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("-");
    if lossless && !joined.is_empty() && joined.len() <= IFNAME_MAX {
        return joined;
    }
    // Hash the parts themselves, separated by a byte that cannot be in a
    // `&str` boundary ambiguity: NUL never joins two parts into one.
    let mut input = Vec::new();
    for p in parts {
        input.extend_from_slice(p.as_bytes());
        input.push(0);
    }
    let hash = format!("{:016x}", stable_hash(&input));
    let hash = &hash[..HASH_LEN];
    let keep = IFNAME_MAX - HASH_LEN - 1;
    // `joined` is ASCII, so byte slicing is safe.
    let head = joined[..joined.len().min(keep)].trim_end_matches('-');
    if head.is_empty() {
        hash.to_string()
    } else {
        format!("{head}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legal(name: &str) -> bool {
        (1..=IFNAME_MAX).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn short_clean_parts_are_joined_as_they_are() {
        assert_eq!(ifname(&["prod", "web-0"]), "prod-web-0");
        assert_eq!(ifname(&["a"]), "a");
        assert_eq!(ifname(&["p", "default", "db-1"]), "p-default-db-1");
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let n = ifname(&["production", "frontend-7d9f8b6c5-x2x4z"]);
        assert_eq!(n.len(), IFNAME_MAX);
        assert!(n.starts_with("producti-"), "{n}");
        assert!(legal(&n));
    }

    #[test]
    fn names_are_deterministic() {
        let a = ifname(&["kube-system", "coredns-5d78c9869d-abcde"]);
        let b = ifname(&["kube-system", "coredns-5d78c9869d-abcde"]);
        assert_eq!(a, b);
    }

    #[test]
    fn same_prefix_different_inputs_get_different_names() {
        let a = ifname(&["production", "frontend-0"]);
        let b = ifname(&["production", "frontend-1"]);
        assert_ne!(a, b);
        assert_eq!(a[..9], b[..9]);
    }

    #[test]
    fn rewritten_input_is_hashed_so_case_and_dots_do_not_collide() {
        let lower = ifname(&["prod", "web"]);
        let upper = ifname(&["Prod", "web"]);
        let dotted = ifname(&["prod", "w.eb"]);
        let dashed = ifname(&["prod", "w-eb"]);
        assert_eq!(lower, "prod-web");
        assert_ne!(upper, lower);
        assert_ne!(dotted, dashed);
        assert!(legal(&upper) && legal(&dotted));
    }

    #[test]
    fn empty_and_garbage_input_still_yields_a_legal_name() {
        for parts in [
            &[][..],
            &[""][..],
            &["", ""][..],
            &["///"][..],
            &["..", "."][..],
            &["ümlaut", "名前"][..],
            &["-", "-x-"][..],
        ] {
            let n = ifname(parts);
            assert!(legal(&n), "{parts:?} -> {n:?}");
            assert_ne!(n, ".");
        }
        assert_ne!(ifname(&[""]), ifname(&["", ""]));
    }

    #[test]
    fn hash_is_stable_across_versions() {
        // Changing these values renames the interfaces of running pods.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(ifname(&["production", "frontend-0"]), "producti-7c7540");
    }
}
