//! annotation-pool: a pod annotation chooses its pool.
//!
//! The runtime passes the pod's annotations through the
//! `io.kubernetes.cri.pod-annotations` capability (the conflist must declare
//! it). A pod whose annotation (`ohno.example/pool` unless configured) names
//! one of the pools of the family being allocated gets that pool; every
//! other pod, and every other family, gets the host's default. Interface
//! naming is left to the host.

use ohno_policy_sdk::{
    host, parse_config, Allocation, Configured, Error, Family, Guest, Level, Naming, Pod, Pool,
};
use serde::Deserialize;

/// The annotation read when the config names none.
pub const DEFAULT_ANNOTATION: &str = "ohno.example/pool";

/// `policy.config` (may be absent: `null`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The annotation whose value is a pool name.
    #[serde(default)]
    pub annotation: Option<String>,
}

impl Config {
    /// Parses and checks `policy.config`.
    pub fn parse(json: &str) -> Result<Config, Error> {
        let config: Option<Config> = parse_config(json)?;
        let config = config.unwrap_or_default();
        if config.annotation.as_deref() == Some("") {
            return Err(Error::InvalidConfig("annotation is empty".into()));
        }
        Ok(config)
    }

    /// The annotation this policy reads.
    pub fn annotation(&self) -> &str {
        self.annotation.as_deref().unwrap_or(DEFAULT_ANNOTATION)
    }
}

/// The decision for one family: pure, so it is tested without the host.
pub fn decide(config: &Config, pod: &Pod, family: Family, pools: &[Pool]) -> Allocation {
    let key = config.annotation();
    let wanted = pod
        .annotations
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str());
    match wanted {
        Some(name) if pools.iter().any(|p| p.name == name && p.family == family) => {
            Allocation::Pool(name.to_owned())
        }
        // No annotation, or a pool of the other family (dual stack) or
        // none: this family is the host's.
        _ => Allocation::Default,
    }
}

thread_local! {
    static CONFIG: Configured<Config> = const { Configured::new() };
}

/// The exported policy.
pub struct AnnotationPool;

impl Guest for AnnotationPool {
    fn configure(config: String) -> Result<(), Error> {
        let config = Config::parse(&config)?;
        CONFIG.with(|c| c.set(config));
        Ok(())
    }

    fn allocate(pod: Pod, family: Family, pools: Vec<Pool>) -> Result<Allocation, Error> {
        let config = CONFIG.with(Configured::get)?;
        let decision = decide(&config, &pod, family, &pools);
        host::log(
            Level::Debug,
            &format!(
                "annotation {} family {family:?}: {decision:?}",
                config.annotation()
            ),
        );
        Ok(decision)
    }

    fn name_interface(_pod: Pod) -> Result<Naming, Error> {
        Ok(Naming::Default)
    }
}

ohno_policy_sdk::export!(AnnotationPool);

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        Pod {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p1".into(),
            network: "ohno".into(),
            node: "node1".into(),
            namespace: Some("shop".into()),
            name: Some("web-0".into()),
            uid: None,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: vec![],
        }
    }

    fn pool(name: &str, family: Family) -> Pool {
        let (subnet, prefix_len, block_size) = match family {
            Family::Ipv4 => ("10.85.0.0", 16, 26),
            Family::Ipv6 => ("fd00::", 64, 122),
        };
        Pool {
            name: name.into(),
            family,
            subnet: subnet.parse::<std::net::IpAddr>().unwrap().into(),
            prefix_len,
            block_size,
        }
    }

    fn v4_pools() -> Vec<Pool> {
        vec![pool("default", Family::Ipv4), pool("fast", Family::Ipv4)]
    }

    #[test]
    fn annotated_pod_gets_the_named_pool() {
        let c = Config::parse("null").unwrap();
        assert_eq!(
            decide(
                &c,
                &pod(&[(DEFAULT_ANNOTATION, "fast")]),
                Family::Ipv4,
                &v4_pools()
            ),
            Allocation::Pool("fast".into())
        );
    }

    #[test]
    fn configured_annotation_is_the_one_read() {
        let c = Config::parse(r#"{"annotation": "example.com/pool"}"#).unwrap();
        assert_eq!(
            decide(
                &c,
                &pod(&[("example.com/pool", "fast")]),
                Family::Ipv4,
                &v4_pools()
            ),
            Allocation::Pool("fast".into())
        );
        assert_eq!(
            decide(
                &c,
                &pod(&[(DEFAULT_ANNOTATION, "fast")]),
                Family::Ipv4,
                &v4_pools()
            ),
            Allocation::Default
        );
    }

    #[test]
    fn missing_annotation_or_unknown_pool_is_the_default() {
        let c = Config::default();
        assert_eq!(
            decide(&c, &pod(&[]), Family::Ipv4, &v4_pools()),
            Allocation::Default
        );
        assert_eq!(
            decide(
                &c,
                &pod(&[(DEFAULT_ANNOTATION, "nope")]),
                Family::Ipv4,
                &v4_pools()
            ),
            Allocation::Default
        );
        // An IPv4 pool named while the IPv6 address is allocated.
        let v6 = vec![pool("default6", Family::Ipv6)];
        assert_eq!(
            decide(&c, &pod(&[(DEFAULT_ANNOTATION, "fast")]), Family::Ipv6, &v6),
            Allocation::Default
        );
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(Config::parse(r#"{"annotation": ""}"#).is_err());
        assert!(Config::parse(r#"{"annotations": "x"}"#).is_err());
    }
}
