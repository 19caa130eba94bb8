//! One file per CNI verb. `main` is the whole protocol: read stdin and the
//! environment, validate, run the verb, and write exactly one JSON document (the
//! result or the error) to stdout.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod session;
pub mod status;
pub mod version;

use std::io::{Read, Write};

use serde_json::Value;

use crate::cni::env::{Command, Env};
use crate::cni::result::error_json;
use crate::cni::version::{self as ver, Version};
use crate::config::{peek_version, NetConf};
use crate::error::{Error, Result};
use crate::ipam::AttachmentId;

/// Everything a verb needs.
pub struct Invocation {
    pub env: Env,
    pub conf: NetConf,
}

impl Invocation {
    pub fn attachment_id(&self) -> AttachmentId {
        AttachmentId {
            network: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
        }
    }
}

/// The pod's network namespace from `CNI_NETNS` (code 4 when missing or not a netns).
pub(crate) fn pod_netns(env: &Env) -> Result<crate::net::netns::NetNs> {
    let path = env.netns.as_deref().ok_or(Error::InvalidEnv {
        var: "CNI_NETNS",
        msg: "missing".into(),
    })?;
    crate::net::netns::NetNs::open(path).map_err(|e| Error::InvalidEnv {
        var: "CNI_NETNS",
        msg: e.to_string(),
    })
}

/// Run the plugin; returns the process exit code.
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let (log_file, level) = NetConf::peek_logging(&stdin);
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let container = std::env::var("CNI_CONTAINERID").unwrap_or_default();
    let ifname = std::env::var("CNI_IFNAME").unwrap_or_default();
    crate::logging::init(
        &log_file,
        level,
        format!("{command} {container}/{ifname} pid {}", std::process::id()),
    );
    // Errors are written in the request's version when it is one we speak.
    let err_version = peek_version(&stdin)
        .filter(|v| ver::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| ver::LATEST.to_string());
    let started = std::time::Instant::now();
    let outcome = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(Error::io("read network config from stdin", e)),
    };
    let code = outcome.as_ref().err().map_or(0, Error::code);
    let written = match outcome {
        Ok(doc) => {
            log::debug!(
                "{command} done in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            if let Some(doc) = doc {
                if write_stdout(&doc).is_err() {
                    return 1;
                }
            }
            0
        }
        Err(e) => {
            log::error!("{command} failed (code {}): {e}", e.code());
            let _ = write_stdout(&error_json(&err_version, &e));
            1
        }
    };
    // After the result is out: the runtime does not wait for the report.
    crate::agent::client::report(&command, code, started.elapsed().as_secs_f64());
    written
}

fn write_stdout(doc: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, doc)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Parse, validate and dispatch. `Ok(None)` for verbs with no output on success.
pub fn run(stdin: &[u8]) -> Result<Option<Value>> {
    let env = Env::from_process()?;
    if env.command == Command::Version {
        return Ok(Some(version::run(stdin)));
    }
    let conf = NetConf::parse(stdin, &env.args.ips)?;
    require_version(env.command, conf.version())?;
    // Before any verb creates or opens a file in them. STATUS reports what
    // would fail an ADD as "not available" (50), the runtime's readiness signal.
    crate::nodefs::check_conf(&conf).map_err(|e| match env.command {
        Command::Status => Error::NotAvailable(e.to_string()),
        _ => e,
    })?;
    let inv = Invocation { env, conf };
    match inv.env.command {
        Command::Add => add::run(&inv).map(Some),
        Command::Del => del::run(&inv).map(|_| None),
        Command::Check => check::run(&inv).map(|_| None),
        Command::Status => status::run(&inv).map(|_| None),
        Command::Gc => gc::run(&inv).map(|_| None),
        Command::Version => Ok(Some(version::run(stdin))),
    }
}

/// CHECK needs ≥ 0.4.0, GC and STATUS ≥ 1.1.0 (code 1 otherwise).
fn require_version(cmd: Command, v: Version) -> Result<()> {
    let min = match cmd {
        Command::Check => Version(0, 4, 0),
        Command::Gc | Command::Status => Version(1, 1, 0),
        _ => return Ok(()),
    };
    if v < min {
        return Err(Error::IncompatibleVersion(format!(
            "{} needs cniVersion {}.{}.{} or newer, the config says {}.{}.{}",
            cmd.as_str(),
            min.0,
            min.1,
            min.2,
            v.0,
            v.1,
            v.2
        )));
    }
    Ok(())
}

/// Test-only fault injection: in debug builds, `OHNO_FAULT=<step>` makes ADD fail
/// right after that step, to prove that everything done before it is undone.
pub fn fault_point(step: &str) -> Result<()> {
    if cfg!(debug_assertions) && std::env::var("OHNO_FAULT").is_ok_and(|f| f == step) {
        return Err(Error::netlink(
            format!("injected fault after {step}"),
            std::io::Error::other("OHNO_FAULT"),
        ));
    }
    Ok(())
}
