//! `ohnod`, Ohno's node agent: `ohnod run` (the long-running agent of a
//! node), `ohnod on-demand` (what the plugin starts when no agent runs),
//! and `ohnod install` / `uninstall` (putting Ohno on a node).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ohnod",
    version,
    about = "Ohno's node agent: keeps the etcd connection and the policy warm between CNI calls, reaps deleted veths, routes pods between nodes, serves metrics; installs Ohno on a node",
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
        /// "socket", "metricsAddress", "logLevel", "drainSeconds", "backend"
        /// (host-gw|vxlan|auto), "underlay": {"ipv4", "ipv6"}, "vxlan": {"name",
        /// "name6", "vni", "port"}, "routeProtocol", "resyncSeconds"}; see the README.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Put Ohno on this node (a DaemonSet's init container, or by hand).
    ///
    /// Copies ohno, ohnoctl and ohnod from this binary's directory to the CNI
    /// bin dir; renders the conflist template (${VAR} from the environment,
    /// plus ${OHNO_CERTS_DIR}) into the CNI conf dir; copies the etcd client
    /// files from the mounted Secret to a root-only directory (0700, files
    /// 0600); precompiles the policy the conflist names. Every file goes
    /// through a temporary file and a rename in its own directory; one that
    /// already holds the same bytes is left alone. What was written is
    /// recorded in <state-dir>/install.json for `ohnod uninstall`.
    Install {
        /// The conflist template.
        #[arg(long, env = "OHNO_CONFLIST_TEMPLATE", value_name = "FILE")]
        template: PathBuf,
        #[arg(long, env = "OHNO_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, env = "OHNO_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The conflist's file name in the conf dir.
        #[arg(long, env = "OHNO_CONF_NAME", default_value = "10-ohno.conflist")]
        conf_name: String,
        /// The mounted Secret with the etcd client files (every file in it
        /// is copied under its own name).
        #[arg(long, env = "OHNO_ETCD_SECRET_DIR")]
        certs_from: Option<PathBuf>,
        #[arg(
            long,
            env = "OHNO_ETCD_CERTS_DIR",
            default_value = "/var/lib/ohno/etcd"
        )]
        certs_dir: PathBuf,
        #[arg(long, env = "OHNO_STATE_DIR", default_value = "/var/lib/ohno")]
        state_dir: PathBuf,
        /// Where the binaries come from (default: this binary's directory).
        #[arg(long)]
        source_dir: Option<PathBuf>,
    },
    /// Take off what `ohnod install` wrote (per <state-dir>/install.json):
    /// exactly those files, and only while they still hold what install
    /// wrote; the directories it created, when empty.
    Uninstall {
        #[arg(long, env = "OHNO_STATE_DIR", default_value = "/var/lib/ohno")]
        state_dir: PathBuf,
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
        Mode::Install {
            template,
            bin_dir,
            conf_dir,
            conf_name,
            certs_from,
            certs_dir,
            state_dir,
            source_dir,
        } => {
            let source_dir = source_dir.or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            });
            let Some(source_dir) = source_dir else {
                eprintln!("ohnod install: cannot tell this binary's directory; pass --source-dir");
                return ExitCode::from(1);
            };
            let layout = ohno::agent::install::Layout {
                source_dir,
                bin_dir,
                conf_dir,
                conf_name,
                template,
                certs_from,
                certs_dir,
                state_dir,
            };
            let vars = ohno::agent::install::template_vars(&layout);
            match ohno::agent::install::install(&layout, &vars) {
                Ok(m) => {
                    for f in &m.files {
                        println!(
                            "{} {}",
                            if f.changed { "wrote    " } else { "unchanged" },
                            f.path.display()
                        );
                    }
                    0
                }
                Err(e) => {
                    eprintln!("ohnod install: {e}");
                    1
                }
            }
        }
        Mode::Uninstall { state_dir } => match ohno::agent::install::uninstall(&state_dir) {
            Ok(r) => {
                for p in &r.removed {
                    println!("removed {}", p.display());
                }
                for p in &r.kept {
                    println!("kept    {} (changed since install)", p.display());
                }
                0
            }
            Err(e) => {
                eprintln!("ohnod uninstall: {e}");
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
