//! References the CLI has shown stay usable: every kref a result prints
//! (nested in records and arrays too) is held by the kernel, so the next
//! command can name it, until [`SHOWN_REFS_MAX`] newer ones were shown.
//! To keep one for good, bind it to a pet name (`vat name KREF NAME`); to
//! let go of it (or of all) at once, `vat forget`.
//!
//! | key | value |
//! |---|---|
//! | `shown.<seq>` | a kref the CLI showed; it holds a reference to it |
//! | `shown.kref.<kref>` | `<seq>`: where that kref is in the order |
//! | `kernel.nextShown` | the next `<seq>` |
//! | `kernel.shownCount` | how many are held |

use crate::kernel::{Kernel, KernelError};
use crate::keys;

/// `shown_refs_max`: how many shown references the kernel holds for the CLI.
pub const SHOWN_REFS_MAX: u64 = 1_000;

fn order_key(seq: u64) -> String {
    keys::shown(&format!("{seq:020}"))
}

fn kref_key(kref: &str) -> String {
    keys::shown_kref(&kref)
}

impl Kernel {
    /// Holds each of `krefs` (just shown to a user) for later commands; one
    /// held already moves to the newest place. The oldest beyond
    /// [`SHOWN_REFS_MAX`] are let go.
    pub fn hold_shown(&mut self, krefs: &[String]) -> Result<(), KernelError> {
        if krefs.is_empty() {
            return Ok(());
        }
        self.in_crank(|k| {
            for kref in krefs {
                k.hold_one(kref)?;
            }
            Ok(())
        })
    }

    fn hold_one(&mut self, kref: &str) -> Result<(), KernelError> {
        let state = &mut self.state;
        match state.get(&kref_key(kref))? {
            Some(seq) => state.delete(&keys::shown(&seq))?,
            None => {
                state.incref(kref)?;
                let count = self.shown_count()? + 1;
                self.state.set(keys::SHOWN_COUNT, &count.to_string())?;
            }
        }
        let seq = self.state.next_id(keys::NEXT_SHOWN)?;
        self.state.set(&order_key(seq), kref)?;
        self.state.set(&kref_key(kref), &format!("{seq:020}"))?;
        if self.shown_count()? > SHOWN_REFS_MAX {
            self.let_go_oldest()?;
        }
        Ok(())
    }

    /// Lets go of shown reference `kref`, or of every one (`None`).
    /// Returns how many were let go.
    pub fn forget_shown(&mut self, kref: Option<&str>) -> Result<u64, KernelError> {
        self.in_crank(|k| {
            let held: Vec<(String, String)> = match kref {
                Some(kref) => match k.state.get(&kref_key(kref))? {
                    Some(seq) => vec![(keys::shown(&seq), kref.to_owned())],
                    None => Vec::new(),
                },
                None => k.state.scan_prefix("shown.0")?.into_iter().collect(),
            };
            for (order, kref) in &held {
                k.state.delete(order)?;
                k.state.delete(&kref_key(kref))?;
                k.state.decref(kref)?;
            }
            let count = k.shown_count()? - held.len() as u64;
            k.state.set(keys::SHOWN_COUNT, &count.to_string())?;
            Ok(held.len() as u64)
        })
    }

    fn shown_count(&self) -> Result<u64, KernelError> {
        Ok(self.state.count(keys::SHOWN_COUNT)?)
    }

    fn let_go_oldest(&mut self) -> Result<(), KernelError> {
        let (oldest, kref) = self
            .state
            .first_under("shown.0")?
            .expect("kernel invariant: a shown ref is held, so its order entry exists");
        self.state.delete(&oldest)?;
        self.state.delete(&kref_key(&kref))?;
        let count = self.shown_count()?;
        self.state
            .set(keys::SHOWN_COUNT, &(count - 1).to_string())?;
        Ok(self.state.decref(&kref)?)
    }
}
