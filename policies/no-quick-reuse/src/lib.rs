//! no-quick-reuse: keep a just-released address out of circulation for a while.
//!
//! The host's default allocator hands out the lowest free address, so an
//! address freed by a pod that just left is handed to the very next pod — which
//! then receives traffic meant for the old one (stale DNS, conntrack, peers'
//! caches). Released addresses are holes below the high-water mark, i.e. the
//! lowest free ones. This policy looks at up to `window` free addresses of the
//! pool (lowest first, through the host's read-only view), skips the lowest
//! `skipLowest`, and picks one of the rest pseudo-randomly, seeded by a hash of
//! the container id: the choice is deterministic per container (a retried ADD
//! asks for the same address) and needs no WASI randomness. With too few free
//! addresses it leaves the choice to the host.

use std::net::IpAddr;

use ohno_policy_sdk::{
    host, parse_config, stable_hash, Allocation, Configured, Error, Family, Guest, Level, Naming,
    Pod, Pool,
};
use serde::Deserialize;

/// `policy.config`; every field is optional, and `null` means all defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// How many of the lowest free addresses never to hand out.
    pub skip_lowest: u32,
    /// How many free addresses to look at (each costs one host call).
    pub window: u32,
    /// The pool to draw from; default: the first pool of the asked family.
    pub pool: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            skip_lowest: 4,
            window: 64,
            pool: None,
        }
    }
}

/// The most addresses a policy looks at, to keep an ADD's host calls bounded.
pub const MAX_WINDOW: u32 = 4096;

impl Config {
    /// Parses and checks `policy.config`.
    pub fn parse(json: &str) -> Result<Config, Error> {
        let config: Option<Config> = parse_config(json)?;
        let config = config.unwrap_or_default();
        if config.window == 0 || config.window > MAX_WINDOW {
            return Err(Error::InvalidConfig(format!(
                "window must be between 1 and {MAX_WINDOW}, not {}",
                config.window
            )));
        }
        if config.skip_lowest >= config.window {
            return Err(Error::InvalidConfig(format!(
                "skipLowest ({}) must be less than window ({}): nothing would be left to pick",
                config.skip_lowest, config.window
            )));
        }
        if config.pool.as_deref() == Some("") {
            return Err(Error::InvalidConfig("pool is empty".into()));
        }
        Ok(config)
    }
}

/// Picks from `free` (ascending): skips the lowest `skip_lowest`, then one of
/// the rest by `seed`. `None` when nothing is left. Pure.
pub fn pick(free: &[IpAddr], skip_lowest: usize, seed: u64) -> Option<IpAddr> {
    let rest = free.get(skip_lowest..).filter(|r| !r.is_empty())?;
    // `rest.len()` is at most MAX_WINDOW, so the casts are lossless.
    let at = (seed % rest.len() as u64) as usize;
    rest.get(at).copied()
}

/// The pool this policy draws from for `family`, if it is one of `pools`.
fn chosen_pool<'a>(config: &Config, family: Family, pools: &'a [Pool]) -> Option<&'a Pool> {
    let mut of_family = pools.iter().filter(|p| p.family == family);
    match &config.pool {
        Some(name) => of_family.find(|p| &p.name == name),
        None => of_family.next(),
    }
}

/// The decision for one family (asks the host for free addresses).
pub fn decide(config: &Config, pod: &Pod, family: Family, pools: &[Pool]) -> Allocation {
    let Some(pool) = chosen_pool(config, family, pools) else {
        return Allocation::Default;
    };
    let free = host::free_addresses(&pool.name, config.window as usize);
    let seed = stable_hash(pod.container_id.as_bytes());
    match pick(&free, config.skip_lowest as usize, seed) {
        Some(ip) => Allocation::Address((pool.name.clone(), ip.into())),
        None => {
            host::log(
                Level::Info,
                &format!(
                    "pool {}: {} free address(es) seen, need more than {}; leaving the choice to the host",
                    pool.name,
                    free.len(),
                    config.skip_lowest
                ),
            );
            Allocation::Default
        }
    }
}

thread_local! {
    static CONFIG: Configured<Config> = const { Configured::new() };
}

/// The exported policy.
pub struct NoQuickReuse;

impl Guest for NoQuickReuse {
    fn configure(config: String) -> Result<(), Error> {
        let config = Config::parse(&config)?;
        CONFIG.with(|c| c.set(config));
        Ok(())
    }

    fn allocate(pod: Pod, family: Family, pools: Vec<Pool>) -> Result<Allocation, Error> {
        let config = CONFIG.with(Configured::get)?;
        Ok(decide(&config, &pod, family, &pools))
    }

    fn name_interface(_pod: Pod) -> Result<Naming, Error> {
        Ok(Naming::Default)
    }
}

ohno_policy_sdk::export!(NoQuickReuse);

#[cfg(test)]
mod tests {
    use super::*;
    use ohno_policy_sdk::{addr, mock};

    fn pod(container_id: &str) -> Pod {
        Pod {
            container_id: container_id.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            network: "ohno".into(),
            node: "node1".into(),
            namespace: None,
            name: None,
            uid: None,
            annotations: vec![],
            args: vec![],
        }
    }

    fn pool(name: &str, subnet: &str, prefix_len: u8) -> Pool {
        let ip: IpAddr = subnet.parse().unwrap();
        Pool {
            name: name.into(),
            family: addr::family_of(ip),
            subnet: ip.into(),
            prefix_len,
            block_size: prefix_len + 2,
        }
    }

    fn pools() -> Vec<Pool> {
        vec![
            pool("v6", "fd00::", 120),
            pool("a", "10.85.0.0", 24),
            pool("b", "10.86.0.0", 24),
        ]
    }

    fn ips(prefix: &str, range: std::ops::Range<u8>) -> Vec<IpAddr> {
        range
            .map(|i| format!("{prefix}{i}").parse().unwrap())
            .collect()
    }

    fn address_of(a: &Allocation) -> (String, IpAddr) {
        match a {
            Allocation::Address((pool, ip)) => (pool.clone(), IpAddr::from(*ip)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pick_skips_the_lowest_and_is_deterministic() {
        let free = ips("10.0.0.", 2..12);
        for seed in 0..100 {
            let got = pick(&free, 4, seed).unwrap();
            assert!(free[4..].contains(&got));
            assert_eq!(pick(&free, 4, seed), Some(got));
        }
        assert_eq!(pick(&free, 9, 12345), Some(free[9]));
        assert_eq!(pick(&free, 10, 0), None);
        assert_eq!(pick(&[], 0, 0), None);
    }

    #[test]
    fn never_hands_out_a_recently_freed_hole() {
        let c = Config::default();
        // .2-.5 were just released (lowest free); .20-.59 were never used.
        let mut free = ips("10.85.0.", 2..6);
        free.extend(ips("10.85.0.", 20..60));
        mock::set_free("a", free.clone());
        for i in 0..200 {
            let got = decide(&c, &pod(&format!("container-{i}")), Family::Ipv4, &pools());
            let (pool, ip) = address_of(&got);
            assert_eq!(pool, "a");
            assert!(free[4..].contains(&ip), "{ip}");
        }
    }

    #[test]
    fn same_container_same_address_and_containers_spread() {
        let c = Config::default();
        mock::set_free("a", ips("10.85.0.", 2..100));
        let first = decide(&c, &pod("abc"), Family::Ipv4, &pools());
        assert_eq!(decide(&c, &pod("abc"), Family::Ipv4, &pools()), first);
        let distinct: std::collections::BTreeSet<_> = (0..50)
            .map(|i| address_of(&decide(&c, &pod(&format!("c{i}")), Family::Ipv4, &pools())).1)
            .collect();
        assert!(distinct.len() > 20, "{}", distinct.len());
    }

    #[test]
    fn window_bounds_the_host_calls() {
        let c = Config::parse(r#"{"skipLowest": 1, "window": 3}"#).unwrap();
        mock::set_free("a", ips("10.85.0.", 2..200));
        for i in 0..50 {
            let (_, ip) = address_of(&decide(&c, &pod(&format!("c{i}")), Family::Ipv4, &pools()));
            assert!(
                ip == "10.85.0.3".parse::<IpAddr>().unwrap()
                    || ip == "10.85.0.4".parse::<IpAddr>().unwrap()
            );
        }
    }

    #[test]
    fn too_few_free_addresses_means_default() {
        let c = Config::default();
        mock::set_free("a", ips("10.85.0.", 2..6));
        assert_eq!(
            decide(&c, &pod("x"), Family::Ipv4, &pools()),
            Allocation::Default
        );
        assert_eq!(mock::logs().len(), 1);
        // An unknown or full pool too.
        assert_eq!(
            decide(&c, &pod("x"), Family::Ipv6, &pools()),
            Allocation::Default
        );
    }

    #[test]
    fn configured_pool_and_family() {
        let c = Config::parse(r#"{"pool": "b"}"#).unwrap();
        mock::set_free("a", ips("10.85.0.", 2..100));
        mock::set_free("b", ips("10.86.0.", 2..100));
        let (pool, ip) = address_of(&decide(&c, &pod("x"), Family::Ipv4, &pools()));
        assert_eq!(pool, "b");
        assert!(addr::contains(&pools()[2], ip));
        // "b" is not an IPv6 pool: the IPv6 allocation is the host's.
        assert_eq!(
            decide(&c, &pod("x"), Family::Ipv6, &pools()),
            Allocation::Default
        );

        let c = Config::default();
        let v6: Vec<IpAddr> = (2..40)
            .map(|i| format!("fd00::{i:x}").parse().unwrap())
            .collect();
        mock::set_free("v6", v6.clone());
        let (pool, ip) = address_of(&decide(&c, &pod("x"), Family::Ipv6, &pools()));
        assert_eq!(pool, "v6");
        assert!(v6[4..].contains(&ip));
    }

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(Config::parse("null").unwrap(), Config::default());
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
        for json in [
            r#"{"window": 0}"#,
            r#"{"window": 5000}"#,
            r#"{"skipLowest": 64}"#,
            r#"{"skipLowest": 4, "window": 4}"#,
            r#"{"pool": ""}"#,
            r#"{"skip": 1}"#,
            r#"{"window": "64"}"#,
        ] {
            assert!(
                matches!(
                    NoQuickReuse::configure(json.into()),
                    Err(Error::InvalidConfig(_))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn guest_round_trip() {
        NoQuickReuse::configure(r#"{"skipLowest": 0, "window": 1}"#.into()).unwrap();
        mock::set_free("a", ips("10.85.0.", 7..9));
        let got = NoQuickReuse::allocate(pod("x"), Family::Ipv4, pools()).unwrap();
        assert_eq!(
            address_of(&got),
            ("a".to_string(), "10.85.0.7".parse().unwrap())
        );
        assert_eq!(
            NoQuickReuse::name_interface(pod("x")).unwrap(),
            Naming::Default
        );
    }
}
