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
//!   "resyncSeconds": 60,
//!   "nodeCleanup": {"graceSeconds": 300, "leaseSeconds": 15}
//! }
//! ```
//! Only `network` is required. `socket` defaults to `<ipam.lockDir>/ohnod.sock`
//! of that network, where the plugin looks for it; `metricsAddress` "" turns
//! the HTTP endpoints off. The routing fields are described in
//! [`RoutingConf`], the Kubernetes node clean-up in [`NodeCleanupConf`].

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
/// How long a Node must be gone from the Kubernetes API before its blocks
/// are released, by default.
pub const DEFAULT_NODE_GRACE_SECONDS: u64 = 300;
/// The node clean-up lease, by default (Kubernetes' leader-election default).
pub const DEFAULT_NODE_LEASE_SECONDS: u64 = 15;
/// Where a pod finds its service account (the in-cluster defaults).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
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
    node_cleanup: Option<RawNodeCleanup>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNodeCleanup {
    grace_seconds: Option<u64>,
    lease_seconds: Option<u64>,
    api_server: Option<String>,
    token_file: Option<String>,
    ca_file: Option<String>,
}

/// Releasing the blocks of Nodes deleted from Kubernetes (`nodeCleanup`;
/// off when absent). One agent of the cluster at a time does it, by a lease
/// in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCleanupConf {
    /// How long a node must be absent from a complete view of the API before
    /// it is re-checked and released.
    pub grace: Duration,
    /// The lease that keeps the work to one agent.
    pub lease: Duration,
    /// `https://host:port` (default: `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT`, as in every pod).
    pub api_server: String,
    /// The service account token, read again for every request (projected
    /// tokens rotate).
    pub token_file: PathBuf,
    /// The CA that signs the API server's certificate.
    pub ca_file: PathBuf,
}

impl NodeCleanupConf {
    fn from_raw(raw: &RawNodeCleanup) -> Result<NodeCleanupConf> {
        let seconds = |v: Option<u64>, default: u64, field: &str| -> Result<Duration> {
            match v.unwrap_or(default) {
                0 => Err(Error::config(field, "0 (want at least 1)")),
                s => Ok(Duration::from_secs(s)),
            }
        };
        let api_server = match &raw.api_server {
            Some(s) => s.trim_end_matches('/').to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    Error::config(
                        "nodeCleanup.apiServer",
                        "not set, and KUBERNETES_SERVICE_HOST is not in the environment \
                         (the agent is not in a pod): set it",
                    )
                })?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        if !api_server.starts_with("https://") {
            return Err(Error::config(
                "nodeCleanup.apiServer",
                format!("{api_server:?} (want https://host:port)"),
            ));
        }
        let file = |v: &Option<String>, name: &str, field: &str| -> Result<PathBuf> {
            let p = v
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(SERVICE_ACCOUNT_DIR).join(name));
            if !p.is_absolute() {
                return Err(Error::config(
                    field,
                    format!("{} (want an absolute path)", p.display()),
                ));
            }
            Ok(p)
        };
        Ok(NodeCleanupConf {
            grace: seconds(
                raw.grace_seconds,
                DEFAULT_NODE_GRACE_SECONDS,
                "nodeCleanup.graceSeconds",
            )?,
            lease: seconds(
                raw.lease_seconds,
                DEFAULT_NODE_LEASE_SECONDS,
                "nodeCleanup.leaseSeconds",
            )?,
            api_server,
            token_file: file(&raw.token_file, "token", "nodeCleanup.tokenFile")?,
            ca_file: file(&raw.ca_file, "ca.crt", "nodeCleanup.caFile")?,
        })
    }
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
    pub node_cleanup: Option<NodeCleanupConf>,
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
        let node_cleanup = match &raw.node_cleanup {
            None => None,
            Some(raw) => {
                if !matches!(network.ipam.store, super::StoreConf::Etcd(_)) {
                    return Err(Error::config(
                        "nodeCleanup",
                        "needs the etcd store (a node with the local store has no other nodes)",
                    ));
                }
                Some(NodeCleanupConf::from_raw(raw)?)
            }
        };
        Ok(AgentConf {
            network_file,
            network,
            socket,
            metrics_address,
            log_level,
            drain: Duration::from_secs(raw.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS)),
            routing,
            node_cleanup,
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
