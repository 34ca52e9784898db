//! Endpoints: what the kernel routes to besides itself. Every endpoint has
//! a c-list, receives deliveries in kref space (a message, a notify, a GC
//! drop, an input it queued for itself) and makes its effects through the
//! kernel's tables in kref space (send, resolve, subscribe, drop).
//!
//! Vats are endpoints whose translation runs in the kernel (through their
//! workers). The other kinds are engines beside the kernel, attached as an
//! [`Endpoint`]: remote peers (the CapTP engine, ids `r<N>`) today, devices
//! (timers, gateways, HTTP effects) next. Their inputs arrive as cranks;
//! what they send out ([`Tables::emit`]) leaves after the crank commits
//! ([`crate::Kernel::take_outbound`]), as a vat's effects do.
//!
//! Routing is [`EndpointId::kind`] and one match in `kernel.rs`.

use crate::keys;
use std::any::Any;

use swingstore::StoreError;
use vom::CapData;

use crate::ids::{EndpointId, EndpointKind, Kref};
use crate::state::{KernelState, Message, PromiseState, RunQueueItem};

type StoreResult<T> = Result<T, StoreError>;

/// An engine that translates for the endpoints of one kind. Each method
/// runs inside the kernel's crank, and changes only tables: what it sends
/// out goes through [`Tables::emit`].
pub trait Endpoint: std::fmt::Debug {
    /// A message for `target`: an object `endpoint` exports, or a promise it
    /// decides (it takes over deciding `message.result`).
    fn deliver(
        &self,
        tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        target: &Kref,
        message: Message,
    ) -> StoreResult<()>;

    /// Promise `kpid`, which `endpoint` subscribed to, settled.
    fn notify(
        &self,
        tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        kpid: &Kref,
    ) -> StoreResult<()>;

    /// The kernel holds no reference to `ko` (which `endpoint` exports) any more.
    fn drop_export(
        &self,
        tables: &mut Tables<'_>,
        endpoint: &EndpointId,
        ko: &Kref,
    ) -> StoreResult<()>;

    /// An input `endpoint` queued for itself ([`Tables::queue_input`]), in
    /// run-queue order.
    fn input(&self, tables: &mut Tables<'_>, endpoint: &EndpointId, input: &str)
    -> StoreResult<()>;

    /// For [`crate::Kernel::check`]'s recount: the krefs that the engine's
    /// record `<endpoint>.<field>` (holding `value`) keeps a reachable
    /// reference to. The kernel counts c-lists itself; an engine's records
    /// beside them are the engine's to read.
    fn references_in_record(&self, endpoint: &EndpointId, field: &str, value: &str) -> Vec<String>;

    /// For [`crate::Kernel::check`]: every discrepancy in the engine's own
    /// records (its endpoints' states, its counters).
    fn check_records(&self, tables: &TablesRef<'_>) -> StoreResult<Vec<String>>;
}

/// The engines attached beside the vats, one per endpoint kind.
#[derive(Debug, Default)]
pub(crate) struct Engines {
    peers: Option<Box<dyn Endpoint>>,
    devices: Option<Box<dyn Endpoint>>,
}

impl Engines {
    pub(crate) fn attach(&mut self, kind: EndpointKind, engine: Box<dyn Endpoint>) {
        match kind {
            EndpointKind::Vat => panic!("kernel invariant: vats translate in the kernel"),
            EndpointKind::Peer => self.peers = Some(engine),
            EndpointKind::Device => self.devices = Some(engine),
        }
    }

    /// The engine of `kind`, if one is attached.
    pub(crate) fn get(&self, kind: EndpointKind) -> Option<&dyn Endpoint> {
        match kind {
            EndpointKind::Vat => None,
            EndpointKind::Peer => self.peers.as_deref(),
            EndpointKind::Device => self.devices.as_deref(),
        }
    }
}

/// The kernel's tables, as an endpoint engine reads them.
#[derive(Debug, Clone, Copy)]
pub struct TablesRef<'a> {
    state: &'a KernelState,
}

/// The kernel's tables, as an endpoint engine changes them in a crank.
#[derive(Debug)]
pub struct Tables<'a> {
    state: &'a mut KernelState,
}

impl<'a> TablesRef<'a> {
    pub(crate) fn new(state: &'a KernelState) -> TablesRef<'a> {
        TablesRef { state }
    }
}

impl<'a> Tables<'a> {
    pub(crate) fn new(state: &'a mut KernelState) -> Tables<'a> {
        Tables { state }
    }

    /// The same tables, to read.
    pub fn read(&self) -> TablesRef<'_> {
        TablesRef { state: self.state }
    }
}

/// The reads, on both handles.
macro_rules! reads {
    ($ty:ident) => {
        impl $ty<'_> {
            /// An engine's own record (keys under its endpoint ids, or its namespace).
            pub fn get(&self, key: &str) -> StoreResult<Option<String>> {
                self.state.get(key)
            }

            /// The count kept under `key` (absent: 0).
            pub fn count(&self, key: &str) -> StoreResult<u64> {
                self.state.count(key)
            }

            /// The records whose keys start with `prefix`, in key order.
            pub fn scan_prefix(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
                self.state.scan_prefix(prefix)
            }

            /// The first record whose key starts with `prefix`: what an
            /// engine's ordered table (timers by due time) has next.
            pub fn first_with_prefix(&self, prefix: &str) -> StoreResult<Option<(String, String)>> {
                let Some(key) = self.state.store.get_next_key(prefix)? else {
                    return Ok(None);
                };
                if !key.starts_with(prefix) {
                    return Ok(None);
                }
                let value = self.state.get(&key)?.unwrap_or_default();
                Ok(Some((key, value)))
            }

            /// What `endpoint`'s c-list calls `kref`.
            pub fn clist_vref(&self, endpoint: &str, kref: &str) -> StoreResult<Option<String>> {
                self.state.clist_vref(endpoint, kref)
            }

            /// The kref `endpoint`'s c-list entry `vref` names.
            pub fn clist_kref(&self, endpoint: &str, vref: &str) -> StoreResult<Option<Kref>> {
                self.state.clist_kref(endpoint, vref)
            }

            pub fn promise_state(&self, kpid: &str) -> StoreResult<Option<PromiseState>> {
                self.state.promise_state(kpid)
            }

            pub fn promise_decider(&self, kpid: &str) -> StoreResult<Option<EndpointId>> {
                self.state.promise_decider(kpid)
            }

            /// Whether what terminated `endpoint` held is still being
            /// released ([`Tables::schedule_cleanup`]'s slices are not done).
            pub fn cleanup_pending(&self, endpoint: &str) -> StoreResult<bool> {
                Ok(self.state.get(&keys::cleanup(&endpoint))?.is_some())
            }

            /// Whether `kref` names an object or promise that still exists.
            pub fn kref_exists(&self, kref: &str) -> StoreResult<bool> {
                self.state.kref_exists(kref)
            }
        }
    };
}

reads!(TablesRef);
reads!(Tables);

impl Tables<'_> {
    pub fn set(&mut self, key: &str, value: &str) -> StoreResult<()> {
        self.state.set(key, value)
    }

    /// Sets `key`, which names a promise or object this crank allocated
    /// (so no commit can hold it): deleted before the commit, as an
    /// answer's record often is, it costs SQLite nothing.
    pub fn set_new(&mut self, key: &str, value: &str) -> StoreResult<()> {
        self.state.store.set_new(key, value)
    }

    pub fn delete(&mut self, key: &str) -> StoreResult<()> {
        self.state.delete(key)
    }

    /// Takes the next number from the counter at `key` (counters start at 1).
    pub fn next_id(&mut self, key: &str) -> StoreResult<u64> {
        self.state.next_id(key)
    }

    /// Adds `delta` to the count at `key` (deleted at zero); returns it.
    ///
    /// # Panics
    ///
    /// If the count would go negative: counts never do.
    pub fn add_to_count(&mut self, key: &str, delta: i64) -> StoreResult<u64> {
        let now = self.state.count(key)? as i64 + delta;
        assert!(now >= 0, "kernel invariant: {key} never goes negative");
        if now == 0 {
            self.state.delete(key)?;
        } else {
            self.state.set(key, &now.to_string())?;
        }
        Ok(now as u64)
    }

    pub fn clist_add(&mut self, endpoint: &str, kref: &str, vref: &str) -> StoreResult<()> {
        self.state.clist_add(endpoint, kref, vref)
    }

    pub fn clist_remove(&mut self, endpoint: &str, kref: &str) -> StoreResult<()> {
        self.state.clist_remove(endpoint, kref)
    }

    pub fn clist_set_reachable(
        &mut self,
        endpoint: &str,
        kref: &str,
        reachable: bool,
    ) -> StoreResult<()> {
        self.state.clist_set_reachable(endpoint, kref, reachable)
    }

    pub fn incref(&mut self, kref: &str) -> StoreResult<()> {
        self.state.incref(kref)
    }

    pub fn decref(&mut self, kref: &str) -> StoreResult<()> {
        self.state.decref(kref)
    }

    /// Holds `kpid` for a caller outside the kernel, until `Kernel::release`.
    pub fn pin(&mut self, kpid: &str) -> StoreResult<()> {
        self.state.pin(kpid)
    }

    /// An object `endpoint` exports; if nothing takes it in this crank, the
    /// crank's end drops it again.
    pub fn allocate_import(&mut self, endpoint: &str) -> StoreResult<Kref> {
        let kref = self.state.allocate_object(endpoint)?;
        self.state.maybe_unreachable.insert(kref.to_string());
        Ok(kref)
    }

    /// A new unresolved promise, decided by `decider` (or by the kernel).
    pub fn allocate_promise(&mut self, decider: Option<&str>) -> StoreResult<Kref> {
        self.state.allocate_promise(decider)
    }

    pub fn set_promise_decider(&mut self, kpid: &str, decider: Option<&str>) -> StoreResult<()> {
        self.state.set_promise_decider(kpid, decider)
    }

    /// `endpoint` is told (a notify) when `kpid` settles.
    pub fn subscribe(&mut self, kpid: &str, endpoint: &str) -> StoreResult<()> {
        self.state.add_subscriber(kpid, endpoint)
    }

    /// Settles `kpid` and queues its subscribers' notifies.
    pub fn resolve(&mut self, kpid: &str, rejected: bool, data: &CapData) -> StoreResult<()> {
        crate::state::settle_promise(self.state, kpid, rejected, data)
    }

    /// Rejects `kpid` with `reason`, unless it is settled (or `None`).
    pub fn reject_if_unresolved(&mut self, kpid: Option<&str>, reason: &str) -> StoreResult<()> {
        let Some(kpid) = kpid else { return Ok(()) };
        if self.state.promise_state(kpid)? == Some(PromiseState::Unresolved) {
            let data = crate::state::error_capdata(reason);
            crate::state::settle_promise(self.state, kpid, true, &data)?;
        }
        Ok(())
    }

    /// Queues a message to `target` on the run queue.
    pub fn send(&mut self, target: &str, message: Message) -> StoreResult<()> {
        let target = Kref::from_table(target);
        self.state
            .push_run_queue(RunQueueItem::Send { target, message })
    }

    /// Queues a notify of settled `kpid` to `endpoint`.
    pub fn queue_notify(&mut self, endpoint: &str, kpid: &str) -> StoreResult<()> {
        self.state.push_run_queue(RunQueueItem::Notify {
            vat: EndpointId::from_table(endpoint),
            promise: Kref::from_table(kpid),
        })
    }

    /// Queues an input for `endpoint` itself, delivered in run-queue order
    /// (after what the queue already holds).
    pub fn queue_input(&mut self, endpoint: &str, input: &str) -> StoreResult<()> {
        self.state.push_run_queue(RunQueueItem::Input {
            endpoint: EndpointId::from_table(endpoint),
            input: input.to_owned(),
        })
    }

    /// Sends `bytes` to `endpoint`'s outside once this crank commits (dropped
    /// if it aborts).
    pub fn emit(&mut self, endpoint: &str, bytes: Vec<u8>) {
        self.state
            .outbox_crank
            .push((EndpointId::from_table(endpoint), bytes));
    }

    /// `endpoint` is terminated: what its c-list holds is released, a slice
    /// per crank, like a terminated vat's.
    pub fn schedule_cleanup(&mut self, endpoint: &str) -> StoreResult<()> {
        self.state.cleanup_maybe = true;
        self.state.set(&keys::cleanup(&endpoint), "")
    }
}

/// Memory an engine keeps beside the kernel (connections' states, caches),
/// by type: one slot per engine, made on first use.
#[derive(Debug, Default)]
pub(crate) struct EngineMemory {
    slots: Vec<Box<dyn Any>>,
}

impl EngineMemory {
    pub(crate) fn get<T: Any>(&self) -> Option<&T> {
        self.slots.iter().find_map(|slot| slot.downcast_ref())
    }

    pub(crate) fn get_mut<T: Any + Default>(&mut self) -> &mut T {
        let index = match self.slots.iter().position(|slot| slot.is::<T>()) {
            Some(index) => index,
            None => {
                self.slots.push(Box::new(T::default()));
                self.slots.len() - 1
            }
        };
        self.slots[index]
            .downcast_mut()
            .expect("kernel invariant: the slot found holds its type")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_memory_keeps_one_slot_per_type() {
        let mut memory = EngineMemory::default();
        assert!(memory.get::<Vec<u8>>().is_none());
        memory.get_mut::<Vec<u8>>().push(7);
        *memory.get_mut::<String>() = "x".into();
        assert_eq!(memory.get::<Vec<u8>>(), Some(&vec![7]));
        assert_eq!(memory.get::<String>().map(String::as_str), Some("x"));
    }
}
