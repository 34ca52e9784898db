//! Makes commits durable on a thread of their own, so that the committing
//! thread can run the next crank while the disk flushes the last one.
//!
//! A store opened with [`crate::Durability::Full`] runs SQLite with
//! `synchronous=NORMAL`: a commit writes its WAL frames and returns without
//! waiting for the disk. SQLite's WAL keeps such commits atomic and in order
//! whatever happens (after a power loss the file holds a prefix of them);
//! what `synchronous=FULL` adds is an fsync of the WAL after each commit, and
//! that is this thread's work: it `fdatasync`s the WAL file after each commit
//! it is told of, and says how many commits are durable. SQLite itself still
//! syncs the WAL before each checkpoint and the database file after it.
//!
//! The WAL is checkpointed (copied into the database, so that SQLite
//! writes it again from its start) past [`CHECKPOINT_FRAMES`] frames not
//! yet copied: a short WAL keeps most commits overwriting the file rather
//! than growing it, which an fsync does faster. After a small commit the
//! store's connection checkpoints at once, as SQLite does by default; after
//! a big one (a spawn's module bundle, a crank of 50,000 objects) this
//! thread does, on a connection of its own, so that the copying and the
//! database's fsync are not on that commit's path ([`WalFrames`]).
//!
//! A thread that waits for a commit no fsync is yet making makes that fsync
//! itself: when the caller has nothing to do but wait (a commit whose
//! results must leave now), handing the fsync to a sleeping thread and
//! being woken after it costs two thread wake-ups, tens of microseconds
//! each on a virtual machine, on the latency path.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

#[derive(Debug, Default)]
struct State {
    /// Commits written and handed to the thread.
    requested: u64,
    /// Commits known durable: written before an fsync that succeeded.
    durable: u64,
    /// Whether a thread (the sync thread or a waiter) is making an fsync.
    syncing: bool,
    /// fsyncs made.
    syncs: u64,
    /// Why an fsync failed. Nothing after it is ever called durable: the
    /// page cache may have dropped the pages it could not write.
    failed: Option<String>,
    stop: bool,
}

impl State {
    /// Claims the next fsync if none is being made and a commit awaits
    /// one: the commit number it will make durable.
    fn claim(&mut self) -> Option<u64> {
        if self.syncing || self.failed.is_some() || self.requested <= self.durable {
            return None;
        }
        self.syncing = true;
        Some(self.requested)
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Copies of `State::requested`, `State::durable` and `State::syncing`,
    /// read without the lock while polling.
    requested: AtomicU64,
    durable: AtomicU64,
    syncing: AtomicBool,
    /// The database file; its WAL is `<db_path>-wal`.
    db_path: PathBuf,
    /// The WAL, opened when first synced.
    wal: Mutex<Option<Arc<File>>>,
    /// WAL frames the last checkpoint copied into the database (0 again
    /// once SQLite writes the WAL from its start).
    backfilled: AtomicU64,
    /// Whether a big commit left the WAL for the thread to checkpoint, and
    /// whether the thread is checkpointing now.
    checkpoint_due: AtomicBool,
    checkpointing: AtomicBool,
    /// Checkpoints made so far, by the thread or the store's connection.
    checkpoints: AtomicU64,
}

/// `checkpoint_frames`: how many WAL frames not yet checkpointed make a
/// commit checkpoint (or leave it to the thread, if it is that big itself).
pub(crate) const CHECKPOINT_FRAMES: u64 = 100;

/// How long either side polls for the other before it sleeps: while commits
/// come back to back, a thread woken from sleep costs more (tens of
/// microseconds on a virtual machine) than the overlap saves.
const POLL_US: u64 = 300;

/// Polls `ready` for up to [`POLL_US`], giving the core away between polls.
fn poll_until(ready: impl Fn() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_micros(POLL_US) {
        if ready() {
            return true;
        }
        std::thread::yield_now();
    }
    ready()
}

impl Shared {
    fn new(db_path: PathBuf) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::default(),
            changed: Condvar::new(),
            requested: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            syncing: AtomicBool::new(false),
            db_path,
            wal: Mutex::new(None),
            backfilled: AtomicU64::new(0),
            checkpoint_due: AtomicBool::new(false),
            checkpointing: AtomicBool::new(false),
            checkpoints: AtomicU64::new(0),
        })
    }

    /// Takes the checkpoint the thread is due to make, if any (only the
    /// thread calls it, so none of its own is under way).
    fn claim_checkpoint(&self) -> bool {
        let due = self.checkpoint_due.swap(false, Ordering::AcqRel);
        if due {
            self.checkpointing.store(true, Ordering::Release);
        }
        due
    }

    /// A checkpoint copied the WAL's first `frames` frames.
    fn checkpointed(&self, frames: u64) {
        self.backfilled.store(frames, Ordering::Release);
        self.checkpoints.fetch_add(1, Ordering::Release);
    }

    /// Checkpoints the WAL on `conn` (opened on first use), without waiting
    /// for the store's connection. A failure loses nothing (the WAL keeps
    /// every commit); the store's connection checkpoints past
    /// `WAL_FRAMES_MAX` whatever happens here.
    fn checkpoint(&self, conn: &mut Option<rusqlite::Connection>) {
        if conn.is_none() {
            *conn = rusqlite::Connection::open(&self.db_path).ok();
        }
        let copied: Option<u64> = conn.as_ref().and_then(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(2)
            })
            .ok()
            .and_then(|frames| u64::try_from(frames).ok())
        });
        if let Some(frames) = copied {
            self.checkpointed(frames);
        }
        self.checkpointing.store(false, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("swingstore invariant: the sync thread never panics holding its lock")
    }

    fn wait_changed<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(state)
            .expect("swingstore invariant: the sync thread never panics holding its lock")
    }

    /// Claims the next fsync under the lock, keeping the polled copy in step.
    fn claim(&self, state: &mut State) -> Option<u64> {
        let target = state.claim()?;
        self.syncing.store(true, Ordering::Release);
        Some(target)
    }

    /// Makes the fsync claimed for commit `target`, then records it.
    fn sync_claimed(&self, target: u64) {
        let outcome = self.sync_wal();
        let mut state = self.lock();
        assert!(
            state.syncing,
            "swingstore invariant: only a claimed fsync is made"
        );
        state.syncing = false;
        state.syncs += 1;
        match outcome {
            Ok(()) => {
                state.durable = state.durable.max(target);
                self.durable.store(state.durable, Ordering::Release);
            }
            Err(e) => state.failed = Some(format!("fsync of the WAL failed: {e}")),
        }
        self.syncing.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// fdatasyncs the WAL, opening it (and fsyncing its folder, so that the
    /// file itself survives a power loss) the first time.
    fn sync_wal(&self) -> std::io::Result<()> {
        let wal = {
            let mut wal = self
                .wal
                .lock()
                .expect("swingstore invariant: no thread panics holding the WAL's lock");
            if wal.is_none() {
                *wal = self.open_wal()?.map(Arc::new);
            }
            wal.clone()
        };
        match wal {
            Some(wal) => wal.sync_data(),
            // No WAL yet: SQLite has written nothing there to sync.
            None => Ok(()),
        }
    }

    fn open_wal(&self) -> std::io::Result<Option<File>> {
        let mut wal_path = self.db_path.as_os_str().to_owned();
        wal_path.push("-wal");
        let file = match File::open(&wal_path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(dir) = self.db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(Some(file))
    }
}

/// The store's WAL hook: after each commit, decides who checkpoints.
pub(crate) struct WalFrames {
    shared: Arc<Shared>,
    /// The WAL's frames after the last commit.
    last: u64,
}

impl WalFrames {
    /// The WAL holds `frames` frames after a commit. Past
    /// [`CHECKPOINT_FRAMES`] not yet copied, a small commit has `checkpoint`
    /// (the store's connection, at once: a few pages and the database's
    /// fsync) make one, as SQLite does by default; a big commit (at least
    /// as many frames itself) leaves it to the thread, so that its
    /// copying is not on the committer's path. Past `frames_max` the
    /// connection checkpoints whatever the thread is doing.
    pub(crate) fn after_commit(
        &mut self,
        frames: u64,
        frames_max: u64,
        checkpoint: impl FnOnce() -> bool,
    ) {
        let shared = &*self.shared;
        let restarted = frames < self.last;
        let written = if restarted {
            frames
        } else {
            frames - self.last
        };
        self.last = frames;
        let backfilled = shared.backfilled.load(Ordering::Acquire);
        // Fewer frames than were copied: SQLite began the WAL again since.
        let behind = if frames < backfilled {
            shared.backfilled.store(0, Ordering::Release);
            frames
        } else {
            frames - backfilled
        };
        let thread_busy = shared.checkpointing.load(Ordering::Acquire)
            || shared.checkpoint_due.load(Ordering::Acquire);
        if frames >= frames_max
            || (behind >= CHECKPOINT_FRAMES && written < CHECKPOINT_FRAMES && !thread_busy)
        {
            if checkpoint() {
                shared.checkpointed(frames);
            }
        } else if behind >= CHECKPOINT_FRAMES && !thread_busy {
            shared.checkpoint_due.store(true, Ordering::Release);
        }
    }
}

/// The sync thread of one store.
#[derive(Debug)]
pub(crate) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread for the database at `db_path` (its WAL is
    /// `<db_path>-wal`, opened when first needed).
    pub(crate) fn start(db_path: PathBuf) -> std::io::Result<Syncer> {
        let shared = Shared::new(db_path);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("swingstore-sync".into())
                .spawn(move || sync_loop(&shared))?
        };
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Says that commit number `commit` is written. `wake`: the thread is
    /// woken to make it durable; without it, the caller is about to
    /// [`Self::wait`] for it, and so to make the fsync itself (waking a
    /// sleeping thread costs a system call and disturbs the other core).
    /// The thread is woken anyway when a checkpoint falls due.
    pub(crate) fn request(&self, commit: u64, wake: bool) {
        let mut state = self.shared.lock();
        assert!(
            commit >= state.requested,
            "swingstore invariant: commits are numbered in order"
        );
        state.requested = commit;
        self.shared.requested.store(commit, Ordering::Release);
        if wake || self.shared.checkpoint_due.load(Ordering::Acquire) {
            self.shared.changed.notify_all();
        }
    }

    /// Where the store's WAL hook says how many frames the WAL holds.
    pub(crate) fn wal_frames(&self) -> WalFrames {
        WalFrames {
            shared: self.shared.clone(),
            last: 0,
        }
    }

    /// Checkpoints made so far: a read snapshot begun before the last one
    /// may keep SQLite from writing the WAL again from its start.
    pub(crate) fn checkpoints(&self) -> u64 {
        self.shared.checkpoints.load(Ordering::Acquire)
    }

    /// Waits until commit number `commit` (and every one before it) is
    /// durable, making the fsync itself if no thread is making one.
    pub(crate) fn wait(&self, commit: u64) -> Result<(), String> {
        let shared = &*self.shared;
        loop {
            if shared.durable.load(Ordering::Acquire) >= commit {
                return Ok(());
            }
            let mut state = shared.lock();
            if let Some(reason) = &state.failed {
                return Err(reason.clone());
            }
            if state.durable >= commit {
                return Ok(());
            }
            assert!(
                state.requested >= commit,
                "swingstore invariant: only a commit handed to the sync thread is waited for"
            );
            if let Some(target) = shared.claim(&mut state) {
                drop(state);
                shared.sync_claimed(target);
                continue;
            }
            // Another thread is making an fsync: wait for it to end.
            drop(state);
            if poll_until(|| !shared.syncing.load(Ordering::Acquire)) {
                continue;
            }
            let mut state = shared.lock();
            while state.syncing {
                state = shared.wait_changed(state);
            }
        }
    }

    /// Commits known durable so far.
    #[cfg(test)]
    pub(crate) fn durable(&self) -> u64 {
        self.shared.lock().durable
    }

    /// fsyncs made so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.shared.lock().syncs
    }
}

impl Drop for Syncer {
    /// Lets the thread make the last commits durable, then stops it.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread's next piece of work.
enum Work {
    Sync(u64),
    Checkpoint,
}

fn sync_loop(shared: &Shared) {
    let mut checkpointer = None;
    loop {
        poll_until(|| {
            !shared.syncing.load(Ordering::Acquire)
                && shared.requested.load(Ordering::Acquire) > shared.durable.load(Ordering::Acquire)
        });
        let work = {
            let mut state = shared.lock();
            loop {
                // Durability first: a commit may be waited for.
                if let Some(target) = shared.claim(&mut state) {
                    break Work::Sync(target);
                }
                if shared.claim_checkpoint() {
                    break Work::Checkpoint;
                }
                let done = state.requested <= state.durable && !state.syncing;
                if state.failed.is_some() || (state.stop && done) {
                    return;
                }
                state = shared.wait_changed(state);
            }
        };
        match work {
            Work::Sync(target) => shared.sync_claimed(target),
            Work::Checkpoint => shared.checkpoint(&mut checkpointer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_makes_the_fsync_itself_when_no_thread_is_making_one() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("store.sqlite");
        std::fs::write(dir.path().join("store.sqlite-wal"), b"frames").unwrap();
        // No sync thread at all: only the waiter can make the commit durable.
        let syncer = Syncer {
            shared: Shared::new(db_path),
            thread: None,
        };
        syncer.request(1, false);
        syncer.request(2, false);
        assert_eq!(syncer.wait(2), Ok(()));
        assert_eq!((syncer.durable(), syncer.syncs()), (2, 1));
        // A commit already durable costs no fsync.
        assert_eq!(syncer.wait(1), Ok(()));
        assert_eq!(syncer.syncs(), 1);
    }
}
