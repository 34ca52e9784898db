//! Every table the kernel keeps, as keys in swingstore. The kernel keeps
//! two copies of its own, each undone with the crank that made it: the open
//! crank's promise records, and the run-queue items queued since the last
//! commit ([`crate::run_queue`], written to the store just before it).
//! Otherwise a crank's view is the store's view, so aborting the crank
//! rolls back every table at once.
//!
//! | key | value |
//! |---|---|
//! | `kernel.schema` | [`STORE_SCHEMA_VERSION`]: the layout this table describes, checked at open |
//! | `kernel.nextVat` / `kernel.nextObject` / `kernel.nextPromise` | next id to allocate |
//! | `runQueue.head` / `runQueue.tail` / `runQueue.<n>` | the run queue: JSON [`RunQueueItem`]s (those queued since the last commit are written just before the next) |
//! | `ko<N>.owner` | the vat that exports object `ko<N>` |
//! | `ko<N>.refs` | `<reachable>,<recognizable>`: how many places can reach it and recognize it |
//! | `gc.<action>.<vat>.<kref>` | a pending GC action (`drop`, `retire`: to the exporter; `retireImport`: to an importer, value its vref) |
//! | `cleanup.<vat>` | a removed vat (`vat rm`) whose c-list and vatstore are still being deleted |
//! | `kp<N>.promise` | its record (`crate::promise::PromiseRecord`): `<state> <refs> <queued> <pinned> <decider> <subscribers>`, e.g. `unresolved 2 0 0 v3 r2,v1`: `unresolved`, `fulfilled` or `rejected`; how many places refer to it (c-lists, run queue, queues, data, pet names, pins); how many messages wait (at most [`PROMISE_QUEUE_MAX`]); `1` while a host (the CLI) waits for its settlement; the vat (or engine endpoint) that may resolve it (`-`: the kernel); the vats (or peers) to notify when it settles, each once, in id order (`-`: none) |
//! | `<id>.decided.<kpid>` | `kpid` is unresolved and `<id>` decides it (the index of the records' deciders); `kept` when the decider keeps it in durable state (`keepDecided`: a restart does not reject it) |
//! | `kp<N>.queue.<n>` | the `n`th message waiting for the resolution (JSON [`Message`]) |
//! | `kp<N>.data` | the settlement's capdata (krefs in its slots) |
//! | `v<N>.name`, `.bundle`, `.state`, `.reason`, `.options` | the vat's record ([`VatState`] in `.state`) |
//! | `v<N>.active` | when it was last delivered to (Unix seconds, written at most a minute apart) |
//! | `v<N>.faults` | how many deliveries in a row faulted (absent: none) |
//! | `v<N>.nextObject` / `v<N>.nextPromise` | next import ids (`o-N`, `p-N`) |
//! | `v<N>.c.<kref>` | `R <vref>` (reachable) or `_ <vref>` (recognizable only) |
//! | `v<N>.c.<vref>` | `<kref>` |
//! | `v<N>.vs.<key>` | the vat's vatstore |
//! | `vat.name.<name>` | the vat's id |
//! | `pet.<name>` | the kref a CLI pet name is bound to |
//! | `heapDirty.<vat>` | what the vat's heap holds beyond its vatstore, by its last report (absent: nothing, so it may sleep) |

use crate::fresh::Fresh;
use crate::ids::{EndpointId, EndpointKind, Kref};
use crate::keys;
use crate::promise::{PromiseRecord, Settlement};
use crate::run_queue::UnstoredItems;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use swingstore::{StoreError, SwingStore};
use vom::{CapData, Value};

/// A message as the kernel keeps it: slots are krefs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub method: String,
    pub args: CapData,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Kref>,
}

/// One unit of work: a crank delivers exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RunQueueItem {
    Send {
        target: Kref,
        message: Message,
    },
    Notify {
        vat: EndpointId,
        promise: Kref,
    },
    /// An input an endpoint engine queued for itself (see
    /// [`crate::Tables::queue_input`]): delivered to it in queue order, after
    /// every message the run queue already held.
    Input {
        endpoint: EndpointId,
        input: String,
    },
    /// A peer's disembargo to reflect, as stores of schema 2 and earlier
    /// queued it: read, and delivered as the CapTP engine's input
    /// `disembargo <export> <embargo>`; no longer written.
    Loopback {
        peer: EndpointId,
        export: u32,
        embargo: u32,
    },
}

/// Where a vat is in its life, as `v<N>.state` records it. Only `Removed`
/// loses data, and only `vat rm` leads there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VatState {
    /// Deliveries reach it.
    Running,
    /// Its start faulted, or too many deliveries in a row did: everything is
    /// kept, messages to it are rejected until `vat resume` or `vat upgrade`.
    Suspended,
    /// It broke the ABI, or its owner ended it: everything is kept (other
    /// vats' references stay valid, messages are rejected) until `vat rm`.
    Terminated,
    /// `vat rm` deleted its c-list and vatstore (a slice per crank).
    Removed,
}

impl VatState {
    /// The word stored in `v<N>.state` and shown by `vat list`.
    pub fn as_str(self) -> &'static str {
        match self {
            VatState::Running => "running",
            VatState::Suspended => "suspended",
            VatState::Terminated => "terminated",
            VatState::Removed => "removed",
        }
    }

    pub fn parse(text: &str) -> Option<VatState> {
        [
            VatState::Running,
            VatState::Suspended,
            VatState::Terminated,
            VatState::Removed,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

impl std::fmt::Display for VatState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kernel promise's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromiseState {
    Unresolved,
    Fulfilled(CapData),
    Rejected(CapData),
}

pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// The layout of the kernel's tables, as `kernel.schema` records it.
/// Version 1 kept a promise's queue as one JSON array (`kp<N>.queue`) and
/// its subscribers comma-joined (`kp<N>.subscribers`); version 2 had no
/// index of the promises each endpoint decides (`<id>.decided.<kpid>`);
/// version 3 had no record of what vats' heaps hold (`heapDirty.<vat>`);
/// version 4 kept a promise's state, count, queue length, pin and decider a
/// key each; version 5 kept its subscribers a key each (`kp<N>.sub.<id>`).
/// A store of an older version is brought to this layout when it is opened.
pub const STORE_SCHEMA_VERSION: u32 = 6;
/// `heap_report_bytes_max`: the longest account of a vat's heap kept
/// (`vat list` shows it); longer ones are cut.
pub const HEAP_REPORT_BYTES_MAX: usize = 256;
/// What a vat that has not said what its heap holds is said to hold.
pub(crate) const HEAP_UNREPORTED: &str = "its heap has not reported what it holds";
/// `promise_queue_max`: how many messages may wait on one unresolved
/// promise (a message past it is rejected, saying so).
pub const PROMISE_QUEUE_MAX: u64 = 10_000;

fn queue_prefix(kpid: &str) -> String {
    keys::queue_prefix(&kpid)
}

const SCHEMA_KEY: &str = keys::SCHEMA;

/// What a store holds, by its schema key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// This kernel's tables.
    Current,
    /// Another schema's (or another program's) tables.
    Other(String),
}

/// Marks a new store as holding this kernel's tables.
pub fn mark_schema(store: &mut SwingStore) -> StoreResult<()> {
    store.begin_crank()?;
    store.set(SCHEMA_KEY, &STORE_SCHEMA_VERSION.to_string())?;
    store.end_crank()
}

/// Which tables `store` holds. A store made before the schema key existed
/// (it has kernel keys and no schema) is marked as the current schema,
/// which is its layout.
pub fn schema_of(store: &mut SwingStore) -> StoreResult<Schema> {
    let found = store.get(SCHEMA_KEY)?;
    let legacy = match found.as_deref() {
        Some(found) if found == STORE_SCHEMA_VERSION.to_string() => return Ok(Schema::Current),
        Some("1" | "2" | "3" | "4" | "5") => true,
        Some(found) => return Ok(Schema::Other(found.to_owned())),
        // A home made by `vat init` before the schema key, that ran nothing,
        // holds no key at all (an emptied file is refused before it is opened).
        None => {
            store.get_next_key("")?.is_none()
                || store.get(keys::NEXT_VAT)?.is_some()
                || store.get(keys::RUN_QUEUE_HEAD)?.is_some()
        }
    };
    if !legacy {
        return Ok(Schema::Other("absent".to_owned()));
    }
    // An older version's tables, rewritten in one commit with the new
    // schema mark, so a crash leaves either.
    store.begin_crank()?;
    let found = found.as_deref();
    if !matches!(found, Some("2" | "3" | "4")) {
        migrate_waiters_from_v1(store)?;
    }
    if !matches!(found, Some("3" | "4")) {
        index_decided_promises(store)?;
    }
    if !matches!(found, Some("4" | "5")) {
        mark_heaps_unreported(store)?;
    }
    if found != Some("5") {
        fold_promise_records(store)?;
    }
    fold_subscribers(store)?;
    store.end_crank()?;
    mark_schema(store)?;
    store.commit()?;
    Ok(Schema::Current)
}

/// Builds version 3's index of the unresolved promises each endpoint
/// decides (in the current crank).
fn index_decided_promises(store: &mut SwingStore) -> StoreResult<()> {
    for (key, decider) in store.scan_prefix("kp")? {
        if let Some(kpid) = key.strip_suffix(".decider") {
            store.set(&keys::decided(&decider, &kpid), "")?;
        }
    }
    Ok(())
}

/// Version 5 keeps a promise's state, count, queue length, pin and decider
/// in one record (`kp<N>.promise`), where version 4 and earlier had a key
/// each (in the current crank).
fn fold_promise_records(store: &mut SwingStore) -> StoreResult<()> {
    let mut records: std::collections::BTreeMap<String, PromiseRecord> = Default::default();
    let mut with_state: std::collections::BTreeSet<String> = Default::default();
    for (key, value) in store.scan_prefix("kp")? {
        let Some((kpid, field)) = key.split_once('.') else {
            continue;
        };
        let record = || PromiseRecord::new(None);
        let number = |text: &str| -> u64 {
            text.parse()
                .unwrap_or_else(|_| panic!("kernel invariant: {key} (schema 4) is a count"))
        };
        let entry = records.entry(kpid.to_owned()).or_insert_with(record);
        match field {
            "state" => {
                entry.settlement = Settlement::parse(&value).unwrap_or_else(|| {
                    panic!("kernel invariant: {key} (schema 4) is a promise state")
                });
                with_state.insert(kpid.to_owned());
            }
            "refs" => entry.refs = number(&value),
            "queued" => entry.queued = number(&value),
            "pinned" => entry.pinned = true,
            "decider" => entry.decider = Some(EndpointId::from_table(&value)),
            _ => continue,
        }
        store.delete(&key)?;
    }
    // A promise is its state: fields left without one are dropped.
    for (kpid, record) in records {
        if with_state.contains(&kpid) {
            store.set(&keys::promise(&kpid), &record.to_text())?;
        }
    }
    Ok(())
}

/// Version 6 keeps a promise's subscribers in its record, where version 5
/// had a key each (`kp<N>.sub.<id>`); version 5's records lack the field
/// (in the current crank).
fn fold_subscribers(store: &mut SwingStore) -> StoreResult<()> {
    let mut records: std::collections::BTreeMap<String, PromiseRecord> = Default::default();
    let mut subscriptions: Vec<(String, EndpointId)> = Vec::new();
    for (key, value) in store.scan_prefix("kp")? {
        let Some((kpid, field)) = key.split_once('.') else {
            continue;
        };
        if field == "promise" {
            let record = PromiseRecord::parse(&value)
                .or_else(|| PromiseRecord::parse_schema_5(&value))
                .unwrap_or_else(|| {
                    panic!("kernel invariant: {key} (schema 5) is a promise record")
                });
            records.insert(kpid.to_owned(), record);
        } else if let Some(id) = field.strip_prefix("sub.") {
            subscriptions.push((kpid.to_owned(), EndpointId::from_table(id)));
            store.delete(&key)?;
        }
    }
    // A promise is its record: subscriptions to none are dropped.
    for (kpid, id) in subscriptions {
        // The keys were scanned in order, so the subscribers are in id order.
        if let Some(record) = records.get_mut(&kpid) {
            record.subscribers.push(id);
        }
    }
    for (kpid, record) in records {
        store.set(&keys::promise(&kpid), &record.to_text())?;
    }
    Ok(())
}

/// Version 4 keeps awake every vat whose heap has not said it holds
/// nothing beyond its vatstore: the vats of an older store have not (in
/// the current crank).
fn mark_heaps_unreported(store: &mut SwingStore) -> StoreResult<()> {
    for (_, vat) in store.scan_prefix("vat.name.")? {
        if store.get(&keys::state(&vat))?.as_deref() != Some("removed") {
            store.set(&keys::heap_dirty(&vat), HEAP_UNREPORTED)?;
        }
    }
    Ok(())
}

/// Rewrites version 1's `kp<N>.queue` arrays and `kp<N>.subscribers` lists
/// as a key per message and per subscriber (in the current crank).
fn migrate_waiters_from_v1(store: &mut SwingStore) -> StoreResult<()> {
    for (key, value) in store.scan_prefix("kp")? {
        if let Some(kpid) = key.strip_suffix(".queue") {
            let queue: Vec<Message> = serde_json::from_str(&value).unwrap_or_else(|e| {
                panic!("kernel invariant: {key} (schema 1) is a message list: {e}")
            });
            for (n, message) in queue.iter().enumerate() {
                let text =
                    serde_json::to_string(message).expect("kernel invariant: messages serialize");
                store.set(&format!("{}{n:010}", queue_prefix(kpid)), &text)?;
            }
            store.set(&keys::queued(&kpid), &queue.len().to_string())?;
            store.delete(&key)?;
        } else if let Some(kpid) = key.strip_suffix(".subscribers") {
            for vat in value.split(',').filter(|vat| !vat.is_empty()) {
                store.set(&keys::subscriber(&kpid, &vat), "")?;
            }
            store.delete(&key)?;
        }
    }
    Ok(())
}

/// The kernel's tables over one swingstore.
#[derive(Debug)]
pub(crate) struct KernelState {
    pub(crate) store: SwingStore,
    /// Promises whose count reached zero in this crank: deleted when it ends,
    /// unless something took a reference again by then.
    pub(crate) maybe_free: std::collections::BTreeSet<String>,
    /// Objects whose reachable count reached zero in this crank: at its end,
    /// those still at zero get GC actions for their exporters.
    pub(crate) maybe_unreachable: std::collections::BTreeSet<String>,
    /// False only when the store is known to hold no GC action: spares the
    /// crank loop a store query per crank. Set whenever an action is added.
    pub(crate) gc_actions_maybe: bool,
    /// The same for terminated vats' cleanup.
    pub(crate) cleanup_maybe: bool,
    /// What endpoints emitted in the crank in progress: dropped if it aborts.
    pub(crate) outbox_crank: Vec<(EndpointId, Vec<u8>)>,
    /// What ended cranks emitted, released at the next commit.
    pub(crate) outbox_ended: Vec<(EndpointId, Vec<u8>)>,
    /// Vats' log lines not yet taken ([`crate::Kernel::take_log_lines`]),
    /// aborted cranks' too, at most [`LOG_LINES_PENDING_MAX`].
    pub(crate) log_lines: std::collections::VecDeque<(EndpointId, String)>,
    /// Refs allocated since the last commit: reads of keys naming them
    /// skip SQLite, which cannot hold such keys yet.
    pub(crate) fresh: Fresh,
    /// The promise records cranks read or changed since the last commit
    /// (`None`: no such promise, or freed), and whether the open crank
    /// changed them. A crank reads and changes a promise's record many
    /// times (each reference taken or dropped), and the next cranks touch
    /// the same promises (a send, its settlement, the notify): a record is
    /// parsed once, and written back once at the end of each crank that
    /// changed it. An aborted crank, a commit and [`PROMISE_RECORDS_CACHED_MAX`]
    /// empty it. Outside a crank a changed record goes straight to the
    /// store and leaves the cache (a new promise's is cached as written).
    records: std::cell::RefCell<FxHashMap<String, CachedRecord>>,
    /// The promises whose cached records the open crank changed, each once:
    /// what its end writes back (not the whole cache, which holds the
    /// records of every crank since the commit).
    changed_records: Vec<String>,
    /// The run queue's items queued since the last commit
    /// ([`crate::run_queue`]): in the store only once the commit nears.
    unstored: UnstoredItems<RunQueueItem>,
    /// The run queue's bounds (head, tail) as the store holds them, once
    /// read: every crank reads both and moves one. Forgotten when a crank
    /// aborts (the store undoes its moves).
    queue_bounds: std::cell::Cell<Option<(u64, u64)>>,
    /// For each endpoint asked about, a number at least that of every
    /// promise vref it allocated (`p+N`) that the store may hold an entry
    /// of its c-list for: counted once from the store, then raised as
    /// entries are added. A vat allocates a new `p+N` for each send's
    /// result, and one above this is looked for in memory alone, not by a
    /// SQLite query that would find nothing.
    own_promise_high: std::cell::RefCell<FxHashMap<String, u64>>,
}

/// Run-queue item `index` as the store holds it: its key and its JSON.
fn run_queue_entry(index: u64, item: &RunQueueItem) -> (String, String) {
    let text = serde_json::to_string(item).expect("kernel invariant: run-queue items serialize");
    (keys::run_queue(index), text)
}

/// A promise record as the open crank knows it.
#[derive(Debug)]
struct CachedRecord {
    record: Option<PromiseRecord>,
    changed: bool,
}

/// `promise_records_cached_max`: how many parsed promise records the kernel
/// keeps between cranks (past it, the cache is emptied as a crank ends).
pub(crate) const PROMISE_RECORDS_CACHED_MAX: usize = 4_096;

/// `log_lines_pending_max`: how many vat log lines the kernel holds until
/// its host takes them (the oldest go first).
pub const LOG_LINES_PENDING_MAX: usize = 10_000;

/// The krefs a message refers to: its result and its arguments.
pub(crate) fn krefs_in_message(message: &Message) -> impl Iterator<Item = &str> {
    message
        .result
        .as_deref()
        .into_iter()
        .chain(message.args.slots.iter().map(String::as_str))
}

/// The krefs a run-queue item refers to.
pub(crate) fn krefs_in_item(item: &RunQueueItem) -> Vec<&str> {
    match item {
        RunQueueItem::Send { target, message } => std::iter::once(target.as_str())
            .chain(krefs_in_message(message))
            .collect(),
        RunQueueItem::Notify { promise, .. } => vec![promise.as_str()],
        RunQueueItem::Input { .. } | RunQueueItem::Loopback { .. } => Vec::new(),
    }
}

/// A kind of GC action, delivered to a vat before ordinary work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GcAction {
    /// Nothing can reach the exporter's object any more.
    Drop,
    /// Nothing can recognize it either: the exporter forgets it.
    Retire,
    /// The exporter retired an object this importer still recognized.
    RetireImport,
}

impl GcAction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            GcAction::Drop => "drop",
            GcAction::Retire => "retire",
            GcAction::RetireImport => "retireImport",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<GcAction> {
        match name {
            "drop" => Some(GcAction::Drop),
            "retire" => Some(GcAction::Retire),
            "retireImport" => Some(GcAction::RetireImport),
            _ => None,
        }
    }
}

fn parse_counter(key: &str, text: Option<String>) -> u64 {
    text.map_or(1, |t| {
        t.parse()
            .unwrap_or_else(|_| panic!("kernel invariant: {key} holds a number, found {t:?}"))
    })
}

impl KernelState {
    /// The tables over `store`, with nothing yet known of them.
    pub(crate) fn new(store: SwingStore) -> KernelState {
        KernelState {
            store,
            maybe_free: Default::default(),
            maybe_unreachable: Default::default(),
            // Unknown until looked at: the store may hold some.
            gc_actions_maybe: true,
            cleanup_maybe: true,
            outbox_crank: Vec::new(),
            outbox_ended: Vec::new(),
            log_lines: Default::default(),
            fresh: Fresh::default(),
            records: Default::default(),
            changed_records: Vec::new(),
            unstored: Default::default(),
            queue_bounds: Default::default(),
            own_promise_high: Default::default(),
        }
    }

    /// The count kept under `key` (absent: 0).
    pub(crate) fn count(&self, key: &str) -> StoreResult<u64> {
        Ok(self.get(key)?.map_or(0, |count| {
            count
                .parse()
                .unwrap_or_else(|_| panic!("kernel invariant: {key} is a count, found {count:?}"))
        }))
    }

    /// The first key under `prefix` (in byte order), and its value.
    pub(crate) fn first_under(&self, prefix: &str) -> StoreResult<Option<(String, String)>> {
        let Some(key) = self
            .store
            .get_next_key(prefix)?
            .filter(|key| key.starts_with(prefix))
        else {
            return Ok(None);
        };
        let value = self
            .get(&key)?
            .unwrap_or_else(|| panic!("kernel invariant: the key {key} just found exists"));
        Ok(Some((key, value)))
    }

    /// The state of vat `vat`, which exists.
    pub(crate) fn vat_state(&self, vat: &str) -> StoreResult<VatState> {
        let text = self.get(&keys::state(&vat))?;
        Ok(text
            .as_deref()
            .and_then(VatState::parse)
            .unwrap_or_else(|| {
                panic!("kernel invariant: {vat}.state is a vat state, not {text:?}")
            }))
    }

    /// Records `vat`'s new state and why (no reason: running again).
    pub(crate) fn set_vat_state(
        &mut self,
        vat: &str,
        state: VatState,
        reason: Option<&str>,
    ) -> StoreResult<()> {
        self.set(&keys::state(&vat), state.as_str())?;
        match reason {
            Some(reason) => self.set(&keys::reason(&vat), reason),
            None => self.delete(&keys::reason(&vat)),
        }
    }

    pub(crate) fn get(&self, key: &str) -> StoreResult<Option<String>> {
        // Most reads find the key in the store's memory: only a miss needs
        // to know whether SQLite could hold it.
        if let Some(value) = self.store.get_cached(key)? {
            return Ok(value);
        }
        if self.fresh.names_fresh(key) {
            return self.store.get_uncommitted(key);
        }
        self.store.get(key)
    }

    /// Records what `vat`'s heap holds beyond its vatstore (empty: nothing),
    /// writing only when that changed. Cut to [`HEAP_REPORT_BYTES_MAX`].
    pub(crate) fn set_heap_report(&mut self, vat: &str, holds: &str) -> StoreResult<()> {
        let key = keys::heap_dirty(&vat);
        let mut holds = holds.to_owned();
        if holds.len() > HEAP_REPORT_BYTES_MAX {
            let mut end = HEAP_REPORT_BYTES_MAX;
            while !holds.is_char_boundary(end) {
                end -= 1;
            }
            holds.truncate(end);
        }
        let stored = self.get(&key)?;
        match (holds.is_empty(), stored) {
            (true, None) => Ok(()),
            (true, Some(_)) => self.delete(&key),
            (false, Some(old)) if old == holds => Ok(()),
            (false, _) => self.set(&key, &holds),
        }
    }

    /// What `vat`'s heap holds beyond its vatstore, by its last report
    /// (`None`: nothing; a vat that never reported is said to).
    pub(crate) fn heap_report(&self, vat: &str) -> StoreResult<Option<String>> {
        self.get(&keys::heap_dirty(&vat))
    }

    pub(crate) fn set(&mut self, key: &str, value: &str) -> StoreResult<()> {
        self.store.set(key, value)
    }

    /// Deletes `key`. A key of a ref allocated since the last commit
    /// (a promise made and freed between two commits, its subscribers
    /// and index entries) was never in SQLite: the commit skips it, rather
    /// than sending a deletion that finds nothing and caching that it did.
    pub(crate) fn delete(&mut self, key: &str) -> StoreResult<()> {
        if self.fresh.names_fresh(key) {
            return self.store.delete_new(key);
        }
        self.store.delete(key)
    }

    /// Takes the next number from the counter at `key` (counters start at 1).
    pub(crate) fn next_id(&mut self, key: &str) -> StoreResult<u64> {
        let id = parse_counter(key, self.get(key)?);
        self.set(key, itoa::Buffer::new().format(id + 1))?;
        Ok(id)
    }

    pub(crate) fn allocate_vat_id(&mut self) -> StoreResult<EndpointId> {
        Ok(EndpointId::new(
            EndpointKind::Vat,
            self.next_id(keys::NEXT_VAT)?,
        ))
    }

    pub(crate) fn allocate_object(&mut self, owner: &str) -> StoreResult<Kref> {
        let kref = Kref::from_table(keys::numbered("ko", self.next_id(keys::NEXT_OBJECT)?));
        self.fresh.note_kref(&kref);
        self.store.set_new(&keys::owner(&kref), owner)?;
        Ok(kref)
    }

    /// A new unresolved promise, decided by `decider` (or by the kernel).
    pub(crate) fn allocate_promise(&mut self, decider: Option<&str>) -> StoreResult<Kref> {
        let kpid = Kref::from_table(keys::numbered("kp", self.next_id(keys::NEXT_PROMISE)?));
        self.fresh.note_kref(&kpid);
        let record = PromiseRecord::new(decider.map(EndpointId::from_table));
        self.store
            .set_new(&keys::promise(&kpid), &record.to_text())?;
        // Written above (set_new: a record freed before the commit costs
        // SQLite nothing), and cached as written, replacing any read of it.
        let cached = CachedRecord {
            record: Some(record),
            changed: false,
        };
        self.records.get_mut().insert(kpid.to_string(), cached);
        if let Some(vat) = decider {
            self.store.set_new(&keys::decided(&vat, &kpid), "")?;
        }
        Ok(kpid)
    }

    pub(crate) fn object_owner(&self, kref: &str) -> StoreResult<Option<EndpointId>> {
        Ok(self
            .get(&keys::owner(&kref))?
            .map(|owner| EndpointId::from_table(&owner)))
    }

    /// `kpid`'s record (`None`: no such promise, or freed).
    pub(crate) fn promise_record(&self, kpid: &str) -> StoreResult<Option<PromiseRecord>> {
        self.read_promise(kpid, PromiseRecord::clone)
    }

    /// What `read` says of `kpid`'s record (`None`: no such promise, or
    /// freed), without copying the record: a crank reads a promise's
    /// fields many times, most often one at a time.
    fn read_promise<T>(
        &self,
        kpid: &str,
        read: impl FnOnce(&PromiseRecord) -> T,
    ) -> StoreResult<Option<T>> {
        if let Some(cached) = self.records.borrow().get(kpid) {
            return Ok(cached.record.as_ref().map(read));
        }
        let record = self.get(&keys::promise(&kpid))?.map(|text| {
            PromiseRecord::parse(&text).unwrap_or_else(|| {
                panic!("kernel invariant: {kpid}.promise is a promise record, found {text:?}")
            })
        });
        let answer = record.as_ref().map(read);
        if self.store.in_crank() {
            let cached = CachedRecord {
                record,
                changed: false,
            };
            self.records.borrow_mut().insert(kpid.to_owned(), cached);
        }
        Ok(answer)
    }

    /// Sets (`Some`) or deletes `kpid`'s record: in the crank's cache
    /// during a crank, in the store outside one.
    fn put_promise_record(&mut self, kpid: &str, record: Option<PromiseRecord>) -> StoreResult<()> {
        if self.store.in_crank() {
            let cached = CachedRecord {
                record,
                changed: true,
            };
            let old = self.records.get_mut().insert(kpid.to_owned(), cached);
            if !old.is_some_and(|old| old.changed) {
                self.changed_records.push(kpid.to_owned());
            }
            return Ok(());
        }
        self.records.get_mut().remove(kpid);
        match record {
            Some(record) => self.set(&keys::promise(&kpid), &record.to_text()),
            None => self.delete(&keys::promise(&kpid)),
        }
    }

    /// Writes the records the crank changed to the store, as it ends; they
    /// stay cached, unchanged since.
    fn write_back_promise_records(&mut self) -> StoreResult<()> {
        let mut changed = std::mem::take(&mut self.changed_records);
        for kpid in changed.drain(..) {
            let cached = self
                .records
                .get_mut()
                .get_mut(&kpid)
                .expect("kernel invariant: a changed promise record is cached");
            cached.changed = false;
            match cached.record.as_ref().map(PromiseRecord::to_text) {
                Some(text) => self.store.set(&keys::promise(&kpid), &text)?,
                None => self.delete(&keys::promise(&kpid))?,
            }
        }
        // Kept, empty, for the next crank's changes.
        self.changed_records = changed;
        let records = self.records.get_mut();
        if records.len() > PROMISE_RECORDS_CACHED_MAX {
            records.clear();
        }
        Ok(())
    }

    /// Forgets the cached promise records (the store holds them all).
    fn forget_promise_records(&mut self) {
        let records = self.records.get_mut();
        debug_assert!(
            self.changed_records.is_empty() && records.values().all(|cached| !cached.changed),
            "kernel invariant: no crank is open when the records are forgotten"
        );
        records.clear();
    }

    /// The record of `kpid`, which exists.
    fn existing_promise(&self, kpid: &str) -> StoreResult<PromiseRecord> {
        Ok(self
            .promise_record(kpid)?
            .unwrap_or_else(|| panic!("kernel invariant: {kpid} is a known promise")))
    }

    fn set_promise_record(&mut self, kpid: &str, record: &PromiseRecord) -> StoreResult<()> {
        self.put_promise_record(kpid, Some(record.clone()))
    }

    /// Changes `kpid`'s record by `change`, and returns what `change` does.
    /// The record is read again each time: a change to one field never
    /// writes back a stale copy of another. During a crank the record is
    /// changed where the crank's cache holds it: a message passing through
    /// the run queue changes its result promise's count twice, and neither
    /// change copies the record.
    fn change_promise<T>(
        &mut self,
        kpid: &str,
        change: impl FnOnce(&mut PromiseRecord) -> T,
    ) -> StoreResult<T> {
        if !self.store.in_crank() {
            let mut record = self.existing_promise(kpid)?;
            let changed = change(&mut record);
            self.set_promise_record(kpid, &record)?;
            return Ok(changed);
        }
        if !self.records.get_mut().contains_key(kpid) {
            self.read_promise(kpid, |_| ())?;
        }
        let cached = self
            .records
            .get_mut()
            .get_mut(kpid)
            .expect("kernel invariant: a crank caches each promise record it reads");
        let record = cached
            .record
            .as_mut()
            .unwrap_or_else(|| panic!("kernel invariant: {kpid} is a known promise"));
        let changed = change(record);
        if !std::mem::replace(&mut cached.changed, true) {
            self.changed_records.push(kpid.to_owned());
        }
        Ok(changed)
    }

    /// The messages waiting on `kpid`, in order (none when it has no queue),
    /// with their keys.
    fn promise_queue(&self, kpid: &str) -> StoreResult<Vec<(String, Message)>> {
        if self
            .read_promise(kpid, |record| record.queued)?
            .is_none_or(|queued| queued == 0)
        {
            return Ok(Vec::new());
        }
        Ok(self
            .scan_prefix(&queue_prefix(kpid))?
            .into_iter()
            .map(|(key, text)| {
                let message = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("kernel invariant: {key} is a message: {e}"));
                (key, message)
            })
            .collect())
    }

    /// Deletes a promise's `queue` (all of it).
    fn delete_queue(&mut self, queue: &[(String, Message)]) -> StoreResult<()> {
        for (key, _) in queue {
            self.delete(key)?;
        }
        Ok(())
    }

    /// The references `kpid`'s settlement data holds (its slots), read
    /// without its body: what freeing the promise releases (none when it
    /// has no data).
    fn settlement_slots(&self, kpid: &str) -> StoreResult<Vec<String>> {
        #[derive(Deserialize)]
        struct Slots {
            slots: Vec<String>,
        }
        Ok(self
            .get(&keys::settlement(&kpid))?
            .map(|text| {
                serde_json::from_str::<Slots>(&text)
                    .unwrap_or_else(|e| panic!("kernel invariant: {kpid}.data is capdata: {e}"))
                    .slots
            })
            .unwrap_or_default())
    }

    /// The settlement data of `kpid`, if it is settled.
    fn promise_data(&self, kpid: &str) -> StoreResult<Option<CapData>> {
        Ok(self.get(&keys::settlement(&kpid))?.map(|text| {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("kernel invariant: {kpid}.data is capdata: {e}"))
        }))
    }

    pub(crate) fn promise_state(&self, kpid: &str) -> StoreResult<Option<PromiseState>> {
        let Some(settlement) = self.read_promise(kpid, |record| record.settlement)? else {
            return Ok(None);
        };
        let data = || -> StoreResult<CapData> {
            Ok(self
                .promise_data(kpid)?
                .unwrap_or_else(|| panic!("kernel invariant: settled {kpid} has data")))
        };
        Ok(Some(match settlement {
            Settlement::Unresolved => PromiseState::Unresolved,
            Settlement::Fulfilled => PromiseState::Fulfilled(data()?),
            Settlement::Rejected => PromiseState::Rejected(data()?),
        }))
    }

    pub(crate) fn promise_decider(&self, kpid: &str) -> StoreResult<Option<EndpointId>> {
        Ok(self
            .read_promise(kpid, |record| record.decider.clone())?
            .flatten())
    }

    pub(crate) fn set_promise_decider(
        &mut self,
        kpid: &str,
        decider: Option<&str>,
    ) -> StoreResult<()> {
        let old = self
            .read_promise(kpid, |record| record.decider.clone())?
            .unwrap_or_else(|| panic!("kernel invariant: {kpid} is a known promise"));
        if old.as_deref() == decider {
            return Ok(());
        }
        if let Some(old) = &old {
            self.delete(&keys::decided(&old, &kpid))?;
        }
        if let Some(vat) = decider {
            self.set(&keys::decided(&vat, &kpid), "")?;
        }
        let decider = decider.map(EndpointId::from_table);
        self.change_promise(kpid, |record| record.decider = decider)
    }

    /// The unresolved promises `endpoint` decides, each with whether it
    /// keeps it in durable state.
    pub(crate) fn decided_by(&self, endpoint: &str) -> StoreResult<Vec<(Kref, bool)>> {
        let prefix = keys::decided_prefix(&endpoint);
        Ok(self
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(key, value)| (Kref::from_table(&key[prefix.len()..]), value == keys::KEPT))
            .collect())
    }

    /// Whether `kpid`'s decider keeps it in durable state.
    pub(crate) fn is_kept(&self, kpid: &str) -> StoreResult<bool> {
        let Some(decider) = self.promise_decider(kpid)? else {
            return Ok(false);
        };
        Ok(self.get(&keys::decided(&decider, &kpid))?.as_deref() == Some(keys::KEPT))
    }

    /// `kpid`'s decider `decider` keeps it in durable state.
    pub(crate) fn keep(&mut self, decider: &str, kpid: &str) -> StoreResult<()> {
        self.set(&keys::decided(&decider, &kpid), keys::KEPT)
    }

    /// Does `kref` name an object or promise the kernel knows?
    pub(crate) fn kref_exists(&self, kref: &str) -> StoreResult<bool> {
        if kref.starts_with("ko") {
            Ok(self.object_owner(kref)?.is_some())
        } else if kref.starts_with("kp") {
            Ok(self.read_promise(kref, |_| ())?.is_some())
        } else {
            Ok(false)
        }
    }

    /// Subscribes `vat` to `kpid` (once, however often it asks).
    pub(crate) fn add_subscriber(&mut self, kpid: &str, vat: &str) -> StoreResult<()> {
        let vat = EndpointId::from_table(vat);
        self.change_promise(kpid, |record| {
            // What lets a settled promise be freed with no subscribers left.
            assert!(
                record.settlement == Settlement::Unresolved,
                "kernel invariant: only an unresolved promise takes subscribers ({kpid})"
            );
            // In id order, as schema 5's keys listed them: the order the
            // notifies are queued in.
            let at = record
                .subscribers
                .binary_search_by(|id| id.as_str().cmp(vat.as_str()));
            if let Err(at) = at {
                record.subscribers.insert(at, vat);
            }
        })
    }

    /// An object's (reachable, recognizable) counts.
    pub(crate) fn object_refs(&self, ko: &str) -> StoreResult<(u64, u64)> {
        let key = keys::refs(&ko);
        Ok(match self.get(&key)? {
            None => (0, 0),
            Some(text) => text
                .split_once(',')
                .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
                .unwrap_or_else(|| panic!("kernel invariant: {key} is 'reachable,recognizable'")),
        })
    }

    /// Changes an object's counts by one, up or down: the recognizable count,
    /// and the reachable count too when `reachable`.
    fn change_object_refs(&mut self, ko: &str, up: bool, reachable: bool) -> StoreResult<()> {
        self.adjust_object_refs(ko, up, reachable, true)
    }

    /// Moves one of an object's references between reachable and merely
    /// recognizable (a c-list flag flipped).
    fn change_object_reachable(&mut self, ko: &str, up: bool) -> StoreResult<()> {
        self.adjust_object_refs(ko, up, true, false)
    }

    /// Moves an object's counts by one, up or down: the reachable count if
    /// `reachable`, the recognizable count if `recognizable`. Counts never go
    /// below zero, and reachable never exceeds recognizable.
    fn adjust_object_refs(
        &mut self,
        ko: &str,
        up: bool,
        reachable: bool,
        recognizable: bool,
    ) -> StoreResult<()> {
        let step = |count: u64, which: &str, applies: bool| -> u64 {
            match (applies, up) {
                (false, _) => count,
                (true, true) => count + 1,
                (true, false) => count.checked_sub(1).unwrap_or_else(|| {
                    panic!("kernel invariant: the {which} count of {ko} never goes negative")
                }),
            }
        };
        let (r, c) = self.object_refs(ko)?;
        let (r, c) = (
            step(r, "reachable", reachable),
            step(c, "recognizable", recognizable),
        );
        assert!(
            r <= c,
            "kernel invariant: {ko} is reachable ({r}) from no more places than recognize it ({c})"
        );
        if r == 0 {
            self.maybe_unreachable.insert(ko.to_owned());
        }
        let (mut r_text, mut c_text) = (itoa::Buffer::new(), itoa::Buffer::new());
        let counts = [r_text.format(r), ",", c_text.format(c)].concat();
        self.set(&keys::refs(&ko), &counts)
    }

    /// One more place refers to `kref` (reachably, for an object).
    pub(crate) fn incref(&mut self, kref: &str) -> StoreResult<()> {
        if kref.starts_with("kp") {
            self.change_promise(kref, |record| record.refs += 1)?;
        } else if kref.starts_with("ko") {
            self.change_object_refs(kref, true, true)?;
        }
        Ok(())
    }

    /// One place fewer refers to `kref`; at zero it may be freed at the crank's end.
    pub(crate) fn decref(&mut self, kref: &str) -> StoreResult<()> {
        if kref.starts_with("kp") {
            let refs = self.change_promise(kref, |record| {
                record.refs = record.refs.checked_sub(1).unwrap_or_else(|| {
                    panic!("kernel invariant: the refcount of {kref} never goes negative")
                });
                record.refs
            })?;
            if refs == 0 {
                self.maybe_free.insert(kref.to_owned());
            }
        } else if kref.starts_with("ko") {
            self.change_object_refs(kref, false, true)?;
        }
        Ok(())
    }

    /// Keeps `kpid` alive for a host that waits on it.
    pub(crate) fn pin(&mut self, kpid: &str) -> StoreResult<()> {
        let mut record = self.existing_promise(kpid)?;
        if record.pinned {
            return Ok(());
        }
        record.pinned = true;
        record.refs += 1;
        self.set_promise_record(kpid, &record)
    }

    pub(crate) fn unpin(&mut self, kpid: &str) -> StoreResult<()> {
        if self
            .promise_record(kpid)?
            .is_some_and(|record| record.pinned)
        {
            self.change_promise(kpid, |record| record.pinned = false)?;
            self.decref(kpid)?;
        }
        Ok(())
    }

    /// Deletes every promise that nothing refers to any more, and what only
    /// it referred to.
    pub(crate) fn collect_garbage(&mut self) -> StoreResult<()> {
        while let Some(kpid) = self.maybe_free.pop_first() {
            let unreferenced = self.read_promise(&kpid, |record| {
                (record.refs == 0).then(|| (record.settlement, record.decider.clone()))
            })?;
            let Some(Some((settlement, decider))) = unreferenced else {
                continue;
            };
            let mut released: Vec<String> = Vec::new();
            if settlement != Settlement::Unresolved {
                released.extend(self.settlement_slots(&kpid)?);
            }
            // A settled promise's queue went as it settled (most promises
            // are freed settled): no scan for it. Subscribers go with the record.
            if settlement == Settlement::Unresolved {
                let queue = self.promise_queue(&kpid)?;
                for (_, message) in &queue {
                    released.extend(krefs_in_message(message).map(str::to_owned));
                }
                self.delete_queue(&queue)?;
            }
            if let Some(decider) = decider {
                self.delete(&keys::decided(&decider, &kpid))?;
            }
            self.put_promise_record(&kpid, None)?;
            if settlement != Settlement::Unresolved {
                self.delete(&keys::settlement(&kpid))?;
            }
            for kref in released {
                self.decref(&kref)?;
            }
        }
        Ok(())
    }

    /// Turns objects that became unreachable (or unrecognizable) in this
    /// crank into GC actions for their exporters. An exporter that is gone
    /// gets none: its unrecognizable objects are deleted at once.
    pub(crate) fn schedule_gc_actions(&mut self) -> StoreResult<()> {
        while let Some(ko) = self.maybe_unreachable.pop_first() {
            let Some(owner) = self.object_owner(&ko)? else {
                continue;
            };
            let (reachable, recognizable) = self.object_refs(&ko)?;
            if reachable > 0 {
                continue;
            }
            let running = self.get(&keys::state(&owner))?.as_deref() == Some("running");
            if !running {
                if recognizable == 0 {
                    self.delete_object(&ko)?;
                }
                continue;
            }
            if self.clist_reachable(&owner, &ko)? {
                self.add_gc_action(GcAction::Drop, &owner, &ko, "")?;
            }
            if recognizable == 0 {
                self.add_gc_action(GcAction::Retire, &owner, &ko, "")?;
            }
        }
        Ok(())
    }

    pub(crate) fn add_gc_action(
        &mut self,
        action: GcAction,
        vat: &str,
        kref: &str,
        value: &str,
    ) -> StoreResult<()> {
        self.gc_actions_maybe = true;
        self.set(&keys::gc_action(action.name(), &vat, &kref), value)
    }

    /// Forgets a kernel object: its record, its counts, its exporter's entry.
    pub(crate) fn delete_object(&mut self, ko: &str) -> StoreResult<()> {
        if let Some(owner) = self.object_owner(ko)?
            && let Some(vref) = self.clist_vref(&owner, ko)?
        {
            self.delete(&keys::clist(&owner, &ko))?;
            self.delete(&keys::clist(&owner, &vref))?;
        }
        self.delete(&keys::owner(&ko))?;
        self.delete(&keys::refs(&ko))
    }

    pub(crate) fn end_crank(&mut self) -> StoreResult<()> {
        self.collect_garbage()?;
        self.schedule_gc_actions()?;
        self.write_back_promise_records()?;
        self.outbox_ended.append(&mut self.outbox_crank);
        self.unstored.end_crank();
        self.store.end_crank()
    }

    pub(crate) fn abort_crank(&mut self) -> StoreResult<()> {
        self.records.get_mut().clear();
        self.changed_records.clear();
        self.queue_bounds.set(None);
        self.maybe_free.clear();
        self.maybe_unreachable.clear();
        self.outbox_crank.clear();
        self.unstored.abort_crank();
        self.store.abort_crank()
    }

    /// Queues `message` on unresolved `kpid`: one key, whatever the queue's
    /// length. Returns false, queueing nothing, when the queue holds
    /// [`PROMISE_QUEUE_MAX`] messages already.
    pub(crate) fn queue_on_promise(&mut self, kpid: &str, message: &Message) -> StoreResult<bool> {
        let queued = self
            .read_promise(kpid, |record| record.queued)?
            .unwrap_or_else(|| panic!("kernel invariant: {kpid} is a known promise"));
        if queued >= PROMISE_QUEUE_MAX {
            return Ok(false);
        }
        for kref in krefs_in_message(message)
            .map(str::to_owned)
            .collect::<Vec<_>>()
        {
            self.incref(&kref)?;
        }
        let text = serde_json::to_string(message).expect("kernel invariant: messages serialize");
        self.set(&format!("{}{queued:010}", queue_prefix(kpid)), &text)?;
        self.change_promise(kpid, |record| record.queued = queued + 1)?;
        Ok(true)
    }

    /// Settles `kpid` and takes what waited on it: (subscribers, queued messages).
    pub(crate) fn settle_promise(
        &mut self,
        kpid: &str,
        rejected: bool,
        data: &CapData,
    ) -> StoreResult<(Vec<EndpointId>, Vec<Message>)> {
        let queue = self.promise_queue(kpid)?;
        // The queue gives up its messages (the caller re-queues them) and
        // the data takes references to the promises it names.
        for (_, message) in &queue {
            for kref in krefs_in_message(message)
                .map(str::to_owned)
                .collect::<Vec<_>>()
            {
                self.decref(&kref)?;
            }
        }
        for kref in &data.slots {
            self.incref(kref)?;
        }
        let data_text = serde_json::to_string(data).expect("kernel invariant: capdata serializes");
        // Only a settled promise has data (`check` holds every commit to
        // it), so no commit holds this key: freed before the next commit,
        // as a call's result often is, it costs SQLite nothing.
        self.store.set_new(&keys::settlement(&kpid), &data_text)?;
        // Settled: no decider, nothing waits any more. Changed once, after
        // the counts above changed it.
        let (decider, subscribers) = self.change_promise(kpid, |record| {
            record.settlement = if rejected {
                Settlement::Rejected
            } else {
                Settlement::Fulfilled
            };
            record.queued = 0;
            (
                record.decider.take(),
                std::mem::take(&mut record.subscribers),
            )
        })?;
        if let Some(decider) = decider {
            self.delete(&keys::decided(&decider, &kpid))?;
        }
        self.delete_queue(&queue)?;
        Ok((
            subscribers,
            queue.into_iter().map(|(_, message)| message).collect(),
        ))
    }

    // ---- run queue ----

    /// The run queue's (head, tail): its next item's index, and the index
    /// the next item queued takes.
    pub(crate) fn run_queue_bounds(&self) -> StoreResult<(u64, u64)> {
        if let Some(bounds) = self.queue_bounds.get() {
            return Ok(bounds);
        }
        let bounds = (
            self.count(keys::RUN_QUEUE_HEAD)?,
            self.count(keys::RUN_QUEUE_TAIL)?,
        );
        assert!(
            bounds.0 <= bounds.1,
            "kernel invariant: run-queue head {} <= tail {}",
            bounds.0,
            bounds.1
        );
        self.queue_bounds.set(Some(bounds));
        Ok(bounds)
    }

    /// Moves the run queue's bound under `key` to `index`.
    fn set_queue_bound(&mut self, key: &str, bounds: (u64, u64), index: u64) -> StoreResult<()> {
        let mut digits = itoa::Buffer::new();
        self.set(key, digits.format(index))?;
        self.queue_bounds.set(Some(bounds));
        Ok(())
    }

    pub(crate) fn push_run_queue(&mut self, item: RunQueueItem) -> StoreResult<()> {
        let (head, tail) = self.run_queue_bounds()?;
        for kref in krefs_in_item(&item) {
            self.incref(kref)?;
        }
        let in_crank = self.store.in_crank();
        self.unstored.push(tail, item, in_crank);
        self.set_queue_bound(keys::RUN_QUEUE_TAIL, (head, tail + 1), tail + 1)
    }

    /// Writes the run-queue items not yet in the store to it (before a
    /// commit). If a write fails, none of them stays in the store, and they
    /// all stay here: a later commit stores them.
    fn store_run_queue_items(&mut self) -> StoreResult<()> {
        let entries = self.unstored_run_queue_entries();
        for (n, (key, text)) in entries.iter().enumerate() {
            if let Err(e) = self.store.set_new(key, text) {
                for (written, _) in &entries[..n] {
                    self.store.delete(written)?;
                }
                return Err(e);
            }
        }
        self.unstored.drain().for_each(drop);
        Ok(())
    }

    /// The run-queue entries not yet in the store, as the store will hold
    /// them: for checks that read the tables from the store.
    pub(crate) fn unstored_run_queue_entries(&self) -> Vec<(String, String)> {
        self.unstored
            .iter()
            .map(|(index, item)| run_queue_entry(index, item))
            .collect()
    }

    pub(crate) fn pop_run_queue(&mut self) -> StoreResult<Option<RunQueueItem>> {
        let (head, tail) = self.run_queue_bounds()?;
        if head == tail {
            return Ok(None);
        }
        let in_crank = self.store.in_crank();
        let item = match self.unstored.take(head, in_crank) {
            Some(item) => item,
            None => self.take_stored_item(head)?,
        };
        self.set_queue_bound(keys::RUN_QUEUE_HEAD, (head + 1, tail), head + 1)?;
        for kref in krefs_in_item(&item) {
            self.decref(kref)?;
        }
        Ok(Some(item))
    }

    /// Takes run-queue item `index` from the store.
    fn take_stored_item(&mut self, index: u64) -> StoreResult<RunQueueItem> {
        let key = keys::run_queue(index);
        let text = self
            .get(&key)?
            .unwrap_or_else(|| panic!("kernel invariant: run-queue entry {key} exists"));
        self.delete(&key)?;
        Ok(serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kernel invariant: {key} is a run-queue item: {e}")))
    }

    // ---- c-lists ----

    pub(crate) fn clist_vref(&self, vat: &str, kref: &str) -> StoreResult<Option<String>> {
        Ok(self
            .get(&keys::clist(&vat, &kref))?
            .map(|entry| entry[2..].to_owned()))
    }

    pub(crate) fn clist_kref(&self, vat: &str, vref: &str) -> StoreResult<Option<Kref>> {
        let key = keys::clist(&vat, &vref);
        let entry = match own_promise_number(vref) {
            Some(n) if n > self.own_promise_high(vat)? => self.store.get_uncommitted(&key)?,
            _ => self.get(&key)?,
        };
        Ok(entry.map(Kref::from_table))
    }

    /// See [`Self::own_promise_high`]: counted from the store the first
    /// time `endpoint` is asked about (a scan of its own promises' entries).
    fn own_promise_high(&self, endpoint: &str) -> StoreResult<u64> {
        if let Some(high) = self.own_promise_high.borrow().get(endpoint) {
            return Ok(*high);
        }
        let prefix = keys::clist(&endpoint, &"p+");
        let high = self
            .store
            .scan_prefix(&prefix)?
            .iter()
            .filter_map(|(key, _)| own_promise_number(&key[prefix.len() - 2..]))
            .max()
            .unwrap_or(0);
        self.own_promise_high
            .borrow_mut()
            .insert(endpoint.to_owned(), high);
        Ok(high)
    }

    /// Whether `kref` is `vat`'s own export (its entry does not count).
    fn is_own_export(&self, vat: &str, kref: &str) -> StoreResult<bool> {
        Ok(kref.starts_with("ko") && self.object_owner(kref)?.as_deref() == Some(vat))
    }

    /// Whether `vat`'s c-list entry for `kref` is flagged reachable.
    pub(crate) fn clist_reachable(&self, vat: &str, kref: &str) -> StoreResult<bool> {
        Ok(self
            .get(&keys::clist(&vat, &kref))?
            .is_some_and(|entry| entry.starts_with('R')))
    }

    pub(crate) fn clist_add(&mut self, vat: &str, kref: &str, vref: &str) -> StoreResult<()> {
        let (kref_key, vref_key) = (keys::clist(&vat, &kref), keys::clist(&vat, &vref));
        // Cheap enough to keep on in release: a c-list entry never silently replaces another.
        assert!(
            self.get(&kref_key)?.is_none() && self.get(&vref_key)?.is_none(),
            "kernel invariant: c-list symmetry ({vat} maps {kref} or {vref} already)"
        );
        self.clist_insert(vat, kref, vref, (&kref_key, &vref_key))
    }

    /// [`Self::clist_add`] of a pair the caller has just found absent:
    /// an import (a kref it found absent from `vat`'s c-list, under the
    /// vref [`Self::allocate_import_vref`] has just made), or a send's
    /// result (a vref it found absent, for the promise it has just
    /// allocated). Both checks of `clist_add` hold by construction, so they
    /// are not read again (in debug builds they are).
    pub(crate) fn clist_add_absent(
        &mut self,
        vat: &str,
        kref: &str,
        vref: &str,
    ) -> StoreResult<()> {
        let (kref_key, vref_key) = (keys::clist(&vat, &kref), keys::clist(&vat, &vref));
        debug_assert!(
            self.get(&kref_key)?.is_none() && self.get(&vref_key)?.is_none(),
            "kernel invariant: c-list symmetry ({vat} maps {kref} or {vref} already)"
        );
        self.clist_insert(vat, kref, vref, (&kref_key, &vref_key))
    }

    /// Adds `vat`'s entries for `kref` and `vref`, under `keys` (theirs).
    fn clist_insert(
        &mut self,
        vat: &str,
        kref: &str,
        vref: &str,
        (kref_key, vref_key): (&str, &str),
    ) -> StoreResult<()> {
        self.set(kref_key, &["R ", vref].concat())?;
        // A new own promise's entry cannot be in SQLite: said so, deleting
        // it before the commit costs the commit nothing. Its number is the
        // endpoint's new high.
        match own_promise_number(vref) {
            Some(n) if n > self.own_promise_high(vat)? => {
                self.store.set_new(vref_key, kref)?;
                let high = self.own_promise_high.get_mut().get_mut(vat);
                *high.expect("kernel invariant: an endpoint's high is counted once asked") = n;
            }
            _ => self.set(vref_key, kref)?,
        }
        if self.is_own_export(vat, kref)? {
            return Ok(());
        }
        self.incref(kref)
    }

    pub(crate) fn clist_remove(&mut self, vat: &str, kref: &str) -> StoreResult<()> {
        let kref_key = keys::clist(&vat, &kref);
        // `R <vref>` (reachable) or `_ <vref>`, read once for both.
        let Some(entry) = self.get(&kref_key)? else {
            return Ok(());
        };
        let (reachable, vref) = (entry.starts_with('R'), &entry[2..]);
        let vref_key = keys::clist(&vat, &vref);
        let back = self.get(&vref_key)?;
        assert_eq!(
            back.as_deref(),
            Some(kref),
            "kernel invariant: c-list symmetry ({vat}: {kref} -> {vref} -> {back:?})"
        );
        self.delete(&kref_key)?;
        self.delete(&vref_key)?;
        if kref.starts_with("kp") {
            self.decref(kref)?;
        } else if !self.is_own_export(vat, kref)? {
            self.change_object_refs(kref, false, reachable)?;
        }
        Ok(())
    }

    pub(crate) fn clist_set_reachable(
        &mut self,
        vat: &str,
        kref: &str,
        reachable: bool,
    ) -> StoreResult<()> {
        let key = keys::clist(&vat, &kref);
        if let Some(entry) = self.get(&key)? {
            if entry.starts_with('R') == reachable {
                return Ok(());
            }
            let flag = if reachable { 'R' } else { '_' };
            self.set(&key, &format!("{flag} {}", &entry[2..]))?;
            if kref.starts_with("ko") && !self.is_own_export(vat, kref)? {
                self.change_object_reachable(kref, reachable)?;
            }
        }
        Ok(())
    }

    /// Allocates the next import vref of `kind` (`o` or `p`) in `vat`.
    pub(crate) fn allocate_import_vref(&mut self, vat: &str, kind: char) -> StoreResult<String> {
        let (key, prefix) = if kind == 'o' {
            (keys::vat_next_object(&vat), "o-")
        } else {
            (keys::vat_next_promise(&vat), "p-")
        };
        let vref = keys::numbered(prefix, self.next_id(&key)?);
        self.fresh.note_import_key(keys::clist(&vat, &vref));
        Ok(vref)
    }

    pub(crate) fn scan_prefix(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        if self.fresh.names_fresh(prefix) {
            return self.store.scan_prefix_uncommitted(prefix);
        }
        self.store.scan_prefix(prefix)
    }

    /// The store's commit, after which nothing allocated so far is fresh.
    pub(crate) fn commit(&mut self) -> StoreResult<()> {
        self.store_run_queue_items()?;
        self.forget_promise_records();
        self.fresh.forget_all();
        self.store.commit()
    }

    /// The store's pipelined commit: written, durable before the next one.
    pub(crate) fn commit_pipelined(&mut self) -> StoreResult<()> {
        self.store_run_queue_items()?;
        self.forget_promise_records();
        self.fresh.forget_all();
        self.store.commit_pipelined()
    }
}

/// `N` of a promise vref an endpoint allocated itself (`p+N`), if `vref`
/// is one and `N` fits a `u64`.
fn own_promise_number(vref: &str) -> Option<u64> {
    let digits = vref.strip_prefix("p+")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Capdata for an error with `message` (how the kernel rejects a promise).
pub fn error_capdata(message: &str) -> CapData {
    vom::capdata::encode(&Value::error(message))
}

/// Settles `kpid`: notifies its subscribers and re-queues the messages that waited on it.
pub(crate) fn settle_promise(
    state: &mut KernelState,
    kpid: &str,
    rejected: bool,
    data: &CapData,
) -> Result<(), StoreError> {
    let (subscribers, queued) = state.settle_promise(kpid, rejected, data)?;
    let kpid = Kref::from_table(kpid);
    for vat in subscribers {
        state.push_run_queue(RunQueueItem::Notify {
            vat,
            promise: kpid.clone(),
        })?;
    }
    for message in queued {
        state.push_run_queue(RunQueueItem::Send {
            target: kpid.clone(),
            message,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, KernelState) {
        let dir = tempfile::tempdir().unwrap();
        let store = SwingStore::open(
            &dir.path().join("store.sqlite"),
            swingstore::Durability::Normal,
        )
        .unwrap();
        (dir, KernelState::new(store))
    }

    /// A store holding `entries` (committed), opened as a kernel opens
    /// one: brought to the current schema.
    fn opened_with(entries: &[(&str, &str)]) -> (tempfile::TempDir, KernelState) {
        let (dir, mut state) = state();
        let store = &mut state.store;
        store.begin_crank().unwrap();
        for (key, value) in entries {
            store.set(key, value).unwrap();
        }
        store.end_crank().unwrap();
        store.commit().unwrap();
        assert!(matches!(schema_of(store).unwrap(), Schema::Current));
        (dir, state)
    }

    fn message(n: u64) -> Message {
        Message {
            method: format!("m{n}"),
            args: CapData {
                body: "#[]".into(),
                slots: vec![],
            },
            result: None,
        }
    }

    /// A vat's own promise above any its stored c-list holds is looked
    /// for in memory alone (debug builds check the claim against SQLite);
    /// one at or below is read from SQLite.
    #[test]
    fn own_promises_above_the_stored_ones_are_looked_for_in_memory() {
        let (dir, mut state) = state();
        state.store.begin_crank().unwrap();
        let kpid = state.allocate_promise(None).unwrap();
        state.clist_add("v1", &kpid, "p+7").unwrap();
        state.end_crank().unwrap();
        state.commit().unwrap();
        drop(state);
        let path = dir.path().join("store.sqlite");
        let store = SwingStore::open(&path, swingstore::Durability::Normal).unwrap();
        let mut state = KernelState::new(store);
        assert_eq!(state.own_promise_high("v1").unwrap(), 7);
        assert_eq!(state.own_promise_high("v2").unwrap(), 0);
        assert_eq!(state.clist_kref("v1", "p+8").unwrap(), None);
        assert_eq!(state.clist_kref("v1", "p+7").unwrap(), Some(kpid));
        // An entry added raises the count, so it is found once committed.
        state.store.begin_crank().unwrap();
        let newer = state.allocate_promise(None).unwrap();
        state.clist_add("v1", &newer, "p+9").unwrap();
        assert_eq!(state.own_promise_high("v1").unwrap(), 9);
        state.end_crank().unwrap();
        state.commit().unwrap();
        assert_eq!(state.clist_kref("v1", "p+9").unwrap(), Some(newer));
    }

    #[test]
    fn a_store_of_schema_2_gets_its_index_of_decided_promises_at_open() {
        let (_dir, mut state) = state();
        let store = &mut state.store;
        store.begin_crank().unwrap();
        store.set("kernel.schema", "2").unwrap();
        store.set("kp3.state", "unresolved").unwrap();
        store.set("kp3.decider", "v1").unwrap();
        store.set("kp4.state", "fulfilled").unwrap();
        store.end_crank().unwrap();
        store.commit().unwrap();
        assert!(matches!(schema_of(store).unwrap(), Schema::Current));
        assert_eq!(store.get("kernel.schema").unwrap().as_deref(), Some("6"));
        let decided: Vec<String> = state
            .decided_by("v1")
            .unwrap()
            .into_iter()
            .map(|(kpid, _)| String::from(kpid))
            .collect();
        assert_eq!(decided, ["kp3"]);
    }

    /// Schema 4's key per promise field becomes one record per promise;
    /// the heaps' records of a schema 4 store are kept as they were.
    #[test]
    fn a_store_of_schema_4_has_its_promise_fields_folded_into_records_at_open() {
        let queued = serde_json::to_string(&message(0)).unwrap();
        let (_dir, mut state) = opened_with(&[
            ("kernel.schema", "4"),
            ("vat.name.live", "v1"),
            ("v1.state", "running"),
            ("kp3.state", "unresolved"),
            ("kp3.decider", "v1"),
            ("v1.decided.kp3", "kept"),
            ("kp3.refs", "2"),
            ("kp3.queued", "1"),
            ("kp3.queue.0000000000", &queued),
            ("kp3.pinned", "1"),
            ("kp4.state", "rejected"),
            ("kp4.refs", "1"),
            ("kp4.data", "{\"body\":\"#1\",\"slots\":[]}"),
        ]);
        let store = &mut state.store;
        assert_eq!(
            store.get("kp3.promise").unwrap().as_deref(),
            Some("unresolved 2 1 1 v1 -")
        );
        assert_eq!(
            store.get("kp4.promise").unwrap().as_deref(),
            Some("rejected 1 0 0 - -")
        );
        for gone in [
            "kp3.state",
            "kp3.decider",
            "kp3.refs",
            "kp3.queued",
            "kp3.pinned",
        ] {
            assert_eq!(store.get(gone).unwrap(), None, "{gone}");
        }
        assert_eq!(state.heap_report("v1").unwrap(), None);
        assert!(state.is_kept("kp3").unwrap());
        assert_eq!(state.promise_queue("kp3").unwrap().len(), 1);
        assert!(matches!(
            state.promise_state("kp4").unwrap(),
            Some(PromiseState::Rejected(_))
        ));
    }

    #[test]
    fn a_store_of_schema_3_keeps_its_vats_awake_until_their_heaps_report() {
        let (_dir, mut state) = state();
        let store = &mut state.store;
        store.begin_crank().unwrap();
        store.set("kernel.schema", "3").unwrap();
        store.set("vat.name.live", "v1").unwrap();
        store.set("v1.state", "running").unwrap();
        store.set("vat.name.gone", "v2").unwrap();
        store.set("v2.state", "removed").unwrap();
        store.set("kp3.decider", "v1").unwrap();
        store.end_crank().unwrap();
        store.commit().unwrap();
        assert!(matches!(schema_of(store).unwrap(), Schema::Current));
        assert_eq!(
            state.heap_report("v1").unwrap().as_deref(),
            Some(HEAP_UNREPORTED)
        );
        assert_eq!(state.heap_report("v2").unwrap(), None);
        // Schema 3 had the decided index already: it is not rebuilt.
        assert!(state.decided_by("v1").unwrap().is_empty());
    }

    fn store_keys_under(state: &KernelState, prefix: &str) -> usize {
        state.store.scan_prefix(prefix).unwrap().len()
    }

    /// Schema 5's key per subscriber joins the promise's record; a
    /// subscription to a promise that has no record is dropped.
    #[test]
    fn a_store_of_schema_5_has_its_subscribers_folded_into_records_at_open() {
        let (_dir, mut state) = opened_with(&[
            ("kernel.schema", "5"),
            ("kp3.promise", "unresolved 2 0 0 v1"),
            ("kp3.sub.v2", ""),
            ("kp3.sub.r1", ""),
            ("kp4.promise", "fulfilled 1 0 0 -"),
            ("kp4.data", "{\"body\":\"#1\",\"slots\":[]}"),
            ("kp9.sub.v2", ""),
        ]);
        let store = &mut state.store;
        assert_eq!(
            store.get("kp3.promise").unwrap().as_deref(),
            Some("unresolved 2 0 0 v1 r1,v2")
        );
        assert_eq!(
            store.get("kp4.promise").unwrap().as_deref(),
            Some("fulfilled 1 0 0 - -")
        );
        assert_eq!(store.get("kp9.promise").unwrap(), None);
        for prefix in ["kp3.sub.", "kp9.sub."] {
            assert_eq!(store_keys_under(&state, prefix), 0, "{prefix}");
        }
    }

    #[test]
    fn a_store_of_schema_1_has_its_promise_queues_rewritten_at_open() {
        let (_dir, mut state) = state();
        let store = &mut state.store;
        store.begin_crank().unwrap();
        store.set("kernel.schema", "1").unwrap();
        store.set("kp3.state", "unresolved").unwrap();
        let queue = serde_json::to_string(&vec![message(0), message(1)]).unwrap();
        store.set("kp3.queue", &queue).unwrap();
        store.set("kp3.subscribers", "v1,r2").unwrap();
        store.end_crank().unwrap();
        store.commit().unwrap();
        assert!(matches!(schema_of(store).unwrap(), Schema::Current));
        assert_eq!(store.get("kernel.schema").unwrap().as_deref(), Some("6"));
        assert_eq!(store.get("kp3.queue").unwrap(), None);
        let record = state.promise_record("kp3").unwrap().unwrap();
        assert_eq!(record.subscribers, ["r2", "v1"].map(EndpointId::from_table));
        assert_eq!(store_keys_under(&state, "kp3.sub."), 0);
        let queued: Vec<String> = state
            .promise_queue("kp3")
            .unwrap()
            .into_iter()
            .map(|(_, message)| message.method)
            .collect();
        assert_eq!(queued, ["m0", "m1"]);
    }

    #[test]
    fn a_promise_made_settled_and_freed_between_commits_sends_sqlite_no_deletions() {
        let (_dir, mut state) = state();
        state.store.begin_crank().unwrap();
        let kpid = state.allocate_promise(Some("v1")).unwrap();
        state.pin(&kpid).unwrap();
        state.add_subscriber(&kpid, "v2").unwrap();
        let data = CapData {
            body: "#1".into(),
            slots: vec![],
        };
        state.settle_promise(&kpid, false, &data).unwrap();
        state.unpin(&kpid).unwrap();
        state.end_crank().unwrap();
        let before = state.store.stats();
        state.commit().unwrap();
        let after = state.store.stats();
        assert_eq!(state.promise_record(&kpid).unwrap(), None, "it is freed");
        // Only the counter it came from is written: none of its keys (record,
        // index entry, subscriber, data) reaches SQLite, not even as a
        // deletion that finds nothing.
        assert_eq!(after.statements - before.statements, 1);
        assert_eq!(after.rows_committed - before.rows_committed, 1);
    }

    #[test]
    fn a_promise_queue_is_a_key_per_message_bounded_by_promise_queue_max() {
        let (_dir, mut state) = state();
        state.store.begin_crank().unwrap();
        let kpid = state.allocate_promise(None).unwrap();
        state.pin(&kpid).unwrap();
        for n in 0..PROMISE_QUEUE_MAX {
            assert!(state.queue_on_promise(&kpid, &message(n)).unwrap());
        }
        // One more is refused, and nothing of it is kept.
        assert!(
            !state
                .queue_on_promise(&kpid, &message(PROMISE_QUEUE_MAX))
                .unwrap()
        );
        assert_eq!(
            state.promise_record(&kpid).unwrap().unwrap().queued,
            PROMISE_QUEUE_MAX
        );
        state.add_subscriber(&kpid, "v1").unwrap();
        state.add_subscriber(&kpid, "v2").unwrap();
        state.add_subscriber(&kpid, "v1").unwrap();
        let data = CapData {
            body: "#1".into(),
            slots: vec![],
        };
        let (subscribers, queued) = state.settle_promise(&kpid, false, &data).unwrap();
        assert_eq!(subscribers, ["v1", "v2"].map(EndpointId::from_table));
        assert_eq!(queued.len() as u64, PROMISE_QUEUE_MAX);
        assert!(
            queued
                .iter()
                .enumerate()
                .all(|(n, m)| m.method == format!("m{n}"))
        );
        // Settled, it keeps no waiters.
        assert!(
            state
                .scan_prefix(&format!("{kpid}.queue"))
                .unwrap()
                .is_empty()
        );
        assert!(
            state
                .scan_prefix(&format!("{kpid}.sub."))
                .unwrap()
                .is_empty()
        );
        state.end_crank().unwrap();
    }
}
