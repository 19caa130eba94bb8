//! Following a few prefixes of the store: list them at one revision, then
//! receive every change after it. etcd watches natively (from the listed
//! revision + 1, so nothing between the list and the watch is missed); the
//! single-node stores are polled and diffed, which is all a node without
//! peers needs (its own blocks' blackhole routes).
//!
//! Only the agent follows the store; the plugin never does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{KeyValue, Kv};
use crate::error::Result;

/// Every key under each prefix, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// One list per prefix, in the order asked.
    pub keys: Vec<Vec<KeyValue>>,
    /// The store revision the lists were read at (0 for stores without one).
    pub revision: i64,
}

/// One change after the listed revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(KeyValue),
    Delete(String),
}

/// Why a watch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// `stop` said so.
    Stopped,
    /// The revision to resume from has been compacted away: list again.
    Compacted(i64),
    /// The connection or the stream failed: list again after a pause.
    Failed(String),
}

/// A store that can be followed.
pub trait Watch: Send + Sync {
    /// Every key under each of `prefixes`, at one revision.
    fn list(&self, prefixes: &[String]) -> Result<Listing>;

    /// Call `on` with each batch of changes under `prefixes` after `from`
    /// (what [`Watch::list`] returned), until `stop` returns true (checked
    /// at least every `tick`), the revision is compacted, or the watch fails.
    fn watch(
        &self,
        prefixes: &[String],
        from: &Listing,
        tick: Duration,
        on: &mut dyn FnMut(Vec<Change>),
        stop: &dyn Fn() -> bool,
    ) -> WatchEnd;
}

/// How often a store without a native watch is listed again.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// A follower for the store `conf` names: etcd's own watch, or polling
/// `kv` (the same store, already open).
pub fn open(conf: &crate::config::StoreConf, kv: Arc<dyn Kv>) -> Result<Arc<dyn Watch>> {
    match conf {
        #[cfg(feature = "etcd")]
        crate::config::StoreConf::Etcd(e) => Ok(Arc::new(super::etcd::EtcdStore::open(e)?)),
        _ => Ok(Arc::new(Poll::new(kv, POLL_EVERY))),
    }
}

/// Following by polling: list every `interval`, and report what differs
/// from the previous list.
pub struct Poll {
    kv: Arc<dyn Kv>,
    interval: Duration,
}

impl Poll {
    pub fn new(kv: Arc<dyn Kv>, interval: Duration) -> Poll {
        Poll { kv, interval }
    }
}

type Seen = BTreeMap<String, (i64, Vec<u8>)>;

fn seen(listing: &Listing) -> Seen {
    listing
        .keys
        .iter()
        .flatten()
        .map(|kv| (kv.key.clone(), (kv.mod_revision, kv.value.clone())))
        .collect()
}

/// What changed from `before` to `after`, in key order.
fn diff(before: &Seen, after: &Listing) -> Vec<Change> {
    let mut out = Vec::new();
    let now = seen(after);
    for kv in after.keys.iter().flatten() {
        match before.get(&kv.key) {
            Some((rev, value)) if *rev == kv.mod_revision && *value == kv.value => {}
            _ => out.push(Change::Put(kv.clone())),
        }
    }
    for key in before.keys() {
        if !now.contains_key(key) {
            out.push(Change::Delete(key.clone()));
        }
    }
    out
}

impl Watch for Poll {
    fn list(&self, prefixes: &[String]) -> Result<Listing> {
        let mut keys = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            keys.push(self.kv.range(p, false)?);
        }
        let revision = keys
            .iter()
            .flatten()
            .map(|kv| kv.mod_revision)
            .max()
            .unwrap_or(0);
        Ok(Listing { keys, revision })
    }

    fn watch(
        &self,
        prefixes: &[String],
        from: &Listing,
        tick: Duration,
        on: &mut dyn FnMut(Vec<Change>),
        stop: &dyn Fn() -> bool,
    ) -> WatchEnd {
        let mut before = seen(from);
        let step = tick.min(self.interval).max(Duration::from_millis(1));
        let mut next = Instant::now() + self.interval;
        loop {
            if stop() {
                return WatchEnd::Stopped;
            }
            let now = Instant::now();
            if now < next {
                std::thread::sleep(step.min(next - now));
                continue;
            }
            next = now + self.interval;
            let after = match self.list(prefixes) {
                Ok(l) => l,
                Err(e) => return WatchEnd::Failed(e.to_string()),
            };
            let changes = diff(&before, &after);
            before = seen(&after);
            if !changes.is_empty() {
                on(changes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::Txn;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    #[test]
    fn polling_reports_puts_and_deletes_under_the_prefixes_only() {
        let kv: Arc<dyn Kv> = Arc::new(MemoryStore::new());
        kv.txn(Txn::new().put("/o/a/1", "x")).unwrap();
        let poll = Poll::new(kv.clone(), Duration::from_millis(5));
        let prefixes = vec!["/o/a/".to_string(), "/o/c/".to_string()];
        let listing = poll.list(&prefixes).unwrap();
        assert_eq!(listing.keys[0].len(), 1);
        assert!(listing.keys[1].is_empty());

        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s, p, kv2) = (got.clone(), stop.clone(), prefixes.clone(), kv.clone());
        let watcher = std::thread::spawn(move || {
            let poll = Poll::new(kv2, Duration::from_millis(5));
            poll.watch(
                &p,
                &listing,
                Duration::from_millis(1),
                &mut |c| g.lock().unwrap().extend(c),
                &|| s.load(Ordering::SeqCst),
            )
        });
        std::thread::sleep(Duration::from_millis(30));
        kv.txn(Txn::new().put("/o/c/2", "y").put("/o/b/ignored", "z"))
            .unwrap();
        kv.txn(Txn::new().delete("/o/a/1")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        assert_eq!(watcher.join().unwrap(), WatchEnd::Stopped);
        let got = got.lock().unwrap();
        assert!(
            got.iter()
                .any(|c| matches!(c, Change::Put(kv) if kv.key == "/o/c/2")),
            "{got:?}"
        );
        assert!(got.contains(&Change::Delete("/o/a/1".into())), "{got:?}");
        assert!(
            !got.iter()
                .any(|c| matches!(c, Change::Put(kv) if kv.key == "/o/b/ignored")),
            "{got:?}"
        );
    }
}
