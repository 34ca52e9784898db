//! Durable kinds and their instances: the virtual object manager proper.
//!
//! A kind is a serde state type plus methods (see [`Kind`] and the
//! `#[vom::exo]` macro). Each instance is a durable object named
//! `o+d<kind>/<instance>` (`:<facet>` appended for multi-facet kinds) whose
//! state lives only in the vatstore. The heap is a cache: an instance is
//! loaded on first use, its state written back at the end of the crank in
//! which it changed, and evicted when the cache is over its bound.
//!
//! # Vatstore layout (all keys under `vom.`)
//!
//! | key | value |
//! |---|---|
//! | `vom.kinds` | the kind table: names, ids, facets, instance counters, state schemas |
//! | `vom.vs.<base>` | an instance record: `rc|flags|refs|state-json` |
//! | `vom.vc.<base>.<encoded key>` | a collection entry: `refs|[key, value]` |
//! | `vom.vco.<base>.<vref>` | the ordinal a collection gave a reference key |
//! | `vom.ow.<key base>.<collection base>` | a weak collection holds an entry keyed by `<key base>` |
//! | `vom.pd.<base>` | the instance may be garbage: its count fell to zero, or it was made and not kept |
//! | `vom.ir.<vref>` | how many durable references an import (`o-N`) has |
//!
//! `rc` counts the references to the instance from durable state and from
//! strong collection keys and values; `flags` is `x<mask>` for the facets the
//! kernel can reach (exported, not yet dropped), `k<mask>` for those it
//! still recognizes (not yet retired), and `s<epoch>` for the schema epoch
//! its state was written in (absent: 0); `refs` lists what its own state
//! refers to.
//!
//! # Schemas and migrations
//!
//! Each kind keeps the schema of its state type (`#[derive(vom::Schema)]`)
//! and a schema epoch. [`define`] refuses a state type that cannot read the
//! stored one ([`schema_problems`]). [`define_migrating`] accepts a new
//! state type with a migration from the stored one: the kind's epoch goes
//! up by one, and each instance is migrated lazily, the first time it is
//! used (then written back in the new epoch), so the upgrade itself costs
//! nothing per object. A migration reads the epoch just before; an instance
//! left further behind (a kind reshaped twice before it was used) fails the
//! messages that reach it, naming the epochs. An instance with no count, no reachable export and no handle on the
//! heap is deleted at the next `bringOutYourDead` (telling the kernel, with
//! `retireExports`, of the facets it still recognizes), and what it referred
//! to loses a count.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::rc::Rc;

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::capdata::{Ref, Value};
use crate::passable::{FromPassable, ToPassable};
use crate::{Error, Reply, sys};

/// How many instances the heap cache keeps between cranks. Instances in use
/// (a handle exists on the heap) are kept beyond it.
pub const INSTANCE_CACHE_MAX: usize = 10_000;
/// The largest serialized state an instance may have.
pub const STATE_BYTES_MAX: usize = 256 * 1024;
/// The most kinds a vat may define.
pub const KINDS_MAX: usize = 10_000;

const KINDS_KEY: &str = "vom.kinds";
/// Instances that may be garbage, kept in the vatstore so that a worker that
/// stops (every `vat` command's does) does not forget them.
const POSSIBLY_DEAD_PREFIX: &str = "vom.pd.";
const RECORD_PREFIX: &str = "vom.vs.";
/// Kind ids below this are vom's own (the collection kinds).
const FIRST_USER_KIND: u64 = 10;
pub(crate) const MAP_STORE_KIND: u64 = 1;
pub(crate) const SET_STORE_KIND: u64 = 2;
pub(crate) const WEAK_MAP_STORE_KIND: u64 = 3;
const RESERVED_KINDS: [(&str, u64); 3] = [
    ("vom:MapStore", MAP_STORE_KIND),
    ("vom:SetStore", SET_STORE_KIND),
    ("vom:WeakMapStore", WEAK_MAP_STORE_KIND),
];

/// A durable state type's schema, from `#[derive(vom::Schema)]`: what an
/// upgrade compares with the schema its stored instances were written with.
#[diagnostic::on_unimplemented(
    message = "the state of durable kind `{Self}` needs `#[derive(vom::Schema)]`",
    label = "add `vom::Schema` to its derives"
)]
pub trait Schema {
    /// One line per stored field: `name: type`, ` = default` when it has one.
    const SCHEMA: &'static str;
}

/// A durable kind: a serde state type whose instances answer messages.
/// Implemented by `#[vom::exo]`; define it with [`define`] every time the vat
/// starts, before it makes or uses instances.
pub trait Kind: Serialize + DeserializeOwned + 'static {
    /// The kind's name: stable across upgrades, it is how a new version finds
    /// the old version's instances.
    const NAME: &'static str;
    /// Facet names, for a kind whose instances are several objects over one
    /// state; empty for a kind with one object per instance.
    const FACETS: &'static [&'static str];
    /// The state type's schema ([`Schema::SCHEMA`]).
    const SCHEMA: &'static str;
    /// Runs `method` on facet `facet` of `this`, after checking the call
    /// against the method's guard.
    fn dispatch(this: &Durable<Self>, facet: usize, method: &str, args: Vec<Value>) -> Reply;
}

type Dispatch = fn(Rc<str>, usize, &str, Vec<Value>) -> Reply;
/// Reads a state of the epoch before the kind's and migrates it.
type Migration = Rc<dyn Fn(&str) -> Result<Box<dyn Any>, String>>;

fn is_zero(n: &u64) -> bool {
    *n == 0
}
type Serializer = fn(&dyn Any) -> (String, Vec<String>);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKind {
    name: String,
    id: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    facets: Vec<String>,
    /// The last instance number handed out.
    next: u64,
    /// How many times its schema changed by a migration.
    #[serde(default, skip_serializing_if = "is_zero")]
    epoch: u64,
    /// The schema of the state type its instances were written with
    /// (absent: made before schemas were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredKinds {
    next: u64,
    kinds: Vec<StoredKind>,
}

struct KindEntry {
    stored: StoredKind,
    /// Set when this incarnation defined the kind.
    dispatch: Option<Dispatch>,
    /// Set when this incarnation defined the kind with a migration (from
    /// epoch `stored.epoch - 1`).
    migration: Option<Migration>,
}

struct Slot {
    kind: u64,
    /// The record has been read from the vatstore (or the instance is new).
    loaded: bool,
    /// The instance exists (it was found, or made in this incarnation).
    exists: bool,
    rc: u64,
    /// Facets (bit per facet) the kernel can reach: exported, not dropped.
    exported: u64,
    /// Facets the kernel still recognizes: exported, not retired.
    known: u64,
    /// The schema epoch of `state_json`.
    epoch: u64,
    refs: Vec<String>,
    state_json: String,
    state: Option<Box<dyn Any>>,
    serialize: Option<Serializer>,
    /// The state was lent out mutably since it was last serialized.
    state_dirty: bool,
    record_dirty: bool,
    /// The state is lent out right now (a method of this instance is running).
    lent: bool,
}

impl Slot {
    fn unloaded(kind: u64) -> Slot {
        Slot {
            kind,
            loaded: false,
            exists: false,
            rc: 0,
            exported: 0,
            known: 0,
            epoch: 0,
            refs: Vec::new(),
            state_json: String::new(),
            state: None,
            serialize: None,
            state_dirty: false,
            record_dirty: false,
            lent: false,
        }
    }
}

#[derive(Default)]
struct Vom {
    kinds_loaded: bool,
    kinds: BTreeMap<u64, KindEntry>,
    kind_ids: FxHashMap<String, u64>,
    next_kind: u64,
    kinds_dirty: bool,
    /// Kinds whose new state type cannot read their stored instances, found
    /// by [`define`]: the vat must not start.
    unreadable: Vec<String>,
    slots: FxHashMap<Rc<str>, Slot>,
    /// Slots whose record must be written at the end of the crank.
    dirty: Vec<String>,
    /// Instances whose count reached zero, or that were made: candidates for
    /// deletion (duplicates allowed). Plain strings, so that the only strong
    /// reference vom itself holds to a cached name is the cache's key: any
    /// other is a handle.
    possibly_dead: Vec<String>,
}

thread_local! {
    static VOM: RefCell<Vom> = RefCell::new(Vom::default());
    /// References met while serializing durable data: see [`collect_refs`].
    static COLLECTING: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

fn with_vom<T>(f: impl FnOnce(&mut Vom) -> T) -> T {
    VOM.with(|vom| f(&mut vom.borrow_mut()))
}

/// Serializes `value` to JSON, returning the references it contains.
pub(crate) fn to_json_with_refs<T: Serialize + ?Sized>(value: &T) -> (String, Vec<String>) {
    let previous = COLLECTING.with(|c| c.borrow_mut().replace(Vec::new()));
    let json = serde_json::to_string(value);
    let refs = COLLECTING.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous));
    let json = json.unwrap_or_else(|e| panic!("vom invariant: durable data serializes: {e}"));
    (json, refs.unwrap_or_default())
}

/// Notes that the value being serialized refers to `vref`.
pub(crate) fn note_ref(vref: &str) {
    COLLECTING.with(|c| {
        if let Some(refs) = c.borrow_mut().as_mut() {
            refs.push(vref.to_owned());
        }
    });
}

/// A durable vref's parts: kind, base (`o+dK/I`), facet.
pub(crate) fn parse_durable(vref: &str) -> Option<(u64, &str, Option<usize>)> {
    let rest = vref.strip_prefix("o+d")?;
    let (base, facet) = match vref.split_once(':') {
        Some((base, facet)) => (base, Some(facet.parse().ok()?)),
        None => (vref, None),
    };
    let (kind, instance) = rest.split(':').next()?.split_once('/')?;
    instance.parse::<u64>().ok()?;
    Some((kind.parse().ok()?, base, facet))
}

fn load_kinds(vom: &mut Vom) {
    if vom.kinds_loaded {
        return;
    }
    vom.kinds_loaded = true;
    let stored: StoredKinds = match sys::vatstore_get(KINDS_KEY) {
        Some(json) => serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("vom invariant: {KINDS_KEY} parses: {e}")),
        None => StoredKinds {
            next: FIRST_USER_KIND,
            kinds: RESERVED_KINDS
                .iter()
                .map(|(name, id)| StoredKind {
                    name: (*name).to_owned(),
                    id: *id,
                    facets: Vec::new(),
                    next: 0,
                    epoch: 0,
                    schema: None,
                })
                .collect(),
        },
    };
    vom.next_kind = stored.next;
    for kind in stored.kinds {
        vom.kind_ids.insert(kind.name.clone(), kind.id);
        let reserved = kind.id < FIRST_USER_KIND;
        vom.kinds.insert(
            kind.id,
            KindEntry {
                stored: kind,
                dispatch: reserved.then_some(collection_dispatch as Dispatch),
                migration: None,
            },
        );
    }
}

fn collection_dispatch(base: Rc<str>, _facet: usize, method: &str, _args: Vec<Value>) -> Reply {
    Reply::Ready(Err(Error::type_error(format!(
        "{base} is a durable collection, not an object: it has no method {method:?}"
    ))))
}

fn dispatch_erased<K: Kind>(base: Rc<str>, facet: usize, method: &str, args: Vec<Value>) -> Reply {
    K::dispatch(&Durable::from_base(base), facet, method, args)
}

/// Defines kind `K` for this incarnation of the vat: a new kind gets an id;
/// a kind a previous version defined gets its old id back, so its instances
/// answer again. Call it when the vat starts, before using `K`. If `K`'s
/// state type cannot read the stored state (see [`schema_problems`]), the
/// vat does not start (an upgrade is refused).
pub fn define<K: Kind>() {
    with_vom(|vom| {
        let id = kind_entry::<K>(vom);
        let entry = vom.kinds.get_mut(&id).expect("just made");
        // Unchanged, as at almost every start, it costs one comparison.
        if entry.stored.schema.as_deref() == Some(K::SCHEMA) {
            return;
        }
        let problems = match (&entry.stored.schema, entry.stored.next) {
            (Some(stored), made) if made > 0 => schema_problems(stored, K::SCHEMA),
            _ => Vec::new(),
        };
        if problems.is_empty() {
            entry.stored.schema = Some(K::SCHEMA.to_owned());
            vom.kinds_dirty = true;
        } else {
            vom.unreadable
                .push(format!("kind {}: {}", K::NAME, problems.join("; ")));
        }
    });
}

/// Defines kind `K` whose stored state has the schema of `Old`, with
/// `migrate` to turn each old state into a new one. The kind's schema epoch
/// goes up by one; each instance is migrated the first time it is used
/// (lazily: the upgrade costs nothing per object) and written back in the
/// new epoch. Keep the call in later versions while old instances may
/// remain: it then migrates those, and costs nothing else.
pub fn define_migrating<K: Kind, Old: DeserializeOwned + Schema + 'static>(migrate: fn(Old) -> K) {
    with_vom(|vom| {
        let id = kind_entry::<K>(vom);
        let entry = vom.kinds.get_mut(&id).expect("just made");
        match entry.stored.schema.as_deref() {
            // A kind that never migrated: nothing to do.
            Some(stored) if stored == K::SCHEMA && entry.stored.epoch == 0 => return,
            // A start after the migrating upgrade: old instances may remain.
            Some(stored) if stored == K::SCHEMA => {}
            // The upgrade itself (or a kind kept before schemas were).
            Some(stored) if stored == Old::SCHEMA => {}
            None => {}
            Some(stored) => {
                let problems = schema_problems(stored, Old::SCHEMA);
                vom.unreadable.push(format!(
                    "kind {}: its migration reads another state than the stored one: {}",
                    K::NAME,
                    problems.join("; ")
                ));
                return;
            }
        }
        if entry.stored.schema.as_deref() != Some(K::SCHEMA) {
            entry.stored.schema = Some(K::SCHEMA.to_owned());
            entry.stored.epoch += 1;
            vom.kinds_dirty = true;
        }
        entry.migration = Some(Rc::new(move |json: &str| {
            let old: Old = serde_json::from_str(json).map_err(|e| e.to_string())?;
            Ok(Box::new(migrate(old)) as Box<dyn Any>)
        }));
    });
}

/// The id of kind `K`, made if new, with its dispatch set for this
/// incarnation. Its facets must be the ones it was made with.
fn kind_entry<K: Kind>(vom: &mut Vom) -> u64 {
    load_kinds(vom);
    let facets: Vec<String> = K::FACETS.iter().map(|f| (*f).to_owned()).collect();
    let id = match vom.kind_ids.get(K::NAME) {
        Some(id) => *id,
        None => {
            assert!(
                vom.kinds.len() < KINDS_MAX,
                "vom limit: a vat may define at most KINDS_MAX ({KINDS_MAX}) kinds"
            );
            let id = vom.next_kind;
            vom.next_kind += 1;
            vom.kind_ids.insert(K::NAME.to_owned(), id);
            vom.kinds.insert(
                id,
                KindEntry {
                    stored: StoredKind {
                        name: K::NAME.to_owned(),
                        id,
                        facets: facets.clone(),
                        next: 0,
                        epoch: 0,
                        schema: Some(K::SCHEMA.to_owned()),
                    },
                    dispatch: None,
                    migration: None,
                },
            );
            vom.kinds_dirty = true;
            id
        }
    };
    let entry = vom
        .kinds
        .get_mut(&id)
        .expect("vom invariant: kind ids map to kinds");
    assert!(
        entry.stored.facets == facets,
        "kind {} had facets {:?} and is now defined with {:?}: a kind's facets cannot change",
        K::NAME,
        entry.stored.facets,
        facets
    );
    entry.dispatch = Some(dispatch_erased::<K>);
    id
}

/// Why state written with schema `stored` cannot be read with schema
/// `new` without losing or misreading it (empty: it can). Each problem
/// names its field.
pub fn schema_problems(stored: &str, new: &str) -> Vec<String> {
    let opaque = |schema: &str| schema.starts_with("opaque ");
    if opaque(stored) || opaque(new) {
        return vec![
            "its state type changed in a way vom cannot check field by field (not a struct with named fields)".to_owned(),
        ];
    }
    let fields = |schema: &str| -> BTreeMap<String, (String, bool)> {
        schema
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.split_once(": ")?;
                let (ty, default) = match rest.strip_suffix(" = default") {
                    Some(ty) => (ty, true),
                    None => (rest, false),
                };
                Some((name.to_owned(), (ty.to_owned(), default)))
            })
            .collect()
    };
    let (old, new) = (fields(stored), fields(new));
    let mut problems = Vec::new();
    for (name, (ty, default)) in &new {
        match old.get(name) {
            None if !default => problems.push(format!(
                "new field `{name}` has no default (add #[serde(default)]): stored instances lack it"
            )),
            Some((old_ty, _)) if old_ty != ty => problems.push(format!(
                "field `{name}` changed type from {old_ty} to {ty}"
            )),
            _ => {}
        }
    }
    for name in old.keys().filter(|name| !new.contains_key(*name)) {
        problems.push(format!(
            "field `{name}` is gone (removed, renamed, or an older version): its stored data would be dropped"
        ));
    }
    problems
}

/// After the vat's start code ran: the kinds whose new state type cannot
/// read their stored instances, and why (the vat must not start).
pub(crate) fn unreadable_kinds() -> Vec<String> {
    with_vom(|vom| std::mem::take(&mut vom.unreadable))
}

/// After the vat's start code ran: every kind an earlier version defined must
/// be defined again, or the vat cannot start (and an upgrade is rolled back).
pub(crate) fn missing_kinds() -> Vec<String> {
    with_vom(|vom| {
        load_kinds(vom);
        vom.kinds
            .values()
            .filter(|k| k.dispatch.is_none())
            .map(|k| k.stored.name.clone())
            .collect()
    })
}

fn kind_id_of(name: &str) -> u64 {
    with_vom(|vom| {
        load_kinds(vom);
        match vom.kind_ids.get(name) {
            Some(id) if vom.kinds[id].dispatch.is_some() => *id,
            _ => panic!(
                "kind {name} must be defined with vom::define::<{name}>() when the vat starts"
            ),
        }
    })
}

fn record_key(base: &str) -> String {
    let mut key = String::with_capacity(RECORD_PREFIX.len() + base.len());
    key.push_str(RECORD_PREFIX);
    key.push_str(base);
    key
}

/// Appends `n` in decimal. The hot paths build keys by hand: `format!` is a
/// large share of a guest's instructions when it makes many objects.
pub(crate) fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

fn encode_record(slot: &Slot) -> String {
    let refs_len: usize = slot.refs.iter().map(|r| r.len() + 1).sum();
    let mut record = String::with_capacity(24 + refs_len + slot.state_json.len());
    push_decimal(&mut record, slot.rc);
    record.push('|');
    if slot.exported != 0 {
        record.push('x');
        push_decimal(&mut record, slot.exported);
    }
    if slot.known != 0 {
        record.push('k');
        push_decimal(&mut record, slot.known);
    }
    if slot.epoch != 0 {
        record.push('s');
        push_decimal(&mut record, slot.epoch);
    }
    record.push('|');
    for (index, vref) in slot.refs.iter().enumerate() {
        if index > 0 {
            record.push(',');
        }
        record.push_str(vref);
    }
    record.push('|');
    record.push_str(&slot.state_json);
    record
}

/// Reads `base`'s record into its slot, if not read yet. Returns whether the instance exists.
fn load(vom: &mut Vom, base: &str) -> bool {
    let slot = match vom.slots.get_mut(base) {
        Some(slot) => slot,
        None => {
            let kind = parse_durable(base)
                .unwrap_or_else(|| panic!("vom invariant: {base} is a durable vref"))
                .0;
            vom.slots.insert(Rc::from(base), Slot::unloaded(kind));
            vom.slots.get_mut(base).expect("just inserted")
        }
    };
    if slot.loaded {
        return slot.exists;
    }
    slot.loaded = true;
    let Some(record) = sys::vatstore_get(&record_key(base)) else {
        return false;
    };
    let mut parts = record.splitn(4, '|');
    let (Some(rc), Some(flags), Some(refs), Some(state)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("vom invariant: the record of {base} has four parts");
    };
    slot.exists = true;
    slot.rc = rc
        .parse()
        .unwrap_or_else(|_| panic!("vom invariant: the count of {base} is a number"));
    let mask = |letter: char| -> u64 {
        flags.split_once(letter).map_or(0, |(_, rest)| {
            let digits = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or("");
            digits
                .parse()
                .unwrap_or_else(|_| panic!("vom invariant: the flags of {base} are x<mask>k<mask>"))
        })
    };
    slot.exported = mask('x');
    slot.known = mask('k');
    slot.epoch = mask('s');
    slot.refs = if refs.is_empty() {
        Vec::new()
    } else {
        refs.split(',').map(str::to_owned).collect()
    };
    slot.state_json = state.to_owned();
    true
}

fn mark_dirty(vom: &mut Vom, base: &str) {
    let slot = vom
        .slots
        .get_mut(base)
        .expect("vom invariant: a dirty slot is cached");
    if !slot.record_dirty {
        slot.record_dirty = true;
        vom.dirty.push(base.to_owned());
    }
}

fn interned(vom: &mut Vom, base: &str) -> Rc<str> {
    if let Some((name, _)) = vom.slots.get_key_value(base) {
        return name.clone();
    }
    let kind = parse_durable(base)
        .unwrap_or_else(|| panic!("vom invariant: {base} is a durable vref"))
        .0;
    let name: Rc<str> = Rc::from(base);
    vom.slots.insert(name.clone(), Slot::unloaded(kind));
    name
}

/// Adds one to the count of each durable instance in `refs`.
fn add_refs(vom: &mut Vom, refs: &[String]) {
    for vref in refs {
        if vref.starts_with("o-") {
            change_import_count(vref, true);
            continue;
        }
        let Some((_, base, _)) = parse_durable(vref) else {
            continue;
        };
        if !load(vom, base) {
            panic!("vom invariant: durable data refers to {base}, which does not exist");
        }
        vom.slots.get_mut(base).expect("loaded").rc += 1;
        mark_dirty(vom, base);
    }
}

/// Takes one from the count of each durable instance in `refs`.
fn drop_refs(vom: &mut Vom, refs: &[String]) {
    for vref in refs {
        if vref.starts_with("o-") {
            change_import_count(vref, false);
            continue;
        }
        let Some((_, base, _)) = parse_durable(vref) else {
            continue;
        };
        if !load(vom, base) {
            continue;
        }
        let slot = vom.slots.get_mut(base).expect("loaded");
        slot.rc = slot
            .rc
            .checked_sub(1)
            .unwrap_or_else(|| panic!("vom invariant: the count of {base} never goes below zero"));
        let dead = slot.rc == 0;
        mark_dirty(vom, base);
        if dead {
            vom.possibly_dead.push(base.to_owned());
        }
    }
}

/// Moves counts from `old` refs to `new` refs (used when durable data changes).
pub(crate) fn replace_refs(old: &[String], new: &[String]) {
    if old == new {
        return;
    }
    with_vom(|vom| {
        add_refs(vom, new);
        drop_refs(vom, old);
    });
}

/// Makes a new instance of kind `kind` with `state`, counted by nothing yet.
fn make_instance<S: Serialize + 'static>(kind: u64, state: S) -> Rc<str> {
    with_vom(|vom| {
        load_kinds(vom);
        let entry = vom
            .kinds
            .get_mut(&kind)
            .expect("vom invariant: instances are made of known kinds");
        entry.stored.next += 1;
        let epoch = entry.stored.epoch;
        let mut base = String::with_capacity(16);
        base.push_str("o+d");
        push_decimal(&mut base, kind);
        base.push('/');
        push_decimal(&mut base, entry.stored.next);
        vom.kinds_dirty = true;
        let name: Rc<str> = Rc::from(base.as_str());
        let mut slot = Slot::unloaded(kind);
        slot.loaded = true;
        slot.exists = true;
        slot.epoch = epoch;
        slot.state = Some(Box::new(state));
        slot.serialize = Some(serialize_erased::<S>);
        slot.state_dirty = true;
        vom.slots.insert(name.clone(), slot);
        mark_dirty(vom, &base);
        vom.possibly_dead.push(base);
        name
    })
}

fn serialize_erased<S: Serialize + 'static>(state: &dyn Any) -> (String, Vec<String>) {
    let state = state
        .downcast_ref::<S>()
        .expect("vom invariant: a slot's serializer matches its state type");
    to_json_with_refs(state)
}

/// Lends `base`'s state to `f`, deserializing it on first use.
fn with_state<S: DeserializeOwned + Serialize + 'static, R>(
    base: &Rc<str>,
    mutable: bool,
    f: impl FnOnce(&mut S) -> R,
) -> R {
    let taken = with_vom(|vom| {
        if !load(vom, base) {
            panic!("durable object {base} no longer exists");
        }
        let slot = vom.slots.get_mut(&**base).expect("loaded");
        assert!(
            !slot.lent,
            "durable object {base} is already in use: a method reached its own object through a handle"
        );
        slot.lent = true;
        let (kind, stored_epoch) = (slot.kind, slot.epoch);
        match slot.state.take() {
            Some(state) => Ok(state),
            None => {
                slot.serialize = Some(serialize_erased::<S>);
                let json = slot.state_json.clone();
                let entry = &vom.kinds[&kind];
                let migration = (stored_epoch < entry.stored.epoch)
                    .then(|| (entry.stored.epoch, entry.migration.clone()));
                Err((json, stored_epoch, migration))
            }
        }
    });
    // Deserializing meets handles (which intern their names in the cache), so
    // it runs with the cache released.
    let mut migrated = None;
    let mut state: Box<dyn Any> =
        taken.unwrap_or_else(|(json, stored_epoch, migration)| match migration {
            None => Box::new(decode_state::<S>(base, &json)),
            Some((epoch, migration)) => {
                let state = migrate_state(base, &json, stored_epoch, epoch, migration);
                migrated = Some(epoch);
                state
            }
        });
    let typed = state.downcast_mut::<S>().unwrap_or_else(|| {
        panic!(
            "vom invariant: {base} holds a state of another type than {}",
            std::any::type_name::<S>()
        )
    });
    let result = f(typed);
    with_vom(|vom| {
        let slot = vom
            .slots
            .get_mut(&**base)
            .expect("vom invariant: a lent slot stays cached");
        slot.lent = false;
        slot.state = Some(state);
        if let Some(epoch) = migrated {
            slot.epoch = epoch;
        }
        if (mutable || migrated.is_some()) && !slot.state_dirty {
            slot.state_dirty = true;
            mark_dirty(vom, base);
        }
    });
    result
}

fn decode_state<S: DeserializeOwned>(base: &str, json: &str) -> S {
    serde_json::from_str(json).unwrap_or_else(|e| {
        panic!(
            "the stored state of {base} does not fit {}: {e}",
            std::any::type_name::<S>()
        )
    })
}

/// Migrates `base`'s state, stored in epoch `stored_epoch`, to its kind's
/// `epoch`. A failure fails the message that reached it, not the vat.
fn migrate_state(
    base: &str,
    json: &str,
    stored_epoch: u64,
    epoch: u64,
    migration: Option<Migration>,
) -> Box<dyn Any> {
    let Some(migration) = migration.filter(|_| stored_epoch + 1 == epoch) else {
        panic!(
            "the stored state of {base} is of schema epoch {stored_epoch}, and this version migrates its kind to epoch {epoch} from epoch {} only (vom::define_migrating)",
            epoch - 1
        )
    };
    migration(json).unwrap_or_else(|e| {
        panic!("the stored state of {base} (schema epoch {stored_epoch}) does not fit the migration's old type: {e}")
    })
}

/// Writes back what changed in this crank: states, counts, the kind table.
/// Runs at the end of every delivery.
pub(crate) fn flush() {
    loop {
        let dirty = with_vom(|vom| std::mem::take(&mut vom.dirty));
        if dirty.is_empty() {
            break;
        }
        for base in dirty {
            // Serialize a changed state first: its references may move counts.
            let serialized = with_vom(|vom| {
                let slot = vom.slots.get_mut(&*base)?;
                if !slot.state_dirty {
                    return None;
                }
                slot.state_dirty = false;
                let serialize = slot
                    .serialize
                    .expect("vom invariant: a dirty state has a serializer");
                let state = slot
                    .state
                    .as_deref()
                    .expect("vom invariant: a dirty state is present");
                Some(serialize(state))
            });
            if let Some((json, refs)) = serialized {
                assert!(
                    json.len() <= STATE_BYTES_MAX,
                    "the state of {base} is {} bytes, over STATE_BYTES_MAX ({STATE_BYTES_MAX})",
                    json.len()
                );
                let old = with_vom(|vom| {
                    let slot = vom.slots.get_mut(&*base).expect("cached");
                    slot.state_json = json;
                    std::mem::replace(&mut slot.refs, refs.clone())
                });
                replace_refs(&old, &refs);
            }
            let record = with_vom(|vom| {
                let slot = vom.slots.get_mut(&*base)?;
                slot.record_dirty = false;
                slot.exists.then(|| encode_record(slot))
            });
            if let Some(record) = record {
                sys::vatstore_set(&record_key(&base), &record);
            }
        }
    }
    record_possibly_dead();
    let kinds = with_vom(|vom| {
        if !std::mem::take(&mut vom.kinds_dirty) {
            return None;
        }
        let stored = StoredKinds {
            next: vom.next_kind,
            kinds: vom.kinds.values().map(|k| k.stored.clone()).collect(),
        };
        Some(serde_json::to_string(&stored).expect("vom invariant: the kind table serializes"))
    });
    if let Some(kinds) = kinds {
        sys::vatstore_set(KINDS_KEY, &kinds);
    }
    evict();
}

/// Moves this crank's candidates that still qualify (no count, never
/// exported) into the vatstore, where `bringOutYourDead` finds them.
fn record_possibly_dead() {
    // Duplicates only write the same key twice.
    let candidates = with_vom(|vom| std::mem::take(&mut vom.possibly_dead));
    for base in candidates {
        let qualifies = with_vom(|vom| {
            load(vom, &base) && {
                let slot = &vom.slots[base.as_str()];
                slot.rc == 0 && slot.exported == 0
            }
        });
        if qualifies {
            sys::vatstore_set(&format!("{POSSIBLY_DEAD_PREFIX}{base}"), "");
        }
    }
}

fn recorded_possibly_dead() -> Vec<String> {
    let mut found = Vec::new();
    let mut at = POSSIBLY_DEAD_PREFIX.to_owned();
    while let Some(key) = sys::vatstore_get_next_key(&at) {
        let Some(base) = key.strip_prefix(POSSIBLY_DEAD_PREFIX) else {
            break;
        };
        found.push(base.to_owned());
        at = key;
    }
    found
}

/// Keeps the cache within [`INSTANCE_CACHE_MAX`]: drops clean slots no handle refers to.
fn evict() {
    with_vom(|vom| {
        if vom.slots.len() <= INSTANCE_CACHE_MAX {
            return;
        }
        vom.slots
            .retain(|name, slot| Rc::strong_count(name) > 1 || slot.record_dirty || slot.lent);
    });
}

/// Deletes every instance that nothing counts, nothing exported and nothing
/// on the heap holds, cascading to what they referred to. Returns how many.
pub(crate) fn bring_out_your_dead() -> u64 {
    let mut deleted = 0;
    let mut kept = Vec::new();
    flush();
    loop {
        // Deleting an instance drops what it referred to; the flush records
        // those that reach zero, and the next round takes them.
        let candidates = recorded_possibly_dead();
        if candidates.is_empty() {
            break;
        }
        for base in candidates {
            sys::vatstore_delete(&format!("{POSSIBLY_DEAD_PREFIX}{base}"));
            let verdict = with_vom(|vom| {
                if !load(vom, &base) {
                    return None;
                }
                let (name, slot) = vom.slots.get_key_value(base.as_str()).expect("loaded");
                // The cache's key is the one reference vom holds; more are handles.
                let held_on_heap = Rc::strong_count(name) > 1 || slot.lent;
                Some((slot.rc == 0 && slot.exported == 0, held_on_heap))
            });
            match verdict {
                Some((true, false)) => {
                    delete_instance(&base);
                    deleted += 1;
                }
                Some((true, true)) => kept.push(base),
                _ => {}
            }
        }
        flush();
    }
    for base in kept {
        sys::vatstore_set(&format!("{POSSIBLY_DEAD_PREFIX}{base}"), "");
    }
    deleted
}

fn delete_instance(base: &str) {
    let (kind, refs, known, multi_facet) = with_vom(|vom| {
        let multi_facet = vom
            .kinds
            .get(&vom.slots[base].kind)
            .is_some_and(|k| !k.stored.facets.is_empty());
        let slot = vom.slots.get_mut(base).expect("loaded");
        slot.exists = false;
        slot.state = None;
        slot.state_dirty = false;
        (
            slot.kind,
            std::mem::take(&mut slot.refs),
            slot.known,
            multi_facet,
        )
    });
    sys::vatstore_delete(&record_key(base));
    if known != 0 {
        // The kernel still recognizes some facets (others hold them weakly):
        // it must forget them too.
        let vrefs = (0..64)
            .filter(|facet| known & (1 << facet) != 0)
            .map(|facet| {
                if multi_facet {
                    format!("{base}:{facet}")
                } else {
                    base.to_owned()
                }
            })
            .collect();
        sys::syscall(&crate::abi::Syscall::RetireExports { vrefs });
    }
    if kind < FIRST_USER_KIND {
        crate::collections::clear_for_deletion(base, kind);
    }
    crate::collections::forget_weak_entries(base);
    with_vom(|vom| {
        drop_refs(vom, &refs);
        vom.slots.remove(base);
    });
}

/// Changes the export flags of durable object `vref`'s facet: `set`
/// reachable and recognized bits, `clear_reachable`, `clear_known`.
fn change_export(vref: &str, set: bool, clear_reachable: bool, clear_known: bool) {
    let Some((_, base, facet)) = parse_durable(vref) else {
        return;
    };
    let bit = 1u64 << facet.unwrap_or(0).min(63);
    with_vom(|vom| {
        if !load(vom, base) {
            return;
        }
        let slot = vom.slots.get_mut(base).expect("loaded");
        let (exported, known) = (slot.exported, slot.known);
        if set {
            slot.exported |= bit;
            slot.known |= bit;
        }
        if clear_reachable {
            slot.exported &= !bit;
        }
        if clear_known {
            slot.known &= !bit;
        }
        let unreachable = slot.exported == 0 && slot.rc == 0;
        if (slot.exported, slot.known) != (exported, known) {
            mark_dirty(vom, base);
            if unreachable {
                vom.possibly_dead.push(base.to_owned());
            }
        }
    });
}

/// Records that `vref` (if one of ours) went out through the kernel: it stays
/// alive until the kernel drops it.
pub(crate) fn note_exported(vref: &str) {
    change_export(vref, true, false, false);
}

/// The kernel can no longer reach `vref` (`dropExports`).
pub(crate) fn note_dropped(vref: &str) {
    change_export(vref, false, true, false);
}

/// The kernel no longer recognizes `vref` (`retireExports`).
pub(crate) fn note_retired(vref: &str) {
    change_export(vref, false, true, true);
}

/// How many durable references import `vref` has.
pub(crate) fn import_count(vref: &str) -> u64 {
    sys::vatstore_get(&import_count_key(vref)).map_or(0, |n| {
        n.parse()
            .unwrap_or_else(|_| panic!("vom invariant: the durable count of {vref} is a number"))
    })
}

fn import_count_key(vref: &str) -> String {
    format!("vom.ir.{vref}")
}

fn change_import_count(vref: &str, up: bool) {
    let count = import_count(vref);
    let count = if up {
        count + 1
    } else {
        count.checked_sub(1).unwrap_or_else(|| {
            panic!("vom invariant: the durable count of {vref} never goes below zero")
        })
    };
    if count == 0 {
        sys::vatstore_delete(&import_count_key(vref));
        crate::imports::maybe_dropped(vref);
    } else {
        sys::vatstore_set(&import_count_key(vref), &count.to_string());
    }
}

/// Routes a message to a durable object of this vat.
pub(crate) fn dispatch(target: &str, method: &str, args: Vec<Value>) -> Reply {
    let Some((kind, base, facet)) = parse_durable(target) else {
        return Reply::Ready(Err(Error::new(format!("{target} is not a durable object"))));
    };
    let found = with_vom(|vom| {
        load_kinds(vom);
        let entry = vom.kinds.get(&kind)?;
        let dispatch = entry.dispatch?;
        let facets = entry.stored.facets.len();
        if !load(vom, base) {
            return Some(Err(format!("durable object {target} no longer exists")));
        }
        let facet = match (facet, facets) {
            (None, 0) => 0,
            (Some(f), n) if f < n => f,
            _ => return Some(Err(format!("{target} names no facet of its kind"))),
        };
        Some(Ok((dispatch, interned(vom, base), facet)))
    });
    match found {
        None => Reply::Ready(Err(Error::new(format!(
            "{target} is of a kind this version of the vat does not define"
        )))),
        Some(Err(message)) => Reply::Ready(Err(Error::new(message))),
        Some(Ok((dispatch, base, facet))) => dispatch(base, facet, method, args),
    }
}

/// Creates the durable collection kinds' instance `o+d1/1`, the baggage, on
/// first start; a no-op afterwards.
pub(crate) fn ensure_baggage() -> Rc<str> {
    let exists = with_vom(|vom| load(vom, crate::collections::BAGGAGE_VREF));
    if exists {
        with_vom(|vom| interned(vom, crate::collections::BAGGAGE_VREF))
    } else {
        let base = crate::collections::new_collection_instance(MAP_STORE_KIND);
        assert_eq!(
            &*base,
            crate::collections::BAGGAGE_VREF,
            "vom invariant: the baggage is the first map store"
        );
        // The baggage is a root: it never dies.
        with_vom(|vom| {
            vom.slots.get_mut(&*base).expect("made").rc = 1;
            vom.possibly_dead.retain(|candidate| **candidate != *base);
        });
        base
    }
}

pub(crate) fn make_collection<S: Serialize + 'static>(kind: u64, state: S) -> Rc<str> {
    make_instance(kind, state)
}

pub(crate) fn intern(base: &str) -> Rc<str> {
    with_vom(|vom| interned(vom, base))
}

pub(crate) fn collection_state<S: DeserializeOwned + Serialize + 'static, R>(
    base: &Rc<str>,
    mutable: bool,
    f: impl FnOnce(&mut S) -> R,
) -> R {
    with_state(base, mutable, f)
}

pub(crate) fn exists(base: &str) -> bool {
    with_vom(|vom| load(vom, base))
}

/// A handle on a durable object of kind `S`. Cheap to clone; holding one on
/// the heap keeps the object alive. It can be stored in durable state and
/// collections, passed in messages, and returned from methods.
pub struct Durable<S> {
    base: Rc<str>,
    _state: PhantomData<fn() -> S>,
}

impl<S> Clone for Durable<S> {
    fn clone(&self) -> Self {
        Durable {
            base: self.base.clone(),
            _state: PhantomData,
        }
    }
}

impl<S> PartialEq for Durable<S> {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base
    }
}

impl<S> Eq for Durable<S> {}

impl<S> std::fmt::Debug for Durable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({})", self.base)
    }
}

impl<S: Kind> Durable<S> {
    /// Makes a new instance of `S` with `state`. Unless it is stored, exported
    /// or held, it is deleted at the next `bringOutYourDead`.
    pub fn new(state: S) -> Durable<S> {
        let kind = kind_id_of(S::NAME);
        Durable::from_base(make_instance(kind, state))
    }

    /// A reference to facet `name` of this instance, to pass in messages.
    pub fn facet(&self, name: &str) -> Ref {
        let index = S::FACETS
            .iter()
            .position(|f| *f == name)
            .unwrap_or_else(|| panic!("kind {} has no facet {name:?}", S::NAME));
        Ref::with_iface(
            format!("{}:{index}", self.base),
            Some(format!("Alleged: {}.{name}", S::NAME)),
        )
    }

    /// A reference to the object (the first facet of a multi-facet kind).
    pub fn reference(&self) -> Ref {
        match S::FACETS.first() {
            None => Ref::with_iface(self.base.to_string(), Some(format!("Alleged: {}", S::NAME))),
            Some(first) => self.facet(first),
        }
    }
}

impl<S: DeserializeOwned + Serialize + 'static> Durable<S> {
    pub(crate) fn from_base(base: Rc<str>) -> Durable<S> {
        Durable {
            base,
            _state: PhantomData,
        }
    }

    /// The instance's vref (`o+dK/I`).
    pub fn vref(&self) -> &str {
        &self.base
    }

    /// Reads the state.
    pub fn with<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        with_state(&self.base, false, |state: &mut S| f(state))
    }

    /// Changes the state; it is written back at the end of the crank.
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        with_state(&self.base, true, f)
    }
}

impl<S> Serialize for Durable<S> {
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        note_ref(&self.base);
        serializer.serialize_str(&self.base)
    }
}

impl<'de, S: DeserializeOwned + Serialize + 'static> Deserialize<'de> for Durable<S> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let vref = String::deserialize(deserializer)?;
        if parse_durable(&vref).is_none_or(|(_, _, facet)| facet.is_some()) {
            return Err(serde::de::Error::custom(format!(
                "{vref:?} is not a durable object's vref"
            )));
        }
        Ok(Durable::from_base(intern(&vref)))
    }
}

impl<S: Kind> ToPassable for Durable<S> {
    fn to_passable(&self) -> Value {
        Value::Remotable(self.reference())
    }
}

impl<S: Kind> FromPassable for Durable<S> {
    const SHAPE: &'static str = "a durable object of the expected kind from this vat";
    fn from_passable(value: &Value) -> Option<Self> {
        let Value::Remotable(r) = value else {
            return None;
        };
        let (kind, base, facet) = parse_durable(&r.slot)?;
        let expected_facet = if S::FACETS.is_empty() { None } else { Some(0) };
        if kind != kind_id_of(S::NAME) || facet != expected_facet || !exists(base) {
            return None;
        }
        Some(Durable::from_base(intern(base)))
    }
}

impl Serialize for Ref {
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        note_ref(&self.slot);
        (&self.slot, &self.iface).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Ref {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (slot, iface) = <(String, Option<String>)>::deserialize(deserializer)?;
        let mut reference = Ref::with_iface(slot, iface);
        crate::imports::hold(&mut reference);
        Ok(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_changes_that_lose_or_misread_stored_state_are_named() {
        let stored = "count: u64\nname: String";
        assert!(schema_problems(stored, stored).is_empty());
        assert!(
            schema_problems(stored, "count: u64\nname: String\nlabel: String = default").is_empty()
        );
        assert_eq!(
            schema_problems(stored, "count: u64\nname: String\nlabel: String"),
            ["new field `label` has no default (add #[serde(default)]): stored instances lack it"]
        );
        assert_eq!(
            schema_problems(stored, "count: u64\nname: Vec<u8>"),
            ["field `name` changed type from String to Vec<u8>"]
        );
        assert_eq!(
            schema_problems(stored, "count: u64"),
            [
                "field `name` is gone (removed, renamed, or an older version): its stored data would be dropped"
            ]
        );
        assert_eq!(schema_problems("opaque (u64)", "opaque (u64,u8)").len(), 1);
    }

    #[test]
    fn durable_vrefs_parse_into_kind_base_and_facet() {
        assert_eq!(parse_durable("o+d10/3"), Some((10, "o+d10/3", None)));
        assert_eq!(parse_durable("o+d10/3:1"), Some((10, "o+d10/3", Some(1))));
        assert_eq!(parse_durable("o+10"), None);
        assert_eq!(parse_durable("o+d10"), None);
        assert_eq!(parse_durable("o+d10/x"), None);
        assert_eq!(parse_durable("o-d10/3"), None);
    }

    #[test]
    fn serializing_durable_data_collects_its_references() {
        #[derive(Serialize)]
        struct Holder {
            name: String,
            friend: Ref,
            others: Vec<Ref>,
        }
        let holder = Holder {
            name: "a".into(),
            friend: Ref::new("o-4"),
            others: vec![Ref::new("o+d11/2"), Ref::new("o+d11/3")],
        };
        let (json, refs) = to_json_with_refs(&holder);
        assert_eq!(refs, ["o-4", "o+d11/2", "o+d11/3"]);
        assert!(json.contains("\"o-4\""));
        // Outside a collection, serializing notes nothing and leaks nothing.
        let (_, again) = to_json_with_refs(&"plain");
        assert!(again.is_empty());
    }
}
