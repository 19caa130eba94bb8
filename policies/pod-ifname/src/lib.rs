//! pod-ifname: the pod's host-side interface is named after it.
//!
//! `prod/web-0` gets `prod-web-0` (with a prefix: `p-prod-web-0`), so `ip link`
//! on a node tells which pod a veth belongs to. Names longer than 15 characters
//! are cut and end with a hash of the full namespace and pod name
//! ([`ohno_policy_sdk::ifname()`]); the name depends only on namespace and pod
//! name, so a restarted pod gets the same one. Pods without a namespace or a
//! name get the host's default name. Addresses are left to the host.

use ohno_policy_sdk::{
    ifname, parse_config, Allocation, Configured, Error, Family, Guest, Naming, Pod, Pool,
};
use serde::Deserialize;

/// `policy.config`; `null` means no prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Put before every name, e.g. `p-`: `[a-z0-9-]`, at most 8 characters
    /// so that some of the pod's name still fits.
    pub prefix: String,
}

/// The longest prefix accepted.
pub const MAX_PREFIX: usize = 8;

impl Config {
    /// Parses and checks `policy.config`.
    pub fn parse(json: &str) -> Result<Config, Error> {
        let config: Option<Config> = parse_config(json)?;
        let config = config.unwrap_or_default();
        let p = &config.prefix;
        let legal = p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if p.len() > MAX_PREFIX || !legal {
            return Err(Error::InvalidConfig(format!(
                "prefix {p:?} must be at most {MAX_PREFIX} characters of [a-z0-9-]"
            )));
        }
        Ok(config)
    }
}

/// The name for `pod`, or the host's default. Pure.
pub fn decide(config: &Config, pod: &Pod) -> Naming {
    match (pod.namespace.as_deref(), pod.name.as_deref()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            let prefix = config.prefix.trim_end_matches('-');
            let parts: Vec<&str> = [prefix, ns, name]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect();
            Naming::Name(ifname(&parts))
        }
        _ => Naming::Default,
    }
}

thread_local! {
    static CONFIG: Configured<Config> = const { Configured::new() };
}

/// The exported policy.
pub struct PodIfname;

impl Guest for PodIfname {
    fn configure(config: String) -> Result<(), Error> {
        let config = Config::parse(&config)?;
        CONFIG.with(|c| c.set(config));
        Ok(())
    }

    fn allocate(_pod: Pod, _family: Family, _pools: Vec<Pool>) -> Result<Allocation, Error> {
        Ok(Allocation::Default)
    }

    fn name_interface(pod: Pod) -> Result<Naming, Error> {
        let config = CONFIG.with(Configured::get)?;
        Ok(decide(&config, &pod))
    }
}

ohno_policy_sdk::export!(PodIfname);

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: Option<&str>, name: Option<&str>) -> Pod {
        Pod {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            network: "ohno".into(),
            node: "node1".into(),
            namespace: namespace.map(Into::into),
            name: name.map(Into::into),
            uid: Some("u1".into()),
            annotations: vec![],
            args: vec![],
        }
    }

    fn name(n: &Naming) -> &str {
        match n {
            Naming::Name(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn legal(n: &str) -> bool {
        (1..=15).contains(&n.len())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn short_names_read_as_namespace_and_pod() {
        let c = Config::default();
        assert_eq!(
            decide(&c, &pod(Some("prod"), Some("web-0"))),
            Naming::Name("prod-web-0".into())
        );
        let c = Config::parse(r#"{"prefix": "p-"}"#).unwrap();
        assert_eq!(
            decide(&c, &pod(Some("prod"), Some("web-0"))),
            Naming::Name("p-prod-web-0".into())
        );
        let c = Config::parse(r#"{"prefix": "p"}"#).unwrap();
        assert_eq!(
            decide(&c, &pod(Some("prod"), Some("web-0"))),
            Naming::Name("p-prod-web-0".into())
        );
    }

    #[test]
    fn long_names_are_shortened_stably_and_distinctly() {
        let c = Config::default();
        let a = decide(
            &c,
            &pod(Some("kube-system"), Some("coredns-5d78c9869d-abcde")),
        );
        let b = decide(
            &c,
            &pod(Some("kube-system"), Some("coredns-5d78c9869d-fghij")),
        );
        assert!(legal(name(&a)) && legal(name(&b)));
        assert_ne!(a, b);
        // A restart (new container id, same pod) keeps the name.
        let mut again = pod(Some("kube-system"), Some("coredns-5d78c9869d-abcde"));
        again.container_id = "c2".into();
        assert_eq!(decide(&c, &again), a);
    }

    #[test]
    fn pods_without_namespace_or_name_get_the_default() {
        let c = Config::default();
        assert_eq!(decide(&c, &pod(None, Some("web-0"))), Naming::Default);
        assert_eq!(decide(&c, &pod(Some("prod"), None)), Naming::Default);
        assert_eq!(decide(&c, &pod(Some(""), Some("web-0"))), Naming::Default);
    }

    #[test]
    fn config_is_optional_and_checked() {
        assert_eq!(Config::parse("null").unwrap(), Config::default());
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
        for json in [
            r#"{"prefix": "P-"}"#,
            r#"{"prefix": "a/b"}"#,
            r#"{"prefix": "toolong-x"}"#,
            r#"{"suffix": "x"}"#,
        ] {
            assert!(
                matches!(
                    PodIfname::configure(json.into()),
                    Err(Error::InvalidConfig(_))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn guest_names_and_leaves_addresses_to_the_host() {
        PodIfname::configure("null".into()).unwrap();
        assert_eq!(
            PodIfname::name_interface(pod(Some("prod"), Some("web-0"))).unwrap(),
            Naming::Name("prod-web-0".into())
        );
        assert_eq!(
            PodIfname::allocate(pod(Some("prod"), Some("web-0")), Family::Ipv4, vec![]).unwrap(),
            Allocation::Default
        );
    }
}
