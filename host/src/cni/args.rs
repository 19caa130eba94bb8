//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. Known keys are typed; unknown
//! keys are an error unless `IgnoreUnknown` is true, as the reference plugins do.

use std::net::IpAddr;

use crate::error::{Error, Result};

/// The `CNI_ARGS` Ohno understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
    /// `IP=10.85.0.9` or a comma-separated list (one per family).
    pub ips: Vec<IpAddr>,
    /// Every pair, known or not, in order (handed to policies as "other CNI args").
    pub pairs: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs> {
        let bad = |msg: String| Error::InvalidEnv {
            var: "CNI_ARGS",
            msg,
        };
        let mut out = CniArgs::default();
        let mut ignore_unknown = false;
        let mut unknown = Vec::new();
        for part in raw.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("pair {part:?} is not KEY=VALUE")))?;
            if k.is_empty() {
                return Err(bad(format!("pair {part:?} has an empty key")));
            }
            out.pairs.push((k.to_string(), v.to_string()));
            match k {
                "IgnoreUnknown" => {
                    ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(bad(format!("IgnoreUnknown={v:?} is not a boolean"))),
                    }
                }
                "K8S_POD_NAMESPACE" => out.pod_namespace = Some(v.to_string()),
                "K8S_POD_NAME" => out.pod_name = Some(v.to_string()),
                "K8S_POD_UID" => out.pod_uid = Some(v.to_string()),
                "K8S_POD_INFRA_CONTAINER_ID" => out.infra_container_id = Some(v.to_string()),
                "IP" => {
                    for ip in v.split(',').filter(|s| !s.is_empty()) {
                        let parsed = parse_requested_ip(ip)
                            .ok_or_else(|| bad(format!("IP={ip:?} is not an IP address")))?;
                        out.ips.push(parsed);
                    }
                }
                _ => unknown.push(k.to_string()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(bad(format!(
                "unknown key(s) {} (set IgnoreUnknown=1 to ignore them)",
                unknown.join(", ")
            )));
        }
        Ok(out)
    }
}

/// A requested address: `10.0.0.5`, or `10.0.0.5/24` with a prefix length that
/// fits the family (the prefix itself comes from the pool and is ignored).
pub(crate) fn parse_requested_ip(s: &str) -> Option<IpAddr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip = addr.parse::<IpAddr>().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => Some(ip),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() && p.len() <= 3 => {
            p.parse::<u8>().ok().filter(|n| *n <= max).map(|_| ip)
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;K8S_POD_UID=u1;K8S_POD_INFRA_CONTAINER_ID=abc;FOO=bar",
        )
        .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.pod_uid.as_deref(), Some("u1"));
        assert_eq!(a.pairs.len(), 6);
    }

    #[test]
    fn unknown_key_without_ignore_is_code_4() {
        let e = CniArgs::parse("FOO=bar").unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("FOO"));
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=true").is_ok());
    }

    #[test]
    fn ip_arg_accepts_list_and_prefix() {
        let a = CniArgs::parse("IP=10.85.0.9/16,fd00::9").unwrap();
        assert_eq!(a.ips.len(), 2);
        assert_eq!(CniArgs::parse("IP=nope").unwrap_err().code(), 4);
        for bad in [
            "IP=10.0.0.5/garbage",
            "IP=10.0.0.5/33",
            "IP=10.0.0.5/",
            "IP=fd00::1/129",
            "IP=10.0.0.5/24/1",
        ] {
            assert_eq!(CniArgs::parse(bad).unwrap_err().code(), 4, "{bad}");
        }
        assert_eq!(CniArgs::parse("IP=10.0.0.5/32").unwrap().ips.len(), 1);
    }

    #[test]
    fn malformed_pair_is_rejected() {
        assert_eq!(CniArgs::parse("novalue").unwrap_err().code(), 4);
        assert_eq!(CniArgs::parse("=x").unwrap_err().code(), 4);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }
}
