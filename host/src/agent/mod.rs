//! `ohnod`, the node agent, and everything on both sides of its socket.
//!
//! The plugin never depends on it: [`crate::plugin::session`] decides per
//! call whether work goes to the agent (`ohnod run`), an on-demand server
//! (`ohnod on-demand`) or stays in-process, and the [`client`] fallbacks finish
//! in-process whatever a server fails. See host/README.md for the process
//! model and what lives under /run/ohno.
//!
//! - [`protocol`]: the one versioned wire protocol (framing, bounds, messages);
//! - [`server`]: the socket, its lock, the workers, the two lifetimes;
//! - [`services`]: store, policy, reaper, report, status behind one dispatcher;
//! - [`client`]: the plugin's connections and its named fallback clients;
//! - [`spawn`]: the one way the plugin starts a process (`ohnod on-demand`);
//! - [`routes`]: cross-node routes (node records, host-gw, vxlan), in `ohnod run`;
//! - [`kube`]: releasing the blocks of Nodes deleted from Kubernetes, in `ohnod run`;
//! - [`run`]: what `ohnod run` and `ohnod on-demand` set up;
//! - [`install`]: `ohnod install` / `uninstall`;
//! - [`metrics`], [`health`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`logs`]: stderr, and per-call capture for the plugin's log.

pub mod client;
pub mod health;
pub mod install;
#[cfg(feature = "kubernetes")]
pub mod kube;
pub mod logs;
pub mod metrics;
pub mod protocol;
pub mod routes;
pub mod run;
pub mod server;
pub mod services;
pub mod spawn;
