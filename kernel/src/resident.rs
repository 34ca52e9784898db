//! The resident set: which vats have a worker (are awake), in the order
//! they were last delivered to, and the worker processes that sleeping
//! vats left behind for waking ones.
//!
//! A vat's heap is a cache of its store, so a vat whose heap holds nothing
//! the store does not (its last heap report is empty and it decides no
//! promise in memory) may sleep: its worker stops and nothing is written.
//! A delivery wakes it, on a spare process when there is one. The set is
//! kept within `vats_resident_max` between cranks; vats that cannot sleep
//! stay awake past it.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;

use vat_supervisor::{ProcessWorker, SyscallHandler, ThreadWorker, VatFault, Worker};

use vom::abi::Delivery;

use crate::ids::EndpointId;

/// `vats_resident_max`: how many vats keep a worker at once, by default
/// (SwingSet's vat warehouse keeps 50 online).
pub const VATS_RESIDENT_MAX_DEFAULT: usize = 50;

/// `spare_workers_max`: how many worker processes of sleeping vats are
/// kept, idle, for vats that wake (within `vats_resident_max` in all).
pub const SPARE_WORKERS_MAX: usize = 8;

/// `activity_granularity_s`: a vat's last activity is written at most this
/// often (and each time it wakes).
pub const ACTIVITY_GRANULARITY_S: u64 = 60;

/// A vat's worker, of either kind: a process worker can take on another
/// vat when its own sleeps.
pub(crate) enum VatWorker {
    Thread(ThreadWorker),
    Process(ProcessWorker),
}

impl VatWorker {
    pub(crate) fn deliver(
        &mut self,
        delivery: &Delivery,
        handler: &mut dyn SyscallHandler,
    ) -> Result<(), VatFault> {
        match self {
            VatWorker::Thread(worker) => worker.deliver(delivery, handler),
            VatWorker::Process(worker) => worker.deliver(delivery, handler),
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            VatWorker::Thread(_) => None,
            VatWorker::Process(worker) => Some(worker.pid()),
        }
    }
}

/// How the resident set has changed since the kernel started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResidencyCounts {
    /// Workers started for vats (a spawn, a wake, a restart).
    pub wakes: u64,
    /// Vats put to sleep (to make room, or by `vat sleep`).
    pub evictions: u64,
    /// Wakes that took a spare process (a sleeping vat's, or one started
    /// ahead of need) instead of starting one.
    pub processes_reused: u64,
    /// Total time spent waking, in microseconds.
    pub wake_us_total: u64,
}

/// The kernel's memory of who is awake. Nothing here is durable: a kernel
/// that starts has no vat awake.
#[derive(Default)]
pub(crate) struct Residency {
    tick: u64,
    /// Each resident vat's last use, and when its activity was last written.
    last_used: FxHashMap<EndpointId, (u64, u64)>,
    by_age: BTreeMap<u64, EndpointId>,
    spare: Vec<ProcessWorker>,
    pub(crate) counts: ResidencyCounts,
}

impl Residency {
    /// Notes a delivery to `vat`. Returns the time to record as its last
    /// activity, when it is due to be written.
    pub(crate) fn touch(&mut self, vat: &EndpointId) -> Option<u64> {
        self.tick += 1;
        let tick = self.tick;
        let now_s = unix_now_s();
        match self.last_used.get_mut(vat) {
            Some((used, written_s)) => {
                self.by_age.remove(used);
                *used = tick;
                self.by_age.insert(tick, vat.clone());
                if now_s >= *written_s + ACTIVITY_GRANULARITY_S {
                    *written_s = now_s;
                    return Some(now_s);
                }
                None
            }
            None => {
                self.last_used.insert(vat.clone(), (tick, now_s));
                self.by_age.insert(tick, vat.clone());
                Some(now_s)
            }
        }
    }

    /// `vat` no longer has a worker.
    pub(crate) fn forget(&mut self, vat: &str) {
        if let Some((used, _)) = self.last_used.remove(vat) {
            self.by_age.remove(&used);
        }
    }

    /// The resident vats, least recently used first.
    pub(crate) fn oldest_first(&self) -> Vec<EndpointId> {
        self.by_age.values().cloned().collect()
    }

    /// Keeps `worker` for a vat that wakes, if there is room for it.
    pub(crate) fn keep_spare(&mut self, worker: ProcessWorker, room: usize) {
        if self.spare.len() < SPARE_WORKERS_MAX.min(room) {
            self.spare.push(worker);
        }
    }

    pub(crate) fn take_spare(&mut self) -> Option<ProcessWorker> {
        self.spare.pop()
    }

    /// The spare [`Self::take_spare`] takes next.
    pub(crate) fn next_spare(&mut self) -> Option<&mut ProcessWorker> {
        self.spare.last_mut()
    }

    pub(crate) fn spares(&self) -> usize {
        self.spare.len()
    }

    /// Drops spare processes beyond `room`.
    pub(crate) fn trim_spares(&mut self, room: usize) {
        self.spare.truncate(room);
    }

    pub(crate) fn woke(&mut self, started: Instant, reused: bool) {
        self.counts.wakes += 1;
        self.counts.processes_reused += u64::from(reused);
        self.counts.wake_us_total += started.elapsed().as_micros() as u64;
    }
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vat(n: u64) -> EndpointId {
        EndpointId::from_table(&format!("v{n}"))
    }

    #[test]
    fn the_least_recently_used_vat_comes_first() {
        let mut residency = Residency::default();
        for n in [1, 2, 3] {
            assert!(
                residency.touch(&vat(n)).is_some(),
                "a new vat's activity is due"
            );
        }
        assert_eq!(residency.touch(&vat(1)), None, "written a moment ago");
        assert_eq!(residency.oldest_first(), [vat(2), vat(3), vat(1)]);
        residency.forget(&vat(3));
        assert_eq!(residency.oldest_first(), [vat(2), vat(1)]);
    }
}
