//! The `policy` section of the CNI config: which component, its config, its
//! limits. Parsed with the rest of the config, before any side effect; independent
//! of the wasmtime host (feature `wasm`), which runs it.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// What to do when the policy faults (trap, timeout, memory, invalid answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailurePolicy {
    /// The ADD fails closed (default).
    Fail,
    /// Log the fault and use the built-in decision.
    Default,
}

/// The `policy` section of the config.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyConf {
    pub path: PathBuf,
    /// JSON handed to `configure` (`null` when absent).
    pub config: serde_json::Value,
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub fuel: u64,
    pub failure_policy: FailurePolicy,
    pub cache_dir: PathBuf,
    /// Without an agent: how long the on-demand policy server keeps the loaded component after
    /// the last ADD (0: every ADD loads it).
    pub persist_ms: u64,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 100;
pub const DEFAULT_MEMORY_MB: u64 = 32;
pub const DEFAULT_FUEL: u64 = 500_000_000;
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/ohno/policy-cache";
pub const DEFAULT_PERSIST_MS: u64 = 30_000;

impl PolicyConf {
    /// Parse and validate the `policy` section (code 7 naming the field).
    pub fn parse(v: &serde_json::Value) -> Result<PolicyConf> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::config("policy", "must be an object"))?;
        let path = obj
            .get("path")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::config("policy.path", "missing"))?;
        let num =
            |field: &str, default: u64, range: std::ops::RangeInclusive<u64>| -> Result<u64> {
                match obj.get(field) {
                    None => Ok(default),
                    Some(n) => {
                        let n = n.as_u64().ok_or_else(|| {
                            Error::config(format!("policy.{field}"), "must be a positive integer")
                        })?;
                        if !range.contains(&n) {
                            return Err(Error::config(
                                format!("policy.{field}"),
                                format!("{n} is outside {}..={}", range.start(), range.end()),
                            ));
                        }
                        Ok(n)
                    }
                }
            };
        let failure_policy = match obj.get("failurePolicy").and_then(|f| f.as_str()) {
            None | Some("fail") => FailurePolicy::Fail,
            Some("default") => FailurePolicy::Default,
            Some(other) => {
                return Err(Error::config(
                    "policy.failurePolicy",
                    format!("{other:?} is not \"fail\" or \"default\""),
                ))
            }
        };
        Ok(PolicyConf {
            path: PathBuf::from(path),
            config: obj
                .get("config")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            timeout_ms: num("timeoutMs", DEFAULT_TIMEOUT_MS, 1..=60_000)?,
            memory_mb: num("memoryMB", DEFAULT_MEMORY_MB, 1..=4096)?,
            fuel: num("fuel", DEFAULT_FUEL, 1_000..=u64::MAX / 2)?,
            failure_policy,
            cache_dir: crate::config::node_dir(
                "policy.cacheDir",
                obj.get("cacheDir")
                    .and_then(|c| c.as_str())
                    .unwrap_or(DEFAULT_CACHE_DIR),
            )?,
            persist_ms: match obj.get("persistMs") {
                None => DEFAULT_PERSIST_MS,
                Some(n) => match n.as_u64() {
                    Some(n) if n <= 3_600_000 => n,
                    _ => {
                        return Err(Error::config(
                            "policy.persistMs",
                            format!("{n} is not an integer in 0..=3600000"),
                        ))
                    }
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_conf_defaults_and_errors() {
        let c = PolicyConf::parse(&serde_json::json!({"path": "/p.wasm"})).unwrap();
        assert_eq!(c.timeout_ms, 100);
        assert_eq!(c.memory_mb, 32);
        assert_eq!(c.failure_policy, FailurePolicy::Fail);
        assert_eq!(c.cache_dir, PathBuf::from(DEFAULT_CACHE_DIR));
        assert_eq!(c.config, serde_json::Value::Null);
        assert_eq!(c.persist_ms, DEFAULT_PERSIST_MS);
        let c = PolicyConf::parse(&serde_json::json!({"path": "/p.wasm", "persistMs": 0})).unwrap();
        assert_eq!(c.persist_ms, 0);
        for (bad, field) in [
            (serde_json::json!({}), "policy.path"),
            (
                serde_json::json!({"path": "/p", "timeoutMs": 0}),
                "policy.timeoutMs",
            ),
            (
                serde_json::json!({"path": "/p", "memoryMB": "x"}),
                "policy.memoryMB",
            ),
            (
                serde_json::json!({"path": "/p", "failurePolicy": "maybe"}),
                "policy.failurePolicy",
            ),
            (
                serde_json::json!({"path": "/p", "persistMs": -1}),
                "policy.persistMs",
            ),
        ] {
            let e = PolicyConf::parse(&bad).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains(field), "{e}");
        }
    }
}
