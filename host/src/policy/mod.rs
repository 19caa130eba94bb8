//! The policy seam: the two decisions Ohno hands to a policy — which address (or
//! pool) a pod gets, and what its host-side interface is called — and the built-in
//! default policy. WebAssembly components (`wasm`) plug in behind the same trait;
//! every answer is validated by the host, never trusted.

pub mod answer;
#[cfg(feature = "wasm")]
pub mod cache;
#[cfg(feature = "wasm")]
pub mod wasm;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cni::env::Env;
use crate::config::{NetConf, PoolConf};
use crate::error::{Error, Result};
use crate::store::Kv;

/// The pod as a policy sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pod {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub network: String,
    pub node: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub args: Vec<(String, String)>,
}

impl Pod {
    pub fn new(env: &Env, conf: &NetConf) -> Pod {
        Pod {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: env
                .netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            network: conf.name.clone(),
            node: conf.node.clone(),
            namespace: env.args.pod_namespace.clone(),
            name: env.args.pod_name.clone(),
            uid: env.args.pod_uid.clone(),
            annotations: conf.requests.pod_annotations.clone(),
            args: env.args.pairs.clone(),
        }
    }
}

pub use crate::ip::Family;

/// The allocation decision for one family.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Allocation {
    /// The first pool of the family, any free address.
    Default,
    /// This pool, any free address.
    Pool(String),
    /// This exact address from this pool.
    Address {
        pool: String,
        address: IpAddr,
    },
    Deny(String),
}

/// The naming decision for the host-side interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Naming {
    Default,
    Name(String),
    Deny(String),
}

/// A policy: Ohno's built-in one, or (later) a WebAssembly component.
pub trait Policy: Send {
    /// Shown in errors and logs (the component's path for WebAssembly policies).
    fn name(&self) -> &str;
    fn allocate(&mut self, pod: &Pod, family: Family, pools: &[&PoolConf]) -> Result<Allocation>;
    fn name_interface(&mut self, pod: &Pod) -> Result<Naming>;
    /// The host found one of this policy's answers invalid (`err` says why).
    /// `Err` fails the ADD; `Ok` means "use the built-in decision instead"
    /// (failurePolicy "default").
    fn reject(&mut self, err: Error) -> Result<()> {
        Err(err)
    }
}

/// The built-in policy: first pool of each family, host name from [`default_host_ifname`].
pub struct DefaultPolicy;

impl Policy for DefaultPolicy {
    fn name(&self) -> &str {
        "built-in default"
    }
    fn allocate(&mut self, _: &Pod, _: Family, _: &[&PoolConf]) -> Result<Allocation> {
        Ok(Allocation::Default)
    }
    fn name_interface(&mut self, _: &Pod) -> Result<Naming> {
        Ok(Naming::Default)
    }
}

/// The policy a config names: its WebAssembly component, loaded and configured,
/// or the built-in default. With failurePolicy "default", a component that cannot
/// be loaded is logged and the built-in policy is used.
pub fn load(conf: &NetConf, kv: Arc<dyn Kv>) -> Result<Box<dyn Policy>> {
    let Some(pc) = &conf.policy else {
        return Ok(Box::new(DefaultPolicy));
    };
    #[cfg(not(feature = "wasm"))]
    {
        let _ = (pc, kv);
        Err(Error::UnsupportedField {
            field: "policy".into(),
            msg: "this build of ohno has no WebAssembly support (feature \"wasm\")".into(),
        })
    }
    #[cfg(feature = "wasm")]
    load_in_process(conf, pc, kv)
}

#[cfg(feature = "wasm")]
pub fn load_in_process(
    conf: &NetConf,
    pc: &crate::config::policy::PolicyConf,
    kv: Arc<dyn Kv>,
) -> Result<Box<dyn Policy>> {
    let view = wasm::HostView::new(
        kv,
        conf.ipam.store.prefix(),
        &conf.node,
        conf.ipam.pools.clone(),
    );
    match wasm::WasmPolicy::load(pc, view) {
        Ok(p) => Ok(Box::new(p)),
        Err(e) if pc.failure_policy == crate::config::policy::FailurePolicy::Default => {
            log::warn!("{e}; failurePolicy is \"default\": using the built-in policy");
            Ok(Box::new(DefaultPolicy))
        }
        Err(e) => Err(e),
    }
}

/// The built-in host-side name: `veth` + 11 hex digits of a hash of the container
/// id and ifname — deterministic, 15 characters. `salt` > 0 picks an alternative
/// when the name is taken by another attachment.
pub fn default_host_ifname(container_id: &str, ifname: &str, salt: u32) -> String {
    let h = crate::ip::fnv1a64(&[
        container_id.as_bytes(),
        ifname.as_bytes(),
        &salt.to_be_bytes(),
    ]);
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::ifname::validate_ifname;

    #[test]
    fn host_name_rule_is_deterministic_legal_and_distinct() {
        let a = default_host_ifname("abc123", "eth0", 0);
        assert_eq!(a, default_host_ifname("abc123", "eth0", 0));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        validate_ifname(&a).unwrap();
        assert_ne!(a, default_host_ifname("abc123", "eth1", 0));
        assert_ne!(a, default_host_ifname("abc124", "eth0", 0));
        assert_ne!(a, default_host_ifname("abc123", "eth0", 1));
        // No collisions across many containers.
        let names: std::collections::HashSet<String> = (0..20_000)
            .map(|i| default_host_ifname(&format!("container-{i}"), "eth0", 0))
            .collect();
        assert_eq!(names.len(), 20_000);
    }
}
