//! What the host accepts of a policy's answers — the one check, used by ADD
//! (a refused answer is a policy fault, or the built-in decision under
//! `failurePolicy: "default"`) and by `ohnoctl policy test` (its
//! `hostWouldReject`), so the offline test says exactly what an ADD would.

use std::net::IpAddr;

use super::Allocation;
use crate::config::PoolConf;
use crate::ipam::block::Layout;

/// What an allocation answer asks of the host, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<'c> {
    /// The built-in decision (the family's first pool).
    Default,
    /// Any free address of this pool.
    Pool(&'c PoolConf),
    /// This address of this pool (its freedom is the transaction's to check).
    Address(&'c PoolConf, IpAddr),
    /// The policy refused the pod, for this reason.
    Deny(String),
}

/// `answer` checked against the family's pools `of_family`: the choice, or
/// why the host will not follow it.
pub fn check_allocation<'c>(
    answer: &Allocation,
    of_family: &[&'c PoolConf],
) -> Result<Choice<'c>, String> {
    let pool = |name: &str| of_family.iter().copied().find(|p| p.name == name);
    match answer {
        Allocation::Default => Ok(Choice::Default),
        Allocation::Deny(reason) => Ok(Choice::Deny(reason.clone())),
        Allocation::Pool(name) => pool(name).map(Choice::Pool).ok_or_else(|| {
            format!("chose pool {name:?}, which is not a configured pool of this family")
        }),
        Allocation::Address {
            pool: name,
            address,
        } => match pool(name) {
            None => Err(format!(
                "chose {address} in pool {name:?}, which is not a configured pool of this family"
            )),
            Some(p) => match Layout::new(p).check_usable(*address) {
                Ok(_) => Ok(Choice::Address(p, *address)),
                Err(why) => Err(format!(
                    "answered an address the host will not hand out: {why}"
                )),
            },
        },
    }
}

/// A host-side interface name a policy answered, checked by the interface
/// name rule (that no other interface uses it is checked on the node).
pub fn check_host_name(name: &str) -> Result<(), String> {
    crate::ip::ifname::validate_ifname(name)
        .map_err(|m| format!("answered an invalid host interface name: {m}"))
}
