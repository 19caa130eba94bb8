//! `ohnoctl`: the operator's CLI — inspect allocations in the store a CNI config
//! points at.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ohno::cni::config::NetConf;
use ohno::error::{Error, Result};
use ohno::ipam::Allocator;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Top::Ipam {
            command: Ipam::Ls { config, json },
        } => ls(&config, json),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ohnoctl: {e}");
            ExitCode::from(1)
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

fn ls(config: &PathBuf, json: bool) -> Result<()> {
    let conf = load_conf(config)?;
    let kv = ohno::store::open(&conf.ipam.store)?;
    let alloc = Allocator::new(&*kv, conf.ipam.store.prefix(), &conf.node);
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
        return Ok(());
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
    Ok(())
}
