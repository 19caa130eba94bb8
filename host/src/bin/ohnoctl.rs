//! `ohnoctl`: the operator's CLI — inspect and repair allocations in the store a
//! CNI config points at (local or etcd). Exit status: 0 ok, 1 "found something"
//! (an inconsistency, a free address, no such attachment), 2 error.

use std::path::PathBuf;
use std::process::ExitCode;

use std::collections::HashSet;
use std::net::IpAddr;

use clap::{Parser, Subcommand};
use ohno::cni::config::{GcAttachment, NetConf};
use ohno::error::{Error, Result};
use ohno::ipam::allocator::BlockRecord;
use ohno::ipam::block::Layout;
use ohno::ipam::keys::{last_segment, parse_block_id};
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
}

#[derive(Subcommand)]
enum Ipam {
    /// List allocations (attachments) with their addresses, node and pod.
    Ls {
        /// A CNI config (conflist or single plugin) that names the store.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Which node holds which block, and how full each block is.
    Blocks {
        #[arg(long)]
        config: PathBuf,
    },
    /// Who holds an address.
    Show {
        #[arg(long)]
        config: PathBuf,
        address: IpAddr,
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
    let Top::Ipam { command } = cli.command;
    let outcome = match command {
        Ipam::Ls { config, json } => ls(&config, json),
        Ipam::Blocks { config } => blocks(&config),
        Ipam::Show { config, address } => show(&config, address),
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
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ohnoctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// Load the ohno plugin config from a conflist or a single plugin config.
fn load_conf(path: &PathBuf) -> Result<NetConf> {
    let raw = std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| Error::Decode {
        what: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let plugin = match v.get("plugins").and_then(Value::as_array) {
        None => v.clone(),
        Some(plugins) => {
            let is_ohno = |p: &&Value| {
                p.get("type").and_then(Value::as_str) == Some("ohno")
                    || p.pointer("/ipam/type").and_then(Value::as_str) == Some("ohno")
            };
            let mut p = plugins.iter().find(is_ohno).cloned().ok_or_else(|| {
                Error::config("plugins", "no plugin of type ohno in this conflist")
            })?;
            for k in ["cniVersion", "name"] {
                if let (Some(obj), Some(val)) = (p.as_object_mut(), v.get(k)) {
                    obj.entry(k).or_insert(val.clone());
                }
            }
            p
        }
    };
    NetConf::parse(plugin.to_string().as_bytes(), &[])
}

/// The config and its store, opened.
fn open(config: &PathBuf) -> Result<(NetConf, Box<dyn ohno::store::Kv>)> {
    let conf = load_conf(config)?;
    let kv = ohno::store::open(&conf.ipam.store)?;
    Ok((conf, kv))
}

fn ls(config: &PathBuf, json: bool) -> Result<bool> {
    let (conf, kv) = open(config)?;
    let alloc = Allocator::from_conf(&*kv, &conf);
    let atts = alloc.attachments(None)?;
    if json {
        let docs: Vec<Value> = atts
            .iter()
            .map(|a| serde_json::to_value(a).unwrap_or(Value::Null))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&docs).unwrap_or_default()
        );
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

fn blocks(config: &PathBuf) -> Result<bool> {
    let (conf, kv) = open(config)?;
    let alloc = Allocator::from_conf(&*kv, &conf);
    println!(
        "{:<12} {:<28} {:<16} {:>5} {:>6}",
        "POOL", "BLOCK", "NODE", "USED", "USABLE"
    );
    for pool in &conf.ipam.pools {
        let layout = Layout::new(pool);
        for kv in kv.range(&alloc.keys().blocks_of_pool(&pool.name), false)? {
            let Some(block) = parse_block_id(last_segment(&kv.key)) else {
                continue;
            };
            let rec: BlockRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| Error::Store(format!("decode {}: {e}", kv.key)))?;
            let used = alloc.used(pool, &block)?.len();
            println!(
                "{:<12} {:<28} {:<16} {:>5} {:>6}",
                pool.name,
                block.to_string(),
                rec.node,
                used,
                layout.usable_count(&block)
            );
        }
    }
    Ok(true)
}

fn show(config: &PathBuf, address: IpAddr) -> Result<bool> {
    let (conf, kv) = open(config)?;
    let alloc = Allocator::from_conf(&*kv, &conf);
    let Some((pool, block)) = conf
        .ipam
        .pools
        .iter()
        .find_map(|p| Layout::new(p).block_of(address).map(|b| (p, b)))
    else {
        println!("{address} is in none of the configured pools");
        return Ok(false);
    };
    let key = alloc.keys().ip(&pool.name, &block, address);
    let claim = kv.get(&alloc.keys().block(&pool.name, &block))?;
    let holder = claim
        .map(|c| {
            serde_json::from_slice::<BlockRecord>(&c.value)
                .map(|b| b.node)
                .unwrap_or_default()
        })
        .unwrap_or_else(|| "(unclaimed)".into());
    println!("pool:    {} ({})", pool.name, pool.subnet);
    println!("block:   {block} held by {holder}");
    match kv.get(&key)? {
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
