//! The network configuration on stdin: parsed, defaulted and validated before any
//! side effect. Errors name the field (`ipam.pools[0].subnet`) and carry code 7
//! (or 1 for the version, 6 for JSON that does not decode).

pub mod agent;
pub mod policy;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::cni::version;
use crate::error::{Error, Result};
use crate::ip::cidr::Cidr;
use crate::ip::ifname::validate_ifname;
use crate::ip::mac::parse_mac;

/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "ohno0";
/// Default log file.
pub const DEFAULT_LOG_FILE: &str = "/var/log/ohno.log";
/// Default directory of the embedded local store.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/ohno";
/// Default key prefix in the store.
pub const DEFAULT_PREFIX: &str = "/ohno";

/// The config as it arrives on stdin. Unknown fields are ignored (runtimes add their own).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    cni_version: Option<String>,
    cni_versions: Option<Vec<String>>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    is_default_gateway: Option<bool>,
    ip_masq: Option<bool>,
    hairpin_mode: Option<bool>,
    promisc_mode: Option<bool>,
    node: Option<String>,
    log_file: Option<String>,
    log_level: Option<String>,
    ipam: Option<RawIpam>,
    dns: Option<Value>,
    runtime_config: Option<RawRuntimeConfig>,
    args: Option<Value>,
    prev_result: Option<Value>,
    policy: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<GcAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<GcAttachment>>,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    #[serde(default)]
    pools: Vec<RawPool>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    store: Option<RawStore>,
    strict_affinity: Option<bool>,
    lock_dir: Option<String>,
    /// In IPAM-plugin mode the top level belongs to the calling plugin, so these
    /// may also be given here; the top level wins.
    node: Option<String>,
    log_file: Option<String>,
    log_level: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPool {
    name: Option<String>,
    subnet: Option<String>,
    block_size: Option<u8>,
    #[serde(default)]
    exclude: Vec<String>,
    range_start: Option<String>,
    range_end: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStore {
    #[serde(rename = "type")]
    store_type: Option<String>,
    data_dir: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    endpoints: Vec<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    persist_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawRuntimeConfig {
    #[serde(default, deserialize_with = "null_as_empty")]
    ips: Vec<String>,
    mac: Option<String>,
    #[serde(
        rename = "io.kubernetes.cri.pod-annotations",
        default,
        deserialize_with = "null_as_empty"
    )]
    pod_annotations: BTreeMap<String, String>,
}

/// A capability the runtime has no value for may arrive as `null`:
/// containerd 1.6 sends `"io.kubernetes.cri.pod-annotations": null` for a
/// pod without annotations. That is the empty value, not a bad config.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A validated pool definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct PoolConf {
    pub name: String,
    pub subnet: Cidr,
    /// Prefix length of each block.
    pub block_size: u8,
    pub exclude: Vec<Cidr>,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
}

/// A route to install in the pod; `gw` defaults to the gateway of the pod's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
}

/// Which store backend holds the allocations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum StoreConf {
    /// The embedded single-node store (SQLite) under `data_dir`.
    Local { data_dir: PathBuf, prefix: String },
    /// An etcd cluster.
    Etcd(EtcdConf),
}

/// Default per-request timeout against etcd.
pub const DEFAULT_ETCD_TIMEOUT_MS: u64 = 1000;
/// Default number of attempts (each on the next endpoint) before code 11.
pub const DEFAULT_ETCD_RETRIES: u32 = 3;

/// Default time an on-demand store server stays after the last call.
pub const DEFAULT_ETCD_PERSIST_MS: u64 = 30_000;

impl PoolConf {
    /// The pool's address family.
    pub fn family(&self) -> crate::ip::Family {
        crate::ip::Family::of(self.subnet.addr())
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct EtcdConf {
    /// `https://host:port` (mutual TLS) or `http://host:port` (development).
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Connect and request timeout, per attempt.
    pub timeout_ms: u64,
    /// Attempts before giving up with "try again later".
    pub retries: u32,
    /// Without an agent: how long the on-demand store server keeps the connection after
    /// the last call (0: every call connects on its own).
    pub persist_ms: u64,
    /// Where the on-demand server's socket goes (`ipam.lockDir`); None: none.
    pub helper_dir: Option<PathBuf>,
}

impl StoreConf {
    pub fn prefix(&self) -> &str {
        match self {
            StoreConf::Local { prefix, .. } => prefix,
            StoreConf::Etcd(e) => &e.prefix,
        }
    }
}

/// The IPAM section.
#[derive(Debug, Clone)]
pub struct IpamConf {
    pub pools: Vec<PoolConf>,
    pub routes: Vec<RouteConf>,
    pub store: StoreConf,
    /// Never borrow addresses from other nodes' blocks (default true).
    pub strict_affinity: bool,
    /// Node-local directory for the lock that serializes block claims.
    pub lock_dir: PathBuf,
}

/// Default directory of node-local lock files.
pub const DEFAULT_LOCK_DIR: &str = "/run/ohno";

/// The longest `ipam.lockDir`: a Unix socket path holds 107 bytes, and the
/// servers' sockets are `<lockDir>/<kind>-<16 hex>.sock` (kind ≤ 6 bytes).
pub const MAX_LOCK_DIR_LEN: usize = 107 - "/policy-0123456789abcdef.sock".len();

/// A node-local directory from the config: absolute, or code 7 naming `field`.
/// The plugin and `ohnod` run with different working directories,
/// so a relative path would name two places.
pub fn node_dir(field: &str, raw: &str) -> Result<PathBuf> {
    let path = PathBuf::from(raw);
    if !path.is_absolute() {
        return Err(Error::config(
            field,
            format!("{raw:?} is not an absolute path"),
        ));
    }
    Ok(path)
}

/// Addresses and MAC the runtime asked for (capabilities and args).
#[derive(Debug, Clone, Default)]
pub struct Requests {
    /// From `runtimeConfig.ips`, `args.cni.ips` and CNI_ARGS `IP`, deduplicated.
    pub ips: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
    pub pod_annotations: BTreeMap<String, String>,
}

/// The validated network configuration of one invocation.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// The version this invocation speaks (request version, result version).
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub is_default_gateway: bool,
    pub ip_masq: bool,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    pub node: String,
    pub log_file: PathBuf,
    pub log_level: log::LevelFilter,
    pub ipam: IpamConf,
    pub dns: Option<Value>,
    pub requests: Requests,
    pub prev_result: Option<Value>,
    /// The `policy` section: a WebAssembly policy component and its limits.
    pub policy: Option<crate::config::policy::PolicyConf>,
    /// GC: the attachments the runtime still uses (`cni.dev/valid-attachments`, or
    /// the older `cni.dev/attachments`).
    pub valid_attachments: Option<Vec<GcAttachment>>,
}

/// Just enough of the config to answer in the right version even when the rest is
/// invalid: used for error documents.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        cni_version: Option<String>,
    }
    serde_json::from_slice::<Peek>(stdin).ok()?.cni_version
}

impl NetConf {
    /// Parse and validate stdin. `env_ips` are the `IP=` addresses from CNI_ARGS.
    pub fn parse(stdin: &[u8], env_ips: &[IpAddr]) -> Result<NetConf> {
        let raw: RawNetConf = serde_json::from_slice(stdin).map_err(|e| Error::Decode {
            what: "network config".into(),
            msg: e.to_string(),
        })?;
        let cni_version =
            version::negotiate(raw.cni_version.as_deref(), raw.cni_versions.as_deref())?;
        let name = raw
            .name
            .clone()
            .ok_or_else(|| Error::config("name", "missing"))?;
        validate_network_name(&name)?;
        let plugin_type = raw
            .plugin_type
            .clone()
            .ok_or_else(|| Error::config("type", "missing"))?;
        let bridge = raw
            .bridge
            .clone()
            .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname(&bridge).map_err(|m| Error::config("bridge", m))?;
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(Error::config("mtu", format!("{mtu} is outside 68..=65535")));
            }
        }
        let ipam_field = |f: fn(&RawIpam) -> Option<String>| raw.ipam.as_ref().and_then(f);
        let log_level_s = raw
            .log_level
            .clone()
            .or_else(|| ipam_field(|i| i.log_level.clone()));
        let log_file = raw
            .log_file
            .clone()
            .or_else(|| ipam_field(|i| i.log_file.clone()));
        let log_level = parse_level("logLevel", log_level_s.as_deref().unwrap_or("info"))?;
        let node = match raw
            .node
            .clone()
            .or_else(|| ipam_field(|i| i.node.clone()))
            .filter(|n| !n.is_empty())
        {
            Some(n) => n,
            None => default_node_name()?,
        };
        validate_key_segment("node", &node)?;
        let ipam = parse_ipam(raw.ipam.as_ref())?;
        let requests = parse_requests(&raw, env_ips)?;
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            bridge,
            mtu: raw.mtu,
            is_default_gateway: raw.is_default_gateway.unwrap_or(true),
            ip_masq: raw.ip_masq.unwrap_or(false),
            hairpin_mode: raw.hairpin_mode.unwrap_or(false),
            promisc_mode: raw.promisc_mode.unwrap_or(false),
            node,
            log_file: PathBuf::from(log_file.as_deref().unwrap_or(DEFAULT_LOG_FILE)),
            log_level,
            ipam,
            dns: raw.dns,
            requests,
            prev_result: raw.prev_result,
            policy: raw
                .policy
                .as_ref()
                .map(crate::config::policy::PolicyConf::parse)
                .transpose()?,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
        })
    }

    /// Logging settings, readable even from a config that fails validation later.
    pub fn peek_logging(stdin: &[u8]) -> (PathBuf, log::LevelFilter) {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Peek {
            log_file: Option<String>,
            log_level: Option<String>,
            ipam: Option<Box<Peek>>,
        }
        let p = serde_json::from_slice::<Peek>(stdin).ok().map(|p| {
            let inner = p.ipam.map(|i| *i);
            Peek {
                log_file: p
                    .log_file
                    .or_else(|| inner.as_ref().and_then(|i| i.log_file.clone())),
                log_level: p
                    .log_level
                    .or_else(|| inner.as_ref().and_then(|i| i.log_level.clone())),
                ipam: None,
            }
        });
        let file = p
            .as_ref()
            .and_then(|p| p.log_file.clone())
            .unwrap_or_else(|| DEFAULT_LOG_FILE.to_string());
        let level = match p.and_then(|p| p.log_level).as_deref() {
            Some("error") => log::LevelFilter::Error,
            Some("warn") | Some("warning") => log::LevelFilter::Warn,
            Some("debug") => log::LevelFilter::Debug,
            Some("trace") => log::LevelFilter::Trace,
            Some("off") | Some("none") => log::LevelFilter::Off,
            _ => log::LevelFilter::Info,
        };
        (PathBuf::from(file), level)
    }

    /// Ohno runs as the IPAM plugin of another plugin (`"type": "bridge"`,
    /// `"ipam": {"type": "ohno"}`): it allocates and answers, and touches no link.
    pub fn ipam_only(&self) -> bool {
        self.plugin_type != "ohno"
    }

    /// The parsed version (always one of `version::SUPPORTED`).
    pub fn version(&self) -> version::Version {
        version::Version::parse(&self.cni_version).unwrap_or(version::Version(1, 1, 0))
    }
}

/// A `logLevel` value (the plugin's and the agent's), or code 7 naming `field`.
pub fn parse_level(field: &str, s: &str) -> Result<log::LevelFilter> {
    Ok(match s {
        "error" => log::LevelFilter::Error,
        "warn" | "warning" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        "off" | "none" => log::LevelFilter::Off,
        other => {
            return Err(Error::config(
                field,
                format!("{other:?} is not one of error, warn, info, debug, trace, off"),
            ))
        }
    })
}

/// `$OHNO_NODE_NAME`, then the hostname.
fn default_node_name() -> Result<String> {
    if let Ok(n) = std::env::var("OHNO_NODE_NAME") {
        if !n.is_empty() {
            return Ok(n);
        }
    }
    let host = nix::unistd::gethostname()
        .map_err(|e| Error::io("read hostname for the default node name", e.into()))?;
    Ok(host.to_string_lossy().into_owned())
}

/// A network name: a letter or digit, then letters, digits, '_', '.', '-'
/// (one segment of a store key and of a chain name).
pub fn validate_network_name(name: &str) -> Result<()> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok_first || !ok_rest {
        return Err(Error::config(
            "name",
            format!("{name:?} must start with a letter or digit and contain only letters, digits, '_', '.', '-'"),
        ));
    }
    Ok(())
}

/// Names that become one segment of a store key: no '/', not empty, printable.
fn validate_key_segment(field: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 253
        || v.contains('/')
        || v.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::config(
            field,
            format!("{v:?} must be 1-253 printable characters without '/' or whitespace"),
        ));
    }
    Ok(())
}

fn parse_ipam(raw: Option<&RawIpam>) -> Result<IpamConf> {
    let raw = raw.ok_or_else(|| Error::config("ipam", "missing"))?;
    match raw.ipam_type.as_deref() {
        Some("ohno") => {}
        Some(other) => {
            return Err(Error::config(
                "ipam.type",
                format!("{other:?} is not supported; ohno does its own IPAM (\"type\": \"ohno\")"),
            ))
        }
        None => return Err(Error::config("ipam.type", "missing")),
    }
    if raw.pools.is_empty() {
        return Err(Error::config("ipam.pools", "at least one pool is required"));
    }
    let mut pools: Vec<PoolConf> = Vec::with_capacity(raw.pools.len());
    for (i, p) in raw.pools.iter().enumerate() {
        let pool = parse_pool(i, p)?;
        if pools.iter().any(|q| q.name == pool.name) {
            return Err(Error::config(
                format!("ipam.pools[{i}].name"),
                format!("duplicate pool name {:?}", pool.name),
            ));
        }
        if let Some(q) = pools.iter().find(|q| q.subnet.overlaps(&pool.subnet)) {
            return Err(Error::config(
                format!("ipam.pools[{i}].subnet"),
                format!("{} overlaps pool {:?} ({})", pool.subnet, q.name, q.subnet),
            ));
        }
        pools.push(pool);
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter().enumerate() {
        let field = format!("ipam.routes[{i}].dst");
        let dst = r
            .dst
            .as_deref()
            .ok_or_else(|| Error::config(&field, "missing"))?;
        let dst = Cidr::parse(dst).map_err(|m| Error::config(&field, m))?;
        let gw = match &r.gw {
            Some(g) => Some(g.parse::<IpAddr>().map_err(|_| {
                Error::config(
                    format!("ipam.routes[{i}].gw"),
                    format!("{g:?} is not an IP address"),
                )
            })?),
            None => None,
        };
        if let Some(g) = gw {
            if g.is_ipv4() != dst.is_ipv4() {
                return Err(Error::config(
                    format!("ipam.routes[{i}].gw"),
                    "family differs from dst",
                ));
            }
        }
        routes.push(RouteConf { dst, gw });
    }
    let mut store = parse_store(raw.store.as_ref())?;
    let lock_dir = node_dir(
        "ipam.lockDir",
        raw.lock_dir.as_deref().unwrap_or(DEFAULT_LOCK_DIR),
    )?;
    if lock_dir.as_os_str().len() > MAX_LOCK_DIR_LEN {
        return Err(Error::config(
            "ipam.lockDir",
            format!(
                "{:?} is {} bytes; the agent's Unix sockets in it need it at most {MAX_LOCK_DIR_LEN}",
                lock_dir,
                lock_dir.as_os_str().len()
            ),
        ));
    }
    if let StoreConf::Etcd(e) = &mut store {
        e.helper_dir = Some(lock_dir.clone());
    }
    Ok(IpamConf {
        pools,
        routes,
        store,
        strict_affinity: raw.strict_affinity.unwrap_or(true),
        lock_dir,
    })
}

fn parse_pool(i: usize, p: &RawPool) -> Result<PoolConf> {
    let f = |name: &str| format!("ipam.pools[{i}].{name}");
    let name = p.name.clone().unwrap_or_else(|| {
        if i == 0 {
            "default".into()
        } else {
            format!("pool{i}")
        }
    });
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(Error::config(
            f("name"),
            format!("{name:?} must be 1-63 letters, digits, '_', '.', '-'"),
        ));
    }
    let subnet_s = p
        .subnet
        .as_deref()
        .ok_or_else(|| Error::config(f("subnet"), "missing"))?;
    let subnet = Cidr::parse(subnet_s).map_err(|m| Error::config(f("subnet"), m))?;
    if subnet.addr() != subnet.network() {
        return Err(Error::config(
            f("subnet"),
            format!(
                "{subnet_s} has host bits set; did you mean {}/{}?",
                subnet.network(),
                subnet.prefix()
            ),
        ));
    }
    let max_block = if subnet.is_ipv4() { 30 } else { 126 };
    let default_block = if subnet.is_ipv4() { 26 } else { 122 };
    let block_size = p.block_size.unwrap_or(default_block.max(subnet.prefix()));
    if block_size < subnet.prefix() || block_size > max_block {
        return Err(Error::config(
            f("blockSize"),
            format!(
                "/{block_size} does not fit subnet {subnet}: it must be between /{} and /{max_block}",
                subnet.prefix()
            ),
        ));
    }
    if !subnet.is_ipv4() && subnet.prefix() < 8 {
        return Err(Error::config(
            f("subnet"),
            "IPv6 pools must be /8 or longer",
        ));
    }
    let mut exclude = Vec::with_capacity(p.exclude.len());
    for (j, e) in p.exclude.iter().enumerate() {
        let field = format!("ipam.pools[{i}].exclude[{j}]");
        // A bare address excludes just that address.
        let c = if e.contains('/') {
            Cidr::parse(e)
        } else {
            e.parse::<IpAddr>()
                .map(Cidr::host)
                .map_err(|_| format!("{e:?} is not an address or CIDR"))
        }
        .map_err(|m| Error::config(&field, m))?;
        if !subnet.overlaps(&c) {
            return Err(Error::config(
                &field,
                format!("{c} is outside subnet {subnet}"),
            ));
        }
        exclude.push(c);
    }
    let parse_bound = |v: &Option<String>, name: &str| -> Result<Option<IpAddr>> {
        match v {
            None => Ok(None),
            Some(s) => {
                let ip = s
                    .parse::<IpAddr>()
                    .map_err(|_| Error::config(f(name), format!("{s:?} is not an IP address")))?;
                if !subnet.contains(ip) {
                    return Err(Error::config(
                        f(name),
                        format!("{ip} is outside subnet {subnet}"),
                    ));
                }
                Ok(Some(ip))
            }
        }
    };
    let range_start = parse_bound(&p.range_start, "rangeStart")?;
    let range_end = parse_bound(&p.range_end, "rangeEnd")?;
    if let (Some(s), Some(e)) = (range_start, range_end) {
        if crate::ip::cidr::to_u128(s) > crate::ip::cidr::to_u128(e) {
            return Err(Error::config(
                f("rangeEnd"),
                format!("{e} is before rangeStart {s}"),
            ));
        }
    }
    Ok(PoolConf {
        name,
        subnet,
        block_size,
        exclude,
        range_start,
        range_end,
    })
}

fn parse_store(raw: Option<&RawStore>) -> Result<StoreConf> {
    let prefix = raw
        .and_then(|s| s.prefix.clone())
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    if !prefix.starts_with('/')
        || prefix.ends_with('/') && prefix.len() > 1
        || prefix.contains("//")
    {
        return Err(Error::config(
            "ipam.store.prefix",
            format!("{prefix:?} must start with '/' and not end with '/'"),
        ));
    }
    match raw.and_then(|s| s.store_type.as_deref()).unwrap_or("local") {
        "local" => Ok(StoreConf::Local {
            data_dir: node_dir(
                "ipam.store.dataDir",
                raw.and_then(|s| s.data_dir.as_deref())
                    .unwrap_or(DEFAULT_DATA_DIR),
            )?,
            prefix,
        }),
        "etcd" => parse_etcd(raw, prefix),
        other => Err(Error::config(
            "ipam.store.type",
            format!("{other:?} is not a known store (known: local, etcd)"),
        )),
    }
}

fn parse_etcd(raw: Option<&RawStore>, prefix: String) -> Result<StoreConf> {
    let raw = raw.ok_or_else(|| Error::config("ipam.store", "missing"))?;
    if raw.endpoints.is_empty() {
        return Err(Error::config(
            "ipam.store.endpoints",
            "at least one endpoint is required",
        ));
    }
    for (i, e) in raw.endpoints.iter().enumerate() {
        let rest = e
            .strip_prefix("https://")
            .or_else(|| e.strip_prefix("http://"))
            .ok_or_else(|| {
                Error::config(
                    format!("ipam.store.endpoints[{i}]"),
                    format!("{e:?} must start with https:// or http://"),
                )
            })?;
        // host:port, optionally one trailing '/'; no path, user or query.
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        let valid = hostport.rsplit_once(':').is_some_and(|(host, port)| {
            let host_ok = !host.is_empty()
                && !host.contains(['/', '@', '?', '#', ' '])
                && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
            host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(Error::config(
                format!("ipam.store.endpoints[{i}]"),
                format!("{e:?} is not scheme://host:port"),
            ));
        }
    }
    let tls = raw.endpoints.iter().any(|e| e.starts_with("https://"));
    if tls && raw.endpoints.iter().any(|e| e.starts_with("http://")) {
        return Err(Error::config(
            "ipam.store.endpoints",
            "mixes https:// and http:// endpoints: a failover would send the store's data \
             in clear and without client authentication; use one scheme",
        ));
    }
    if tls && raw.ca_file.is_none() {
        return Err(Error::config(
            "ipam.store.caFile",
            "required for https:// endpoints",
        ));
    }
    if raw.cert_file.is_some() != raw.key_file.is_some() {
        return Err(Error::config(
            "ipam.store.keyFile",
            "certFile and keyFile go together",
        ));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_ETCD_TIMEOUT_MS);
    if !(10..=60_000).contains(&timeout_ms) {
        return Err(Error::config(
            "ipam.store.timeoutMs",
            format!("{timeout_ms} is outside 10..=60000"),
        ));
    }
    let retries = raw.retries.unwrap_or(DEFAULT_ETCD_RETRIES);
    if !(1..=10).contains(&retries) {
        return Err(Error::config(
            "ipam.store.retries",
            format!("{retries} is outside 1..=10"),
        ));
    }
    let persist_ms = raw.persist_ms.unwrap_or(DEFAULT_ETCD_PERSIST_MS);
    if persist_ms > 3_600_000 {
        return Err(Error::config(
            "ipam.store.persistMs",
            format!("{persist_ms} is outside 0..=3600000"),
        ));
    }
    Ok(StoreConf::Etcd(EtcdConf {
        endpoints: raw.endpoints.clone(),
        prefix,
        ca_file: raw.ca_file.as_ref().map(PathBuf::from),
        cert_file: raw.cert_file.as_ref().map(PathBuf::from),
        key_file: raw.key_file.as_ref().map(PathBuf::from),
        timeout_ms,
        retries,
        persist_ms,
        helper_dir: None,
    }))
}

fn parse_requests(raw: &RawNetConf, env_ips: &[IpAddr]) -> Result<Requests> {
    let rc = raw.runtime_config.clone().unwrap_or_default();
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut push = |field: &str, s: &str| -> Result<()> {
        let ip = crate::cni::args::parse_requested_ip(s)
            .ok_or_else(|| Error::config(field, format!("{s:?} is not an IP address")))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
        Ok(())
    };
    for s in &rc.ips {
        push("runtimeConfig.ips", s)?;
    }
    if let Some(list) = raw
        .args
        .as_ref()
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("ips"))
    {
        let arr = list
            .as_array()
            .ok_or_else(|| Error::config("args.cni.ips", "must be a list of addresses"))?;
        for v in arr {
            let s = v
                .as_str()
                .ok_or_else(|| Error::config("args.cni.ips", "must be a list of strings"))?;
            push("args.cni.ips", s)?;
        }
    }
    for ip in env_ips {
        push("CNI_ARGS IP", &ip.to_string())?;
    }
    let mac = match rc.mac.as_deref() {
        None | Some("") => None,
        Some(m) => Some(parse_mac(m).ok_or_else(|| {
            Error::config("runtimeConfig.mac", format!("{m:?} is not a MAC address"))
        })?),
    };
    if let Some(m) = mac {
        if m[0] & 1 == 1 {
            return Err(Error::config(
                "runtimeConfig.mac",
                "a multicast MAC cannot be an interface address",
            ));
        }
    }
    Ok(Requests {
        ips,
        mac,
        pod_annotations: rc.pod_annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetConf> {
        NetConf::parse(v.to_string().as_bytes(), &[])
    }

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "podnet", "type": "ohno", "node": "n1",
               "ipam": {"type": "ohno", "pools": [{"name": "default", "subnet": "10.85.0.0/16"}]}})
    }

    #[test]
    fn defaults_are_applied() {
        let c = conf(base()).unwrap();
        assert_eq!(c.bridge, "ohno0");
        assert!(c.is_default_gateway);
        assert!(!c.ip_masq);
        assert_eq!(c.ipam.pools[0].block_size, 26);
        assert_eq!(c.log_file, PathBuf::from("/var/log/ohno.log"));
        assert_eq!(
            c.ipam.store,
            StoreConf::Local {
                data_dir: PathBuf::from("/var/lib/ohno"),
                prefix: "/ohno".into()
            }
        );
    }

    #[test]
    fn one_scheme_per_store_and_absolute_node_dirs() {
        let mut v = base();
        v["ipam"]["store"] = json!({"type": "etcd", "caFile": "/ca.pem",
            "endpoints": ["https://127.0.0.1:2379", "http://127.0.0.1:2380"]});
        let e = conf(v).unwrap_err();
        assert_eq!(e.msg(), "invalid network config field ipam.store.endpoints");
        let mut v = base();
        v["ipam"]["lockDir"] = json!("./run");
        assert_eq!(
            conf(v).unwrap_err().msg(),
            "invalid network config field ipam.lockDir"
        );
        let mut v = base();
        v["ipam"]["lockDir"] = json!(format!("/{}", "x".repeat(MAX_LOCK_DIR_LEN - 1)));
        assert!(conf(v).is_ok());
        let mut v = base();
        v["ipam"]["lockDir"] = json!(format!("/{}", "x".repeat(MAX_LOCK_DIR_LEN)));
        assert_eq!(
            conf(v).unwrap_err().msg(),
            "invalid network config field ipam.lockDir"
        );
    }

    #[test]
    fn etcd_connection_helper_settings() {
        let mut v = base();
        v["ipam"]["store"] = json!({"type": "etcd", "endpoints": ["http://127.0.0.1:2379"]});
        v["ipam"]["lockDir"] = json!("/run/ohno-test");
        let StoreConf::Etcd(e) = conf(v.clone()).unwrap().ipam.store else {
            panic!("not etcd")
        };
        assert_eq!(e.persist_ms, DEFAULT_ETCD_PERSIST_MS);
        assert_eq!(e.helper_dir, Some(PathBuf::from("/run/ohno-test")));
        v["ipam"]["store"]["persistMs"] = json!(0);
        let StoreConf::Etcd(e) = conf(v.clone()).unwrap().ipam.store else {
            panic!("not etcd")
        };
        assert_eq!(e.persist_ms, 0);
        v["ipam"]["store"]["persistMs"] = json!(3_600_001);
        assert!(field_error(v).contains("ipam.store.persistMs"));
    }

    #[test]
    fn ipv6_pool_defaults_to_122_blocks() {
        let mut v = base();
        v["ipam"]["pools"] = json!([{"name": "v6", "subnet": "fd00:85::/48"}]);
        assert_eq!(conf(v).unwrap().ipam.pools[0].block_size, 122);
    }

    #[test]
    fn malformed_json_is_code_6() {
        assert_eq!(NetConf::parse(b"{not json", &[]).unwrap_err().code(), 6);
    }

    #[test]
    fn unknown_version_is_code_1() {
        let mut v = base();
        v["cniVersion"] = json!("9.9.9");
        assert_eq!(conf(v).unwrap_err().code(), 1);
    }

    fn field_error(v: Value) -> String {
        let e = conf(v).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        e.to_string()
    }

    #[test]
    fn bad_pools_name_the_field() {
        let mut v = base();
        v["ipam"]["pools"][0]["subnet"] = json!("10.0.0.0/33");
        assert!(field_error(v).contains("ipam.pools[0].subnet"));
        let mut v = base();
        v["ipam"]["pools"][0]["blockSize"] = json!(8);
        assert!(field_error(v).contains("ipam.pools[0].blockSize"));
        let mut v = base();
        v["ipam"]["pools"][0]["blockSize"] = json!(31);
        assert!(field_error(v).contains("blockSize"));
        let mut v = base();
        v["ipam"]["pools"][0]["subnet"] = json!("10.85.0.1/16");
        assert!(field_error(v).contains("host bits"));
        let mut v = base();
        v["ipam"]["pools"][0]["exclude"] = json!(["192.168.0.0/24"]);
        assert!(field_error(v).contains("exclude[0]"));
        let mut v = base();
        v["ipam"]["pools"][0]["rangeStart"] = json!("10.85.9.0");
        v["ipam"]["pools"][0]["rangeEnd"] = json!("10.85.1.0");
        assert!(field_error(v).contains("rangeEnd"));
        let mut v = base();
        v["ipam"]["pools"] = json!([{"name": "a", "subnet": "10.85.0.0/16"}, {"name": "b", "subnet": "10.85.1.0/24"}]);
        assert!(field_error(v).contains("overlaps"));
        let mut v = base();
        v["ipam"]["pools"] = json!([]);
        assert!(field_error(v).contains("ipam.pools"));
    }

    #[test]
    fn bad_top_level_fields() {
        let mut v = base();
        v["bridge"] = json!("this-name-is-too-long");
        assert!(field_error(v).contains("bridge"));
        let mut v = base();
        v["mtu"] = json!(10);
        assert!(field_error(v).contains("mtu"));
        let mut v = base();
        v["name"] = json!("bad/name");
        assert!(field_error(v).contains("name"));
        let mut v = base();
        v["ipam"]["store"] = json!({"type": "zookeeper"});
        assert!(field_error(v).contains("ipam.store.type"));
        let mut v = base();
        v["ipam"]["type"] = json!("host-local");
        assert!(field_error(v).contains("ipam.type"));
    }

    #[test]
    fn requests_merge_runtime_config_args_and_env() {
        let mut v = base();
        v["runtimeConfig"] = json!({"ips": ["10.85.3.4/16"], "mac": "0a:58:0a:55:00:05",
            "io.kubernetes.cri.pod-annotations": {"team": "blue"}});
        v["args"] = json!({"cni": {"ips": ["10.85.3.4", "fd00::5"]}});
        let c = NetConf::parse(v.to_string().as_bytes(), &["10.85.3.9".parse().unwrap()]).unwrap();
        assert_eq!(c.requests.ips.len(), 3);
        assert_eq!(c.requests.mac, Some([0x0a, 0x58, 0x0a, 0x55, 0, 5]));
        assert_eq!(
            c.requests.pod_annotations.get("team").map(String::as_str),
            Some("blue")
        );
        let mut v = base();
        v["runtimeConfig"] = json!({"mac": "zz"});
        assert!(field_error(v).contains("runtimeConfig.mac"));
    }

    #[test]
    fn null_capabilities_in_runtime_config_are_empty() {
        // containerd 1.6, for a pod without annotations.
        let mut v = base();
        v["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": null, "ips": null});
        let c = NetConf::parse(v.to_string().as_bytes(), &[]).unwrap();
        assert!(c.requests.pod_annotations.is_empty());
        assert!(c.requests.ips.is_empty());
        let mut v = base();
        v["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": ["not", "a", "map"]});
        assert!(NetConf::parse(v.to_string().as_bytes(), &[]).is_err());
    }

    #[test]
    fn cni_versions_list_is_negotiated() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("cniVersion");
        v["cniVersions"] = json!(["0.4.0", "1.0.0"]);
        assert_eq!(conf(v).unwrap().cni_version, "1.0.0");
    }
}
