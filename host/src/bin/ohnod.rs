//! `ohnod`, Ohno's node agent: `ohnod run` (the long-running agent of a
//! node) and `ohnod on-demand` (what the plugin starts when no agent runs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ohnod",
    version,
    about = "Ohno's node agent: keeps the etcd connection and the policy warm between CNI calls, reaps deleted veths, serves metrics",
    long_about = "Ohno's node agent.\n\n\
        The CNI plugin (`ohno`) looks for the agent's socket (<ipam.lockDir>/ohnod.sock) on every call. \
        When the agent answers, the call's etcd operations run on the agent's warm connection, its policy \
        decisions on the agent's loaded component, and DEL's veth deletion in the agent. When it does not, \
        the call completes in-process with the same result: the plugin never depends on the agent."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The node's long-running agent (a DaemonSet pod or a systemd unit).
    ///
    /// Serves the node's socket until SIGTERM or SIGINT, then drains: stops
    /// accepting, removes the socket (new calls work in-process at once) and
    /// waits up to drainSeconds for the calls in flight. Logs to stderr. Starts
    /// with etcd unreachable and keeps retrying; /readyz is 503 meanwhile.
    /// Serves /metrics, /healthz and /readyz on metricsAddress.
    Run {
        /// The agent's config file (JSON): {"network": "/etc/cni/net.d/10-ohno.conflist",
        /// "socket", "metricsAddress", "logLevel", "drainSeconds"}; see the README.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// What the plugin starts when no agent answers (not for people to run).
    ///
    /// `store` and `policy` read their start document on stdin and serve one
    /// configuration on a socket named by its hash, leaving after persistMs
    /// without a caller; `reap` deletes one retired veth and exits.
    OnDemand {
        #[command(subcommand)]
        service: OnDemand,
    },
}

#[derive(Subcommand)]
enum OnDemand {
    /// Keep one etcd connection warm (start document on stdin).
    Store,
    /// Keep one policy component loaded (start document on stdin).
    Policy,
    /// Delete the retired link INDEX in the network namespace open on FD.
    Reap {
        #[arg(long = "link", value_name = "INDEX")]
        link: u32,
        #[arg(long = "netns-fd", value_name = "FD")]
        netns_fd: i32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.mode {
        Mode::Run { config } => match ohno::config::agent::AgentConf::load(&config) {
            Ok(conf) => ohno::agent::run::run(conf),
            Err(e) => {
                eprintln!("ohnod: {}: {e}", config.display());
                1
            }
        },
        Mode::OnDemand { service } => match service {
            OnDemand::Store => ohno::agent::run::on_demand("store"),
            OnDemand::Policy => ohno::agent::run::on_demand("policy"),
            OnDemand::Reap { link, netns_fd } => ohno::agent::run::reap(link, netns_fd),
        },
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
