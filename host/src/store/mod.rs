//! The key-value store behind IPAM. Its semantics are etcd's: get, prefix range
//! (keys-only when enough), and transactions whose compares are on a key's
//! create/mod revision or value. Every write Ohno does is such a transaction, so the
//! allocator never reads-then-writes. Backends: `local` (embedded SQLite, safe across
//! concurrent plugin processes on one node) and `memory` (tests, fault injection).

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod lease;
pub mod local;
pub mod memory;
pub mod watch;

use crate::config::StoreConf;
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// One key with its value and revisions (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    /// Empty for keys-only ranges.
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// The key's create revision equals this; 0 means "the key does not exist".
    CreateRevision(String, i64),
    /// The key's mod revision equals this (optimistic concurrency on a read).
    ModRevision(String, i64),
    /// The key exists and holds exactly this value.
    Value(String, Vec<u8>),
}

impl Compare {
    /// "This key does not exist yet".
    pub fn absent(key: impl Into<String>) -> Compare {
        Compare::CreateRevision(key.into(), 0)
    }
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// If every compare holds, apply `success`, else `failure` — atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }
    pub fn when(mut self, c: Compare) -> Txn {
        self.compares.push(c);
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Txn {
        self.success.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Txn {
        self.success.push(Op::Delete(key.into()));
        self
    }
}

/// One read of a batch ([`Kv::read_batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Read {
    /// One key (its answer has zero or one entries).
    Get(String),
    /// Every key starting with `prefix`, in key order.
    Range { prefix: String, keys_only: bool },
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Freshness {
    /// Reflects every write acknowledged before the read began (etcd: linearizable,
    /// a round through the leader).
    Latest,
    /// May lag the latest writes by a moment (etcd: serializable, answered by the
    /// member the client is connected to). Only for reads whose answer a later
    /// transaction's compares check again: a stale answer costs a retry, never a
    /// wrong write.
    MayLag,
}

/// The etcd-like store interface the allocator is written against.
pub trait Kv: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// All keys starting with `prefix`, in key order. `keys_only` leaves values empty.
    fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>>;
    /// Several reads in one round trip, answered from one revision, in order.
    /// Backends without round trips (local, memory) read one by one, always
    /// [`Freshness::Latest`].
    fn read_batch(&self, reads: &[Read], _freshness: Freshness) -> Result<Vec<Vec<KeyValue>>> {
        reads
            .iter()
            .map(|r| match r {
                Read::Get(key) => Ok(self.get(key)?.into_iter().collect()),
                Read::Range { prefix, keys_only } => self.range(prefix, *keys_only),
            })
            .collect()
    }
    /// Apply `txn` atomically; `Ok(true)` when the compares held and `success` ran.
    fn txn(&self, txn: Txn) -> Result<bool>;
    /// Apply `txn`, or, when its compares fail, answer `reads` instead: "write,
    /// or show me why not" in one round trip. `Ok(None)` when `success` ran;
    /// otherwise `failure` ran and the answers are [`Freshness::Latest`] (etcd:
    /// read in the failure branch of the same transaction; backends without
    /// round trips read right after).
    fn txn_or_read(&self, txn: Txn, reads: &[Read]) -> Result<Option<Vec<Vec<KeyValue>>>> {
        if self.txn(txn)? {
            return Ok(None);
        }
        self.read_batch(reads, Freshness::Latest).map(Some)
    }
    /// Cheap liveness probe for STATUS (can an ADD reach the store now?).
    fn ping(&self) -> Result<()> {
        self.get("/").map(|_| ())
    }
}

/// Open the backend a config names, in this process.
pub fn open(conf: &StoreConf) -> Result<std::sync::Arc<dyn Kv>> {
    match conf {
        StoreConf::Local { data_dir, .. } => {
            Ok(std::sync::Arc::new(local::LocalStore::open(data_dir)?))
        }
        #[cfg(feature = "etcd")]
        StoreConf::Etcd(e) => Ok(std::sync::Arc::new(etcd::EtcdStore::open(e)?)),
        #[cfg(not(feature = "etcd"))]
        StoreConf::Etcd(_) => Err(crate::error::Error::UnsupportedField {
            field: "ipam.store.type".into(),
            msg: "this build of ohno has no etcd support (feature \"etcd\")".into(),
        }),
    }
}

/// The end of a prefix range: the smallest key greater than every key with `prefix`.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    String::from("\u{10ffff}")
}

/// Shared behaviour tests: every backend must pass them (`store_suite!`).
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    pub fn put_get_range_delete(kv: &dyn Kv) {
        assert!(kv.get("/t/a").unwrap().is_none());
        assert!(kv
            .txn(Txn::new().when(Compare::absent("/t/a")).put("/t/a", "1"))
            .unwrap());
        assert!(!kv
            .txn(Txn::new().when(Compare::absent("/t/a")).put("/t/a", "2"))
            .unwrap());
        let a = kv.get("/t/a").unwrap().unwrap();
        assert_eq!(a.value, b"1");
        assert!(a.create_revision > 0);
        assert_eq!(a.create_revision, a.mod_revision);
        assert!(kv
            .txn(
                Txn::new()
                    .put("/t/b", "x")
                    .put("/t/c/d", "y")
                    .put("/u", "z")
            )
            .unwrap());
        let keys: Vec<String> = kv
            .range("/t/", true)
            .unwrap()
            .into_iter()
            .map(|k| k.key)
            .collect();
        assert_eq!(keys, vec!["/t/a", "/t/b", "/t/c/d"]);
        assert!(kv
            .range("/t/", true)
            .unwrap()
            .iter()
            .all(|k| k.value.is_empty()));
        assert_eq!(kv.range("/t/c/", false).unwrap()[0].value, b"y");
        assert!(kv.txn(Txn::new().delete("/t/b")).unwrap());
        assert!(kv.get("/t/b").unwrap().is_none());
        // A batch answers every read, in order, as the single reads would.
        for freshness in [Freshness::Latest, Freshness::MayLag] {
            let answers = kv
                .read_batch(
                    &[
                        Read::Get("/t/a".into()),
                        Read::Get("/missing".into()),
                        Read::Range {
                            prefix: "/t/".into(),
                            keys_only: false,
                        },
                        Read::Range {
                            prefix: "/t/c/".into(),
                            keys_only: true,
                        },
                    ],
                    freshness,
                )
                .unwrap();
            assert_eq!(answers.len(), 4);
            assert_eq!(answers[0], vec![kv.get("/t/a").unwrap().unwrap()]);
            assert!(answers[1].is_empty());
            assert_eq!(answers[2], kv.range("/t/", false).unwrap());
            assert_eq!(answers[3].len(), 1);
            assert_eq!(answers[3][0].key, "/t/c/d");
            assert!(answers[3][0].value.is_empty());
        }
    }

    pub fn compares_are_all_or_nothing(kv: &dyn Kv) {
        assert!(kv.txn(Txn::new().put("/k", "v1")).unwrap());
        let k = kv.get("/k").unwrap().unwrap();
        // A failing compare applies nothing, not even the puts before it.
        let t = Txn::new()
            .when(Compare::ModRevision("/k".into(), k.mod_revision))
            .when(Compare::absent("/k"))
            .put("/other", "x")
            .put("/k", "v2");
        assert!(!kv.txn(t).unwrap());
        assert!(kv.get("/other").unwrap().is_none());
        assert_eq!(kv.get("/k").unwrap().unwrap().value, b"v1");
        // Value and mod-revision compares.
        assert!(kv
            .txn(
                Txn::new()
                    .when(Compare::Value("/k".into(), b"v1".to_vec()))
                    .put("/k", "v2")
            )
            .unwrap());
        let k2 = kv.get("/k").unwrap().unwrap();
        assert!(k2.mod_revision > k.mod_revision);
        assert_eq!(k2.create_revision, k.create_revision);
        assert!(!kv
            .txn(
                Txn::new()
                    .when(Compare::ModRevision("/k".into(), k.mod_revision))
                    .delete("/k")
            )
            .unwrap());
        assert!(!kv
            .txn(
                Txn::new()
                    .when(Compare::Value("/missing".into(), vec![]))
                    .put("/x", "1")
            )
            .unwrap());
        // The failure branch runs when a compare fails.
        let mut t = Txn::new().when(Compare::absent("/k")).put("/never", "1");
        t.failure.push(Op::Put("/fallback".into(), b"1".to_vec()));
        assert!(!kv.txn(t).unwrap());
        assert!(kv.get("/fallback").unwrap().is_some());
        assert!(kv.get("/never").unwrap().is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_exclusive_upper_bound() {
        assert_eq!(prefix_end("/a/"), "/a0");
        assert!("/a/zzz" < prefix_end("/a/").as_str());
    }
}
