//! Spec versions: which ones Ohno speaks and which verbs each allows.

use crate::error::{Error, Result};

/// Every config `cniVersion` Ohno accepts, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version, used for errors when the request's is unknown.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version` and no `cniVersions`-era fields.
    pub fn is_legacy(self) -> bool {
        self < Version(1, 0, 0)
    }
}

/// Check that `v` is one Ohno speaks (code 1 otherwise).
pub fn require_supported(v: &str) -> Result<Version> {
    if SUPPORTED.contains(&v) {
        // SUPPORTED entries always parse.
        Version::parse(v).ok_or_else(|| Error::IncompatibleVersion(v.to_string()))
    } else {
        Err(Error::IncompatibleVersion(format!(
            "cniVersion {v:?} is not supported; supported versions: {}",
            SUPPORTED.join(", ")
        )))
    }
}

/// Pick the version to speak from a conflist's `cniVersions` list: the newest entry
/// Ohno supports. Falls back to `cniVersion` when the list is absent.
pub fn negotiate(cni_version: Option<&str>, cni_versions: Option<&[String]>) -> Result<String> {
    if let Some(list) = cni_versions {
        let best = list
            .iter()
            .filter(|v| SUPPORTED.contains(&v.as_str()))
            .filter_map(|v| Version::parse(v).map(|p| (p, v)))
            .max_by_key(|(p, _)| *p);
        if let Some((_, v)) = best {
            return Ok(v.clone());
        }
        if cni_version.is_none() {
            return Err(Error::IncompatibleVersion(format!(
                "none of cniVersions {list:?} is supported; supported versions: {}",
                SUPPORTED.join(", ")
            )));
        }
    }
    match cni_version {
        Some(v) => require_supported(v).map(|_| v.to_string()),
        None => Err(Error::config("cniVersion", "missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_versions() {
        assert!(Version::parse("0.4.0").unwrap() < Version::parse("1.0.0").unwrap());
        assert!(Version::parse("0.3.1").unwrap().is_legacy());
        assert!(!Version::parse("1.1.0").unwrap().is_legacy());
        assert_eq!(Version::parse("1.a.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
    }

    #[test]
    fn unknown_version_is_code_1() {
        let e = require_supported("9.9.9").unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(e.to_string().contains("9.9.9"));
    }

    #[test]
    fn negotiate_picks_newest_supported_from_list() {
        let list = vec![
            "0.4.0".to_string(),
            "1.1.0".to_string(),
            "2.0.0".to_string(),
        ];
        assert_eq!(negotiate(Some("0.4.0"), Some(&list)).unwrap(), "1.1.0");
        assert_eq!(negotiate(Some("1.0.0"), None).unwrap(), "1.0.0");
        let none = vec!["3.0.0".to_string()];
        assert_eq!(negotiate(None, Some(&none)).unwrap_err().code(), 1);
    }
}
