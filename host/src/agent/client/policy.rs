//! [`FallbackPolicy`]: one ADD's policy, decided by a server that keeps the
//! component loaded, or — when the server refuses, dies or does not answer in
//! time — by the component loaded in this process, with the same answers.
//!
//! The server's answers are validated by the plugin exactly as an in-process
//! policy's, and `failurePolicy` is applied here, not there.

use std::sync::Arc;

use super::Conn;
use crate::agent::protocol::{
    bounded_debug, receive, send, PolicyAnswer, PolicyReply, PolicyRequest,
};
use crate::config::policy::PolicyConf;
use crate::config::{NetConf, PoolConf};
use crate::error::{Error, Result};
use crate::policy::{Allocation, Family, Naming, Pod, Policy};
use crate::store::Kv;

pub struct FallbackPolicy {
    name: String,
    conn: Option<Conn>,
    /// Whether the store-opening answer was read.
    opened: bool,
    conf: NetConf,
    policy: PolicyConf,
    kv: Arc<dyn Kv>,
    /// The in-process policy, once the server failed us (or its component
    /// could not be loaded and `failurePolicy` chose the built-in one).
    local: Option<Box<dyn Policy>>,
}

impl FallbackPolicy {
    pub fn new(conn: Conn, conf: &NetConf, policy: &PolicyConf, kv: Arc<dyn Kv>) -> FallbackPolicy {
        FallbackPolicy {
            name: policy.path.display().to_string(),
            conn: Some(conn),
            opened: false,
            conf: conf.clone(),
            policy: policy.clone(),
            kv,
            local: None,
        }
    }

    /// The in-process policy, loaded now if need be.
    fn local(&mut self) -> Result<&mut Box<dyn Policy>> {
        if self.local.is_none() {
            self.local = Some(crate::policy::load_in_process(
                &self.conf,
                &self.policy,
                self.kv.clone(),
            )?);
        }
        self.local
            .as_mut()
            .ok_or_else(|| Error::Agent("no in-process policy".into()))
    }

    fn lost(&mut self, e: impl std::fmt::Display) {
        log::warn!(
            "policy {}: the agent failed ({e}); loading the policy here",
            self.name
        );
        self.conn = None;
        super::note_fallback("policy");
    }

    /// One answer from the server, its log lines written to our log; `None`
    /// when the server is gone or silent.
    fn answer(&mut self) -> Option<PolicyReply> {
        let conn = self.conn.as_mut()?;
        let answered = conn.welcomed().and_then(receive::<PolicyAnswer>);
        match answered {
            Ok(a) => {
                for (level, line) in a.logs {
                    let level = level.parse().unwrap_or(log::Level::Info);
                    log::log!(level, "{line}");
                }
                Some(a.reply)
            }
            Err(e) => {
                self.lost(e);
                None
            }
        }
    }

    /// Send `req` and read its reply (after the store-opening reply, the
    /// first time). `Ok(None)`: decide in-process instead.
    fn ask(&mut self, req: PolicyRequest) -> Result<Option<PolicyReply>> {
        if self.local.is_some() {
            return Ok(None);
        }
        if !self.opened {
            self.opened = true;
            match self.answer() {
                Some(PolicyReply::Ready) => {}
                Some(PolicyReply::Failed(e)) => {
                    // The component could not be instantiated or configured:
                    // as an in-process load would have said.
                    crate::policy::wasm::tolerate(&self.policy, Err(e.into()), ())?;
                    self.local = Some(Box::new(crate::policy::DefaultPolicy));
                    return Ok(None);
                }
                Some(other) => {
                    return Err(Error::Agent(format!(
                        "the agent opened the policy with {}",
                        bounded_debug(&other)
                    )))
                }
                None => return Ok(None),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        if let Err(e) = send(conn.stream(), &req) {
            self.lost(e);
            return Ok(None);
        }
        Ok(self.answer())
    }
}

impl Policy for FallbackPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    fn allocate(&mut self, pod: &Pod, family: Family, pools: &[&PoolConf]) -> Result<Allocation> {
        let names = pools.iter().map(|p| p.name.clone()).collect();
        match self.ask(PolicyRequest::Allocate(pod.clone(), family, names))? {
            Some(PolicyReply::Allocation(a)) => Ok(a),
            Some(PolicyReply::Failed(e)) => Err(e.into()),
            Some(other) => Err(Error::Agent(format!(
                "the agent answered allocate with {}",
                bounded_debug(&other)
            ))),
            None => self.local()?.allocate(pod, family, pools),
        }
    }

    fn name_interface(&mut self, pod: &Pod) -> Result<Naming> {
        match self.ask(PolicyRequest::NameInterface(pod.clone()))? {
            Some(PolicyReply::Naming(n)) => Ok(n),
            Some(PolicyReply::Failed(e)) => Err(e.into()),
            Some(other) => Err(Error::Agent(format!(
                "the agent answered name-interface with {}",
                bounded_debug(&other)
            ))),
            None => self.local()?.name_interface(pod),
        }
    }

    fn reject(&mut self, err: Error) -> Result<()> {
        if let Some(local) = self.local.as_mut() {
            return local.reject(err);
        }
        crate::policy::wasm::tolerate(&self.policy, Err(err), ())
    }
}
