//! Durable collections: [`MapStore`], [`SetStore`], [`WeakMapStore`], and the
//! vat's [`Baggage`].
//!
//! A collection is a durable instance of one of vom's own kinds (its state is
//! its size, the ordinals it gave references, and the greatest key it ever
//! held); each entry is one vatstore key `vom.vc.<collection>.<encoded
//! key>`, so a collection may hold far more entries than fit in memory and a
//! lookup reads one key. Keys are encoded as Endo's `encodePassable` encodes
//! them, so byte order is Endo's rank order: booleans (`b`), numbers (`f`),
//! bigints (`n`/`p`; Rust integers are keyed as bigints, which keeps them
//! exact), references (`r`, by the order in which the collection first saw
//! them), strings (`s`).
//!
//! Values and strong keys count as references to the durable objects they
//! name; a [`WeakMapStore`]'s keys do not, and its entries go when their key
//! object is deleted.

use std::marker::PhantomData;
use std::ops::Bound;
use std::rc::Rc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::capdata::Ref;
use crate::durable::{
    self, Durable, MAP_STORE_KIND, SET_STORE_KIND, WEAK_MAP_STORE_KIND, parse_durable,
    to_json_with_refs,
};
use crate::{Error, sys};

/// The vref of the vat's baggage: the first map store.
pub(crate) const BAGGAGE_VREF: &str = "o+d1/1";
/// The longest encoded key a collection accepts.
pub const COLLECTION_KEY_BYTES_MAX: usize = 4096;
/// The largest serialized entry (key and value) a collection accepts.
pub const COLLECTION_ENTRY_BYTES_MAX: usize = 256 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    ordinals: u64,
    /// The greatest encoded key ever written: no entry's key sorts after
    /// it, so a new key that does (ids counting up, fresh ordinals) is
    /// known absent without a vatstore read. Empty: none yet. Absent in
    /// collections made before it was kept, until found
    /// (`Raw::sorts_after_every_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a key sorts: a scalar already encoded, or a reference that the
/// collection numbers in the order it first sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCode {
    Scalar(String),
    Reference(String),
}

/// A type that can key a collection.
pub trait Key: Serialize + DeserializeOwned {
    fn key_code(&self) -> KeyCode;
}

/// A type that can key a weak collection: references only.
pub trait WeakKey: Key {}

/// Endo's `encodePassable` for a number (binary64, ordered as numbers order).
pub fn encode_number(n: f64) -> String {
    if n.is_nan() {
        return "ffff8000000000000".to_owned();
    }
    let n = if n == 0.0 { 0.0 } else { n };
    let mut bits = n.to_bits();
    if n < 0.0 {
        bits ^= u64::MAX;
    } else {
        bits ^= 1 << 63;
    }
    format!("f{bits:016x}")
}

/// Endo's `encodePassable` for a bigint: the digit count in an Elias-delta
/// style prefix, so that byte order is numeric order.
pub fn encode_bigint(n: i128) -> String {
    // 128-bit division is slow on wasm32: most keys fit in 64 bits.
    let digits = match u64::try_from(n.unsigned_abs()) {
        Ok(magnitude) => {
            let mut digits = String::with_capacity(20);
            durable::push_decimal(&mut digits, magnitude);
            digits
        }
        Err(_) => n.unsigned_abs().to_string(),
    };
    let count = digits.len();
    let count_digits = if count < 10 { 1 } else { 2 };
    if n < 0 {
        let complement_count = 10u64.pow(count_digits as u32) - count as u64;
        // The ten's complement of the digits: 10^count + n, padded to count digits.
        let complement = 10u128
            .checked_pow(count as u32)
            .expect("vom limit: bigint keys have at most 38 digits")
            - n.unsigned_abs();
        format!(
            "n{}{:0cw$}:{:0w$}",
            "#".repeat(count_digits - 1),
            complement_count,
            complement,
            cw = count_digits,
            w = count
        )
    } else {
        let mut out = String::with_capacity(4 + count_digits + count);
        out.push('p');
        for _ in 1..count_digits {
            out.push('~');
        }
        durable::push_decimal(&mut out, count as u64);
        out.push(':');
        out.push_str(&digits);
        out
    }
}

impl Key for String {
    fn key_code(&self) -> KeyCode {
        KeyCode::Scalar(format!("s{self}"))
    }
}

impl Key for bool {
    fn key_code(&self) -> KeyCode {
        KeyCode::Scalar(format!("b{self}"))
    }
}

impl Key for f64 {
    fn key_code(&self) -> KeyCode {
        KeyCode::Scalar(encode_number(*self))
    }
}

impl Key for u64 {
    fn key_code(&self) -> KeyCode {
        KeyCode::Scalar(encode_bigint(i128::from(*self)))
    }
}

impl Key for u32 {
    fn key_code(&self) -> KeyCode {
        KeyCode::Scalar(encode_bigint(i128::from(*self)))
    }
}

impl Key for i64 {
    fn key_code(&self) -> KeyCode {
        KeyCode::Scalar(encode_bigint(i128::from(*self)))
    }
}

impl Key for Ref {
    fn key_code(&self) -> KeyCode {
        KeyCode::Reference(self.slot.clone())
    }
}

impl WeakKey for Ref {}

impl<S: DeserializeOwned + Serialize + 'static> Key for Durable<S> {
    fn key_code(&self) -> KeyCode {
        KeyCode::Reference(self.vref().to_owned())
    }
}

impl<S: DeserializeOwned + Serialize + 'static> WeakKey for Durable<S> {}

/// Where every collection's entries are: `vom.vc.<collection>.<key>`.
const ENTRIES: &str = "vom.vc.";

fn entry_prefix(base: &str) -> String {
    let mut prefix = String::with_capacity(entry_prefix_len(base) + 24);
    prefix.push_str(ENTRIES);
    prefix.push_str(base);
    prefix.push('.');
    prefix
}

/// How long `entry_prefix(base)` is, without making it.
fn entry_prefix_len(base: &str) -> usize {
    ENTRIES.len() + base.len() + 1
}

fn ordinal_key(base: &str, vref: &str) -> String {
    format!("vom.vco.{base}.{vref}")
}

fn weak_index_key(key_base: &str, collection: &str) -> String {
    format!("vom.ow.{key_base}.{collection}")
}

/// The untyped layer shared by every collection type.
#[derive(Clone)]
struct Raw {
    base: Rc<str>,
    weak: bool,
}

impl Raw {
    fn new(kind: u64) -> Raw {
        Raw {
            base: new_collection_instance(kind),
            weak: kind == WEAK_MAP_STORE_KIND,
        }
    }

    fn meta<R>(&self, mutable: bool, f: impl FnOnce(&mut Meta) -> R) -> R {
        durable::collection_state(&self.base, mutable, f)
    }

    /// The encoded key, assigning a reference its ordinal if `assign`.
    fn encode<K: Key>(&self, key: &K, assign: bool) -> Result<Option<String>, Error> {
        let encoded = match key.key_code() {
            KeyCode::Scalar(code) => code,
            KeyCode::Reference(vref) => {
                let key = ordinal_key(&self.base, &vref);
                let ordinal = match sys::vatstore_get(&key) {
                    Some(ordinal) => ordinal,
                    None if assign => {
                        let ordinal = self.meta(true, |m| {
                            m.ordinals += 1;
                            m.ordinals
                        });
                        let ordinal = format!("{ordinal:010}");
                        sys::vatstore_set(&key, &ordinal);
                        ordinal
                    }
                    None => return Ok(None),
                };
                format!("r{ordinal}")
            }
        };
        if encoded.len() > COLLECTION_KEY_BYTES_MAX {
            return Err(Error::new(format!(
                "collection key of {} bytes exceeds COLLECTION_KEY_BYTES_MAX ({COLLECTION_KEY_BYTES_MAX})",
                encoded.len()
            )));
        }
        let mut key = entry_prefix(&self.base);
        key.push_str(&encoded);
        Ok(Some(key))
    }

    fn get_entry<K: DeserializeOwned, V: DeserializeOwned>(&self, key: &str) -> Option<(K, V)> {
        let entry = sys::vatstore_get(key)?;
        Some(decode_entry(key, &entry))
    }

    fn get<K: Key, V: DeserializeOwned>(&self, key: &K) -> Option<V> {
        let encoded = self.encode(key, false).ok()??;
        self.get_entry::<serde::de::IgnoredAny, V>(&encoded)
            .map(|(_, v)| v)
    }

    fn has<K: Key>(&self, key: &K) -> bool {
        match self.encode(key, false) {
            Ok(Some(encoded)) => sys::vatstore_get(&encoded).is_some(),
            _ => false,
        }
    }

    /// Writes `key -> value`; `must_exist` is `Some(true)` for `set`,
    /// `Some(false)` for `init`, `None` to accept either.
    fn put<K: Key, V: Serialize>(
        &self,
        key: &K,
        value: &V,
        must_exist: Option<bool>,
    ) -> Result<(), Error> {
        let encoded = self.encode(key, true)?.expect("assigned");
        let code = &encoded[entry_prefix_len(&self.base)..];
        let old = if self.sorts_after_every_key(code) {
            None
        } else {
            sys::vatstore_get(&encoded)
        };
        match (must_exist, old.is_some()) {
            (Some(true), false) => {
                return Err(Error::new(format!(
                    "key {} not found in collection",
                    describe(key)
                )));
            }
            (Some(false), true) => {
                return Err(Error::new(format!(
                    "key {} already registered in collection",
                    describe(key)
                )));
            }
            _ => {}
        }
        let (key_json, key_refs) = to_json_with_refs(key);
        let (value_json, value_refs) = to_json_with_refs(value);
        let mut refs = value_refs;
        if !self.weak {
            refs.extend(key_refs);
        }
        let mut entry = refs.join(",");
        entry.reserve(4 + key_json.len() + value_json.len());
        entry.push_str("|[");
        entry.push_str(&key_json);
        entry.push(',');
        entry.push_str(&value_json);
        entry.push(']');
        if entry.len() > COLLECTION_ENTRY_BYTES_MAX {
            return Err(Error::new(format!(
                "collection entry of {} bytes exceeds COLLECTION_ENTRY_BYTES_MAX ({COLLECTION_ENTRY_BYTES_MAX})",
                entry.len()
            )));
        }
        sys::vatstore_set(&encoded, &entry);
        let old_refs = old.as_deref().map(entry_refs).unwrap_or_default();
        durable::replace_refs(&old_refs, &refs);
        if old.is_none() {
            self.meta(true, |m| {
                m.size += 1;
                if m.last.as_deref().is_some_and(|last| last < code) {
                    m.last = Some(code.to_owned());
                }
            });
            if self.weak
                && let KeyCode::Reference(vref) = key.key_code()
                && let Some((_, key_base, _)) = parse_durable(&vref)
            {
                sys::vatstore_set(&weak_index_key(key_base, &self.base), "");
            }
        }
        Ok(())
    }

    /// Whether the encoded key `code` sorts after every key ever written
    /// (see `Meta::last`), so that the collection cannot hold it. A
    /// collection made before that was kept has its greatest key found
    /// once, with an ordered read.
    fn sorts_after_every_key(&self, code: &str) -> bool {
        if let Some(after) = self.meta(false, |m| m.last.as_deref().map(|last| last < code)) {
            return after;
        }
        let last = self
            .keys_reversed()
            .next()
            .map(|key| key[entry_prefix_len(&self.base)..].to_owned())
            .unwrap_or_default();
        let after = last.as_str() < code;
        self.meta(true, |m| m.last = Some(last));
        after
    }

    fn delete<K: Key>(&self, key: &K) -> bool {
        let Ok(Some(encoded)) = self.encode(key, false) else {
            return false;
        };
        let Some(old) = sys::vatstore_get(&encoded) else {
            return false;
        };
        self.remove_entry(&encoded, &old);
        true
    }

    fn remove_entry(&self, encoded: &str, entry: &str) {
        sys::vatstore_delete(encoded);
        durable::replace_refs(&entry_refs(entry), &[]);
        self.meta(true, |m| m.size -= 1);
    }

    fn len(&self) -> u64 {
        self.meta(false, |m| m.size)
    }

    /// Entry keys from `start` to `end`, in key order, read lazily.
    fn keys_between(&self, start: Option<String>, end: Option<String>) -> KeyCursor {
        let prefix = entry_prefix(&self.base);
        KeyCursor {
            at: start.clone().unwrap_or_else(|| prefix.clone()),
            first: start,
            end,
            prefix,
        }
    }

    /// Every entry key, last first.
    fn keys_reversed(&self) -> ReverseKeyCursor {
        let prefix = entry_prefix(&self.base);
        // Every entry key sorts before the prefix with its final `.` made `/`.
        let mut at = prefix.clone();
        at.pop();
        at.push('/');
        ReverseKeyCursor { prefix, at }
    }

    fn bound<K: Key>(&self, bound: Bound<&K>) -> Result<Option<(String, bool)>, Error> {
        Ok(match bound {
            Bound::Unbounded => None,
            Bound::Included(key) => self.encode(key, false)?.map(|k| (k, true)),
            Bound::Excluded(key) => self.encode(key, false)?.map(|k| (k, false)),
        })
    }
}

fn describe<K: Key>(key: &K) -> String {
    serde_json::to_string(key).unwrap_or_else(|_| "?".to_owned())
}

fn entry_refs(entry: &str) -> Vec<String> {
    let refs = entry.split_once('|').map_or("", |(refs, _)| refs);
    if refs.is_empty() {
        Vec::new()
    } else {
        refs.split(',').map(str::to_owned).collect()
    }
}

fn decode_entry<K: DeserializeOwned, V: DeserializeOwned>(key: &str, entry: &str) -> (K, V) {
    let json = entry
        .split_once('|')
        .unwrap_or_else(|| panic!("vom invariant: collection entry {key} has refs and data"))
        .1;
    serde_json::from_str(json).unwrap_or_else(|e| {
        panic!("collection entry {key} does not fit the collection's types: {e}")
    })
}

/// Walks a collection's entry keys in order with `vatstore_get_next_key`.
struct KeyCursor {
    prefix: String,
    at: String,
    /// An inclusive start key, checked before moving past it.
    first: Option<String>,
    end: Option<String>,
}

impl Iterator for KeyCursor {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if let Some(first) = self.first.take()
            && sys::vatstore_get(&first).is_some()
        {
            return self.within(first);
        }
        let next = sys::vatstore_get_next_key(&self.at)?;
        if !next.starts_with(&self.prefix) {
            return None;
        }
        self.at = next.clone();
        self.within(next)
    }
}

/// Walks a collection's entry keys from the last with `vatstore_get_prev_key`.
struct ReverseKeyCursor {
    prefix: String,
    at: String,
}

impl Iterator for ReverseKeyCursor {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let prev = sys::vatstore_get_prev_key(&self.at)?;
        if !prev.starts_with(&self.prefix) {
            return None;
        }
        self.at = prev.clone();
        Some(prev)
    }
}

impl KeyCursor {
    fn within(&mut self, key: String) -> Option<String> {
        self.at = key.clone();
        match &self.end {
            Some(end) if key.as_str() >= end.as_str() => None,
            _ => Some(key),
        }
    }
}

pub(crate) fn new_collection_instance(kind: u64) -> Rc<str> {
    let meta = Meta {
        last: Some(String::new()),
        ..Meta::default()
    };
    durable::make_collection(kind, meta)
}

/// Deletes every entry of collection `base`, which is being deleted.
pub(crate) fn clear_for_deletion(base: &str, kind: u64) {
    let raw = Raw {
        base: durable::intern(base),
        weak: kind == WEAK_MAP_STORE_KIND,
    };
    let keys: Vec<String> = raw.keys_between(None, None).collect();
    for key in keys {
        if let Some(entry) = sys::vatstore_get(&key) {
            sys::vatstore_delete(&key);
            durable::replace_refs(&entry_refs(&entry), &[]);
        }
    }
    let ordinals = format!("vom.vco.{base}.");
    let mut at = ordinals.clone();
    while let Some(key) = sys::vatstore_get_next_key(&at) {
        if !key.starts_with(&ordinals) {
            break;
        }
        sys::vatstore_delete(&key);
        at = key;
    }
}

/// Removes the weak-collection entries keyed by `key_base`, which is being deleted.
pub(crate) fn forget_weak_entries(key_base: &str) {
    let prefix = format!("vom.ow.{key_base}.");
    let mut at = prefix.clone();
    let mut collections = Vec::new();
    while let Some(key) = sys::vatstore_get_next_key(&at) {
        let Some(collection) = key.strip_prefix(&prefix) else {
            break;
        };
        collections.push(collection.to_owned());
        at = key;
    }
    for collection in collections {
        sys::vatstore_delete(&weak_index_key(key_base, &collection));
        if !durable::exists(&collection) {
            continue;
        }
        let raw = Raw {
            base: durable::intern(&collection),
            weak: true,
        };
        let ordinal = ordinal_key(&collection, key_base);
        if let Some(number) = sys::vatstore_get(&ordinal) {
            let encoded = format!("{}r{number}", entry_prefix(&collection));
            if let Some(entry) = sys::vatstore_get(&encoded) {
                raw.remove_entry(&encoded, &entry);
            }
            sys::vatstore_delete(&ordinal);
        }
    }
}

macro_rules! collection_serde {
    ($ty:ident < $($param:ident),* >, $kind:expr) => {
        impl<$($param),*> Serialize for $ty<$($param),*> {
            fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
                durable::note_ref(&self.raw.base);
                serializer.serialize_str(&self.raw.base)
            }
        }

        impl<'de, $($param),*> Deserialize<'de> for $ty<$($param),*> {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let vref = String::deserialize(deserializer)?;
                match parse_durable(&vref) {
                    Some((kind, _, None)) if kind == $kind => Ok($ty {
                        raw: Raw { base: durable::intern(&vref), weak: kind == WEAK_MAP_STORE_KIND },
                        _types: PhantomData,
                    }),
                    _ => Err(serde::de::Error::custom(format!(
                        "{vref:?} is not a {}", stringify!($ty)
                    ))),
                }
            }
        }

        impl<$($param),*> Clone for $ty<$($param),*> {
            fn clone(&self) -> Self {
                $ty { raw: self.raw.clone(), _types: PhantomData }
            }
        }

        impl<$($param),*> std::fmt::Debug for $ty<$($param),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.raw.base)
            }
        }
    };
}

/// A durable map with ordered keys. Store it in durable state or baggage to
/// keep it; a map nothing refers to is deleted with its entries.
pub struct MapStore<K, V> {
    raw: Raw,
    _types: PhantomData<fn() -> (K, V)>,
}

collection_serde!(MapStore<K, V>, MAP_STORE_KIND);

impl<K: Key, V: Serialize + DeserializeOwned> Default for MapStore<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Key, V: Serialize + DeserializeOwned> MapStore<K, V> {
    pub fn new() -> Self {
        MapStore {
            raw: Raw::new(MAP_STORE_KIND),
            _types: PhantomData,
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.raw.get(key)
    }

    pub fn has(&self, key: &K) -> bool {
        self.raw.has(key)
    }

    /// Adds a new entry; fails if `key` is present.
    pub fn init(&self, key: &K, value: &V) -> Result<(), Error> {
        self.raw.put(key, value, Some(false))
    }

    /// Replaces an entry; fails if `key` is absent.
    pub fn set(&self, key: &K, value: &V) -> Result<(), Error> {
        self.raw.put(key, value, Some(true))
    }

    /// Adds or replaces an entry.
    pub fn insert(&self, key: &K, value: &V) -> Result<(), Error> {
        self.raw.put(key, value, None)
    }

    /// Removes an entry; returns whether it was there.
    pub fn delete(&self, key: &K) -> bool {
        self.raw.delete(key)
    }

    pub fn len(&self) -> u64 {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries, in key order, read lazily.
    pub fn entries(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.entries_in(Bound::Unbounded, Bound::Unbounded)
    }

    pub fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.entries().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.entries().map(|(_, v)| v)
    }

    /// All entries, last key first, read lazily.
    pub fn entries_rev(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.raw
            .keys_reversed()
            .filter_map(|key| self.raw.get_entry::<K, V>(&key))
    }

    /// The entry with the smallest key.
    pub fn first(&self) -> Option<(K, V)> {
        self.entries().next()
    }

    /// The entry with the largest key.
    pub fn last(&self) -> Option<(K, V)> {
        self.entries_rev().next()
    }

    /// The entries whose keys lie between `start` and `end`, in key order.
    pub fn entries_in(
        &self,
        start: Bound<&K>,
        end: Bound<&K>,
    ) -> impl Iterator<Item = (K, V)> + '_ {
        entries_between(&self.raw, start, end)
    }
}

fn entries_between<'a, K: Key + 'a, V: DeserializeOwned + 'a>(
    raw: &'a Raw,
    start: Bound<&K>,
    end: Bound<&K>,
) -> Box<dyn Iterator<Item = (K, V)> + 'a> {
    // A bound on a reference the collection never saw cannot be placed: the
    // range is empty from such a start, and unbounded up to such an end.
    let start = match raw.bound(start) {
        Ok(start) => start,
        Err(_) => return Box::new(std::iter::empty()),
    };
    let end = raw.bound(end).ok().flatten();
    let start_key = match start {
        None => None,
        Some((key, true)) => Some(key),
        Some((key, false)) => Some(format!("{key}\u{0}")),
    };
    let end_key = match end {
        None => None,
        Some((key, false)) => Some(key),
        Some((key, true)) => Some(format!("{key}\u{0}")),
    };
    Box::new(
        raw.keys_between(start_key, end_key)
            .filter_map(move |key| raw.get_entry::<K, V>(&key)),
    )
}

/// A durable set with ordered keys.
pub struct SetStore<K> {
    raw: Raw,
    _types: PhantomData<fn() -> K>,
}

collection_serde!(SetStore<K>, SET_STORE_KIND);

impl<K: Key> Default for SetStore<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Key> SetStore<K> {
    pub fn new() -> Self {
        SetStore {
            raw: Raw::new(SET_STORE_KIND),
            _types: PhantomData,
        }
    }

    pub fn has(&self, key: &K) -> bool {
        self.raw.has(key)
    }

    /// Adds `key`; returns whether it was new.
    pub fn add(&self, key: &K) -> Result<bool, Error> {
        if self.raw.has(key) {
            return Ok(false);
        }
        self.raw.put(key, &(), Some(false)).map(|()| true)
    }

    pub fn delete(&self, key: &K) -> bool {
        self.raw.delete(key)
    }

    pub fn len(&self) -> u64 {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn keys(&self) -> impl Iterator<Item = K> + '_ {
        entries_between::<K, ()>(&self.raw, Bound::Unbounded, Bound::Unbounded).map(|(k, ())| k)
    }

    /// All keys, the largest first.
    pub fn keys_rev(&self) -> impl Iterator<Item = K> + '_ {
        self.raw
            .keys_reversed()
            .filter_map(|key| self.raw.get_entry::<K, ()>(&key))
            .map(|(k, ())| k)
    }

    pub fn first(&self) -> Option<K> {
        self.keys().next()
    }

    pub fn last(&self) -> Option<K> {
        self.keys_rev().next()
    }
}

/// A durable map keyed by references that does not keep its keys alive: an
/// entry goes when its key object is deleted. It cannot be iterated.
pub struct WeakMapStore<K, V> {
    raw: Raw,
    _types: PhantomData<fn() -> (K, V)>,
}

collection_serde!(WeakMapStore<K, V>, WEAK_MAP_STORE_KIND);

impl<K: WeakKey, V: Serialize + DeserializeOwned> Default for WeakMapStore<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: WeakKey, V: Serialize + DeserializeOwned> WeakMapStore<K, V> {
    pub fn new() -> Self {
        WeakMapStore {
            raw: Raw::new(WEAK_MAP_STORE_KIND),
            _types: PhantomData,
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.raw.get(key)
    }

    pub fn has(&self, key: &K) -> bool {
        self.raw.has(key)
    }

    pub fn init(&self, key: &K, value: &V) -> Result<(), Error> {
        self.raw.put(key, value, Some(false))
    }

    pub fn insert(&self, key: &K, value: &V) -> Result<(), Error> {
        self.raw.put(key, value, None)
    }

    pub fn delete(&self, key: &K) -> bool {
        self.raw.delete(key)
    }
}

/// The vat's root durable map, handed to its start function every time it
/// starts: what a version stores here, the next version finds.
#[derive(Clone)]
pub struct Baggage {
    raw: Raw,
}

impl std::fmt::Debug for Baggage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Baggage({})", self.raw.base)
    }
}

impl Baggage {
    pub(crate) fn open() -> Baggage {
        Baggage {
            raw: Raw {
                base: durable::ensure_baggage(),
                weak: false,
            },
        }
    }

    pub fn get<V: DeserializeOwned>(&self, key: &str) -> Option<V> {
        self.raw.get(&key.to_owned())
    }

    pub fn has(&self, key: &str) -> bool {
        self.raw.has(&key.to_owned())
    }

    pub fn set<V: Serialize>(&self, key: &str, value: &V) -> Result<(), Error> {
        self.raw.put(&key.to_owned(), value, None)
    }

    pub fn delete(&self, key: &str) -> bool {
        self.raw.delete(&key.to_owned())
    }

    /// The value under `key`, made with `make` and stored on first use.
    pub fn get_or_init<V: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        make: impl FnOnce() -> V,
    ) -> V {
        if let Some(value) = self.get(key) {
            return value;
        }
        let value = make();
        self.set(key, &value)
            .unwrap_or_else(|e| panic!("baggage entry {key:?} could not be stored: {e}"));
        value
    }

    pub fn len(&self) -> u64 {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_prefix_is_as_long_as_its_length_says() {
        for base in ["o+d1/1", "o+d12/345"] {
            assert_eq!(entry_prefix(base).len(), entry_prefix_len(base));
        }
    }

    #[test]
    fn numbers_encode_in_numeric_order_as_endo_does() {
        // Values checked against @endo/marshal's encodePassable.
        assert_eq!(encode_number(0.0), "f8000000000000000");
        assert_eq!(encode_number(-0.0), "f8000000000000000");
        assert_eq!(encode_number(1.0), "fbff0000000000000");
        assert_eq!(encode_number(-1.0), "f400fffffffffffff");
        let numbers = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1.0,
            0.0,
            1e-9,
            1.0,
            2.5,
            1e300,
            f64::INFINITY,
        ];
        let encoded: Vec<String> = numbers.iter().map(|n| encode_number(*n)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
    }

    #[test]
    fn bigints_encode_in_numeric_order_as_endo_does() {
        assert_eq!(encode_bigint(0), "p1:0");
        assert_eq!(encode_bigint(7), "p1:7");
        assert_eq!(encode_bigint(12345678901), "p~11:12345678901");
        assert_eq!(encode_bigint(-1), "n9:9");
        assert_eq!(encode_bigint(-25), "n8:75");
        let values: [i128; 11] = [
            -100_000_000_000,
            -1000,
            -999,
            -25,
            -1,
            0,
            1,
            9,
            10,
            999_999_999,
            10_000_000_000,
        ];
        let encoded: Vec<String> = values.iter().map(|n| encode_bigint(*n)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted, "byte order is numeric order");
    }

    #[test]
    fn key_kinds_sort_in_endo_rank_order() {
        let codes = [
            true.key_code(),
            1.5f64.key_code(),
            3u64.key_code(),
            "a".to_owned().key_code(),
        ];
        let scalars: Vec<&str> = codes
            .iter()
            .map(|c| match c {
                KeyCode::Scalar(s) => s.as_str(),
                KeyCode::Reference(_) => unreachable!(),
            })
            .collect();
        let mut sorted = scalars.clone();
        sorted.sort();
        assert_eq!(scalars, sorted, "booleans < numbers < bigints < strings");
        assert!(
            "r0000000001" < "s" && "p9:9" < "r0000000001",
            "references sort between bigints and strings"
        );
    }
}
