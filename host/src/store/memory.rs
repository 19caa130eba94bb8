//! In-memory store with etcd semantics, for tests. It can inject faults: make the
//! next N transactions lose their compares (as if another node won the race) or fail
//! outright (as if the store were unreachable).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{prefix_end, Compare, KeyValue, Kv, Op, Txn};
use crate::error::{Error, Result};

#[derive(Default)]
struct State {
    revision: i64,
    data: BTreeMap<String, KeyValue>,
    /// Transactions still to be reported as conflicting.
    conflicts: u32,
    /// Calls still to fail as unavailable.
    outages: u32,
    /// Before each txn: keys to create as if written by someone else.
    interlopers: Vec<(String, Vec<u8>)>,
}

/// The memory backend.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The next `n` transactions report that their compares failed, applying nothing.
    pub fn inject_conflicts(&self, n: u32) {
        self.lock().conflicts = n;
    }

    /// The next `n` calls (any kind) fail with "try again later".
    pub fn inject_outage(&self, n: u32) {
        self.lock().outages = n;
    }

    /// Just before the next transaction, write `key` as another writer would.
    pub fn inject_interloper(&self, key: &str, value: &[u8]) {
        self.lock()
            .interlopers
            .push((key.to_string(), value.to_vec()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock only happens in a failing test.
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn outage(s: &mut State) -> Result<()> {
        if s.outages > 0 {
            s.outages -= 1;
            return Err(Error::TryAgainLater("memory store: injected outage".into()));
        }
        Ok(())
    }
}

fn holds(data: &BTreeMap<String, KeyValue>, c: &Compare) -> bool {
    match c {
        Compare::CreateRevision(k, rev) => data.get(k).map_or(0, |kv| kv.create_revision) == *rev,
        Compare::ModRevision(k, rev) => data.get(k).map_or(0, |kv| kv.mod_revision) == *rev,
        Compare::Value(k, v) => data.get(k).is_some_and(|kv| &kv.value == v),
    }
}

fn apply(s: &mut State, ops: &[Op]) {
    if ops.is_empty() {
        return;
    }
    s.revision += 1;
    let rev = s.revision;
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let create = s.data.get(k).map_or(rev, |kv| kv.create_revision);
                s.data.insert(
                    k.clone(),
                    KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                        create_revision: create,
                        mod_revision: rev,
                    },
                );
            }
            Op::Delete(k) => {
                s.data.remove(k);
            }
        }
    }
}

impl Kv for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut s = self.lock();
        Self::outage(&mut s)?;
        Ok(s.data.get(key).cloned())
    }

    fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>> {
        let mut s = self.lock();
        Self::outage(&mut s)?;
        let end = prefix_end(prefix);
        Ok(s.data
            .range(prefix.to_string()..end)
            .map(|(_, kv)| {
                let mut kv = kv.clone();
                if keys_only {
                    kv.value.clear();
                }
                kv
            })
            .collect())
    }

    fn txn(&self, txn: Txn) -> Result<bool> {
        let mut s = self.lock();
        Self::outage(&mut s)?;
        let interlopers = std::mem::take(&mut s.interlopers);
        for (k, v) in interlopers {
            apply(&mut s, &[Op::Put(k, v)]);
        }
        if s.conflicts > 0 {
            s.conflicts -= 1;
            return Ok(false);
        }
        let ok = txn.compares.iter().all(|c| holds(&s.data, c));
        apply(&mut s, if ok { &txn.success } else { &txn.failure });
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_put_get_range_delete() {
        super::super::suite::put_get_range_delete(&MemoryStore::new());
    }

    #[test]
    fn suite_compares_are_all_or_nothing() {
        super::super::suite::compares_are_all_or_nothing(&MemoryStore::new());
    }

    #[test]
    fn injected_faults() {
        let m = MemoryStore::new();
        m.inject_conflicts(1);
        assert!(!m.txn(Txn::new().put("/a", "1")).unwrap());
        assert!(m.txn(Txn::new().put("/a", "1")).unwrap());
        m.inject_outage(1);
        assert_eq!(m.get("/a").unwrap_err().code(), 11);
        assert!(m.get("/a").unwrap().is_some());
    }
}
