//! Exactly-once sends from outside the kernel: a send made under an
//! idempotency key is queued once; a retry under the same key (after a
//! crash, a killed client, a lost reply) gets the first send's result
//! promise instead of queueing another message.
//!
//! | key | value |
//! |---|---|
//! | `idem.key.<key>` | `<kpid> <digest>`: the first send's result (pinned) and what it asked |
//! | `idem.order.<seq>` | `<key>`: keys in the order they were made, oldest first |
//! | `kernel.nextIdem` | the next `<seq>` |
//! | `kernel.idemCount` | how many keys are kept |
//!
//! The record is written with the queued message, so both are committed
//! together or not at all. At most [`IDEMPOTENCY_KEYS_MAX`] keys are kept:
//! making one more forgets the oldest (and lets go of its result).

use crate::keys;
use vom::CapData;

use crate::ids::Kref;
use crate::kernel::{Kernel, KernelError};

/// `idempotency_keys_max`: how many idempotency keys the kernel remembers.
pub const IDEMPOTENCY_KEYS_MAX: u64 = 10_000;
/// `idempotency_key_bytes_max`: the longest key.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

fn record_key(key: &str) -> String {
    keys::idempotency_record(&key)
}

fn order_key(seq: u64) -> String {
    keys::idempotency_order(seq)
}

/// What a send asked, as a content address: a retry must ask the same.
fn digest(target: &str, method: &str, args: &CapData) -> String {
    let request = serde_json::json!([target, method, args.body, args.slots]);
    swingstore::cid_of(request.to_string().as_bytes()).to_string()
}

/// Whether an idempotent send was queued now or found from an earlier try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// Queued now: its result promise.
    Fresh(Kref),
    /// Queued by an earlier try under the same key: that try's result promise.
    Again(Kref),
}

impl Queued {
    pub fn kpid(&self) -> &Kref {
        match self {
            Queued::Fresh(kpid) | Queued::Again(kpid) => kpid,
        }
    }
}

impl Kernel {
    /// The result promise of the send kept under `key`, if there is one.
    pub fn kept_send(&self, key: &str) -> Result<Option<Kref>, KernelError> {
        let kept = self.state.get(&record_key(key))?;
        Ok(kept.map(|record| Kref::from_table(record.split(' ').next().unwrap_or_default())))
    }

    /// Queues `method(args)` to `target` unless a send under `key` was
    /// queued before; either way returns the result promise, which stays
    /// pinned while the key is kept (do not [`Kernel::release`] it).
    pub fn queue_message_once(
        &mut self,
        key: &str,
        target: &Kref,
        method: &str,
        args: CapData,
    ) -> Result<Queued, KernelError> {
        if key.is_empty()
            || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(KernelError::BadIdempotencyKey {
                key: key.to_owned(),
                max: IDEMPOTENCY_KEY_BYTES_MAX,
            });
        }
        let asked = digest(target, method, &args);
        if let Some(kept) = self.state.get(&record_key(key))? {
            let (kpid, digest) = kept
                .split_once(' ')
                .unwrap_or_else(|| panic!("kernel invariant: idem.key.{key} is '<kpid> <digest>'"));
            if digest != asked {
                return Err(KernelError::IdempotencyKeyReused(key.to_owned()));
            }
            return Ok(Queued::Again(Kref::from_table(kpid)));
        }
        self.check_message_refs(target, &args)?;
        // The message and its key are kept in one crank: both or neither.
        let kpid = self.in_crank(|k| {
            let kpid = k.queue_in_crank(target, method, args)?;
            k.keep_key(key, &kpid, &asked)?;
            Ok::<_, KernelError>(kpid)
        })?;
        Ok(Queued::Fresh(kpid))
    }

    /// Records `key` for the send whose result is `kpid` (in a crank).
    fn keep_key(&mut self, key: &str, kpid: &str, asked: &str) -> Result<(), KernelError> {
        let seq = self.state.next_id(keys::NEXT_IDEMPOTENCY)?;
        self.state
            .set(&record_key(key), &format!("{kpid} {asked}"))?;
        self.state.set(&order_key(seq), key)?;
        let count = self.kept_keys()? + 1;
        self.state
            .set(keys::IDEMPOTENCY_COUNT, &count.to_string())?;
        if count > IDEMPOTENCY_KEYS_MAX {
            self.forget_oldest_key()?;
        }
        Ok(())
    }

    /// How many idempotency keys are kept.
    fn kept_keys(&self) -> Result<u64, KernelError> {
        Ok(self.state.count(keys::IDEMPOTENCY_COUNT)?)
    }

    fn forget_oldest_key(&mut self) -> Result<(), KernelError> {
        let (oldest, key) = self
            .state
            .first_under("idem.order.")?
            .expect("kernel invariant: idem.order has an entry per kept key");
        let record = self
            .state
            .get(&record_key(&key))?
            .unwrap_or_else(|| panic!("kernel invariant: idem.key.{key} is kept"));
        let kpid = record.split(' ').next().expect("split yields one part");
        self.state.delete(&oldest)?;
        self.state.delete(&record_key(&key))?;
        let count = self.kept_keys()?;
        assert!(
            count > 0,
            "kernel invariant: a key is kept, so the count is positive"
        );
        self.state
            .set(keys::IDEMPOTENCY_COUNT, &(count - 1).to_string())?;
        Ok(self.state.unpin(kpid)?)
    }
}
