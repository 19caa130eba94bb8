//! A lease on one key: "one agent at a time does this" (the node clean-up of
//! a Kubernetes cluster), written only with the store's compare transactions.
//!
//! The algorithm is Kubernetes' own Lease (client-go leader election), kept
//! in etcd: the holder rewrites the key every third of the lease; a candidate
//! that sees the same value for a whole lease *on its own clock* takes the key
//! over by a transaction comparing the revision it saw. No clock is compared
//! with another machine's: the holder counts its lease from the moment it
//! *sent* its last renewal, which is before any candidate could have seen
//! it, so the holder stops acting before a candidate may start. A holder
//! that stops cleanly deletes the key, and the next candidate takes it at once.
//!
//! Nothing that the lease guards relies on it for correctness: every write
//! under it is itself a compare transaction. The lease keeps the work (and
//! the load on the Kubernetes API) to one agent.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Compare, Kv, Txn};
use crate::error::Result;

/// What the key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub holder: String,
    pub lease_seconds: u64,
    /// Seconds since the epoch, for people reading the key (never compared).
    pub acquired: u64,
    pub renewed: u64,
    /// How many times this holder wrote the key: every write differs.
    pub renewals: u64,
}

/// One participant's view of the lease on `key`.
#[derive(Debug)]
pub struct Lease {
    key: String,
    holder: String,
    duration: Duration,
    /// Ours: the bytes we last wrote, and when we sent that write.
    held: Option<(Vec<u8>, Instant)>,
    /// Someone else's: the value we saw, and since when (our clock).
    observed: Option<(Vec<u8>, Instant)>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Lease {
    pub fn new(key: impl Into<String>, holder: impl Into<String>, duration: Duration) -> Lease {
        Lease {
            key: key.into(),
            holder: holder.into(),
            duration,
            held: None,
            observed: None,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether this participant may act now: it holds the lease and its last
    /// renewal was sent less than a lease ago.
    pub fn is_held(&self, now: Instant) -> bool {
        self.held
            .as_ref()
            .is_some_and(|(_, sent)| now.saturating_duration_since(*sent) < self.duration)
    }

    /// Take the lease when it is free or expired, renew it when ours and a
    /// third of it has passed; answers [`Lease::is_held`] afterwards. A store
    /// error leaves the lease as it was (still held until it runs out).
    pub fn hold(&mut self, kv: &dyn Kv, now: Instant) -> Result<bool> {
        if let Some((_, sent)) = &self.held {
            if now.saturating_duration_since(*sent) < self.duration / 3 {
                return Ok(true);
            }
        }
        let result = self.try_hold(kv, now);
        if !self.is_held(now) {
            self.held = None;
        }
        result.map(|()| self.is_held(now))
    }

    fn try_hold(&mut self, kv: &dyn Kv, now: Instant) -> Result<()> {
        let current = kv.get(&self.key)?;
        let (guard, acquired, renewals) = match (&current, &self.held) {
            (None, _) => (Compare::absent(self.key.clone()), unix_now(), 0),
            (Some(c), Some((ours, _))) if c.value == *ours => {
                let prev: Option<LeaseRecord> = serde_json::from_slice(ours).ok();
                (
                    Compare::Value(self.key.clone(), ours.clone()),
                    prev.as_ref().map_or_else(unix_now, |p| p.acquired),
                    prev.map_or(0, |p| p.renewals + 1),
                )
            }
            (Some(c), _) => {
                // Someone else's (or ours, lost): wait a whole lease without
                // a change before taking it over.
                self.held = None;
                match &self.observed {
                    Some((seen, since)) if *seen == c.value => {
                        if now.saturating_duration_since(*since) < self.duration {
                            return Ok(());
                        }
                    }
                    _ => {
                        self.observed = Some((c.value.clone(), now));
                        return Ok(());
                    }
                }
                (
                    Compare::ModRevision(self.key.clone(), c.mod_revision),
                    unix_now(),
                    0,
                )
            }
        };
        let record = LeaseRecord {
            holder: self.holder.clone(),
            lease_seconds: self.duration.as_secs().max(1),
            acquired,
            renewed: unix_now(),
            renewals,
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| crate::Error::Store(format!("encode lease {}: {e}", self.key)))?;
        if kv.txn(Txn::new().when(guard).put(self.key.clone(), value.clone()))? {
            self.held = Some((value, now));
            self.observed = None;
        } else {
            // Lost a race: someone wrote it just now; watch that value.
            self.held = None;
            self.observed = None;
        }
        Ok(())
    }

    /// Give the lease back (on a clean stop): delete the key if it still
    /// holds our last write, so a candidate takes it at once.
    pub fn release(&mut self, kv: &dyn Kv) -> Result<bool> {
        let Some((ours, _)) = self.held.take() else {
            return Ok(false);
        };
        kv.txn(
            Txn::new()
                .when(Compare::Value(self.key.clone(), ours))
                .delete(self.key.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const KEY: &str = "/ohno/leases/node-cleanup";

    fn record(kv: &MemoryStore) -> LeaseRecord {
        serde_json::from_slice(&kv.get(KEY).unwrap().unwrap().value).unwrap()
    }

    #[test]
    fn one_holder_at_a_time_and_renewals_keep_it() {
        let kv = MemoryStore::new();
        let lease = Duration::from_secs(15);
        let t0 = Instant::now();
        let mut a = Lease::new(KEY, "node-a", lease);
        let mut b = Lease::new(KEY, "node-b", lease);
        assert!(a.hold(&kv, t0).unwrap());
        assert!(!b.hold(&kv, t0).unwrap());
        assert_eq!(record(&kv).holder, "node-a");
        // a renews every third of the lease; b never sees a whole lease
        // without a change.
        for i in 1..=10u32 {
            let t = t0 + Duration::from_secs(6) * i;
            assert!(a.hold(&kv, t).unwrap(), "renewal {i}");
            assert!(!b.hold(&kv, t).unwrap(), "b took a live lease at {i}");
        }
        assert_eq!(record(&kv).holder, "node-a");
        assert!(record(&kv).renewals >= 9);
    }

    #[test]
    fn a_silent_holder_is_taken_over_after_a_whole_lease() {
        let kv = MemoryStore::new();
        let lease = Duration::from_secs(15);
        let t0 = Instant::now();
        let mut a = Lease::new(KEY, "node-a", lease);
        let mut b = Lease::new(KEY, "node-b", lease);
        assert!(a.hold(&kv, t0).unwrap());
        // b first sees the value at t0 + 1 s; a goes silent.
        assert!(!b.hold(&kv, t0 + Duration::from_secs(1)).unwrap());
        assert!(!b.hold(&kv, t0 + Duration::from_secs(15)).unwrap());
        // a stops acting a lease after its last renewal was sent...
        assert!(!a.is_held(t0 + Duration::from_secs(15)));
        // ...before b may start (a lease after b saw it).
        assert!(b.hold(&kv, t0 + Duration::from_secs(16)).unwrap());
        assert_eq!(record(&kv).holder, "node-b");
        // a, back, finds b's lease and does not take it.
        assert!(!a.hold(&kv, t0 + Duration::from_secs(17)).unwrap());
        assert_eq!(record(&kv).holder, "node-b");
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let kv = MemoryStore::new();
        let lease = Duration::from_secs(15);
        let t0 = Instant::now();
        let mut a = Lease::new(KEY, "node-a", lease);
        let mut b = Lease::new(KEY, "node-b", lease);
        assert!(a.hold(&kv, t0).unwrap());
        assert!(!b.hold(&kv, t0).unwrap());
        assert!(a.release(&kv).unwrap());
        assert!(kv.get(KEY).unwrap().is_none());
        assert!(b.hold(&kv, t0 + Duration::from_millis(10)).unwrap());
        // Releasing a lease we do not hold deletes nothing.
        assert!(!a.release(&kv).unwrap());
        assert_eq!(record(&kv).holder, "node-b");
    }

    #[test]
    fn an_unreachable_store_keeps_the_lease_only_until_it_runs_out() {
        let kv = MemoryStore::new();
        let lease = Duration::from_secs(15);
        let t0 = Instant::now();
        let mut a = Lease::new(KEY, "node-a", lease);
        assert!(a.hold(&kv, t0).unwrap());
        kv.inject_outage(100);
        assert!(a.hold(&kv, t0 + Duration::from_secs(6)).is_err());
        assert!(a.is_held(t0 + Duration::from_secs(6)));
        assert!(a.hold(&kv, t0 + Duration::from_secs(15)).is_err());
        assert!(!a.is_held(t0 + Duration::from_secs(15)));
    }
}
