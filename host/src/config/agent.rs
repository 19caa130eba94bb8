//! The agent's configuration (`ohnod run --config FILE`), and the network
//! configuration it serves, read from the same CNI config file the runtime
//! gives the plugin.
//!
//! ```json
//! {
//!   "network": "/etc/cni/net.d/10-ohno.conflist",
//!   "socket": "/run/ohno/ohnod.sock",
//!   "metricsAddress": "127.0.0.1:9672",
//!   "logLevel": "info",
//!   "drainSeconds": 30
//! }
//! ```
//! Only `network` is required. `socket` defaults to `<ipam.lockDir>/ohnod.sock`
//! of that network, where the plugin looks for it; `metricsAddress` "" turns
//! the HTTP endpoints off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::NetConf;
use crate::error::{Error, Result};

/// The agent's socket in a lock directory: what `ohnod run` serves and every
/// plugin call looks for first.
pub const AGENT_SOCKET: &str = "ohnod.sock";
/// Where `/metrics`, `/healthz` and `/readyz` are served by default.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9672";
/// How long a stopping agent waits for the calls it is serving.
pub const DEFAULT_DRAIN_SECONDS: u64 = 30;
/// The largest config file read.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAgentConf {
    network: Option<String>,
    socket: Option<String>,
    metrics_address: Option<String>,
    log_level: Option<String>,
    drain_seconds: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct AgentConf {
    /// The CNI config file the network comes from.
    pub network_file: PathBuf,
    pub network: NetConf,
    pub socket: PathBuf,
    pub metrics_address: Option<SocketAddr>,
    pub log_level: log::LevelFilter,
    pub drain: Duration,
}

/// `path`'s contents, at most [`MAX_FILE`] bytes.
fn read_capped(field: &str, path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .map_err(|e| Error::config(field, format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::config(field, format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(Error::config(
            field,
            format!("{} is over {MAX_FILE} bytes", path.display()),
        ));
    }
    Ok(buf)
}

impl AgentConf {
    pub fn load(path: &Path) -> Result<AgentConf> {
        let raw: RawAgentConf =
            serde_json::from_slice(&read_capped("config", path)?).map_err(|e| Error::Decode {
                what: format!("agent config {}", path.display()),
                msg: e.to_string(),
            })?;
        let network_file = PathBuf::from(
            raw.network
                .ok_or_else(|| Error::config("network", "missing"))?,
        );
        let network = NetConf::parse(
            &ohno_plugin_conf(&read_capped("network", &network_file)?)?,
            &[],
        )
        .map_err(|e| match e {
            Error::InvalidConfig { field, msg } => Error::InvalidConfig {
                field: format!("network: {}: {field}", network_file.display()),
                msg,
            },
            other => other,
        })?;
        let socket = match raw.socket {
            Some(s) if !s.is_empty() => super::node_dir("socket", &s)?,
            _ => network.ipam.lock_dir.join(AGENT_SOCKET),
        };
        let metrics_address = match raw.metrics_address.as_deref() {
            Some("") => None,
            Some(a) => Some(a.parse().map_err(|e| {
                Error::config("metricsAddress", format!("{a:?}: {e} (want host:port)"))
            })?),
            None => DEFAULT_METRICS_ADDRESS.parse().ok(),
        };
        let log_level = match raw.log_level.as_deref() {
            Some(l) => super::parse_level("logLevel", l)?,
            None => log::LevelFilter::Info,
        };
        Ok(AgentConf {
            network_file,
            network,
            socket,
            metrics_address,
            log_level,
            drain: Duration::from_secs(raw.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS)),
        })
    }
}

/// Ohno's own network config in a CNI config file: the file itself when it
/// is one network config, or — for a conflist — the plugin whose `type` (or
/// `ipam.type`) is `ohno`, with the list's `name` and `cniVersion`, as libcni
/// hands it to the plugin.
pub fn ohno_plugin_conf(file: &[u8]) -> Result<Vec<u8>> {
    let doc: Value = serde_json::from_slice(file).map_err(|e| Error::Decode {
        what: "network config file".into(),
        msg: e.to_string(),
    })?;
    let Some(plugins) = doc.get("plugins").and_then(Value::as_array) else {
        return Ok(file.to_vec());
    };
    let is_ohno = |p: &&Value| {
        p.get("type").and_then(Value::as_str) == Some("ohno")
            || p.pointer("/ipam/type").and_then(Value::as_str) == Some("ohno")
    };
    let mut plugin = plugins
        .iter()
        .find(is_ohno)
        .cloned()
        .ok_or_else(|| Error::config("plugins", "no plugin of type \"ohno\" in the list"))?;
    if let Some(obj) = plugin.as_object_mut() {
        for key in ["name", "cniVersion", "cniVersions"] {
            if let Some(v) = doc.get(key) {
                obj.insert(key.to_string(), v.clone());
            }
        }
    }
    serde_json::to_vec(&plugin).map_err(|e| Error::Decode {
        what: "network config".into(),
        msg: e.to_string(),
    })
}
