//! Making the kernel hold what [`super::desired`] says, and nothing else of
//! ours: read back every route with our protocol number and every permanent
//! neighbour and FDB entry of our vxlan devices, delete what is not wanted,
//! add what is missing. What already matches is not touched (no churn on
//! restart). Deletes go first, so a peer moving between host-gw and vxlan
//! is a delete and an add (IPv6 refuses to replace a gatewayed route by an
//! onlink one through another device). A route another program holds at
//! the same destination and metric is left alone and reported.

use std::collections::BTreeSet;

use super::desired::{Desired, Device};
use crate::error::Result;
use crate::net::link::Netlink;
use crate::net::route::OwnedRoute;

/// What one pass changed, and what it could not do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub removed: usize,
    /// Routes wanted but not installed, with why.
    pub failed: Vec<String>,
    /// Those routes.
    pub not_installed: BTreeSet<OwnedRoute>,
}

impl Applied {
    pub fn changes(&self) -> usize {
        self.added + self.removed
    }
}

/// One pass over routes (`protocol`) and the entries of `devices`.
pub fn apply(
    nl: &mut Netlink,
    want: &Desired,
    devices: &[Device],
    protocol: u8,
) -> Result<Applied> {
    let mut out = Applied::default();
    let have: BTreeSet<_> = nl.owned_routes(protocol)?.into_iter().collect();
    for r in have.iter().filter(|r| !want.routes.contains_key(*r)) {
        match nl.del_owned(r, protocol) {
            Ok(()) => {
                log::info!("route removed: {r}");
                out.removed += 1;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => out.failed.push(e.to_string()),
        }
    }
    for r in want.routes.keys().filter(|r| !have.contains(*r)) {
        match nl.add_owned(r, protocol) {
            Ok(()) => {
                log::info!("route added: {r}");
                out.added += 1;
            }
            Err(e) => {
                out.not_installed.insert(r.clone());
                out.failed.push(if e.is_exists() {
                    format!(
                        "{r}: another route to {} with metric {} is in the table \
                         (not ours; left alone)",
                        r.dst, r.metric
                    )
                } else {
                    e.to_string()
                });
            }
        }
    }
    let empty_n = BTreeSet::new();
    let empty_f = BTreeSet::new();
    for dev in devices {
        let want_n = want.neighbours.get(&dev.index).unwrap_or(&empty_n);
        let have_n: BTreeSet<_> = nl.neighbours(dev.index)?.into_iter().collect();
        for n in have_n.difference(want_n) {
            nl.del_neighbour(dev.index, n)?;
            log::info!("neighbour removed: {n} dev {}", dev.name);
            out.removed += 1;
        }
        for n in want_n.difference(&have_n) {
            nl.replace_neighbour(dev.index, n)?;
            log::info!("neighbour set: {n} dev {}", dev.name);
            out.added += 1;
        }
        let want_f = want.fdb.get(&dev.index).unwrap_or(&empty_f);
        let have_f: BTreeSet<_> = nl.fdb(dev.index)?.into_iter().collect();
        for f in have_f.difference(want_f) {
            nl.del_fdb(dev.index, f)?;
            log::info!("fdb removed: {f} dev {}", dev.name);
            out.removed += 1;
        }
        for f in want_f.difference(&have_f) {
            nl.replace_fdb(dev.index, f)?;
            log::info!("fdb set: {f} dev {}", dev.name);
            out.added += 1;
        }
    }
    Ok(out)
}
