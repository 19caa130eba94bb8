//! sticky-statefulset: a StatefulSet's pod keeps its address wherever it runs.
//!
//! A pod named `<name>-<N>` (the StatefulSet's name and the pod's ordinal) in
//! the set's namespace gets the `base + N`-th usable address of the configured
//! pool ([`ohno_policy_sdk::addr::nth_usable`]): a pure function of the
//! config and the pod's name, so every node computes the same address and a
//! rescheduled `web-3` comes back with `web-3`'s address. Other pods, and the
//! families the pool is not of, get the host's default. Interface naming is
//! left to the host.
//!
//! Pick a pool (or a range of it, with `base`) that other pods do not draw
//! from, or an address may be taken when its pod comes back; the ADD then
//! fails rather than hand out another address.

use std::net::IpAddr;

use ohno_policy_sdk::{
    addr, host, parse_config, Allocation, Configured, Error, Family, Guest, Level, Naming, Pod,
    Pool,
};
use serde::Deserialize;

/// `policy.config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The pool the sticky addresses come from.
    pub pool: String,
    /// The StatefulSets whose pods stick.
    pub sets: Vec<Set>,
}

/// One StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Set {
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its name: pods are `<name>-0`, `<name>-1`, …
    pub name: String,
    /// Which usable address of the pool ordinal 0 gets.
    #[serde(default)]
    pub base: u64,
}

impl Config {
    /// Parses and checks `policy.config`.
    pub fn parse(json: &str) -> Result<Config, Error> {
        let config: Config = parse_config(json)?;
        if config.pool.is_empty() {
            return Err(Error::InvalidConfig("pool is empty".into()));
        }
        for (i, set) in config.sets.iter().enumerate() {
            if set.namespace.is_empty() || set.name.is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "sets[{i}] needs a namespace and a name"
                )));
            }
        }
        Ok(config)
    }
}

/// The ordinal `N` of a pod named `<set>-<N>`: decimal, no sign, no leading
/// zero (a StatefulSet never names a pod `web-01`, and accepting it would give
/// two names one address).
pub fn ordinal(set: &str, pod: &str) -> Option<u64> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    let digits_only = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

/// The sticky address of `pod`, if it belongs to one of the sets:
/// `Some(Ok(address))`, or `Some(Err(reason))` when the pool has too few
/// usable addresses. Pure.
pub fn sticky_address(config: &Config, pod: &Pod, pool: &Pool) -> Option<Result<IpAddr, String>> {
    let (namespace, name) = (pod.namespace.as_deref()?, pod.name.as_deref()?);
    let (set, n) = config
        .sets
        .iter()
        .filter(|s| s.namespace == namespace)
        .find_map(|s| ordinal(&s.name, name).map(|n| (s, n)))?;
    let index = u128::from(set.base) + u128::from(n);
    Some(addr::nth_usable(pool, index).ok_or_else(|| {
        format!(
            "pod {namespace}/{name} is ordinal {n} of {}, but pool {} has no usable address number {index}",
            set.name, pool.name
        )
    }))
}

/// The decision for one family. Pure.
pub fn decide(config: &Config, pod: &Pod, family: Family, pools: &[Pool]) -> Allocation {
    let Some(pool) = pools
        .iter()
        .find(|p| p.name == config.pool && p.family == family)
    else {
        // The pool is of the other family (or not configured): not ours.
        return Allocation::Default;
    };
    match sticky_address(config, pod, pool) {
        Some(Ok(ip)) => Allocation::Address((pool.name.clone(), ip.into())),
        Some(Err(reason)) => Allocation::Deny(reason),
        None => Allocation::Default,
    }
}

thread_local! {
    static CONFIG: Configured<Config> = const { Configured::new() };
}

/// The exported policy.
pub struct StickyStatefulSet;

impl Guest for StickyStatefulSet {
    fn configure(config: String) -> Result<(), Error> {
        let config = Config::parse(&config)?;
        CONFIG.with(|c| c.set(config));
        Ok(())
    }

    fn allocate(pod: Pod, family: Family, pools: Vec<Pool>) -> Result<Allocation, Error> {
        let config = CONFIG.with(Configured::get)?;
        let decision = decide(&config, &pod, family, &pools);
        if let Allocation::Address((pool, ip)) = &decision {
            let ip = IpAddr::from(*ip);
            // Not decisive (the store's transaction is), but it tells the admin
            // why the ADD is about to fail.
            let level = if host::is_free(pool, ip) {
                Level::Info
            } else {
                Level::Warn
            };
            let state = if level == Level::Info {
                "free"
            } else {
                "not free"
            };
            host::log(
                level,
                &format!(
                    "{}/{} sticks to {ip} in pool {pool} ({state})",
                    pod.namespace.as_deref().unwrap_or(""),
                    pod.name.as_deref().unwrap_or("")
                ),
            );
        }
        Ok(decision)
    }

    fn name_interface(_pod: Pod) -> Result<Naming, Error> {
        Ok(Naming::Default)
    }
}

ohno_policy_sdk::export!(StickyStatefulSet);

#[cfg(test)]
mod tests {
    use super::*;
    use ohno_policy_sdk::mock;

    fn pod(namespace: &str, name: &str) -> Pod {
        Pod {
            container_id: format!("cid-{name}"),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            network: "ohno".into(),
            node: "node1".into(),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: None,
            annotations: vec![],
            args: vec![],
        }
    }

    fn pool(name: &str, subnet: &str, prefix_len: u8, block_size: u8) -> Pool {
        let ip: IpAddr = subnet.parse().unwrap();
        Pool {
            name: name.into(),
            family: addr::family_of(ip),
            subnet: ip.into(),
            prefix_len,
            block_size,
        }
    }

    fn pools() -> Vec<Pool> {
        vec![
            pool("default", "10.85.0.0", 16, 24),
            pool("sts", "10.86.0.0", 24, 26),
        ]
    }

    const CONFIG: &str = r#"{"pool": "sts", "sets": [
        {"namespace": "prod", "name": "web", "base": 0},
        {"namespace": "prod", "name": "db", "base": 100}
    ]}"#;

    fn address(ip: &str) -> Allocation {
        Allocation::Address(("sts".into(), ip.parse::<IpAddr>().unwrap().into()))
    }

    #[test]
    fn ordinals_are_plain_decimals() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "web-"), None);
        assert_eq!(ordinal("web", "web-+1"), None);
        assert_eq!(ordinal("web", "web-1a"), None);
        assert_eq!(ordinal("web", "webx-1"), None);
        assert_eq!(ordinal("web", "web-abc-1"), None);
        assert_eq!(ordinal("web", "web-99999999999999999999999"), None);
    }

    #[test]
    fn set_pods_get_the_same_address_every_time() {
        let c = Config::parse(CONFIG).unwrap();
        // /24 pool of /26 blocks: 61 usable per block.
        assert_eq!(
            decide(&c, &pod("prod", "web-0"), Family::Ipv4, &pools()),
            address("10.86.0.2")
        );
        assert_eq!(
            decide(&c, &pod("prod", "web-3"), Family::Ipv4, &pools()),
            address("10.86.0.5")
        );
        assert_eq!(
            decide(&c, &pod("prod", "web-61"), Family::Ipv4, &pools()),
            address("10.86.0.66")
        );
        // base 100: 100 = 61 + 39 → second block, offset 2 + 39.
        assert_eq!(
            decide(&c, &pod("prod", "db-0"), Family::Ipv4, &pools()),
            address("10.86.0.105")
        );
        let again = decide(&c, &pod("prod", "web-3"), Family::Ipv4, &pools());
        assert_eq!(again, address("10.86.0.5"));
    }

    #[test]
    fn other_pods_get_the_default() {
        let c = Config::parse(CONFIG).unwrap();
        for p in [
            pod("dev", "web-0"),
            pod("prod", "api-0"),
            pod("prod", "web"),
        ] {
            assert_eq!(
                decide(&c, &p, Family::Ipv4, &pools()),
                Allocation::Default,
                "{p:?}"
            );
        }
        let mut no_ns = pod("prod", "web-0");
        no_ns.namespace = None;
        assert_eq!(
            decide(&c, &no_ns, Family::Ipv4, &pools()),
            Allocation::Default
        );
    }

    #[test]
    fn the_other_family_gets_the_default() {
        let c = Config::parse(CONFIG).unwrap();
        let v6 = vec![pool("default6", "fd00::", 64, 120)];
        assert_eq!(
            decide(&c, &pod("prod", "web-0"), Family::Ipv6, &v6),
            Allocation::Default
        );
    }

    #[test]
    fn an_ipv6_pool_works_the_same() {
        let c = Config::parse(r#"{"pool": "sts", "sets": [{"namespace": "prod", "name": "web"}]}"#)
            .unwrap();
        let v6 = vec![pool("sts", "fd00:86::", 112, 120)];
        assert_eq!(
            decide(&c, &pod("prod", "web-254"), Family::Ipv6, &v6),
            Allocation::Address((
                "sts".into(),
                "fd00:86::102".parse::<IpAddr>().unwrap().into()
            ))
        );
    }

    #[test]
    fn an_ordinal_beyond_the_pool_is_denied() {
        let c = Config::parse(CONFIG).unwrap();
        // 4 blocks × 61 = 244 usable addresses.
        assert_eq!(
            decide(&c, &pod("prod", "web-243"), Family::Ipv4, &pools()),
            address("10.86.0.254")
        );
        match decide(&c, &pod("prod", "web-244"), Family::Ipv4, &pools()) {
            Allocation::Deny(reason) => assert!(reason.contains("prod/web-244"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_config_is_refused() {
        for json in [
            "null",
            "{}",
            r#"{"pool": "", "sets": []}"#,
            r#"{"pool": "sts", "sets": [{"namespace": "", "name": "web"}]}"#,
            r#"{"pool": "sts", "sets": [{"namespace": "a", "name": "web", "base": -1}]}"#,
            r#"{"pool": "sts", "sets": [], "extra": 1}"#,
        ] {
            assert!(
                matches!(
                    StickyStatefulSet::configure(json.into()),
                    Err(Error::InvalidConfig(_))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn guest_warns_when_the_sticky_address_is_taken() {
        StickyStatefulSet::configure(CONFIG.into()).unwrap();
        mock::set_free("sts", vec!["10.86.0.2".parse().unwrap()]);
        let got = StickyStatefulSet::allocate(pod("prod", "web-0"), Family::Ipv4, pools()).unwrap();
        assert_eq!(got, address("10.86.0.2"));
        let got = StickyStatefulSet::allocate(pod("prod", "web-1"), Family::Ipv4, pools()).unwrap();
        assert_eq!(got, address("10.86.0.3"));
        let levels: Vec<Level> = mock::logs().into_iter().map(|(l, _)| l).collect();
        assert_eq!(levels, vec![Level::Info, Level::Warn]);
        assert_eq!(
            StickyStatefulSet::name_interface(pod("prod", "web-0")).unwrap(),
            Naming::Default
        );
    }
}
