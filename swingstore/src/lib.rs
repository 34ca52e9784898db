//! The kernel's durable store: one SQLite file (WAL mode) holding an ordered
//! key-value table, a table of content-addressed bundles, and nothing else.
//!
//! Transactions follow the kernel's crank discipline:
//!
//! * [`SwingStore::begin_crank`] starts a crank;
//! * [`SwingStore::end_crank`] keeps the crank's writes for the next commit;
//! * [`SwingStore::abort_crank`] drops the crank's writes, so it leaves no trace;
//! * [`SwingStore::commit`] writes every ended crank to SQLite in one transaction;
//! * [`SwingStore::commit_pipelined`] does the same but returns before the
//!   transaction is durable (the store's sync thread fsyncs it meanwhile).
//!
//! Committing after each crank gives "one transaction per crank"; committing
//! after several gives group commit, which the kernel makes invisible to the
//! outside world by releasing output only after [`SwingStore::commit`] returns.
//!
//! Writes are buffered in memory until the commit (SwingSet's crank buffer):
//! the store's view maps each key it has seen to its current value, marked
//! dirty until committed, and a crank keeps an undo log that abort replays.
//! Committed values stay in the view as a read cache, which is sound because a
//! store has one writer: the kernel holding its home's lock. Writes outside a
//! crank are simply dirty until the next commit.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
// A key is allocated once, when the view first sees it, and shared by the
// view, the dirty set and the undo log.
use std::rc::Rc;
use std::time::Duration;

/// The bundles' content ids ([`cid_of`], [`SwingStore::add_bundle_as`]),
/// named here so that users need not depend on the same `cid` release.
pub use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};
use rusqlite::{Connection, OptionalExtension, params};
// Keys come from the kernel itself, not from an adversary choosing hash
// collisions, so the view uses a fast hash rather than SipHash.
use rustc_hash::FxBuildHasher;

/// The view's map: hashbrown's rather than std's for `entry_ref`, which
/// finds a key's place once whether or not it is there (a write to a key
/// the view does not hold, most of them, otherwise hashes it twice).
type ViewMap = hashbrown::HashMap<Rc<str>, Slot, FxBuildHasher>;
type CommittedValues = hashbrown::HashMap<Rc<str>, Option<String>, FxBuildHasher>;

mod dirty;
mod sync;

/// The multicodec code of raw bytes: a bundle's CID says "these bytes, as they are".
const RAW_CODEC: u64 = 0x55;

/// How long a connection waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// `upsert_rows_per_statement`: how many rows one of a commit's
/// `INSERT`s writes (its statement has twice as many parameters, far under
/// SQLite's limit of 32,766).
const UPSERT_ROWS_PER_STATEMENT: usize = 64;

/// The `INSERT` of [`UPSERT_ROWS_PER_STATEMENT`] rows.
fn upsert_many_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let rows = vec!["(?, ?)"; UPSERT_ROWS_PER_STATEMENT].join(", ");
        format!("INSERT OR REPLACE INTO kv (key, value) VALUES {rows}")
    });
    &SQL
}

/// The most keys the view keeps; past it, the cache of committed values starts over at a commit.
pub const READ_CACHE_ENTRIES_MAX: usize = 200_000;

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
    /// The commit was written but could not be made durable: the store must
    /// not be written again by this process (its pages may be lost).
    #[error("store {path}: {reason}")]
    Sync { path: PathBuf, reason: String },
    /// A read failed on purpose ([`SwingStore::fail_reads_after`]).
    #[cfg(feature = "failpoints")]
    #[error("store: a read failed on purpose (failpoints)")]
    Injected,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How hard a commit tries to survive power loss. Process crashes never lose
/// committed data in either mode; `Normal` may lose the last commits on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Each commit is fsynced: [`SwingStore::commit`] returns once it is;
    /// [`SwingStore::commit_pipelined`] returns once it is written, and it is
    /// fsynced (by the store's sync thread) before the next commit is written.
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

/// What the store knows of a key: its current value (`None`: absent), and
/// whether that value is a write not yet committed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    value: Option<String>,
    dirty: bool,
    /// Whether SQLite holds the key, when known: a deletion of a key SQLite
    /// does not hold costs the commit nothing.
    in_db: Option<bool>,
}

/// A commit's changed keys, marked clean before it is written, each with
/// what was known before of its presence in SQLite (`Slot::in_db`): what a
/// failed write puts back.
type CleanedKeys = Vec<(Rc<str>, Option<bool>)>;

/// A commit's dirty keys, sorted out by [`SwingStore::take_dirty_keys`].
struct TakenKeys {
    /// Written to SQLite, in key order.
    changed: CleanedKeys,
    /// Made and deleted since the last commit: out of the view.
    gone: Vec<Rc<str>>,
    /// Of `changed`, the deletions.
    deleted: Vec<Rc<str>>,
    /// Back at their committed values: clean, and not written.
    unchanged: Vec<Rc<str>>,
}

/// What an open crank's abort undoes.
#[derive(Debug)]
struct Crank {
    /// Each write's key and the slot it replaced.
    undo: Vec<(Rc<str>, Option<Slot>)>,
    /// How many keys were dirty when the crank began: the keys after them
    /// became dirty in the crank, and are clean again once it is undone.
    dirty_len: usize,
}

/// What a store has done since it was opened: how a caller's work turns
/// into reads, writes and SQLite statements (the benchmarks print it per crank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `get`s and `get_uncommitted`s.
    pub reads: u64,
    /// SQLite queries made for reads: `get`s the view did not answer, and
    /// every ordered read (`get_next_key`, `get_prev_key`, `scan_prefix`).
    pub sqlite_reads: u64,
    /// `set`s and `delete`s.
    pub writes: u64,
    /// Commits that wrote something.
    pub commits: u64,
    /// Rows written or deleted by those commits (net of overwrites).
    pub rows_committed: u64,
    /// Writes and deletions those commits sent SQLite: a deletion that
    /// finds no row counts here, not in `rows_committed`.
    pub statements: u64,
    /// fsyncs of the WAL made by the sync thread (`Durability::Full` only).
    pub syncs: u64,
}

/// The durable store. One per kernel; not shared between threads.
#[derive(Debug)]
pub struct SwingStore {
    conn: Connection,
    path: PathBuf,
    /// Every key read or written since the cache last started over: committed
    /// values (clean) and writes waiting for the commit (dirty).
    view: std::cell::RefCell<ViewMap>,
    /// The dirty keys: what the commit writes, and what ordered reads
    /// merge with SQLite's keys.
    dirty: dirty::DirtyKeys,
    /// The committed value of each key made dirty since the last commit
    /// while it was known (its slot clean): one written back to it (a
    /// count that went up and down) costs the commit nothing.
    committed_values: CommittedValues,
    /// The open crank's undo log, if a crank is open.
    crank: Option<Crank>,
    /// The last crank's undo log, emptied: the next crank writes into its
    /// allocation instead of growing a new one.
    spare_undo: Vec<(Rc<str>, Option<Slot>)>,
    crank_bundles: Vec<(String, Vec<u8>)>,
    pending_bundles: Vec<(String, Vec<u8>)>,
    /// True while a read transaction is open: reads between commits share one
    /// snapshot instead of taking SQLite's file lock statement by statement.
    reading: std::cell::Cell<bool>,
    /// The sync thread's checkpoints when the read transaction began.
    checkpoints_when_reading: std::cell::Cell<u64>,
    stats: std::cell::Cell<StoreStats>,
    /// Makes commits durable (`Durability::Full`); `None` leaves it to SQLite.
    syncer: Option<sync::Syncer>,
    /// Commits written so far, the number the syncer counts durable ones by.
    commits_written: u64,
    /// Reads left before reads fail (tests only).
    #[cfg(feature = "failpoints")]
    reads_until_failure: std::cell::Cell<Option<u64>>,
}

impl Drop for SwingStore {
    /// Lets the last pipelined commit become durable before SQLite closes.
    fn drop(&mut self) {
        let _ = self.wait_durable();
        // The sync thread's checkpointing connection closes first, so that
        // the store's, closing last, checkpoints and removes the WAL.
        self.syncer = None;
    }
}

/// `wal_frames_max`: the WAL's length, in frames, past which the store's
/// own connection checkpoints it inside a commit, as SQLite does by
/// default past 1,000: a bound for when the sync thread's checkpoints do
/// not keep up.
const WAL_FRAMES_MAX: u64 = 10_000;

/// Replaces SQLite's checkpoint inside commits (past 1,000 frames) with
/// `sync::WalFrames::after_commit`: past `sync::CHECKPOINT_FRAMES`, inside
/// small commits, and on the sync thread after big ones.
fn checkpoint_in_background(
    conn: &mut Connection,
    mut frames: sync::WalFrames,
) -> rusqlite::Result<()> {
    conn.wal_hook(Some(
        move |wal: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
            let pages = u64::try_from(pages).unwrap_or(0);
            // Never an error out of the hook: SQLite would report the
            // commit, which has happened, as failed. A checkpoint that
            // fails is made again later.
            frames.after_commit(pages, WAL_FRAMES_MAX, || wal.checkpoint().is_ok());
            Ok(())
        },
    ))
}

/// `key`'s slot, marked dirty again (a commit that failed).
fn dirty_again<'a>(view: &'a mut ViewMap, key: &str) -> &'a mut Slot {
    let slot = view
        .get_mut(key)
        .expect("swingstore invariant: a dirty key has a slot in the view");
    slot.dirty = true;
    slot
}

/// The smallest string greater than every string starting with `prefix`,
/// when the prefix ends in an ASCII character below DEL (all of ours do).
fn prefix_successor(prefix: &str) -> Option<String> {
    let last = *prefix.as_bytes().last()?;
    if last >= 0x7e {
        return None;
    }
    let mut end = prefix[..prefix.len() - 1].to_owned();
    end.push(char::from(last + 1));
    Some(end)
}

/// The time, in microseconds, one small durable commit takes on the disk
/// holding `dir`: one key written and committed, `commits` times, on a
/// plain SQLite connection with `synchronous=FULL` (not through a
/// `SwingStore`, so that it does not move with this crate's
/// implementation). The benches print it as the anchor of committing rates.
pub fn raw_commit_us(dir: &Path, commits: u64) -> Result<f64> {
    let conn = Connection::open(dir.join("raw-commits.sqlite"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID",
    )?;
    let mut upsert =
        conn.prepare("INSERT OR REPLACE INTO kv (key, value) VALUES ('bench.key', ?1)")?;
    let started = std::time::Instant::now();
    for i in 0..commits {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        upsert.execute([i.to_string()])?;
        conn.execute_batch("COMMIT")?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / commits.max(1) as f64)
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
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(open_err)?;
        // A file that is not SQLite fails here, on the first real read.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // Full durability fsyncs the WAL on the sync thread (see `sync`),
        // not inside SQLite's commit.
        conn.pragma_update(None, "synchronous", "NORMAL")
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
        let syncer = match durability {
            Durability::Full => {
                let syncer =
                    sync::Syncer::start(path.to_owned()).map_err(|e| StoreError::Sync {
                        path: path.to_owned(),
                        reason: format!("cannot start the sync thread: {e}"),
                    })?;
                checkpoint_in_background(&mut conn, syncer.wal_frames()).map_err(open_err)?;
                Some(syncer)
            }
            Durability::Normal => None,
        };
        let mut store = SwingStore {
            conn,
            path: path.to_owned(),
            view: Default::default(),
            dirty: Default::default(),
            committed_values: Default::default(),
            crank: None,
            spare_undo: Vec::new(),
            crank_bundles: Vec::new(),
            pending_bundles: Vec::new(),
            reading: Default::default(),
            checkpoints_when_reading: Default::default(),
            stats: Default::default(),
            syncer,
            commits_written: 0,
            #[cfg(feature = "failpoints")]
            reads_until_failure: Default::default(),
        };
        if found == 0 {
            // A new file's tables, written above, are made durable like a commit.
            store.written_one(false);
            store.wait_durable()?;
        }
        Ok(store)
    }

    /// Makes every read after the next `reads` fail with
    /// [`StoreError::Injected`] (`None`: reads work again). For tests of
    /// what callers do with a failing store.
    #[cfg(feature = "failpoints")]
    pub fn fail_reads_after(&self, reads: Option<u64>) {
        self.reads_until_failure.set(reads);
    }

    /// Fails a read if [`Self::fail_reads_after`] says so.
    fn read_allowed(&self) -> Result<()> {
        #[cfg(feature = "failpoints")]
        if let Some(left) = self.reads_until_failure.get() {
            if left == 0 {
                return Err(StoreError::Injected);
            }
            self.reads_until_failure.set(Some(left - 1));
        }
        Ok(())
    }

    /// What this store has done since it was opened.
    pub fn stats(&self) -> StoreStats {
        let mut stats = self.stats.get();
        stats.syncs = self.syncer.as_ref().map_or(0, sync::Syncer::syncs);
        stats
    }

    fn count(&self, add: impl FnOnce(&mut StoreStats)) {
        let mut stats = self.stats.get();
        add(&mut stats);
        self.stats.set(stats);
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a crank: its writes can be discarded as a whole by [`Self::abort_crank`].
    pub fn begin_crank(&mut self) -> Result<()> {
        assert!(
            self.crank.is_none(),
            "swingstore invariant: cranks do not nest (begin_crank inside a crank)"
        );
        self.crank = Some(Crank {
            undo: std::mem::take(&mut self.spare_undo),
            dirty_len: self.dirty.len(),
        });
        Ok(())
    }

    /// Whether a crank is open (begun, not yet ended or aborted).
    pub fn in_crank(&self) -> bool {
        self.crank.is_some()
    }

    /// Ends a crank, keeping its writes for the next [`Self::commit`].
    pub fn end_crank(&mut self) -> Result<()> {
        let crank = self
            .crank
            .take()
            .expect("swingstore invariant: end_crank outside a crank");
        let mut undo = crank.undo;
        undo.clear();
        self.spare_undo = undo;
        self.pending_bundles.append(&mut self.crank_bundles);
        Ok(())
    }

    /// Discards every write made since [`Self::begin_crank`].
    pub fn abort_crank(&mut self) -> Result<()> {
        let crank = self
            .crank
            .take()
            .expect("swingstore invariant: abort_crank outside a crank");
        let view = self.view.get_mut();
        // Replayed newest first, each key ends with the slot it had before the crank.
        for (key, old) in crank.undo.into_iter().rev() {
            match old {
                Some(slot) => view.insert(key, slot),
                None => view.remove(&*key),
            };
        }
        self.dirty.truncate(crank.dirty_len);
        self.crank_bundles.clear();
        Ok(())
    }

    /// True when writes are waiting for [`Self::commit`].
    pub fn has_uncommitted(&self) -> bool {
        !self.dirty.is_empty() || !self.pending_bundles.is_empty()
    }

    /// Writes every ended crank (and every write outside a crank) to SQLite in
    /// one transaction, durably: when it returns, this commit and every one
    /// before it survive a power loss (with [`Durability::Full`]).
    pub fn commit(&mut self) -> Result<()> {
        self.commit_written(false)?;
        self.wait_durable()
    }

    /// Waits until every commit written so far is durable.
    pub fn wait_durable(&self) -> Result<()> {
        match &self.syncer {
            Some(syncer) => syncer
                .wait(self.commits_written)
                .map_err(|reason| self.sync_error(reason)),
            None => Ok(()),
        }
    }

    fn sync_error(&self, reason: String) -> StoreError {
        StoreError::Sync {
            path: self.path.clone(),
            reason,
        }
    }

    /// Counts a commit written and says so to the syncer (`wake`: see
    /// [`sync::Syncer::request`]).
    fn written_one(&mut self, wake: bool) {
        self.commits_written += 1;
        if let Some(syncer) = &self.syncer {
            syncer.request(self.commits_written, wake);
        }
    }

    /// [`Self::commit`], except that it returns once the commit is written
    /// (atomic, visible, safe from a crash of this process) and before it is
    /// durable: the sync thread fsyncs it meanwhile, and the next commit
    /// waits for that before it writes. So a caller can run its next crank
    /// while the disk flushes, one commit in flight at most; it must call
    /// [`Self::wait_durable`] (or [`Self::commit`]) before it lets anyone
    /// outside see what the commit holds.
    pub fn commit_pipelined(&mut self) -> Result<()> {
        self.commit_written(true)
    }

    /// Writes the commit; `wake`: the sync thread makes it durable (else
    /// the caller waits for it at once, and makes the fsync itself).
    fn commit_written(&mut self, wake: bool) -> Result<()> {
        assert!(
            self.crank.is_none(),
            "swingstore invariant: commit inside a crank (end or abort it first)"
        );
        if !self.has_uncommitted() {
            // Release the read snapshot, so a long-idle kernel does not pin the WAL.
            if self.reading.replace(false) {
                self.conn.execute_batch("COMMIT")?;
            }
            return Ok(());
        }
        // One commit in flight at most: the last one is durable before this
        // one is written.
        self.wait_durable()?;
        // SQLite writes the WAL again from its start only if the writing
        // transaction's snapshot began after a checkpoint: a read snapshot
        // older than the sync thread's last checkpoint is let go.
        if self.reading.get()
            && self
                .syncer
                .as_ref()
                .is_some_and(|syncer| syncer.checkpoints() != self.checkpoints_when_reading.get())
        {
            self.conn.execute_batch("COMMIT")?;
            self.reading.set(false);
        }
        // The read transaction, if open, becomes the write transaction: no
        // other process writes this file, so the upgrade cannot conflict.
        if !self.reading.replace(false) {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
        }
        let taken = self.take_dirty_keys();
        if let Err(e) = self.write_pending(&taken.changed) {
            // Nothing of this commit reaches the file; the overlays are kept.
            let _ = self.conn.execute_batch("ROLLBACK");
            self.restore_dirty_keys(taken);
            return Err(e);
        }
        self.written_one(wake);
        self.forget_deleted(&taken.deleted);
        let view = self.view.get_mut();
        if view.len() > READ_CACHE_ENTRIES_MAX {
            view.clear();
        }
        self.dirty.clear();
        self.pending_bundles.clear();
        Ok(())
    }

    /// Takes the dirty keys for a commit about to be written, with one probe
    /// of the view each (a grouped commit after 1,000 pingpong cranks has
    /// 14,000 dirty keys and writes 20). Those made and deleted since the
    /// last commit cost SQLite nothing: they leave the view (most are the
    /// records of promises freed as soon as they settled, never read
    /// again), so that it keeps what is read rather than filling with them,
    /// and are returned as `gone`. Those back at the value they had at the
    /// last commit (`committed_values`) are marked clean and returned as
    /// `unchanged`. The rest are marked clean and returned as `changed`,
    /// in key order (which SQLite's B-tree takes fastest), each with what
    /// was known before of its presence in SQLite; of them, the deletions
    /// are also `deleted` (see [`Self::forget_deleted`]).
    fn take_dirty_keys(&mut self) -> TakenKeys {
        let view = self.view.get_mut();
        let committed = std::mem::take(&mut self.committed_values);
        let mut taken = TakenKeys {
            changed: Vec::new(),
            gone: Vec::new(),
            deleted: Vec::new(),
            unchanged: Vec::new(),
        };
        for key in self.dirty.iter() {
            let hashbrown::hash_map::EntryRef::Occupied(entry) = view.entry_ref(&**key) else {
                panic!("swingstore invariant: a dirty key has a slot in the view ({key})");
            };
            let slot = entry.get();
            assert!(
                slot.dirty,
                "swingstore invariant: a dirty key has a dirty slot ({key})"
            );
            if slot.value.is_none() && slot.in_db == Some(false) {
                entry.remove();
                taken.gone.push(key.clone());
                continue;
            }
            let slot = entry.into_mut();
            slot.dirty = false;
            if committed.get(&**key) == Some(&slot.value) {
                taken.unchanged.push(key.clone());
                continue;
            }
            taken.changed.push((key.clone(), slot.in_db));
            if slot.value.is_none() {
                taken.deleted.push(key.clone());
            }
            slot.in_db = Some(slot.value.is_some());
        }
        taken.changed.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        taken
    }

    /// Takes the keys a commit deleted from SQLite out of the view. Ids
    /// are not reused (frames, questions, promises, queue positions), so a
    /// deleted key is rarely read again (a read finds it absent in SQLite,
    /// and the view keeps that). Kept, they made the view grow with every
    /// record ever deleted, up to [`READ_CACHE_ENTRIES_MAX`], and its
    /// lookups miss the processor's caches: in a CapTP run, a session's
    /// every kept frame, answer and question. Only the deletions are
    /// looked at: a commit of 50,000 new objects has 100,000 changed keys.
    fn forget_deleted(&mut self, deleted: &[Rc<str>]) {
        let view = self.view.get_mut();
        for key in deleted {
            view.remove(&**key);
        }
    }

    /// Undoes [`Self::take_dirty_keys`], for a commit that failed: every key
    /// is dirty again, as it was.
    fn restore_dirty_keys(&mut self, taken: TakenKeys) {
        let view = self.view.get_mut();
        for (key, in_db) in taken.changed {
            dirty_again(view, &key).in_db = in_db;
        }
        // An unchanged key's presence was left as it was.
        for key in taken.unchanged {
            dirty_again(view, &key);
        }
        for key in taken.gone {
            let slot = Slot {
                value: None,
                dirty: true,
                in_db: Some(false),
            };
            view.insert(key, slot);
        }
    }

    /// Writes the `changed` keys (in key order) and the pending bundles,
    /// and commits the transaction.
    fn write_pending(&self, changed: &CleanedKeys) -> Result<()> {
        let view = self.view.borrow();
        let changed = changed.iter().map(|(key, _)| {
            let slot = view
                .get(&**key)
                .expect("swingstore invariant: a dirty key has a slot in the view");
            (&**key, &slot.value)
        });
        let statements = changed.len() as u64;
        let (upserts, deletions): (Vec<_>, Vec<_>) =
            changed.into_iter().partition(|(_, value)| value.is_some());
        let mut rows = self.upsert_rows(
            upserts
                .into_iter()
                .filter_map(|(key, value)| Some((key, value.as_deref()?))),
        )?;
        let mut delete = self.conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
        for (key, _) in deletions {
            rows += delete.execute([key])? as u64;
        }
        let mut bundle = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO bundles (cid, bytes) VALUES (?1, ?2)")?;
        for (cid, bytes) in &self.pending_bundles {
            bundle.execute(params![cid, bytes])?;
        }
        self.conn.execute_batch("COMMIT")?;
        self.count(|stats| {
            stats.commits += 1;
            stats.rows_committed += rows;
            stats.statements += statements;
        });
        Ok(())
    }

    /// Writes `rows` (in key order), [`UPSERT_ROWS_PER_STATEMENT`] to a
    /// statement while they last: SQLite's cost per statement (binding,
    /// stepping and resetting a program) was as large as its cost per row.
    /// Returns how many rows were written.
    fn upsert_rows<'a>(&self, rows: impl Iterator<Item = (&'a str, &'a str)>) -> Result<u64> {
        let mut one = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)")?;
        let mut many = self.conn.prepare_cached(upsert_many_sql())?;
        let mut written = 0;
        let mut chunk: Vec<&str> = Vec::with_capacity(2 * UPSERT_ROWS_PER_STATEMENT);
        let mut rows = rows.peekable();
        while rows.peek().is_some() {
            chunk.clear();
            for (key, value) in rows.by_ref().take(UPSERT_ROWS_PER_STATEMENT) {
                chunk.extend([key, value]);
            }
            written += if chunk.len() == 2 * UPSERT_ROWS_PER_STATEMENT {
                many.execute(rusqlite::params_from_iter(&chunk))? as u64
            } else {
                let mut sum = 0;
                for pair in chunk.chunks_exact(2) {
                    sum += one.execute(params![pair[0], pair[1]])? as u64;
                }
                sum
            };
        }
        Ok(written)
    }

    /// Opens the read transaction that reads share until the next commit.
    /// Sound because this store is the file's only writer.
    fn begin_reading(&self) -> Result<()> {
        if !self.reading.get() {
            self.conn.execute_batch("BEGIN DEFERRED")?;
            self.reading.set(true);
            if let Some(syncer) = &self.syncer {
                self.checkpoints_when_reading.set(syncer.checkpoints());
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Option<String>> {
        if let Some(value) = self.get_cached(key)? {
            return Ok(value);
        }
        self.read_allowed()?;
        self.count(|stats| stats.reads += 1);
        let value = self.committed_value(key)?;
        self.view.borrow_mut().insert(
            Rc::from(key),
            Slot {
                in_db: Some(value.is_some()),
                value: value.clone(),
                dirty: false,
            },
        );
        Ok(value)
    }

    /// [`Self::get`] answered from memory alone: `Some` when the store holds
    /// `key`'s value there (written since the last commit, or read before),
    /// `None` when only SQLite can say. For a caller that decides how to
    /// read a key the view lacks ([`Self::get_uncommitted`] or
    /// [`Self::get`]) only when it does lack it. A miss is not counted as
    /// a read: the caller's next call makes it.
    pub fn get_cached(&self, key: &str) -> Result<Option<Option<String>>> {
        let Some(value) = self.view.borrow().get(key).map(|slot| slot.value.clone()) else {
            return Ok(None);
        };
        self.read_allowed()?;
        self.count(|stats| stats.reads += 1);
        Ok(Some(value))
    }

    /// [`Self::get`] of a key the caller knows no commit has written (it
    /// names an id allocated since the last commit): answered from memory,
    /// without a SQLite query. Debug builds check the claim against SQLite.
    /// The answer is not cached: such keys are rarely read again once
    /// their id is no longer fresh, and caching them grew the view by the
    /// thousand between commits.
    pub fn get_uncommitted(&self, key: &str) -> Result<Option<String>> {
        if let Some(value) = self.get_cached(key)? {
            return Ok(value);
        }
        self.read_allowed()?;
        self.count(|stats| stats.reads += 1);
        debug_assert!(
            self.committed_value(key)?.is_none(),
            "swingstore invariant: get_uncommitted of a committed key ({key})"
        );
        Ok(None)
    }

    /// What SQLite holds under `key` (the last commit's value).
    fn committed_value(&self, key: &str) -> Result<Option<String>> {
        self.begin_reading()?;
        self.count(|stats| stats.sqlite_reads += 1);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT value FROM kv WHERE key = ?1")?;
        Ok(stmt.query_row([key], |row| row.get(0)).optional()?)
    }

    fn write(&mut self, key: &str, value: Option<String>, new: bool) {
        self.count(|stats| stats.writes += 1);
        let mut slot = Slot {
            value,
            dirty: true,
            in_db: new.then_some(false),
        };
        let (shared, old) = match self.view.get_mut().entry_ref(key) {
            hashbrown::hash_map::EntryRef::Occupied(mut entry) => {
                let current = entry.get();
                if !current.dirty {
                    // The committed value written again (a record
                    // rewritten as it stood): nothing to send.
                    if current.value == slot.value {
                        return;
                    }
                    self.committed_values
                        .insert(entry.key().clone(), current.value.clone());
                }
                if !new {
                    slot.in_db = current.in_db;
                }
                (entry.key().clone(), Some(entry.insert(slot)))
            }
            hashbrown::hash_map::EntryRef::Vacant(entry) => {
                let shared: Rc<str> = Rc::from(key);
                entry.insert_with_key(shared.clone(), slot);
                (shared, None)
            }
        };
        if !old.as_ref().is_some_and(|slot| slot.dirty) {
            self.dirty.push(shared.clone());
        }
        if let Some(crank) = &mut self.crank {
            crank.undo.push((shared, old));
        }
    }

    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.write(key, Some(value.to_owned()), false);
        Ok(())
    }

    /// Sets a key the caller knows has never been committed (it comes from a
    /// fresh id), so that deleting it before the commit costs SQLite nothing.
    pub fn set_new(&mut self, key: &str, value: &str) -> Result<()> {
        debug_assert!(
            self.get(key)?.is_none(),
            "swingstore invariant: set_new of a key that exists ({key})"
        );
        self.write(key, Some(value.to_owned()), true);
        Ok(())
    }

    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.write(key, None, false);
        Ok(())
    }

    /// Deletes a key the caller knows has never been committed (it names
    /// a fresh id), so that the commit sends SQLite no deletion for it.
    pub fn delete_new(&mut self, key: &str) -> Result<()> {
        debug_assert!(
            self.committed_value(key)?.is_none(),
            "swingstore invariant: delete_new of a committed key ({key})"
        );
        self.write(key, None, true);
        Ok(())
    }

    /// The uncommitted value of `key`: `Some(None)` if deleted, `None` if not written.
    fn dirty_value(&self, key: &str) -> Option<Option<String>> {
        self.view
            .borrow()
            .get(key)
            .filter(|slot| slot.dirty)
            .map(|slot| slot.value.clone())
    }

    /// The smallest key strictly greater than `previous`, in byte order.
    /// `get_next_key("")` is the first key of the store.
    pub fn get_next_key(&self, previous: &str) -> Result<Option<String>> {
        let from_db = self.committed_next_key(previous)?;
        let from_dirty = self
            .dirty
            .ordered()
            .range::<str, _>((Bound::Excluded(previous), Bound::Unbounded))
            .find(|key| matches!(self.dirty_value(key), Some(Some(_))))
            .map(|key| key.to_string());
        Ok(match (from_db, from_dirty) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// [`Self::get_next_key`] among the keys that start with `prefix` (which
    /// `previous` starts with too, or is): `None` past the last of them.
    /// The uncommitted writes it looks at are those under `prefix` alone
    /// (found by the prefix's first segment), not every dirty key in order:
    /// a vat walking its vatstore would otherwise sort every key written
    /// since the last commit.
    pub fn get_next_key_under(&self, previous: &str, prefix: &str) -> Result<Option<String>> {
        if !prefix.contains('.') {
            let next = self.get_next_key(previous)?;
            return Ok(next.filter(|key| key.starts_with(prefix)));
        }
        let from_db = self
            .committed_next_key(previous)?
            .filter(|key| key.starts_with(prefix));
        let from_dirty = self
            .dirty
            .under(prefix)
            .into_iter()
            .filter(|key| &**key > previous)
            .find(|key| matches!(self.dirty_value(key), Some(Some(_))))
            .map(|key| key.to_string());
        Ok(match (from_db, from_dirty) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The smallest key SQLite holds after `previous` that no uncommitted
    /// write deletes.
    fn committed_next_key(&self, previous: &str) -> Result<Option<String>> {
        self.read_allowed()?;
        self.count(|stats| stats.sqlite_reads += 1);
        self.begin_reading()?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM kv WHERE key > ?1 ORDER BY key LIMIT 1")?;
        let mut after = previous.to_owned();
        loop {
            let next: Option<String> = stmt.query_row([&after], |row| row.get(0)).optional()?;
            match next {
                Some(key) if self.dirty_value(&key) == Some(None) => after = key,
                other => return Ok(other),
            }
        }
    }

    /// The largest key strictly less than `next`, in byte order.
    pub fn get_prev_key(&self, next: &str) -> Result<Option<String>> {
        self.read_allowed()?;
        self.count(|stats| stats.sqlite_reads += 1);
        self.begin_reading()?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM kv WHERE key < ?1 ORDER BY key DESC LIMIT 1")?;
        let mut before = next.to_owned();
        // Skip committed keys that uncommitted writes delete.
        let from_db = loop {
            let prev: Option<String> = stmt.query_row([&before], |row| row.get(0)).optional()?;
            match prev {
                Some(key) if self.dirty_value(&key) == Some(None) => before = key,
                other => break other,
            }
        };
        let from_dirty = self
            .dirty
            .ordered()
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(next)))
            .rev()
            .find(|key| matches!(self.dirty_value(key), Some(Some(_))))
            .map(|key| key.to_string());
        Ok(match (from_db, from_dirty) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        })
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        self.read_allowed()?;
        self.count(|stats| stats.sqlite_reads += 1);
        self.begin_reading()?;
        // The range ends at the prefix's successor, so that the scan costs
        // what the prefix holds, not what follows it in the table.
        let successor = prefix_successor(prefix);
        let mut stmt = self.conn.prepare_cached(if successor.is_some() {
            "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key"
        } else {
            "SELECT key, value FROM kv WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 ORDER BY key"
        })?;
        let row = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, Some(row.get(1)?)));
        let mut merged: BTreeMap<String, Option<String>> = match &successor {
            Some(end) => stmt
                .query_map(params![prefix, end], row)?
                .collect::<rusqlite::Result<_>>()?,
            None => stmt
                .query_map(params![prefix], row)?
                .collect::<rusqlite::Result<_>>()?,
        };
        for (key, value) in self.dirty_under(prefix) {
            merged.insert(key, value);
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// [`Self::scan_prefix`] of a prefix the caller knows no commit has
    /// written a key under (it names an id allocated since the last
    /// commit): the uncommitted writes alone, without a SQLite query. Debug
    /// builds check the claim against SQLite.
    pub fn scan_prefix_uncommitted(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        self.read_allowed()?;
        let found: Vec<(String, String)> = self
            .dirty_under(prefix)
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect();
        debug_assert!(
            self.first_committed_under(prefix)?.is_none(),
            "swingstore invariant: scan_prefix_uncommitted of a committed prefix ({prefix})"
        );
        Ok(found)
    }

    /// The uncommitted writes under `prefix`, in key order (`None`: deleted).
    fn dirty_under(&self, prefix: &str) -> Vec<(String, Option<String>)> {
        self.dirty
            .under(prefix)
            .iter()
            .map(|key| {
                let value = self
                    .dirty_value(key)
                    .expect("swingstore invariant: a dirty key has a dirty slot");
                (key.to_string(), value)
            })
            .collect()
    }

    /// The first key SQLite holds under `prefix`.
    fn first_committed_under(&self, prefix: &str) -> Result<Option<String>> {
        self.begin_reading()?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM kv WHERE key >= ?1 ORDER BY key LIMIT 1")?;
        let next: Option<String> = stmt.query_row([prefix], |row| row.get(0)).optional()?;
        Ok(next.filter(|key| key.starts_with(prefix)))
    }

    /// Stores `bytes` under their CID and returns it; storing the same bytes twice is a no-op.
    pub fn add_bundle(&mut self, bytes: &[u8]) -> Result<Cid> {
        let cid = cid_of(bytes);
        self.add_bundle_as(&cid, bytes)?;
        Ok(cid)
    }

    /// [`Self::add_bundle`] for a caller that computed `cid` already with
    /// [`cid_of`] (hashing a large module twice costs a spawn time);
    /// debug builds check that it did.
    pub fn add_bundle_as(&mut self, cid: &Cid, bytes: &[u8]) -> Result<()> {
        debug_assert!(
            cid_of(bytes) == *cid,
            "swingstore invariant: add_bundle_as is given the bytes' own CID"
        );
        let text = cid.to_string();
        // Bundles are never deleted: one stored (or on its way) stays, and
        // a second spawn of a module costs no copy of it.
        if self.has_bundle(&text)? {
            return Ok(());
        }
        let entry = (text, bytes.to_vec());
        if self.crank.is_some() {
            self.crank_bundles.push(entry);
        } else {
            self.pending_bundles.push(entry);
        }
        Ok(())
    }

    /// Whether bundle `cid` is stored, or written by a crank or commit to come.
    fn has_bundle(&self, cid: &str) -> Result<bool> {
        if self.uncommitted_bundle(cid).is_some() {
            return Ok(true);
        }
        self.begin_reading()?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM bundles WHERE cid = ?1")?;
        Ok(stmt.exists([cid])?)
    }

    /// Bundle `cid`, when a crank or a commit to come writes it.
    fn uncommitted_bundle(&self, cid: &str) -> Option<&[u8]> {
        self.crank_bundles
            .iter()
            .chain(&self.pending_bundles)
            .find(|(c, _)| c == cid)
            .map(|(_, bytes)| bytes.as_slice())
    }

    pub fn get_bundle(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        let text = cid.to_string();
        self.begin_reading()?;
        if let Some(bytes) = self.uncommitted_bundle(&text) {
            return Ok(Some(bytes.to_vec()));
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bytes FROM bundles WHERE cid = ?1")?;
        Ok(stmt.query_row([text], |row| row.get(0)).optional()?)
    }

    /// The CIDs of every stored bundle, committed or not.
    pub fn bundle_cids(&self) -> Result<BTreeSet<String>> {
        self.begin_reading()?;
        let mut stmt = self.conn.prepare_cached("SELECT cid FROM bundles")?;
        let mut cids: BTreeSet<String> = stmt
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        cids.extend(
            self.crank_bundles
                .iter()
                .chain(&self.pending_bundles)
                .map(|(cid, _)| cid.clone()),
        );
        Ok(cids)
    }

    /// Parses a CID string such as `bafkrei...`.
    pub fn parse_cid(text: &str) -> Result<Cid> {
        Cid::try_from(text).map_err(|e| StoreError::BadCid(format!("{text}: {e}")))
    }

    /// Runs SQLite's own structural check; an empty list means the file is sound.
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        self.begin_reading()?;
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
    fn a_commit_of_more_rows_than_one_statement_writes_them_all() {
        let (dir, mut store) = fresh();
        // Two full statements and a remainder, deletions among them, and
        // a key rewritten with a value it had.
        let keys = 2 * UPSERT_ROWS_PER_STATEMENT + 7;
        for i in 0..keys {
            store
                .set(&format!("k.{i:04}"), &format!("first {i}"))
                .unwrap();
        }
        store.commit().unwrap();
        for i in (0..keys).filter(|i| i % 3 == 0) {
            store.delete(&format!("k.{i:04}")).unwrap();
        }
        for i in (0..keys).filter(|i| i % 3 == 1) {
            store
                .set(&format!("k.{i:04}"), &format!("second {i}"))
                .unwrap();
        }
        let before = store.stats();
        store.commit().unwrap();
        let rows = store.stats().rows_committed - before.rows_committed;
        assert_eq!(rows as usize, keys.div_ceil(3) + (keys + 1) / 3);
        drop(store);
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        for i in 0..keys {
            let expected = match i % 3 {
                0 => None,
                1 => Some(format!("second {i}")),
                _ => Some(format!("first {i}")),
            };
            assert_eq!(
                store.get(&format!("k.{i:04}")).unwrap(),
                expected,
                "k.{i:04}"
            );
        }
    }

    #[test]
    fn many_small_commits_reuse_a_short_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let mut store = SwingStore::open(&path, Durability::Full).unwrap();
        for i in 0..1_000 {
            store.begin_crank().unwrap();
            store.set(&format!("a.{}", i % 50), &i.to_string()).unwrap();
            store.set(&format!("z.{}", i % 50), &i.to_string()).unwrap();
            store.end_crank().unwrap();
            store.commit().unwrap();
            // The next crank reads between commits, as a kernel's does.
            store.get("a.0").unwrap();
        }
        // A page and its frame header per WAL frame, past the WAL header.
        let frame_bytes = 4096 + 24;
        let wal = std::fs::metadata(dir.path().join("store.sqlite-wal")).unwrap();
        let frames = (wal.len() - 32) / frame_bytes;
        // Each commit writes a few frames: without checkpoints, and SQLite
        // writing the WAL again from its start after them, it would hold
        // thousands (SQLite's own are replaced: WAL_FRAMES_MAX).
        assert!(
            frames <= 4 * sync::CHECKPOINT_FRAMES,
            "{frames} frames in the WAL"
        );
        assert!(store.syncer.as_ref().unwrap().checkpoints() > 0);
        assert_eq!(store.get("z.49").unwrap().as_deref(), Some("999"));
        drop(store);
        // Closing checkpointed and removed the WAL; everything is there.
        assert!(!dir.path().join("store.sqlite-wal").exists());
        let store = SwingStore::open(&path, Durability::Full).unwrap();
        assert_eq!(store.get("a.49").unwrap().as_deref(), Some("999"));
    }

    #[test]
    fn a_big_commit_is_checkpointed_by_the_sync_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let mut store = SwingStore::open(&path, Durability::Full).unwrap();
        let value = "x".repeat(1000);
        for i in 0..2_000 {
            store.set(&format!("big.{i:05}"), &value).unwrap();
        }
        store.commit().unwrap();
        let syncer = store.syncer.as_ref().unwrap();
        // The commit did not checkpoint; the thread does, with no other
        // commit to prompt it.
        let started = std::time::Instant::now();
        while syncer.checkpoints() == 0 {
            assert!(started.elapsed().as_secs() < 10, "no checkpoint");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The next commit writes the WAL again from its start.
        let wal = dir.path().join("store.sqlite-wal");
        let before = std::fs::metadata(&wal).unwrap().len();
        store.get("big.00000").unwrap();
        store.set("small", "1").unwrap();
        store.commit().unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), before);
        drop(store);
        let store = SwingStore::open(&path, Durability::Normal).unwrap();
        assert_eq!(store.get("big.01999").unwrap(), Some(value));
        assert_eq!(store.get("small").unwrap().as_deref(), Some("1"));
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
    fn pipelined_commits_become_durable_one_at_a_time_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let mut store = SwingStore::open(&path, Durability::Full).unwrap();
        // Opening made the new file's tables durable: commit 1.
        let opened = store.commits_written;
        assert_eq!(opened, 1);
        let syncer = |store: &SwingStore| store.syncer.as_ref().unwrap().durable();
        assert_eq!(syncer(&store), opened);
        for i in 1..=20u64 {
            store.set("a", &i.to_string()).unwrap();
            store.commit_pipelined().unwrap();
            // At most one commit in flight: the one just written.
            assert!(syncer(&store) + 1 >= opened + i, "commit {i}");
        }
        store.wait_durable().unwrap();
        assert_eq!(syncer(&store), opened + 20);
        let stats = store.stats();
        assert!((1..=21).contains(&stats.syncs), "{stats:?}");
        // An idle commit waits for what is in flight and writes nothing.
        store.set("b", "x").unwrap();
        store.commit_pipelined().unwrap();
        store.commit().unwrap();
        assert_eq!(syncer(&store), store.commits_written);
        drop(store);
        let store = SwingStore::open(&path, Durability::Full).unwrap();
        assert_eq!(store.get("a").unwrap().as_deref(), Some("20"));
        assert_eq!(store.get("b").unwrap().as_deref(), Some("x"));
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
        for (k, v) in [
            ("v1.c.o+0", "ko1"),
            ("v1.c.ko1", "o+0"),
            ("v10.x", "no"),
            ("v1.", "edge"),
            ("v2.c", "no"),
        ] {
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

    /// Keys under an id made since the last commit are read from memory
    /// only, and agree with what the ordinary reads give.
    #[test]
    fn uncommitted_reads_answer_from_memory_what_sqlite_cannot_hold() {
        let (_dir, mut store) = fresh();
        store.set("kp1.state", "old").unwrap();
        store.commit().unwrap();
        store.set("kp2.state", "unresolved").unwrap();
        store.set("kp2.sub.v1", "").unwrap();
        store.set("kp2.sub.v2", "").unwrap();
        store.delete("kp2.sub.v1").unwrap();
        let before = store.stats();
        assert_eq!(store.get_uncommitted("kp2.refs").unwrap(), None);
        assert_eq!(
            store.get_uncommitted("kp2.state").unwrap().as_deref(),
            Some("unresolved")
        );
        let found = store.scan_prefix_uncommitted("kp2.sub.").unwrap();
        assert_eq!(found, vec![("kp2.sub.v2".to_owned(), String::new())]);
        // Debug builds checked each claim against SQLite; the answers
        // themselves took no SQLite read beyond those checks.
        assert_eq!(found, store.scan_prefix("kp2.sub.").unwrap());
        assert_eq!(store.stats().reads - before.reads, 2);
        // Written under it and committed: the ordinary reads see it.
        store.commit().unwrap();
        assert_eq!(store.get("kp2.sub.v2").unwrap().as_deref(), Some(""));
        assert_eq!(store.get("kp1.state").unwrap().as_deref(), Some("old"));
    }

    #[test]
    fn keys_deleted_as_never_committed_cost_the_commit_no_statement() {
        let (_dir, mut store) = fresh();
        store.set("kept", "1").unwrap();
        store.commit().unwrap();
        let before = store.stats();
        // Written with `set` (not known new), then deleted as new; and one
        // deleted as new without ever being written.
        store.set("kp7.data", "x").unwrap();
        store.delete_new("kp7.data").unwrap();
        store.delete_new("kp7.sub.v1").unwrap();
        // An unknown key deleted the ordinary way is sent, and finds nothing.
        store.delete("kp8.data").unwrap();
        store.delete("kept").unwrap();
        store.commit().unwrap();
        let after = store.stats();
        assert_eq!(after.statements - before.statements, 2);
        assert_eq!(after.rows_committed - before.rows_committed, 1);
        assert_eq!(store.get("kp7.data").unwrap(), None);
        assert_eq!(store.get("kept").unwrap(), None);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "delete_new of a committed key")]
    fn deleting_a_committed_key_as_new_is_caught_in_debug_builds() {
        let (_dir, mut store) = fresh();
        store.set("kp1.data", "x").unwrap();
        store.commit().unwrap();
        store.delete_new("kp1.data").unwrap();
    }

    #[test]
    fn a_key_a_commit_deleted_leaves_the_view_and_reads_absent() {
        let (_dir, mut store) = fresh();
        store.set("gone", "1").unwrap();
        store.set("kept", "1").unwrap();
        store.commit().unwrap();
        store.delete("gone").unwrap();
        store.commit().unwrap();
        assert_eq!(store.view.borrow().len(), 1, "only the kept key stays");
        let before = store.stats().sqlite_reads;
        assert_eq!(store.get("gone").unwrap(), None);
        assert_eq!(store.stats().sqlite_reads, before + 1, "read from SQLite");
        assert_eq!(store.get("kept").unwrap().as_deref(), Some("1"));
        assert_eq!(store.stats().sqlite_reads, before + 1, "kept in the view");
        // Set again, it is written (SQLite has no row for it).
        store.set("gone", "2").unwrap();
        store.commit().unwrap();
        assert_eq!(store.get("gone").unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn a_committed_value_written_again_sends_the_commit_nothing() {
        let (dir, mut store) = fresh();
        store.set("same", "1").unwrap();
        store.set("changed", "1").unwrap();
        store.commit().unwrap();
        assert_eq!(store.get("absent").unwrap(), None);
        let before = store.stats();
        store.set("same", "1").unwrap();
        store.set("changed", "2").unwrap();
        store.delete("absent").unwrap();
        store.commit().unwrap();
        let after = store.stats();
        assert_eq!(after.statements - before.statements, 1, "only the change");
        assert_eq!(store.get("same").unwrap().as_deref(), Some("1"));
        assert_eq!(store.get("changed").unwrap().as_deref(), Some("2"));
        // Changed and changed back within one commit, or deleted and set
        // again as it was: nothing to send either.
        let before = store.stats();
        store.set("same", "9").unwrap();
        store.set("same", "1").unwrap();
        store.delete("changed").unwrap();
        store.set("changed", "2").unwrap();
        store.commit().unwrap();
        assert_eq!(store.stats().statements - before.statements, 0);
        // And the next change is written as any other.
        store.set("same", "3").unwrap();
        store.commit().unwrap();
        assert_eq!(store.stats().statements - before.statements, 1);
        drop(store);
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        assert_eq!(store.get("same").unwrap().as_deref(), Some("3"));
        assert_eq!(store.get("changed").unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn stats_count_reads_writes_and_the_rows_a_commit_wrote() {
        let (_dir, mut store) = fresh();
        store.set("a", "1").unwrap();
        store.set("a", "2").unwrap();
        store.set("b", "1").unwrap();
        store.commit().unwrap();
        assert_eq!(store.get("a").unwrap().as_deref(), Some("2"));
        assert_eq!(store.get("zz").unwrap(), None);
        let stats = store.stats();
        assert_eq!(
            (stats.writes, stats.commits, stats.rows_committed),
            (3, 1, 2)
        );
        assert_eq!(stats.statements, 2);
        // "a" is in memory since its write; "zz" had to be looked up.
        assert_eq!((stats.reads, stats.sqlite_reads), (2, 1));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "get_uncommitted of a committed key")]
    fn claiming_a_committed_key_uncommitted_is_caught_in_debug_builds() {
        let (_dir, mut store) = fresh();
        store.set("kp1.state", "unresolved").unwrap();
        store.commit().unwrap();
        let reopened = SwingStore::open(store.path(), Durability::Normal).unwrap();
        let _ = reopened.get_uncommitted("kp1.state");
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
        assert_eq!(
            store.get_bundle(&cid).unwrap().as_deref(),
            Some(&b"hello world\n"[..])
        );
        let parsed = SwingStore::parse_cid(&cid.to_string()).unwrap();
        assert_eq!(parsed, cid);
        assert!(SwingStore::parse_cid("not-a-cid").is_err());
    }

    #[test]
    fn a_commit_that_fails_keeps_every_uncommitted_write_for_the_next() {
        let (dir, mut store) = fresh();
        // SQLite refuses one row, as a full disk would refuse the commit.
        let other = Connection::open(dir.path().join("store.sqlite")).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON kv WHEN NEW.key = 'v1.poison' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        store.set("v1.kept", "1").unwrap();
        store.set("v1.same", "s").unwrap();
        store.commit().unwrap();
        // Made and deleted before the commit (never in SQLite), changed
        // and changed back, changed, deleted, made.
        store.set_new("v1.brief", "x").unwrap();
        store.delete_new("v1.brief").unwrap();
        store.set("v1.same", "t").unwrap();
        store.set("v1.same", "s").unwrap();
        store.set("v1.kept", "2").unwrap();
        store.set("v1.poison", "p").unwrap();
        store.set("v1.new", "n").unwrap();
        assert!(store.commit().is_err());
        // The store is its file's only writer once it reads again.
        other.execute_batch("DROP TRIGGER refuse").unwrap();
        let expected = vec![
            ("v1.kept".to_owned(), "2".to_owned()),
            ("v1.new".to_owned(), "n".to_owned()),
            ("v1.poison".to_owned(), "p".to_owned()),
            ("v1.same".to_owned(), "s".to_owned()),
        ];
        assert_eq!(store.scan_prefix("v1.").unwrap(), expected);
        assert_eq!(store.get("v1.brief").unwrap(), None);
        store.commit().unwrap();
        assert!(!store.has_uncommitted());
        drop(store);
        let reopened =
            SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        assert_eq!(reopened.scan_prefix("v1.").unwrap(), expected);
    }

    #[test]
    fn a_bundle_stored_already_is_not_written_again() {
        let (_dir, mut store) = fresh();
        let bytes = vec![7u8; 100_000];
        let cid = store.add_bundle(&bytes).unwrap();
        // Pending, then committed: either way a second add has nothing to write.
        store.add_bundle_as(&cid, &bytes).unwrap();
        store.commit().unwrap();
        store.add_bundle_as(&cid, &bytes).unwrap();
        assert!(!store.has_uncommitted());
        store.begin_crank().unwrap();
        store.add_bundle_as(&cid, &bytes).unwrap();
        store.end_crank().unwrap();
        assert!(!store.has_uncommitted());
        assert_eq!(store.bundle_cids().unwrap().len(), 1);
        assert_eq!(store.get_bundle(&cid).unwrap(), Some(bytes));
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
    fn reads_see_uncommitted_writes_merged_with_committed_ones() {
        let (_dir, mut store) = fresh();
        for key in ["a", "c", "e"] {
            store.set(key, "committed").unwrap();
        }
        store.commit().unwrap();
        store.begin_crank().unwrap();
        store.delete("c").unwrap();
        store.set("d", "pending").unwrap();
        store.end_crank().unwrap();
        store.begin_crank().unwrap();
        store.set("b", "crank").unwrap();
        store.delete("e").unwrap();
        store.set("d", "crank").unwrap();
        let mut keys = Vec::new();
        let mut key = String::new();
        while let Some(next) = store.get_next_key(&key).unwrap() {
            keys.push(next.clone());
            key = next;
        }
        assert_eq!(keys, ["a", "b", "d"]);
        // Backwards, the same keys: committed, pending and deleted alike.
        let mut backwards = Vec::new();
        let mut key = "~".to_owned();
        while let Some(prev) = store.get_prev_key(&key).unwrap() {
            backwards.push(prev.clone());
            key = prev;
        }
        assert_eq!(backwards, ["d", "b", "a"]);
        assert_eq!(store.get("d").unwrap().as_deref(), Some("crank"));
        assert_eq!(store.get("c").unwrap(), None);
        let scanned: Vec<(String, String)> = store.scan_prefix("").unwrap();
        assert_eq!(
            scanned,
            [
                ("a".into(), "committed".into()),
                ("b".into(), "crank".into()),
                ("d".into(), "crank".into())
            ]
        );
        store.abort_crank().unwrap();
        assert_eq!(store.get("e").unwrap().as_deref(), Some("committed"));
        assert_eq!(store.get("d").unwrap().as_deref(), Some("pending"));
        // What the ended crank wrote is committed; what the aborted one wrote is not.
        store.commit().unwrap();
        let path = store.path().to_owned();
        drop(store);
        let store = SwingStore::open(&path, Durability::Normal).unwrap();
        let all: Vec<(String, String)> = store.scan_prefix("").unwrap();
        assert_eq!(
            all,
            [
                ("a".into(), "committed".into()),
                ("d".into(), "pending".into()),
                ("e".into(), "committed".into())
            ]
        );
    }

    #[test]
    fn a_commit_writes_the_net_effect_of_its_cranks() {
        let (dir, mut store) = fresh();
        for i in 0..100 {
            store.begin_crank().unwrap();
            store.set("counter", &i.to_string()).unwrap();
            store.set(&format!("temp.{i}"), "x").unwrap();
            store.delete(&format!("temp.{i}")).unwrap();
            store.end_crank().unwrap();
        }
        store.commit().unwrap();
        drop(store);
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        assert_eq!(store.get("counter").unwrap().as_deref(), Some("99"));
        assert_eq!(store.scan_prefix("temp.").unwrap(), []);
    }

    #[test]
    fn keys_set_new_and_deleted_before_the_commit_never_reach_the_file() {
        let (dir, mut store) = fresh();
        store.begin_crank().unwrap();
        store.set_new("queue.1", "item").unwrap();
        store.set_new("kept", "yes").unwrap();
        store.end_crank().unwrap();
        store.begin_crank().unwrap();
        store.delete("queue.1").unwrap();
        store.end_crank().unwrap();
        store.commit().unwrap();
        // A later deletion of a committed key does reach the file.
        store.delete("kept").unwrap();
        store.commit().unwrap();
        drop(store);
        let store = SwingStore::open(&dir.path().join("store.sqlite"), Durability::Normal).unwrap();
        assert_eq!(store.scan_prefix("").unwrap(), []);
    }

    #[test]
    fn integrity_check_is_clean_on_a_fresh_store() {
        let (_dir, store) = fresh();
        assert!(store.integrity_check().unwrap().is_empty());
    }
}

/// The store against a model: a map of committed values, a map of current
/// values, and the current map as a crank began. Every read must agree with
/// the model, and reopening the file must find exactly the committed map.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;

    const KEYS: [&str; 6] = ["a", "a.1", "a.2", "b", "b.1", "c"];

    #[derive(Debug, Clone)]
    enum Op {
        Begin,
        End,
        Abort,
        Set(usize, u8),
        Delete(usize),
        Commit,
        Reopen,
        Next(usize),
        Prev(usize),
        Scan(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0..KEYS.len();
        prop_oneof![
            Just(Op::Begin),
            Just(Op::End),
            Just(Op::Abort),
            (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Set(k, v)),
            key.clone().prop_map(Op::Delete),
            Just(Op::Commit),
            Just(Op::Reopen),
            key.clone().prop_map(Op::Next),
            key.clone().prop_map(Op::Prev),
            key.prop_map(Op::Scan),
        ]
    }

    type Map = BTreeMap<String, String>;

    struct Model {
        committed: Map,
        current: Map,
        crank_began: Option<Map>,
    }

    fn check_reads(store: &SwingStore, model: &Model, op: &Op) {
        let map = &model.current;
        match *op {
            Op::Next(k) => {
                let want = map.range::<str, _>((Bound::Excluded(KEYS[k]), Bound::Unbounded));
                let want = want.map(|(key, _)| key.clone()).next();
                assert_eq!(store.get_next_key(KEYS[k]).unwrap(), want);
                for prefix in ["a.", "b.", "a"] {
                    if !KEYS[k].starts_with(prefix) && KEYS[k] != prefix {
                        continue;
                    }
                    let want = map
                        .range::<str, _>((Bound::Excluded(KEYS[k]), Bound::Unbounded))
                        .map(|(key, _)| key.clone())
                        .next()
                        .filter(|key| key.starts_with(prefix));
                    let found = store.get_next_key_under(KEYS[k], prefix).unwrap();
                    assert_eq!(found, want, "after {} under {prefix}", KEYS[k]);
                }
            }
            Op::Prev(k) => {
                let want = map.range::<str, _>((Bound::Unbounded, Bound::Excluded(KEYS[k])));
                let mut want = want.map(|(key, _)| key.clone());
                assert_eq!(store.get_prev_key(KEYS[k]).unwrap(), want.next_back());
            }
            Op::Scan(k) => {
                let want: Vec<(String, String)> = map
                    .iter()
                    .filter(|(key, _)| key.starts_with(KEYS[k]))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                assert_eq!(store.scan_prefix(KEYS[k]).unwrap(), want);
            }
            _ => {}
        }
        for key in KEYS {
            assert_eq!(store.get(key).unwrap().as_ref(), map.get(key), "{key}");
        }
    }

    proptest! {
        #[test]
        fn the_store_agrees_with_a_model_of_cranks_and_commits(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.sqlite");
            let mut store = SwingStore::open(&path, Durability::Normal).unwrap();
            let mut model = Model { committed: Map::new(), current: Map::new(), crank_began: None };
            for op in &ops {
                let in_crank = model.crank_began.is_some();
                match *op {
                    Op::Begin if !in_crank => {
                        store.begin_crank().unwrap();
                        model.crank_began = Some(model.current.clone());
                    }
                    Op::End if in_crank => {
                        store.end_crank().unwrap();
                        model.crank_began = None;
                    }
                    Op::Abort if in_crank => {
                        store.abort_crank().unwrap();
                        model.current = model.crank_began.take().unwrap();
                    }
                    Op::Set(k, v) => {
                        store.set(KEYS[k], &v.to_string()).unwrap();
                        model.current.insert(KEYS[k].to_owned(), v.to_string());
                    }
                    Op::Delete(k) => {
                        store.delete(KEYS[k]).unwrap();
                        model.current.remove(KEYS[k]);
                    }
                    Op::Commit if !in_crank => {
                        store.commit().unwrap();
                        model.committed = model.current.clone();
                    }
                    Op::Reopen if !in_crank => {
                        drop(store);
                        store = SwingStore::open(&path, Durability::Normal).unwrap();
                        model.current = model.committed.clone();
                    }
                    _ => {}
                }
                check_reads(&store, &model, op);
            }
        }
    }
}
