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
//!   "drainSeconds": 30,
//!   "backend": "auto",
//!   "underlay": {"ipv4": "192.0.2.10", "ipv6": "2001:db8::10"},
//!   "vxlan": {"name": "ohno.vx", "name6": "ohno.vx6", "vni": 4096, "port": 4789},
//!   "routeProtocol": 111,
//!   "resyncSeconds": 60
//! }
//! ```
//! Only `network` is required. `socket` defaults to `<ipam.lockDir>/ohnod.sock`
//! of that network, where the plugin looks for it; `metricsAddress` "" turns
//! the HTTP endpoints off. The routing fields are described in
//! [`RoutingConf`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
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
/// Ohno's route protocol number (`ip route show proto 111`): unassigned in
/// iproute2's rt_protos, and used by none of the peers we know (Calico 80,
/// BIRD 12, zebra 11, kernel 2, boot 3, static 4).
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 111;
/// The vxlan network identifier and UDP port by default.
pub const DEFAULT_VNI: u32 = 4096;
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// The vxlan devices' names by default (IPv4 and IPv6 underlay).
pub const DEFAULT_VXLAN_NAME: &str = "ohno.vx";
pub const DEFAULT_VXLAN_NAME6: &str = "ohno.vx6";
/// Full kernel read-back and node-record refresh, by default.
pub const DEFAULT_RESYNC_SECONDS: u64 = 60;
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
    backend: Option<String>,
    underlay: Option<RawUnderlay>,
    vxlan: Option<RawVxlan>,
    route_protocol: Option<u8>,
    resync_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnderlay {
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVxlan {
    name: Option<String>,
    name6: Option<String>,
    vni: Option<u32>,
    port: Option<u16>,
}

/// How the agent routes this node's pods to other nodes' pods.
#[derive(Debug, Clone)]
pub struct RoutingConf {
    /// `host-gw`, `vxlan` or `auto` (default).
    pub backend: crate::ipam::nodes::Backend,
    /// This node's underlay addresses; when absent, the source address of
    /// the route to the etcd endpoints.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub vxlan_name: String,
    pub vxlan_name6: String,
    /// 1..=16777215.
    pub vni: u32,
    pub port: u16,
    /// Marks every route the agent installs; only routes with it are ever
    /// deleted.
    pub route_protocol: u8,
    /// Full kernel read-back and node-record refresh period.
    pub resync: Duration,
}

impl RoutingConf {
    fn from_raw(raw: &RawAgentConf) -> Result<RoutingConf> {
        let backend = match raw.backend.as_deref() {
            None => crate::ipam::nodes::Backend::Auto,
            Some(b) => crate::ipam::nodes::Backend::parse(b).ok_or_else(|| {
                Error::config("backend", format!("{b:?} (want host-gw, vxlan or auto)"))
            })?,
        };
        let vx = raw.vxlan.as_ref();
        let name = |v: Option<&String>, default: &str, field: &str| -> Result<String> {
            let n = v.cloned().unwrap_or_else(|| default.to_string());
            crate::ip::ifname::validate_ifname(&n).map_err(|why| Error::config(field, why))?;
            Ok(n)
        };
        let vxlan_name = name(
            vx.and_then(|v| v.name.as_ref()),
            DEFAULT_VXLAN_NAME,
            "vxlan.name",
        )?;
        let vxlan_name6 = name(
            vx.and_then(|v| v.name6.as_ref()),
            DEFAULT_VXLAN_NAME6,
            "vxlan.name6",
        )?;
        if vxlan_name == vxlan_name6 {
            return Err(Error::config("vxlan.name6", "must differ from vxlan.name"));
        }
        let vni = vx.and_then(|v| v.vni).unwrap_or(DEFAULT_VNI);
        if !(1..=0xff_ffff).contains(&vni) {
            return Err(Error::config(
                "vxlan.vni",
                format!("{vni} (want 1..16777215)"),
            ));
        }
        let port = vx.and_then(|v| v.port).unwrap_or(DEFAULT_VXLAN_PORT);
        if port == 0 {
            return Err(Error::config("vxlan.port", "0"));
        }
        let route_protocol = raw.route_protocol.unwrap_or(DEFAULT_ROUTE_PROTOCOL);
        // 0-4 are the kernel's own (unspec, redirect, kernel, boot, static).
        if route_protocol <= 4 {
            return Err(Error::config(
                "routeProtocol",
                format!("{route_protocol} is the kernel's own (want 5..255)"),
            ));
        }
        let resync = raw.resync_seconds.unwrap_or(DEFAULT_RESYNC_SECONDS);
        if resync == 0 {
            return Err(Error::config("resyncSeconds", "0 (want at least 1)"));
        }
        Ok(RoutingConf {
            backend,
            ipv4: raw.underlay.as_ref().and_then(|u| u.ipv4),
            ipv6: raw.underlay.as_ref().and_then(|u| u.ipv6),
            vxlan_name,
            vxlan_name6,
            vni,
            port,
            route_protocol,
            resync: Duration::from_secs(resync),
        })
    }
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
    pub routing: RoutingConf,
}

/// `path`'s contents, at most [`MAX_FILE`] bytes (1 MiB); an error names
/// `field`. For the files an admin hands Ohno: configs, templates, the
/// etcd client files.
pub(crate) fn read_capped(field: &str, path: &Path) -> Result<Vec<u8>> {
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
        let routing = RoutingConf::from_raw(&raw)?;
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
            routing,
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
