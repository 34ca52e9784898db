//! The kernel's durable store: one SQLite file (WAL mode) holding an ordered
//! key-value table, a table of content-addressed bundles, and nothing else.
//!
//! Transactions follow the kernel's crank discipline:
//!
//! * [`SwingStore::begin_crank`] opens a savepoint (and, lazily, the outer SQLite
//!   transaction that a group of cranks shares);
//! * [`SwingStore::end_crank`] keeps the crank's writes inside the outer transaction;
//! * [`SwingStore::abort_crank`] rolls the crank back so that it leaves no trace;
//! * [`SwingStore::commit`] makes every ended crank durable at once.
//!
//! Committing after each crank gives "one transaction per crank"; committing
//! after several gives group commit, which the kernel makes invisible to the
//! outside world by releasing output only after [`SwingStore::commit`] returns.
//!
//! Writes outside a crank are allowed (the CLI binds pet names that way); they
//! join the open outer transaction and become durable at the next commit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};
use rusqlite::{Connection, OptionalExtension, params};

/// The multicodec code of raw bytes: a bundle's CID says "these bytes, as they are".
const RAW_CODEC: u64 = 0x55;

/// How long a connection waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Errors at the swingstore boundary: all of them are operating errors (I/O,
/// a damaged or foreign file, bad input), never broken invariants.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store {path} has schema version {found}, this build reads version {expected}")]
    SchemaVersion {
        path: PathBuf,
        found: i64,
        expected: i64,
    },
    #[error("not a valid CID: {0}")]
    BadCid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How hard a commit tries to survive power loss. Process crashes never lose
/// committed data in either mode; `Normal` may lose the last commits on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: each commit is fsynced before it returns.
    Full,
    /// `synchronous=NORMAL`: WAL commits are fsynced at checkpoints only.
    Normal,
}

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bundles (
    cid   TEXT PRIMARY KEY NOT NULL,
    bytes BLOB NOT NULL
) WITHOUT ROWID;
";

/// Where the store is in the outer-transaction / crank life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    Idle,
    Open,
    InCrank,
}

/// The durable store. One per kernel; not shared between threads.
#[derive(Debug)]
pub struct SwingStore {
    conn: Connection,
    path: PathBuf,
    state: TxState,
}

/// The CIDv1 (raw codec, sha2-256) of `bytes`: the CID IPFS gives the same bytes.
pub fn cid_of(bytes: &[u8]) -> Cid {
    Cid::new_v1(RAW_CODEC, Code::Sha2_256.digest(bytes))
}

impl SwingStore {
    /// Opens the store at `path`, creating the file and its tables if needed.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(open_err)?;
        // A file that is not SQLite fails here, on the first real read.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(open_err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        if found == 0 {
            conn.execute_batch(SCHEMA).map_err(open_err)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(open_err)?;
        } else if found != SCHEMA_VERSION {
            return Err(StoreError::SchemaVersion {
                path: path.to_owned(),
                found,
                expected: SCHEMA_VERSION,
            });
        }
        Ok(SwingStore {
            conn,
            path: path.to_owned(),
            state: TxState::Idle,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ensure_open_transaction(&mut self) -> Result<()> {
        if self.state == TxState::Idle {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.state = TxState::Open;
        }
        Ok(())
    }

    /// Starts a crank: its writes can be discarded as a whole by [`Self::abort_crank`].
    pub fn begin_crank(&mut self) -> Result<()> {
        assert!(
            self.state != TxState::InCrank,
            "swingstore invariant: cranks do not nest (begin_crank inside a crank)"
        );
        self.ensure_open_transaction()?;
        self.conn.execute_batch("SAVEPOINT crank")?;
        self.state = TxState::InCrank;
        Ok(())
    }

    /// Ends a crank, keeping its writes for the next [`Self::commit`].
    pub fn end_crank(&mut self) -> Result<()> {
        assert!(
            self.state == TxState::InCrank,
            "swingstore invariant: end_crank outside a crank"
        );
        self.conn.execute_batch("RELEASE crank")?;
        self.state = TxState::Open;
        Ok(())
    }

    /// Discards every write made since [`Self::begin_crank`].
    pub fn abort_crank(&mut self) -> Result<()> {
        assert!(
            self.state == TxState::InCrank,
            "swingstore invariant: abort_crank outside a crank"
        );
        self.conn
            .execute_batch("ROLLBACK TO crank; RELEASE crank")?;
        self.state = TxState::Open;
        Ok(())
    }

    /// True while a crank is open.
    pub fn in_crank(&self) -> bool {
        self.state == TxState::InCrank
    }

    /// True when writes are waiting for [`Self::commit`].
    pub fn has_uncommitted(&self) -> bool {
        self.state != TxState::Idle
    }

    /// Makes every ended crank (and every write outside a crank) durable.
    pub fn commit(&mut self) -> Result<()> {
        assert!(
            self.state != TxState::InCrank,
            "swingstore invariant: commit inside a crank (end or abort it first)"
        );
        if self.state == TxState::Open {
            self.conn.execute_batch("COMMIT")?;
            self.state = TxState::Idle;
        }
        Ok(())
    }

    /// Discards everything not yet committed, open crank included.
    pub fn rollback(&mut self) -> Result<()> {
        if self.state != TxState::Idle {
            self.conn.execute_batch("ROLLBACK")?;
            self.state = TxState::Idle;
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT value FROM kv WHERE key = ?1")?;
        Ok(stmt.query_row([key], |row| row.get(0)).optional()?)
    }

    pub fn has(&self, key: &str) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.ensure_open_transaction()?;
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")?;
        stmt.execute(params![key, value])?;
        Ok(())
    }

    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.ensure_open_transaction()?;
        let mut stmt = self.conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
        stmt.execute([key])?;
        Ok(())
    }

    /// The smallest key strictly greater than `previous`, in byte order.
    /// `get_next_key("")` is the first key of the store.
    pub fn get_next_key(&self, previous: &str) -> Result<Option<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM kv WHERE key > ?1 ORDER BY key LIMIT 1")?;
        Ok(stmt.query_row([previous], |row| row.get(0)).optional()?)
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, value FROM kv WHERE key >= ?1 AND substr(key, 1, ?2) = ?1 ORDER BY key",
        )?;
        let rows = stmt.query_map(params![prefix, prefix.len() as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Stores `bytes` under their CID and returns it; storing the same bytes twice is a no-op.
    pub fn add_bundle(&mut self, bytes: &[u8]) -> Result<Cid> {
        let cid = cid_of(bytes);
        self.ensure_open_transaction()?;
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO bundles (cid, bytes) VALUES (?1, ?2)")?;
        stmt.execute(params![cid.to_string(), bytes])?;
        Ok(cid)
    }

    pub fn get_bundle(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bytes FROM bundles WHERE cid = ?1")?;
        Ok(stmt
            .query_row([cid.to_string()], |row| row.get(0))
            .optional()?)
    }

    /// Parses a CID string such as `bafkrei...`.
    pub fn parse_cid(text: &str) -> Result<Cid> {
        Cid::try_from(text).map_err(|e| StoreError::BadCid(format!("{text}: {e}")))
    }

    /// Runs SQLite's own structural check; `Ok(())` means the file is sound.
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        let problems: Vec<String> = rows
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .filter(|line| line != "ok")
            .collect();
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, SwingStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        (dir, store)
    }

    #[test]
    fn committed_writes_survive_close_and_reopen() {
        let (dir, mut store) = fresh();
        store.begin_crank().unwrap();
        store.set("a", "1").unwrap();
        store.set("b", "2").unwrap();
        store.end_crank().unwrap();
        store.commit().unwrap();
        drop(store);
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        assert_eq!(store.get("a").unwrap().as_deref(), Some("1"));
        assert_eq!(store.get("b").unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn aborted_crank_leaves_no_trace() {
        let (_dir, mut store) = fresh();
        store.begin_crank().unwrap();
        store.set("kept", "yes").unwrap();
        store.end_crank().unwrap();
        store.begin_crank().unwrap();
        store.set("kept", "overwritten").unwrap();
        store.set("new", "x").unwrap();
        store.delete("kept").unwrap();
        store.add_bundle(b"bundle bytes").unwrap();
        store.abort_crank().unwrap();
        store.commit().unwrap();
        assert_eq!(store.get("kept").unwrap().as_deref(), Some("yes"));
        assert_eq!(store.get("new").unwrap(), None);
        assert_eq!(store.get_bundle(&cid_of(b"bundle bytes")).unwrap(), None);
    }

    #[test]
    fn uncommitted_cranks_are_lost_when_the_store_closes() {
        let (dir, mut store) = fresh();
        store.begin_crank().unwrap();
        store.set("a", "1").unwrap();
        store.end_crank().unwrap();
        store.commit().unwrap();
        store.begin_crank().unwrap();
        store.set("a", "2").unwrap();
        store.end_crank().unwrap();
        // No commit: as if the process were killed here.
        drop(store);
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        assert_eq!(store.get("a").unwrap().as_deref(), Some("1"));
    }

    #[test]
    fn get_next_key_walks_keys_in_byte_order() {
        let (_dir, mut store) = fresh();
        for key in ["b", "a", "a.2", "a.10", "c", "B"] {
            store.set(key, "v").unwrap();
        }
        let mut seen = Vec::new();
        let mut key = String::new();
        while let Some(next) = store.get_next_key(&key).unwrap() {
            seen.push(next.clone());
            key = next;
        }
        assert_eq!(seen, ["B", "a", "a.10", "a.2", "b", "c"]);
        assert_eq!(store.get_next_key("c").unwrap(), None);
    }

    #[test]
    fn scan_prefix_returns_only_that_prefix_in_order() {
        let (_dir, mut store) = fresh();
        for (k, v) in [("v1.c.o+0", "ko1"), ("v1.c.ko1", "o+0"), ("v10.x", "no"), ("v1.", "edge"), ("v2.c", "no")] {
            store.set(k, v).unwrap();
        }
        let rows = store.scan_prefix("v1.").unwrap();
        let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["v1.", "v1.c.ko1", "v1.c.o+0"]);
        // Characters that are wildcards in LIKE must not act as wildcards here.
        store.set("a%b", "1").unwrap();
        store.set("axb", "2").unwrap();
        assert_eq!(store.scan_prefix("a%").unwrap().len(), 1);
    }

    #[test]
    fn bundles_are_keyed_by_the_ipfs_raw_cid() {
        let (_dir, mut store) = fresh();
        // `ipfs add --raw-leaves --cid-version 1` of the bytes "hello world\n".
        let cid = store.add_bundle(b"hello world\n").unwrap();
        assert_eq!(
            cid.to_string(),
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
        );
        assert_eq!(store.add_bundle(b"hello world\n").unwrap(), cid);
        assert_eq!(store.get_bundle(&cid).unwrap().as_deref(), Some(&b"hello world\n"[..]));
        let parsed = SwingStore::parse_cid(&cid.to_string()).unwrap();
        assert_eq!(parsed, cid);
        assert!(SwingStore::parse_cid("not-a-cid").is_err());
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = SwingStore::open(&path, Durability::Normal).unwrap_err();
        assert!(err.to_string().contains("store.sqlite"), "{err}");
    }

    #[test]
    #[should_panic(expected = "cranks do not nest")]
    fn nested_cranks_are_a_programmer_error() {
        let (_dir, mut store) = fresh();
        store.begin_crank().unwrap();
        store.begin_crank().unwrap();
    }

    #[test]
    fn integrity_check_is_clean_on_a_fresh_store() {
        let (_dir, store) = fresh();
        assert!(store.integrity_check().unwrap().is_empty());
    }
}
