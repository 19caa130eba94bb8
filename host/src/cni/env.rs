//! The `CNI_*` environment, parsed and validated before anything else happens.

use std::path::PathBuf;

use super::args::CniArgs;
use crate::error::{Error, Result};
use crate::ip::ifname::validate_ifname;

/// The verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(Error::InvalidEnv {
                    var: "CNI_COMMAND",
                    msg: format!("unknown command {other:?}"),
                })
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// Verbs that act on one attachment and need CNI_CONTAINERID and CNI_IFNAME.
    fn needs_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The validated CNI environment of one invocation.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    /// Empty for VERSION, STATUS and GC.
    pub container_id: String,
    /// Required for ADD and CHECK; optional for DEL (the netns may be gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Read from the process environment.
    pub fn from_process() -> Result<Env> {
        Env::from_lookup(|k| std::env::var(k).ok())
    }

    /// Read through `get` (tests pass a map). Validates every field the verb needs.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = Command::parse(&nonempty("CNI_COMMAND").ok_or(Error::InvalidEnv {
            var: "CNI_COMMAND",
            msg: "missing".into(),
        })?)?;
        let path = nonempty("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args,
            path,
        };
        if !command.needs_attachment() {
            return Ok(env);
        }
        let require = |var: &'static str| {
            nonempty(var).ok_or(Error::InvalidEnv {
                var,
                msg: "missing".into(),
            })
        };
        env.container_id = require("CNI_CONTAINERID")?;
        validate_container_id(&env.container_id)?;
        env.ifname = require("CNI_IFNAME")?;
        validate_cni_ifname(&env.ifname)?;
        match command {
            Command::Del => env.netns = nonempty("CNI_NETNS").map(PathBuf::from),
            _ => {
                let netns = PathBuf::from(require("CNI_NETNS")?);
                if !netns.is_absolute() {
                    return Err(Error::InvalidEnv {
                        var: "CNI_NETNS",
                        msg: format!("{} is not an absolute path", netns.display()),
                    });
                }
                if !netns.exists() {
                    return Err(Error::InvalidEnv {
                        var: "CNI_NETNS",
                        msg: format!("{} does not exist", netns.display()),
                    });
                }
                env.netns = Some(netns);
            }
        }
        Ok(env)
    }
}

/// Container ids: non-empty, alphanumeric first, then alphanumerics, `_`, `.`, `-`
/// (the spec's rule). Anything else could escape a store key or a file path.
pub fn validate_container_id(id: &str) -> Result<()> {
    let bad = |msg: String| Error::InvalidEnv {
        var: "CNI_CONTAINERID",
        msg,
    };
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return Err(bad(format!("{id:?} must start with a letter or digit"))),
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(bad(format!(
            "{id:?} contains {c:?}; allowed: letters, digits, '_', '.', '-'"
        )));
    }
    if id.len() > 256 {
        return Err(bad("longer than 256 characters".into()));
    }
    Ok(())
}

/// `CNI_IFNAME` (or an ifname an operator names): [`validate_ifname`], code 4.
pub fn validate_cni_ifname(name: &str) -> Result<()> {
    validate_ifname(name).map_err(|msg| Error::InvalidEnv {
        var: "CNI_IFNAME",
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_everything() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidEnv {
                var: "CNI_NETNS",
                ..
            }
        ));
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(ok.command, Command::Add);
        assert_eq!(ok.path.len(), 2);
    }

    #[test]
    fn missing_command_is_code_4() {
        assert_eq!(env(&[]).unwrap_err().code(), 4);
        assert_eq!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code(), 4);
    }

    #[test]
    fn del_without_netns_is_fine() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert!(e.netns.is_none());
    }

    #[test]
    fn version_status_gc_need_only_the_command() {
        for c in ["VERSION", "STATUS", "GC"] {
            assert!(env(&[("CNI_COMMAND", c)]).is_ok(), "{c}");
        }
    }

    #[test]
    fn rejects_bad_container_id_ifname_and_netns() {
        let base = [("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/proc/self/ns/net")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            env(&v)
        };
        let e = with(&[("CNI_CONTAINERID", "a/b"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidEnv {
                var: "CNI_CONTAINERID",
                ..
            }
        ));
        let e = with(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "abcdefghijklmnop"),
        ])
        .unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidEnv {
                var: "CNI_IFNAME",
                ..
            }
        ));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/does-not-exist-ohno"),
        ])
        .unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidEnv {
                var: "CNI_NETNS",
                ..
            }
        ));
    }

    #[test]
    fn ifname_rule() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "abcdefghijklmnop"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
