//! `ohnoctl`: the operator's CLI — inspect and repair allocations in the store a
//! CNI config points at (local or etcd). Exit status: 0 ok, 1 "found something"
//! (an inconsistency, a free address, no such attachment), 2 error.

use std::path::PathBuf;
use std::process::ExitCode;

use std::collections::HashSet;
use std::net::IpAddr;

use clap::{Parser, Subcommand, ValueEnum};
use ohno::config::{GcAttachment, NetConf};
use ohno::error::{Error, Result};
use ohno::ipam::allocator::BlockRecord;
use ohno::ipam::block::Layout;

use ohno::ipam::{Allocator, AttachmentId};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "ohnoctl",
    version,
    about = "Inspect and operate Ohno's IP address management"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// IP address management: allocations, blocks, repairs.
    Ipam {
        #[command(subcommand)]
        command: Ipam,
    },
    /// WebAssembly policies: check, test offline, precompile.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Nodes: their records (underlay, backend, VTEP), blocks, last seen;
    /// taking one out of the cluster.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// The node agent's state: running, mode, uptime, socket, loaded policy,
    /// etcd endpoint in use, recent errors, routing peers. Exit code 1 when
    /// no agent answers.
    Status {
        /// A CNI config (conflist or single plugin): the agent's socket is
        /// `<ipam.lockDir>/ohnod.sock`.
        #[arg(long, value_name = "FILE", required_unless_present = "socket")]
        config: Option<PathBuf>,
        /// The agent's socket, instead of the config's.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(flatten)]
        format: Format,
    },
}

/// How a listing is printed (`-o`): a table for people, JSON for scripts
/// (field names are stable; see the README).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Output {
    #[default]
    Table,
    Json,
}

/// The listing format: `-o json|table`, and `ls`'s older `--json`.
#[derive(clap::Args)]
struct Format {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Output,
    /// The same as `-o json`.
    #[arg(long, hide = true)]
    json: bool,
}

impl Format {
    fn json(&self) -> bool {
        self.json || self.output == Output::Json
    }
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Load a component, check it against the ohno:policy WIT (version, exports,
    /// allowed imports) and run `configure` with CONFIG.
    Check {
        file: PathBuf,
        /// JSON handed to `configure` (the `policy.config` of the CNI config).
        #[arg(long, default_value = "null")]
        config: String,
    },
    /// Run the decisions offline for a described pod and node state; prints JSON.
    Test {
        file: PathBuf,
        /// The pod: {"namespace", "name", "uid", "containerId", "ifname",
        /// "annotations": {..}, "args": [[k, v]]}; every field optional. Inline
        /// JSON, a file, or `-` for standard input.
        #[arg(long)]
        pod: String,
        /// The pools as in `ipam.pools`, each optionally with "used": [addresses]
        /// (held on this node) to describe the node's state. Inline JSON, a
        /// file, or `-` for standard input.
        #[arg(long)]
        pools: String,
        #[arg(long, default_value = "null")]
        config: String,
        /// The node the decisions are made on.
        #[arg(long, default_value = "node-a")]
        node: String,
    },
    /// Precompile a component into the cache the plugin loads from (run it as
    /// the user the plugin runs as: the cache takes only that user's files).
    Compile {
        file: PathBuf,
        #[arg(long, default_value = ohno::policy::wasm::DEFAULT_CACHE_DIR)]
        cache_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Every node with a record or a block: underlay addresses, backend,
    /// blocks, when its agent last confirmed its record.
    Ls {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        format: Format,
    },
    /// Take NODE out: release its blocks and delete its record, in
    /// transactions. Refused while it has attachments, unless --force (which
    /// releases them as DEL would: only for a node that is gone).
    Rm {
        #[arg(long)]
        config: PathBuf,
        node: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum Ipam {
    /// List allocations (attachments) with their addresses, node and pod.
    Ls {
        /// A CNI config (conflist or single plugin) that names the store.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        format: Format,
    },
    /// Which node holds which block, and how full each block is.
    Blocks {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        format: Format,
    },
    /// Who holds an address.
    Show {
        #[arg(long)]
        config: PathBuf,
        address: IpAddr,
        #[command(flatten)]
        format: Format,
    },
    /// Release one attachment's addresses (for a leak an operator has proved).
    Release {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        container: String,
        #[arg(long)]
        ifname: String,
        /// Network name; defaults to the config's.
        #[arg(long)]
        network: Option<String>,
    },
    /// Release a node's attachments on the config's network that are not in FILE
    /// (a JSON list of {"containerID", "ifname"}, as in cni.dev/valid-attachments).
    Gc {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        valid: PathBuf,
    },
    /// Find addresses without attachments, attachments without addresses and
    /// block index mismatches; exits 1 when there are any.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Top::Ipam { command } => command,
        Top::Policy { command } => return exit(policy_cmd(command)),
        Top::Node { command } => return exit(node_cmd(command)),
        Top::Status {
            config,
            socket,
            format,
        } => return exit(status(config.as_ref(), socket, format.json())),
    };
    let outcome = match command {
        Ipam::Ls { config, format } => ls(&config, format.json()),
        Ipam::Blocks { config, format } => blocks(&config, format.json()),
        Ipam::Show {
            config,
            address,
            format,
        } => show(&config, address, format.json()),
        Ipam::Release {
            config,
            container,
            ifname,
            network,
        } => release(&config, &container, &ifname, network),
        Ipam::Gc {
            config,
            node,
            valid,
        } => gc(&config, &node, &valid),
        Ipam::Check { config } => check(&config),
    };
    exit(outcome)
}

fn exit(outcome: Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ohnoctl: {e}");
            ExitCode::from(2)
        }
    }
}

fn policy_cmd(cmd: PolicyCmd) -> Result<bool> {
    use ohno::policy::{cache, wasm};
    // The library's warnings (a refused cache entry, a cache that cannot be
    // written) on stderr; stdout carries the command's output.
    ohno::logging::init(
        std::path::Path::new("/dev/null"),
        log::LevelFilter::Warn,
        "ohnoctl".into(),
    );
    let parse_config = |c: &str| -> Result<Value> {
        serde_json::from_str(c).map_err(|e| Error::Decode {
            what: "--config".into(),
            msg: e.to_string(),
        })
    };
    match cmd {
        PolicyCmd::Compile { file, cache_dir } => {
            let engine = wasm::engine()?;
            // Checked as the plugin checks it; a directory it would refuse is
            // an error here, not a cache silently skipped.
            let dir = cache::CacheDir::open(&cache_dir).map_err(|why| {
                Error::io(
                    format!("cache directory {}", cache_dir.display()),
                    std::io::Error::other(why.to_string()),
                )
            })?;
            let started = std::time::Instant::now();
            let (_, outcome) = wasm::load_component(&engine, &file, Some(&cache_dir))?;
            let bytes = std::fs::read(&file)
                .map_err(|e| Error::io(format!("read {}", file.display()), e))?;
            let entry = dir.entry_path(&cache::key(&engine, &bytes));
            println!(
                "{}: {} in {:.1} ms; cache entry {}",
                file.display(),
                match outcome {
                    wasm::CacheOutcome::Hit => "already cached",
                    wasm::CacheOutcome::Compiled => "compiled",
                    wasm::CacheOutcome::Replaced => "recompiled (the old entry was refused)",
                    wasm::CacheOutcome::Uncached => {
                        return Err(Error::io(
                            format!("cache entry {}", entry.display()),
                            std::io::Error::other("not written (see the warning above)"),
                        ));
                    }
                },
                started.elapsed().as_secs_f64() * 1e3,
                entry.display()
            );
            Ok(true)
        }
        PolicyCmd::Check { file, config } => {
            let config = parse_config(&config)?;
            let engine = wasm::engine()?;
            let bytes = std::fs::read(&file)
                .map_err(|e| Error::io(format!("read {}", file.display()), e))?;
            let component = wasmtime::component::Component::new(&engine, &bytes).map_err(|e| {
                Error::PolicyFault {
                    policy: file.display().to_string(),
                    reason: format!("not a valid WebAssembly component: {e:#}"),
                }
            })?;
            let (exports, imports) = wasm::describe(&engine, &component);
            println!("component: {} ({} bytes)", file.display(), bytes.len());
            println!("exports:   {}", exports.join(", "));
            println!("imports:   {}", imports.join(", "));
            wasm::check_contract(&engine, &component, &file.display().to_string())?;
            println!(
                "contract:  ok ({}@{} compatible)",
                wasm::WIT_PACKAGE,
                wasm::WIT_VERSION
            );
            let cache = offline_cache();
            match &cache {
                Ok(dir) => println!("cache:     {}", dir.display()),
                Err(why) => println!("cache:     none ({why}; compiled in memory)"),
            }
            let conf = offline_conf(&file, config, cache.as_deref().ok());
            let (_, view, _) = offline_view(&[], "node-a")?;
            offline_load(&conf, cache.as_deref().ok(), view)?;
            println!("configure: ok");
            Ok(true)
        }
        PolicyCmd::Test {
            file,
            pod,
            pools,
            config,
            node,
        } => {
            let config = parse_config(&config)?;
            if pod == "-" && pools == "-" {
                return Err(Error::config(
                    "--pod, --pools",
                    "only one of them can be read from standard input",
                ));
            }
            let pod_v = json_arg("--pod", &pod)?;
            let pools_v = json_arg("--pools", &pools)?;
            let pools_list = pools_v
                .as_array()
                .ok_or_else(|| Error::config("--pools", "must be a JSON list of pools"))?
                .clone();
            let (pool_confs, view, kv) = offline_view(&pools_list, &node)?;
            let pod = offline_pod(&pod_v, &node);
            let cache = offline_cache();
            if let Err(why) = &cache {
                eprintln!("ohnoctl: no policy cache: {why}; compiling in memory");
            }
            let conf = offline_conf(&file, config, cache.as_deref().ok());
            let mut policy = offline_load(&conf, cache.as_deref().ok(), view)?;
            let naming = match ohno::policy::Policy::name_interface(&mut policy, &pod)? {
                ohno::policy::Naming::Default => serde_json::json!("default"),
                ohno::policy::Naming::Name(n) => {
                    let valid = ohno::policy::answer::check_host_name(&n).err();
                    serde_json::json!({"name": n, "hostWouldReject": valid})
                }
                ohno::policy::Naming::Deny(r) => serde_json::json!({"deny": r}),
            };
            let mut allocation = serde_json::Map::new();
            let mut would_give = serde_json::Map::new();
            for (fam, label) in [
                (ohno::policy::Family::V4, "ipv4"),
                (ohno::policy::Family::V6, "ipv6"),
            ] {
                let of_family: Vec<&ohno::config::PoolConf> =
                    pool_confs.iter().filter(|p| p.family() == fam).collect();
                if of_family.is_empty() {
                    continue;
                }
                let decision = ohno::policy::Policy::allocate(&mut policy, &pod, fam, &of_family)?;
                let answer = match &decision {
                    ohno::policy::Allocation::Default => serde_json::json!("default"),
                    ohno::policy::Allocation::Pool(p) => serde_json::json!({"pool": p}),
                    ohno::policy::Allocation::Address { pool, address } => {
                        let verdict =
                            ohno::policy::answer::check_allocation(&decision, &of_family).err();
                        serde_json::json!({"address": address.to_string(), "pool": pool, "hostWouldReject": verdict})
                    }
                    ohno::policy::Allocation::Deny(r) => serde_json::json!({"deny": r}),
                };
                // What the host would then hand out from the described node state.
                if let Some(gives) = host_would_give(&*kv, &node, label, &of_family, &decision) {
                    would_give.insert(label.into(), gives);
                }
                allocation.insert(label.into(), answer);
            }
            let out = serde_json::json!({
                "policy": file.display().to_string(),
                "naming": naming,
                "allocation": allocation,
                "hostWouldGive": would_give,
            });
            print_json(&out);
            Ok(true)
        }
    }
}

/// The cache of `policy check|test`: private to the user running ohnoctl
/// (`$XDG_CACHE_HOME/ohno/policy`, else `$HOME/.cache/ohno/policy`, created
/// 0700 and checked as the plugin checks its own), or none (why): never a
/// shared directory such as /tmp, where another user could plant an entry.
fn offline_cache() -> std::result::Result<PathBuf, String> {
    use ohno::policy::cache;
    let dir = cache::user_cache_dir(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
        .ok_or_else(|| "neither XDG_CACHE_HOME nor HOME is an absolute path".to_string())?;
    match cache::CacheDir::open(&dir) {
        Ok(_) => Ok(dir),
        Err(why) => Err(format!("{} {why}", dir.display())),
    }
}

/// Load and configure `conf`'s component through `cache` (or none).
fn offline_load(
    conf: &ohno::policy::wasm::PolicyConf,
    cache: Option<&std::path::Path>,
    view: ohno::policy::wasm::HostView,
) -> Result<ohno::policy::wasm::WasmPolicy> {
    use ohno::policy::wasm;
    wasm::WasmPolicy::instantiate(&wasm::Loaded::load_cached_in(conf, cache)?, conf, view)
}

/// A policy config for offline runs; `cache_dir` is [`offline_cache`]'s (with
/// none, the field is empty and [`offline_load`] is given no cache).
fn offline_conf(
    file: &std::path::Path,
    config: Value,
    cache_dir: Option<&std::path::Path>,
) -> ohno::policy::wasm::PolicyConf {
    use ohno::policy::wasm;
    wasm::PolicyConf {
        path: file.to_path_buf(),
        config,
        timeout_ms: wasm::DEFAULT_TIMEOUT_MS,
        memory_mb: wasm::DEFAULT_MEMORY_MB,
        fuel: wasm::DEFAULT_FUEL,
        failure_policy: wasm::FailurePolicy::Fail,
        cache_dir: cache_dir
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default(),
        persist_ms: 0,
    }
}

/// The pools of `pools` (as in `ipam.pools`, plus "used") and a memory store in
/// which this node holds the used addresses.
/// The offline node state: its pools, the view a policy gets, and its store.
type OfflineView = (
    Vec<ohno::config::PoolConf>,
    ohno::policy::wasm::HostView,
    std::sync::Arc<dyn ohno::store::Kv>,
);

fn offline_view(pools: &[Value], node: &str) -> Result<OfflineView> {
    use ohno::ipam::{Owner, Want};
    let clean: Vec<Value> = pools
        .iter()
        .map(|p| {
            let mut p = p.clone();
            if let Some(o) = p.as_object_mut() {
                o.remove("used");
            }
            p
        })
        .collect();
    let confs = if clean.is_empty() {
        Vec::new()
    } else {
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "offline", "type": "ohno", "node": node, "logLevel": "off",
            "ipam": {"type": "ohno", "pools": clean}
        });
        NetConf::parse(conf.to_string().as_bytes(), &[])?.ipam.pools
    };
    let kv: std::sync::Arc<dyn ohno::store::Kv> =
        std::sync::Arc::new(ohno::store::memory::MemoryStore::new());
    let alloc = Allocator::new(&*kv, "/ohno", node);
    for (p, conf) in pools.iter().zip(&confs) {
        for (i, ip) in p
            .get("used")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let addr: IpAddr = ip.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                Error::config(
                    format!("--pools {}.used", conf.name),
                    format!("{ip} is not an address"),
                )
            })?;
            let owner = Owner {
                network: "offline".into(),
                container_id: format!("used-{}-{i}", conf.name),
                ifname: "eth0".into(),
                node: node.into(),
                pod_namespace: None,
                pod_name: None,
                pod_uid: None,
                created: 0,
            };
            alloc.allocate(
                &owner,
                &[Want {
                    pool: conf,
                    address: Some(addr),
                }],
            )?;
        }
    }
    let view = ohno::policy::wasm::HostView::new(kv.clone(), "/ohno", node, confs.clone());
    Ok((confs, view, kv))
}

/// `--pod` / `--pools`: inline JSON (starts with `{` or `[`), `-` for standard
/// input, or a file name.
fn json_arg(flag: &str, arg: &str) -> Result<Value> {
    let decode = |what: String, raw: &[u8]| {
        serde_json::from_slice(raw).map_err(|e| Error::Decode {
            what,
            msg: e.to_string(),
        })
    };
    let trimmed = arg.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return decode(format!("{flag} (inline JSON)"), trimmed.as_bytes());
    }
    if arg == "-" {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw)
            .map_err(|e| Error::io(format!("read {flag} from standard input"), e))?;
        return decode(format!("{flag} (standard input)"), &raw);
    }
    let raw = std::fs::read(arg).map_err(|e| Error::io(format!("read {flag} file {arg}"), e))?;
    decode(format!("{flag} file {arg}"), &raw)
}

/// The address the host would hand out for `decision` from the offline node
/// state in `kv`, as the plugin's allocator would (the decision validated the
/// way the plugin validates it), or why it would not; `None` for a deny.
fn host_would_give(
    kv: &dyn ohno::store::Kv,
    node: &str,
    family: &str,
    of_family: &[&ohno::config::PoolConf],
    decision: &ohno::policy::Allocation,
) -> Option<Value> {
    use ohno::ipam::{Owner, Want};
    use ohno::policy::Allocation;
    let want = match decision {
        Allocation::Deny(_) => return None,
        Allocation::Default => Want {
            pool: of_family.first()?,
            address: None,
        },
        Allocation::Pool(name) | Allocation::Address { pool: name, .. } => {
            let pool = of_family.iter().find(|p| &p.name == name)?;
            let address = match decision {
                Allocation::Address { address, .. } => Some(*address),
                _ => None,
            };
            Want { pool, address }
        }
    };
    let owner = Owner {
        network: "offline".into(),
        // One attachment per family: a second ADD of one attachment is a repeat.
        container_id: format!("offline-test-{family}"),
        ifname: "eth0".into(),
        node: node.into(),
        pod_namespace: None,
        pod_name: None,
        pod_uid: None,
        created: 0,
    };
    let alloc = Allocator::new(kv, "/ohno", node);
    Some(match alloc.allocate(&owner, &[want]) {
        Ok(rec) => {
            let ip = rec.ips.first();
            serde_json::json!({
                "address": ip.map(|i| i.address.clone()),
                "pool": ip.map(|i| i.pool.clone()),
                "gateway": ip.map(|i| i.gateway.clone()).filter(|g| !g.is_empty()),
            })
        }
        Err(e) => serde_json::json!({"error": e.to_string(), "code": e.code()}),
    })
}

fn offline_pod(v: &Value, node: &str) -> ohno::policy::Pod {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    ohno::policy::Pod {
        container_id: s("containerId").unwrap_or_else(|| "offline-container".into()),
        ifname: s("ifname").unwrap_or_else(|| "eth0".into()),
        netns: s("netns").unwrap_or_else(|| "/var/run/netns/offline".into()),
        network: s("network").unwrap_or_else(|| "offline".into()),
        node: node.into(),
        namespace: s("namespace"),
        name: s("name"),
        uid: s("uid"),
        annotations: v
            .get("annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        args: v
            .get("args")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|kv| {
                        Some((
                            kv.get(0)?.as_str()?.to_owned(),
                            kv.get(1)?.as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Load the ohno plugin config from a conflist or a single plugin config.
fn load_conf(path: &PathBuf) -> Result<NetConf> {
    let raw = std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    NetConf::parse(&ohno::config::agent::ohno_plugin_conf(&raw)?, &[])
}

/// `ohnoctl status -o json`: `running`, and the agent's state when it runs.
#[derive(serde::Serialize)]
struct StatusDoc {
    running: bool,
    socket: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    agent: Option<ohno::agent::protocol::AgentStatus>,
}

fn status(config: Option<&PathBuf>, socket: Option<PathBuf>, json: bool) -> Result<bool> {
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => ohno::agent::client::agent_socket(&load_conf(c)?.ipam.lock_dir),
        (None, None) => return Err(Error::config("--config", "give --config or --socket")),
    };
    let answer = ohno::agent::client::status(&socket);
    let doc = match answer {
        Ok(a) => StatusDoc {
            running: true,
            socket,
            error: None,
            agent: Some(a),
        },
        Err(e) => StatusDoc {
            running: false,
            socket,
            error: Some(e.to_string()),
            agent: None,
        },
    };
    if json {
        print_json(&doc);
        return Ok(doc.running);
    }
    let Some(a) = &doc.agent else {
        println!("{:<22} no", "RUNNING");
        println!("{:<22} {}", "SOCKET", doc.socket.display());
        println!("{:<22} {}", "ERROR", doc.error.as_deref().unwrap_or("-"));
        return Ok(false);
    };
    let dash = |v: Option<&str>| v.unwrap_or("-").to_string();
    let rows = [
        ("RUNNING", "yes".to_string()),
        ("MODE", a.mode.clone()),
        ("READY", if a.ready { "yes" } else { "no" }.to_string()),
        ("VERSION", a.version.clone()),
        ("PID", a.pid.to_string()),
        ("UPTIME", format!("{}s", a.uptime_seconds)),
        ("SOCKET", a.socket.display().to_string()),
        ("NETWORK", dash(a.network.as_deref())),
        (
            "POLICIES",
            if a.policies.is_empty() {
                "-".into()
            } else {
                a.policies.join(", ")
            },
        ),
        (
            "ETCD ENDPOINTS",
            if a.etcd_endpoints.is_empty() {
                "-".into()
            } else {
                a.etcd_endpoints.join(", ")
            },
        ),
        ("ETCD IN USE", dash(a.etcd_endpoint_in_use.as_deref())),
        ("METRICS", dash(a.metrics_address.as_deref())),
    ];
    for (k, v) in rows {
        println!("{k:<22} {v}");
    }
    if let Some(r) = &a.routes {
        let under: Vec<String> = [r.ipv4, r.ipv6]
            .into_iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
        let routes: Vec<String> = r.routes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        for (k, v) in [
            ("NODE", r.node.clone()),
            ("BACKEND", r.backend.clone()),
            (
                "UNDERLAY",
                if under.is_empty() {
                    "-".into()
                } else {
                    under.join(", ")
                },
            ),
            (
                "VXLAN DEVICES",
                if r.devices.is_empty() {
                    "-".into()
                } else {
                    r.devices.join(", ")
                },
            ),
            ("ROUTE PROTOCOL", r.route_protocol.to_string()),
            (
                "ROUTES",
                if routes.is_empty() {
                    "-".into()
                } else {
                    routes.join(", ")
                },
            ),
            (
                "LAST SYNC",
                r.last_sync.map_or("-".into(), |t| t.to_string()),
            ),
            ("WATCH RESTARTS", r.watch_restarts.to_string()),
        ] {
            println!("{k:<22} {v}");
        }
        for f in &r.failed_routes {
            println!("  failed: {f}");
        }
        if r.peers.is_empty() {
            println!("{:<22} -", "PEERS");
        } else {
            println!("PEERS");
            println!(
                "  {:<16} {:<10} {:>6}  {:<24} ERRORS",
                "NODE", "REACHABLE", "BLOCKS", "ROUTED"
            );
            for p in &r.peers {
                let routed: Vec<String> =
                    p.routed.iter().map(|(k, v)| format!("{k} {v}")).collect();
                println!(
                    "  {:<16} {:<10} {:>6}  {:<24} {}",
                    p.node,
                    if p.reachable { "yes" } else { "no" },
                    p.blocks,
                    if routed.is_empty() {
                        "-".into()
                    } else {
                        routed.join(", ")
                    },
                    if p.errors.is_empty() {
                        "-".into()
                    } else {
                        p.errors.join("; ")
                    }
                );
            }
        }
    }
    if a.recent_errors.is_empty() {
        println!("{:<22} -", "RECENT ERRORS");
    } else {
        println!("RECENT ERRORS");
        for (t, e) in &a.recent_errors {
            println!("  {t} {e}");
        }
    }
    Ok(true)
}

/// One row of `ohnoctl node ls`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRow {
    node: String,
    /// Its record, when its agent has written one.
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<ohno::ipam::nodes::NodeRecord>,
    blocks: usize,
}

fn node_cmd(cmd: NodeCmd) -> Result<bool> {
    match cmd {
        NodeCmd::Ls { config, format } => {
            let (conf, kv) = open(&config)?;
            let prefix = conf.ipam.store.prefix().to_string();
            let mut rows: std::collections::BTreeMap<String, NodeRow> = Default::default();
            for r in ohno::ipam::nodes::list(&*kv, &prefix)? {
                rows.insert(
                    r.node.clone(),
                    NodeRow {
                        node: r.node.clone(),
                        record: Some(r),
                        blocks: 0,
                    },
                );
            }
            for b in Allocator::from_conf(&*kv, &conf).block_usage(&conf.ipam.pools)? {
                rows.entry(b.node.clone())
                    .or_insert_with(|| NodeRow {
                        node: b.node.clone(),
                        record: None,
                        blocks: 0,
                    })
                    .blocks += 1;
            }
            let rows: Vec<NodeRow> = rows.into_values().collect();
            if format.json() {
                print_json(&rows);
                return Ok(true);
            }
            let now = ohno::ipam::model::now();
            println!(
                "{:<16} {:<34} {:<8} {:>6} {:<12} VTEP",
                "NODE", "UNDERLAY", "BACKEND", "BLOCKS", "LAST SEEN"
            );
            for r in &rows {
                let (underlay, backend, seen, vtep) = match &r.record {
                    Some(rec) => {
                        let under: Vec<String> = [
                            rec.ipv4.map(|a| a.to_string()),
                            rec.ipv6.map(|a| a.to_string()),
                        ]
                        .into_iter()
                        .flatten()
                        .collect();
                        let vtep = rec.vxlan.as_ref().map_or("-".into(), |v| {
                            let macs: Vec<&str> = [v.mac.as_deref(), v.mac6.as_deref()]
                                .into_iter()
                                .flatten()
                                .collect();
                            format!("vni {} {} mtu {}", v.vni, macs.join(","), v.mtu)
                        });
                        (
                            if under.is_empty() {
                                "-".into()
                            } else {
                                under.join(",")
                            },
                            rec.backend.to_string(),
                            format!("{}s ago", now.saturating_sub(rec.seen)),
                            vtep,
                        )
                    }
                    None => ("-".into(), "-".into(), "never".into(), "-".into()),
                };
                println!(
                    "{:<16} {:<34} {:<8} {:>6} {:<12} {}",
                    r.node, underlay, backend, r.blocks, seen, vtep
                );
            }
            Ok(true)
        }
        NodeCmd::Rm {
            config,
            node,
            force,
            format,
        } => {
            let (conf, kv) = open(&config)?;
            let alloc = Allocator::from_conf(&*kv, &conf);
            let done = ohno::ipam::nodes::remove(&alloc, &node, force)?;
            if format.json() {
                print_json(&done);
            } else {
                println!(
                    "node {}: {} attachment(s) released, {} block(s) released, record {}",
                    done.node,
                    done.attachments.len(),
                    done.blocks.len(),
                    if done.record { "deleted" } else { "absent" }
                );
            }
            Ok(true)
        }
    }
}

/// The config and its store, opened.
fn open(config: &PathBuf) -> Result<(NetConf, std::sync::Arc<dyn ohno::store::Kv>)> {
    let conf = load_conf(config)?;
    // The node's directories, checked as the plugin checks them.
    ohno::nodefs::check_conf(&conf)?;
    let kv = ohno::store::open(&conf.ipam.store)?;
    Ok((conf, kv))
}

/// A `-o json` listing on stdout.
fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn ls(config: &PathBuf, json: bool) -> Result<bool> {
    let (conf, kv) = open(config)?;
    let alloc = Allocator::from_conf(&*kv, &conf);
    let atts = alloc.attachments(None)?;
    if json {
        print_json(&atts);
        return Ok(true);
    }
    println!(
        "{:<12} {:<24} {:<8} {:<12} {:<28} ADDRESSES",
        "NETWORK", "CONTAINER", "IFNAME", "NODE", "POD"
    );
    for a in &atts {
        let o = &a.owner;
        let pod = match (&o.pod_namespace, &o.pod_name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.clone(),
            _ => "-".into(),
        };
        let addrs: Vec<&str> = a.ips.iter().map(|i| i.address.as_str()).collect();
        println!(
            "{:<12} {:<24} {:<8} {:<12} {:<28} {}",
            o.network,
            o.container_id,
            o.ifname,
            o.node,
            pod,
            addrs.join(",")
        );
    }
    Ok(true)
}

fn blocks(config: &PathBuf, json: bool) -> Result<bool> {
    let (conf, kv) = open(config)?;
    let rows = Allocator::from_conf(&*kv, &conf).block_usage(&conf.ipam.pools)?;
    if json {
        print_json(&rows);
        return Ok(true);
    }
    println!(
        "{:<12} {:<28} {:<16} {:>5} {:>6}",
        "POOL", "BLOCK", "NODE", "USED", "USABLE"
    );
    for r in &rows {
        println!(
            "{:<12} {:<28} {:<16} {:>5} {:>6}",
            r.pool, r.block, r.node, r.used, r.usable
        );
    }
    Ok(true)
}

fn show(config: &PathBuf, address: IpAddr, json: bool) -> Result<bool> {
    let (conf, kv) = open(config)?;
    let alloc = Allocator::from_conf(&*kv, &conf);
    let Some((pool, block)) = conf
        .ipam
        .pools
        .iter()
        .find_map(|p| Layout::new(p).block_of(address).map(|b| (p, b)))
    else {
        if json {
            let doc = serde_json::json!({"address": address.to_string(), "pool": null});
            print_json(&doc);
        } else {
            println!("{address} is in none of the configured pools");
        }
        return Ok(false);
    };
    let key = alloc.keys().ip(&pool.name, &block, address);
    let claim = kv.get(&alloc.keys().block(&pool.name, &block))?;
    let node = claim.map(|c| {
        serde_json::from_slice::<BlockRecord>(&c.value)
            .map(|b| b.node)
            .unwrap_or_default()
    });
    let held = kv.get(&key)?;
    if json {
        let owner = held
            .as_ref()
            .map(|v| serde_json::from_slice::<Value>(&v.value).unwrap_or(Value::Null));
        let doc = serde_json::json!({
            "address": address.to_string(),
            "pool": pool.name,
            "subnet": pool.subnet.to_string(),
            "block": block.to_string(),
            "node": node,
            "free": held.is_none(),
            "key": key,
            "owner": owner,
        });
        print_json(&doc);
        return Ok(held.is_some());
    }
    let holder = node.unwrap_or_else(|| "(unclaimed)".into());
    println!("pool:    {} ({})", pool.name, pool.subnet);
    println!("block:   {block} held by {holder}");
    match held {
        None => {
            println!("address: {address} is free");
            Ok(false)
        }
        Some(v) => {
            let owner: Value = serde_json::from_slice(&v.value).unwrap_or(Value::Null);
            println!("key:     {key}");
            println!(
                "owner:   {}",
                serde_json::to_string_pretty(&owner).unwrap_or_default()
            );
            Ok(true)
        }
    }
}

fn release(
    config: &PathBuf,
    container: &str,
    ifname: &str,
    network: Option<String>,
) -> Result<bool> {
    // The ids become store keys: refuse what the plugin would refuse before
    // opening anything ("../x" or "a/b" would name another key).
    ohno::cni::env::validate_container_id(container)?;
    ohno::cni::env::validate_cni_ifname(ifname)?;
    if let Some(n) = &network {
        ohno::config::validate_network_name(n)?;
    }
    let (conf, kv) = open(config)?;
    let alloc = Allocator::from_conf(&*kv, &conf);
    let id = AttachmentId {
        network: network.unwrap_or_else(|| conf.name.clone()),
        container_id: container.to_string(),
        ifname: ifname.to_string(),
    };
    match alloc.release(&id)? {
        Some(rec) => {
            let addrs: Vec<&str> = rec.ips.iter().map(|i| i.address.as_str()).collect();
            println!(
                "released {}/{}/{}: {}",
                id.network,
                id.container_id,
                id.ifname,
                addrs.join(", ")
            );
            Ok(true)
        }
        None => {
            println!(
                "no attachment {}/{}/{}",
                id.network, id.container_id, id.ifname
            );
            Ok(false)
        }
    }
}

fn gc(config: &PathBuf, node: &str, valid: &PathBuf) -> Result<bool> {
    let (conf, kv) = open(config)?;
    let raw =
        std::fs::read(valid).map_err(|e| Error::io(format!("read {}", valid.display()), e))?;
    let list: Vec<GcAttachment> = serde_json::from_slice(&raw).map_err(|e| Error::Decode {
        what: valid.display().to_string(),
        msg: e.to_string(),
    })?;
    let set: HashSet<(String, String)> = list
        .into_iter()
        .map(|a| (a.container_id, a.ifname))
        .collect();
    let alloc = Allocator::from_conf(&*kv, &conf);
    let report = alloc.gc(&conf.name, node, &set)?;
    for r in &report.released {
        println!("released {r}");
    }
    println!(
        "gc: released {}, kept {}",
        report.released.len(),
        report.kept
    );
    Ok(true)
}

fn check(config: &PathBuf) -> Result<bool> {
    let (conf, kv) = open(config)?;
    let alloc = Allocator::from_conf(&*kv, &conf);
    let findings = alloc.audit()?;
    for f in &findings {
        println!("{f}");
    }
    if findings.is_empty() {
        println!("ok: every address has its attachment and every attachment its addresses");
    }
    Ok(findings.is_empty())
}
