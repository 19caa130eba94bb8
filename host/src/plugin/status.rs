//! STATUS (CNI 1.1): success when an ADD could succeed now — the store answers and
//! every family has room — else code 50.

use super::Invocation;
use crate::error::{Error, Result};

pub fn run(inv: &Invocation) -> Result<()> {
    let conf = &inv.conf;
    let unavailable = |msg: String| Error::NotAvailable(msg);
    let session =
        super::session::Session::open(conf).map_err(|e| unavailable(format!("store: {e}")))?;
    session
        .kv
        .ping()
        .map_err(|e| unavailable(format!("store: {e}")))?;
    let alloc = session.allocator();
    for pool in &conf.ipam.pools {
        alloc.ensure_pool(pool)?;
        if !alloc
            .has_capacity(pool)
            .map_err(|e| unavailable(format!("store: {e}")))?
        {
            // Another pool of the same family may still have room.
            let family_has_room = conf
                .ipam
                .pools
                .iter()
                .filter(|p| p.subnet.is_ipv4() == pool.subnet.is_ipv4() && p.name != pool.name)
                .any(|p| alloc.has_capacity(p).unwrap_or(false));
            if !family_has_room {
                return Err(unavailable(format!(
                    "pool {:?} ({}) is exhausted",
                    pool.name, pool.subnet
                )));
            }
        }
    }
    Ok(())
}
