//! The embedded single-node store: SQLite (bundled, via rusqlite) in WAL mode.
//!
//! Why SQLite: every `ohno` call is a new process, and many run at once when a node
//! starts pods in a burst. SQLite is a well-kept embedded database whose file
//! locking makes transactions safe across processes (redb and sled lock the file to
//! one process at a time). `BEGIN IMMEDIATE` takes the write lock before the compares
//! are evaluated, so compare-and-write is atomic across every plugin process on the
//! node; readers never block writers in WAL mode. The etcd semantics (revisions,
//! compares) are kept in two tables.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{prefix_end, Compare, KeyValue, Kv, Op, Txn};
use crate::error::{Error, Result};

/// File name of the database inside `dataDir`.
pub const DB_FILE: &str = "ohno.db";
/// How long a process waits for another's write lock before giving up (code 11).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const SCHEMA_VERSION: i64 = 1;
/// Size of the write-ahead log past which an opening process truncates it.
/// Every process that opens the store rebuilds SQLite's WAL index by reading and
/// checksumming the whole log (the shared-memory index does not outlive the last
/// connection), so the log's length is paid on every call: at 4 MiB that was
/// ~0.6 ms of a local ADD and ~1 ms of a DEL on average; at 256 KiB a checkpoint
/// comes every ~15 writes and costs less than the reads it saves.
const WAL_TRIM_BYTES: u64 = 256 << 10;

pub struct LocalStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Another connection holds the lock (SQLITE_BUSY / SQLITE_LOCKED).
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
    )
}

fn db_err(path: &Path, what: &str, e: rusqlite::Error) -> Error {
    if is_busy(&e) {
        Error::TryAgainLater(format!("local store {}: {what}: {e}", path.display()))
    } else {
        Error::Store(format!("local store {}: {what}: {e}", path.display()))
    }
}

impl LocalStore {
    /// Create the database file 0600 before SQLite does (SQLite would make it
    /// 0644, and its journal files copy the database's mode), or check the one
    /// there: a regular file of ours, its mode narrowed to 0600.
    fn own_db_file(path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let refuse = |e: std::io::Error| {
            Error::config(
                "ipam.store.dataDir",
                format!("database {}: {e}", path.display()),
            )
        };
        let narrow = |file: std::fs::File| -> std::io::Result<()> {
            if file.metadata()?.permissions().mode() & 0o7777 != 0o600 {
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        };
        crate::nodefs::open_file(path, crate::nodefs::Access::ReadWriteCreate)
            .and_then(narrow)
            .map_err(refuse)?;
        // Journal files an older Ohno left with SQLite's default mode.
        for suffix in ["-wal", "-shm"] {
            let mut journal = path.as_os_str().to_owned();
            journal.push(suffix);
            let journal = std::path::PathBuf::from(journal);
            if std::fs::symlink_metadata(&journal).is_ok() {
                crate::nodefs::open_file(&journal, crate::nodefs::Access::Read)
                    .and_then(narrow)
                    .map_err(refuse)?;
            }
        }
        Ok(())
    }

    /// Open (creating if needed) the store in `data_dir`: a directory only this
    /// uid can reach (see [`crate::nodefs`]), a database file that is a regular
    /// file of ours with mode 0600 (it holds pod names and UIDs), opened
    /// without following a symlink.
    pub fn open(data_dir: &Path) -> Result<LocalStore> {
        crate::nodefs::private_dir("ipam.store.dataDir", data_dir)?;
        let path = data_dir.join(DB_FILE);
        Self::own_db_file(&path)?;
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|e| db_err(&path, "open", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db_err(&path, "set busy timeout", e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db_err(&path, "read schema version", e))?;
        if version != SCHEMA_VERSION {
            Self::init_schema(&conn, &path)?;
        }
        // NORMAL is durable against process crashes in WAL mode; a power loss can lose
        // the last transactions, and with them only pods that are gone too.
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(|e| db_err(&path, "configure", e))?;
        // Every plugin call is a short process: checkpointing and deleting the WAL on
        // every close would cost an fsync and two unlinks per call (~15 ms). SQLite
        // checkpoints on its own once the WAL reaches 1000 pages.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(|e| db_err(&path, "configure", e))?;
        Self::trim_wal(&conn, &path);
        Ok(LocalStore {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Keep the write-ahead log short. Plugin processes never checkpoint on close
    /// (see `open`), and with one write per short-lived process SQLite's automatic
    /// checkpoints copy pages back but never restart the log, so it grows with
    /// every write and each new process reads all of it. When it passes
    /// `WAL_TRIM_BYTES`, the opening process checkpoints and truncates it; if
    /// another process holds it busy, the next one will.
    fn trim_wal(conn: &Connection, path: &Path) {
        let wal = path.with_extension("db-wal");
        let big = std::fs::metadata(&wal)
            .map(|m| m.len() > WAL_TRIM_BYTES)
            .unwrap_or(false);
        if big {
            match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            }) {
                Ok(0) => log::debug!(
                    "local store: truncated the write-ahead log {}",
                    wal.display()
                ),
                Ok(_) => {
                    log::debug!("local store: write-ahead log busy; left for the next process")
                }
                Err(e) => log::debug!("local store: checkpoint {}: {e}", wal.display()),
            }
        }
    }

    /// Switch a new database to WAL (set outside a transaction; it persists in
    /// the file). The switch needs the database to itself, and SQLite answers
    /// "busy" at once, without its busy handler, while other processes — a
    /// burst of first ADDs on a new node — open the same new file: retried here
    /// until `BUSY_TIMEOUT`.
    fn enable_wal(conn: &Connection, path: &Path) -> Result<()> {
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(mode) => {
                    return Err(Error::Store(format!(
                        "local store {}: enable WAL: the journal mode stays {mode:?}",
                        path.display()
                    )))
                }
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(db_err(path, "enable WAL", e)),
            }
        }
    }

    fn init_schema(conn: &Connection, path: &Path) -> Result<()> {
        Self::enable_wal(conn, path)?;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY NOT NULL,
                 value BLOB NOT NULL,
                 create_rev INTEGER NOT NULL,
                 mod_rev INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta (id, revision) VALUES (0, 0);
             PRAGMA user_version = {SCHEMA_VERSION};
             COMMIT;"
        ))
        .map_err(|e| db_err(path, "create schema", e))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_kv(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
    })
}

impl Kv for LocalStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let conn = self.conn();
        conn.query_row(
            "SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?1",
            params![key],
            read_kv,
        )
        .optional()
        .map_err(|e| db_err(&self.path, &format!("get {key}"), e))
    }

    fn range(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>> {
        let conn = self.conn();
        let sql = if keys_only {
            "SELECT key, x'', create_rev, mod_rev FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key"
        } else {
            "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key"
        };
        let err = |e| db_err(&self.path, &format!("range {prefix}"), e);
        let mut stmt = conn.prepare(sql).map_err(err)?;
        let rows = stmt
            .query_map(params![prefix, prefix_end(prefix)], read_kv)
            .map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)
    }

    fn txn(&self, txn: Txn) -> Result<bool> {
        let mut conn = self.conn();
        let err = |e| db_err(&self.path, "transaction", e);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut ok = true;
        for c in &txn.compares {
            let (key, want) = match c {
                Compare::CreateRevision(k, _)
                | Compare::ModRevision(k, _)
                | Compare::Value(k, _) => (k, c),
            };
            let row: Option<(Vec<u8>, i64, i64)> = tx
                .query_row(
                    "SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(err)?;
            let holds = match want {
                Compare::CreateRevision(_, rev) => row.as_ref().map_or(0, |r| r.1) == *rev,
                Compare::ModRevision(_, rev) => row.as_ref().map_or(0, |r| r.2) == *rev,
                Compare::Value(_, v) => row.as_ref().is_some_and(|r| &r.0 == v),
            };
            if !holds {
                ok = false;
                break;
            }
        }
        let ops = if ok { &txn.success } else { &txn.failure };
        if !ops.is_empty() {
            let rev: i64 = tx
                .query_row(
                    "UPDATE meta SET revision = revision + 1 WHERE id = 0 RETURNING revision",
                    [],
                    |r| r.get(0),
                )
                .map_err(err)?;
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        tx.execute(
                            "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?3)
                             ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev",
                            params![k, v, rev],
                        )
                        .map_err(err)?;
                    }
                    Op::Delete(k) => {
                        tx.execute("DELETE FROM kv WHERE key = ?1", params![k])
                            .map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(ok)
    }

    fn ping(&self) -> Result<()> {
        let conn = self.conn();
        conn.query_row("SELECT revision FROM meta WHERE id = 0", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|_| ())
        .map_err(|e| db_err(&self.path, "ping", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ohno-local-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        crate::nodefs::private_dir("ipam.store.dataDir", &d).unwrap();
        d
    }

    #[test]
    fn suite_put_get_range_delete() {
        let d = tmp();
        super::super::suite::put_get_range_delete(&LocalStore::open(&d).unwrap());
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn suite_compares_are_all_or_nothing() {
        let d = tmp();
        super::super::suite::compares_are_all_or_nothing(&LocalStore::open(&d).unwrap());
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn a_long_write_ahead_log_is_truncated_by_the_next_process() {
        let d = tmp();
        let wal = d.join("ohno.db-wal");
        // Many short-lived writers, as plugin processes are, with large values.
        let big = vec![7u8; 64 * 1024];
        for i in 0..160 {
            let st = LocalStore::open(&d).unwrap();
            assert!(st
                .txn(Txn::new().put(format!("/k/{i}"), big.clone()))
                .unwrap());
        }
        let before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(
            before <= WAL_TRIM_BYTES + (2 << 20),
            "WAL grew to {before} bytes"
        );
        // Every value is still there.
        let st = LocalStore::open(&d).unwrap();
        assert_eq!(st.range("/k/", true).unwrap().len(), 160);
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn data_survives_reopen_and_concurrent_writers_never_both_win() {
        let d = tmp();
        // 24 first opens of a new file at once: a node's first burst of ADDs.
        let winners: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..24)
                .map(|i| {
                    let d = d.clone();
                    s.spawn(move || {
                        // Separate connections, like separate plugin processes.
                        let st = LocalStore::open(&d).unwrap();
                        st.txn(
                            Txn::new()
                                .when(Compare::absent("/race"))
                                .put("/race", format!("{i}")),
                        )
                        .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 1);
        let again = LocalStore::open(&d).unwrap();
        assert!(again.get("/race").unwrap().is_some());
        std::fs::remove_dir_all(d).ok();
    }
}
