//! Results in every supported version, the error document, and prevResult parsing.
//!
//! One internal shape (the 1.x one); `to_json` writes it in the requested version:
//! 0.3.x and 0.4.0 add `ips[].version`, 1.x omit it. Parsing accepts any version.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::version::{Version, LATEST, SUPPORTED};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR: `10.85.4.2/26`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A CNI result (the 1.x shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Parse a result or prevResult of any supported version.
    pub fn parse(v: &Value) -> Result<CniResult> {
        let version = v
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(LATEST);
        if !SUPPORTED.contains(&version) {
            return Err(Error::IncompatibleVersion(format!(
                "prevResult cniVersion {version:?} is not supported"
            )));
        }
        // Older results: same fields plus `ips[].version`, which serde ignores.
        serde_json::from_value(v.clone()).map_err(|e| Error::Decode {
            what: "prevResult".into(),
            msg: e.to_string(),
        })
    }

    /// The result document in `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let legacy = Version::parse(version).is_some_and(Version::is_legacy);
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));
        out.insert("interfaces".into(), json!(self.interfaces));
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = match serde_json::to_value(ip) {
                    Ok(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                if legacy {
                    let fam = if ip.address.contains(':') { "6" } else { "4" };
                    m.insert("version".into(), json!(fam));
                }
                Value::Object(m)
            })
            .collect();
        out.insert("ips".into(), Value::Array(ips));
        out.insert("routes".into(), json!(self.routes));
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }

    /// Append `other` (this plugin's part) after `self` (prevResult), re-indexing
    /// `ips[].interface` so they still point at the right interface.
    pub fn merge(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        for r in other.routes {
            if !self.routes.contains(&r) {
                self.routes.push(r);
            }
        }
        if self.dns == Dns::default() {
            self.dns = other.dns;
        }
        self
    }
}

/// The error document of the spec: `{"cniVersion","code","msg","details"}`.
pub fn error_json(version: &str, err: &Error) -> Value {
    json!({
        "cniVersion": version,
        "code": err.code(),
        "msg": err.msg(),
        "details": err.details(),
    })
}

/// The VERSION answer.
pub fn version_json(version: &str) -> Value {
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "ohno0".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    ..Default::default()
                },
                Interface {
                    name: "veth0123456789a".into(),
                    mac: Some("aa:bb:cc:dd:ee:02".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:03".into()),
                    sandbox: Some("/var/run/netns/p".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.85.4.2/26".into(),
                    gateway: Some("10.85.4.1".into()),
                    interface: Some(2),
                },
                IpConfig {
                    address: "fd00::2/122".into(),
                    gateway: Some("fd00::1".into()),
                    interface: Some(2),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.85.4.1".into()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn every_version_round_trips_with_the_right_fields() {
        for v in SUPPORTED {
            let j = sample().to_json(v);
            assert_eq!(j["cniVersion"], *v);
            let legacy = v.starts_with("0.");
            assert_eq!(j["ips"][0].get("version").is_some(), legacy, "{v}");
            if legacy {
                assert_eq!(j["ips"][0]["version"], "4");
                assert_eq!(j["ips"][1]["version"], "6");
            }
            assert_eq!(j["ips"][0]["interface"], 2);
            assert_eq!(j["interfaces"][2]["sandbox"], "/var/run/netns/p");
            assert_eq!(CniResult::parse(&j).unwrap(), sample(), "{v}");
        }
    }

    #[test]
    fn prev_result_of_unknown_version_is_rejected() {
        let mut j = sample().to_json("1.0.0");
        j["cniVersion"] = json!("7.0.0");
        assert_eq!(CniResult::parse(&j).unwrap_err().code(), 1);
        assert_eq!(
            CniResult::parse(&json!({"ips": "nope"}))
                .unwrap_err()
                .code(),
            6
        );
    }

    #[test]
    fn merge_reindexes_interfaces() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "x".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "192.168.1.2/24".into(),
                gateway: None,
                interface: Some(0),
            }],
            ..Default::default()
        };
        let m = prev.merge(sample());
        assert_eq!(m.interfaces.len(), 4);
        assert_eq!(m.ips[0].interface, Some(0));
        assert_eq!(m.ips[1].interface, Some(3));
    }

    #[test]
    fn error_document_has_code_msg_details() {
        let e = Error::config("ipam.pools[0].subnet", "bad");
        let j = error_json("1.1.0", &e);
        assert_eq!(j["code"], 7);
        assert_eq!(j["cniVersion"], "1.1.0");
        assert_eq!(
            j["msg"],
            "invalid network config field ipam.pools[0].subnet"
        );
        assert_eq!(j["details"], "bad");
    }

    #[test]
    fn error_document_says_what_failed_once_and_the_cause_once() {
        for e in [
            Error::config("ipam.pools[0].blockSize", "/31 does not fit"),
            Error::PoolExhausted {
                pool: "default".into(),
                msg: "no free block".into(),
            },
            Error::PolicyDenied {
                policy: "p.wasm".into(),
                reason: "namespace kube-system".into(),
            },
            Error::TryAgainLater("etcd unreachable".into()),
        ] {
            let j = error_json("1.1.0", &e);
            let (msg, details) = (
                j["msg"].as_str().unwrap_or(""),
                j["details"].as_str().unwrap_or(""),
            );
            let shown = format!("{msg}; {details}");
            assert!(!details.contains(msg), "{shown}");
            assert!(!msg.contains(details), "{shown}");
            assert!(e.to_string().contains(details), "{shown} vs {e}");
        }
    }
}
