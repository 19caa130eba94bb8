//! namespace-pools: the pod's Kubernetes namespace chooses its pool.
//!
//! Rules are tried in order; the first whose `namespaces` (exact names or
//! globs with `*`) match wins. For the family being allocated, the rule's pool
//! is used when it is one of that family's pools; otherwise the host's
//! default applies, so a dual-stack network can map a namespace to an IPv4
//! pool only. Unmapped pods get the default, or are denied with
//! `denyUnknown`. Interface naming is left to the host.

use ohno_policy_sdk::{
    host, parse_config, Allocation, Configured, Error, Family, Guest, Level, Naming, Pod, Pool,
};
use serde::Deserialize;

/// `policy.config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Namespace patterns → pool, first match wins.
    pub rules: Vec<Rule>,
    /// Deny pods whose namespace no rule matches (or that have none).
    #[serde(default)]
    pub deny_unknown: bool,
}

/// One mapping.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Exact namespace names or globs (`*` matches any run of characters).
    pub namespaces: Vec<String>,
    /// The pool's name (`ipam.pools[].name`).
    pub pool: String,
}

impl Config {
    /// Parses and checks `policy.config`.
    pub fn parse(json: &str) -> Result<Config, Error> {
        let config: Config = parse_config(json)?;
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.pool.is_empty() {
                return Err(Error::InvalidConfig(format!("rules[{i}].pool is empty")));
            }
            if rule.namespaces.is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "rules[{i}].namespaces is empty: the rule would never match"
                )));
            }
            if let Some(p) = rule.namespaces.iter().find(|p| p.is_empty()) {
                return Err(Error::InvalidConfig(format!(
                    "rules[{i}].namespaces has an empty pattern {p:?}"
                )));
            }
        }
        Ok(config)
    }

    /// The pool name mapped to `namespace`, if a rule matches.
    pub fn pool_for(&self, namespace: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.namespaces.iter().any(|p| glob_match(p, namespace)))
            .map(|r| r.pool.as_str())
    }
}

/// Whether `text` matches `pattern`, where `*` matches any (possibly empty)
/// run of characters and everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    // `split` always yields at least one piece.
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = pieces.collect();
    let Some((last, middle)) = middle.split_last() else {
        // No `*`: an exact name.
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The decision for one family: pure, so it is tested without the host.
pub fn decide(config: &Config, pod: &Pod, family: Family, pools: &[Pool]) -> Allocation {
    let namespace = pod.namespace.as_deref().filter(|n| !n.is_empty());
    match namespace.and_then(|ns| config.pool_for(ns)) {
        Some(pool) if pools.iter().any(|p| p.name == pool && p.family == family) => {
            Allocation::Pool(pool.to_string())
        }
        // Mapped, but to a pool of the other family (or one not configured):
        // this family is not the rule's business.
        Some(_) => Allocation::Default,
        None if config.deny_unknown => Allocation::Deny(match namespace {
            Some(ns) => format!("namespace {ns} is not mapped to a pool"),
            None => "the pod has no Kubernetes namespace, which is not mapped to a pool".into(),
        }),
        None => Allocation::Default,
    }
}

thread_local! {
    static CONFIG: Configured<Config> = const { Configured::new() };
}

/// The exported policy.
pub struct NamespacePools;

impl Guest for NamespacePools {
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
                "namespace {:?} family {family:?}: {decision:?}",
                pod.namespace.as_deref().unwrap_or("")
            ),
        );
        Ok(decision)
    }

    fn name_interface(_pod: Pod) -> Result<Naming, Error> {
        Ok(Naming::Default)
    }
}

ohno_policy_sdk::export!(NamespacePools);

#[cfg(test)]
mod tests {
    use super::*;
    use ohno_policy_sdk::mock;

    fn pod(namespace: Option<&str>) -> Pod {
        Pod {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p1".into(),
            network: "ohno".into(),
            node: "node1".into(),
            namespace: namespace.map(Into::into),
            name: Some("web-0".into()),
            uid: None,
            annotations: vec![],
            args: vec![],
        }
    }

    fn pool(name: &str, family: Family) -> Pool {
        let (subnet, prefix_len, block_size) = match family {
            Family::Ipv4 => ("10.85.0.0", 16, 24),
            Family::Ipv6 => ("fd00::", 64, 120),
        };
        Pool {
            name: name.into(),
            family,
            subnet: subnet.parse::<std::net::IpAddr>().unwrap().into(),
            prefix_len,
            block_size,
        }
    }

    const CONFIG: &str = r#"{"rules": [
        {"namespaces": ["prod", "team-*"], "pool": "prod"},
        {"namespaces": ["dev"], "pool": "dev6"}
    ], "denyUnknown": false}"#;

    fn v4_pools() -> Vec<Pool> {
        vec![pool("default", Family::Ipv4), pool("prod", Family::Ipv4)]
    }

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(glob_match("prod", "prod"));
        assert!(!glob_match("prod", "prod2"));
        assert!(!glob_match("prod", "pro"));
        assert!(glob_match("team-*", "team-a"));
        assert!(glob_match("team-*", "team-"));
        assert!(!glob_match("team-*", "team"));
        assert!(glob_match("*-prod", "eu-prod"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxcyyb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("**", "anything"));
    }

    #[test]
    fn mapped_namespace_gets_its_pool() {
        let c = Config::parse(CONFIG).unwrap();
        for ns in ["prod", "team-a", "team-payments"] {
            assert_eq!(
                decide(&c, &pod(Some(ns)), Family::Ipv4, &v4_pools()),
                Allocation::Pool("prod".into()),
                "{ns}"
            );
        }
    }

    #[test]
    fn pool_of_the_other_family_means_default() {
        let c = Config::parse(CONFIG).unwrap();
        // "prod" is an IPv4 pool: the IPv6 allocation is the host's.
        let v6 = vec![pool("default6", Family::Ipv6)];
        assert_eq!(
            decide(&c, &pod(Some("prod")), Family::Ipv6, &v6),
            Allocation::Default
        );
        // "dev6" is not among the IPv4 pools.
        assert_eq!(
            decide(&c, &pod(Some("dev")), Family::Ipv4, &v4_pools()),
            Allocation::Default
        );
        let v6 = vec![pool("default6", Family::Ipv6), pool("dev6", Family::Ipv6)];
        assert_eq!(
            decide(&c, &pod(Some("dev")), Family::Ipv6, &v6),
            Allocation::Pool("dev6".into())
        );
    }

    #[test]
    fn unknown_namespace_is_default_unless_denied() {
        let c = Config::parse(CONFIG).unwrap();
        assert_eq!(
            decide(&c, &pod(Some("other")), Family::Ipv4, &v4_pools()),
            Allocation::Default
        );
        assert_eq!(
            decide(&c, &pod(None), Family::Ipv4, &v4_pools()),
            Allocation::Default
        );

        let c = Config::parse(
            r#"{"rules": [{"namespaces": ["prod"], "pool": "prod"}], "denyUnknown": true}"#,
        )
        .unwrap();
        assert_eq!(
            decide(&c, &pod(Some("other")), Family::Ipv4, &v4_pools()),
            Allocation::Deny("namespace other is not mapped to a pool".into())
        );
        assert!(matches!(
            decide(&c, &pod(None), Family::Ipv4, &v4_pools()),
            Allocation::Deny(_)
        ));
        assert!(matches!(
            decide(&c, &pod(Some("")), Family::Ipv4, &v4_pools()),
            Allocation::Deny(_)
        ));
    }

    #[test]
    fn first_matching_rule_wins() {
        let c = Config::parse(
            r#"{"rules": [{"namespaces": ["team-*"], "pool": "prod"}, {"namespaces": ["team-x"], "pool": "default"}]}"#,
        )
        .unwrap();
        assert_eq!(c.pool_for("team-x"), Some("prod"));
        assert!(!c.deny_unknown);
    }

    #[test]
    fn invalid_config_is_refused_with_a_clear_message() {
        let cases = [
            ("null", "invalid type: null"),
            ("{}", "missing field `rules`"),
            (r#"{"rules": [], "deny": true}"#, "unknown field `deny`"),
            (
                r#"{"rules": [{"namespaces": "prod", "pool": "p"}]}"#,
                "invalid type",
            ),
            (
                r#"{"rules": [{"namespaces": [], "pool": "p"}]}"#,
                "rules[0].namespaces is empty",
            ),
            (
                r#"{"rules": [{"namespaces": ["a"], "pool": ""}]}"#,
                "rules[0].pool is empty",
            ),
            ("not json", "expected"),
        ];
        for (json, want) in cases {
            match NamespacePools::configure(json.into()) {
                Err(Error::InvalidConfig(msg)) => assert!(msg.contains(want), "{json}: {msg}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn guest_configures_then_allocates_and_logs() {
        NamespacePools::configure(CONFIG.into()).unwrap();
        let got = NamespacePools::allocate(pod(Some("team-a")), Family::Ipv4, v4_pools()).unwrap();
        assert_eq!(got, Allocation::Pool("prod".into()));
        assert_eq!(
            NamespacePools::name_interface(pod(Some("prod"))).unwrap(),
            Naming::Default
        );
        assert_eq!(mock::logs().len(), 1);
    }

    #[test]
    fn allocate_before_configure_is_an_internal_error() {
        assert!(matches!(
            NamespacePools::allocate(pod(Some("prod")), Family::Ipv4, v4_pools()),
            Err(Error::Internal(_))
        ));
    }
}
