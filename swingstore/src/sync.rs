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

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

#[derive(Debug, Default)]
struct State {
    /// Commits written and handed to the thread.
    requested: u64,
    /// Commits known durable: written before an fsync that succeeded.
    durable: u64,
    /// fsyncs made.
    syncs: u64,
    /// Why an fsync failed. Nothing after it is ever called durable: the
    /// page cache may have dropped the pages it could not write.
    failed: Option<String>,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Copies of `State::requested` and `State::durable`, read without the
    /// lock while polling.
    requested: AtomicU64,
    durable: AtomicU64,
}

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
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("swingstore invariant: the sync thread never panics holding its lock")
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
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("swingstore-sync".into())
                .spawn(move || sync_loop(&shared, &db_path))?
        };
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Tells the thread that commit number `commit` is written.
    pub(crate) fn request(&self, commit: u64) {
        let mut state = self.shared.lock();
        assert!(
            commit >= state.requested,
            "swingstore invariant: commits are numbered in order"
        );
        state.requested = commit;
        self.shared.requested.store(commit, Ordering::Release);
        self.shared.changed.notify_all();
    }

    /// Waits until commit number `commit` (and every one before it) is durable.
    pub(crate) fn wait(&self, commit: u64) -> Result<(), String> {
        if poll_until(|| self.shared.durable.load(Ordering::Acquire) >= commit) {
            return Ok(());
        }
        let mut state = self.shared.lock();
        loop {
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
            state = self
                .shared
                .changed
                .wait(state)
                .expect("swingstore invariant: the sync thread never panics holding its lock");
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

fn sync_loop(shared: &Shared, db_path: &std::path::Path) {
    let mut wal: Option<File> = None;
    loop {
        poll_until(|| {
            shared.requested.load(Ordering::Acquire) > shared.durable.load(Ordering::Acquire)
        });
        let target = {
            let mut state = shared.lock();
            while state.requested <= state.durable && !state.stop && state.failed.is_none() {
                state = shared
                    .changed
                    .wait(state)
                    .expect("swingstore invariant: the sync thread never panics holding its lock");
            }
            if state.requested <= state.durable || state.failed.is_some() {
                return;
            }
            state.requested
        };
        let outcome = sync_wal(&mut wal, db_path);
        let mut state = shared.lock();
        state.syncs += 1;
        match outcome {
            Ok(()) => {
                state.durable = state.durable.max(target);
                shared.durable.store(state.durable, Ordering::Release);
            }
            Err(e) => state.failed = Some(format!("fsync of the WAL failed: {e}")),
        }
        shared.changed.notify_all();
    }
}

/// fdatasyncs the WAL, opening it (and fsyncing its folder, so that the
/// file itself survives a power loss) the first time.
fn sync_wal(wal: &mut Option<File>, db_path: &std::path::Path) -> std::io::Result<()> {
    if wal.is_none() {
        let mut wal_path = db_path.as_os_str().to_owned();
        wal_path.push("-wal");
        let file = match File::open(&wal_path) {
            Ok(file) => file,
            // No WAL yet: SQLite has written nothing there to sync.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(dir) = db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        *wal = Some(file);
    }
    wal.as_ref()
        .expect("swingstore invariant: the WAL was just opened")
        .sync_data()
}
