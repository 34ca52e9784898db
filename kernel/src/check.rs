//! `vat check`: re-derives what the kernel's tables must satisfy from the
//! store itself and reports every discrepancy. It reads everything and
//! writes nothing.
//!
//! Checked now: SQLite's own integrity; the run queue's bounds and items;
//! object owners; promise states and what each state may carry; c-list
//! symmetry, flags, ownership of exports, and id counters; vat records
//! (their states and reasons) and their bundles; pet names; and each
//! promise's and object's reference counts, recounted from every place
//! that refers to it (c-lists, the run queue, promise queues and data, pet
//! names, pins, shown references, sturdy refs, and what an attached
//! engine's records hold, as it says), with the GC actions an unreachable or
//! unrecognizable object must have. An engine checks its own records
//! ([`Endpoint::check_records`]); the kernel checks its endpoints' c-lists.

use std::collections::{BTreeMap, BTreeSet};

use vom::CapData;

use crate::endpoint::{Endpoint, Engines, TablesRef};
use crate::ids::{EndpointId, EndpointKind};
use crate::promise::PromiseRecord;
use crate::state::{
    GcAction, KernelState, Message, RunQueueItem, VatState, krefs_in_item, krefs_in_message,
};

fn id_of(text: &str, prefix: &str) -> Option<u64> {
    text.strip_prefix(prefix)?.parse().ok()
}

/// The number after the sign in a vref (`o+7`, `p-3`).
fn vref_id(vref: &str) -> Option<u64> {
    vref.get(2..)?.parse().ok()
}

struct Checker<'a> {
    kv: &'a BTreeMap<String, String>,
    /// The engines attached for the endpoints beside the vats.
    engines: &'a Engines,
    problems: Vec<String>,
}

impl<'a> Checker<'a> {
    /// The engine whose endpoint `id` names, if it names one beside the vats.
    fn engine_of(&self, id: &str) -> Option<(&'a dyn Endpoint, EndpointId)> {
        let endpoint = EndpointId::parse(id).filter(|e| e.kind() != EndpointKind::Vat)?;
        Some((self.engines.get(endpoint.kind())?, endpoint))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(String::as_str)
    }

    fn problem(&mut self, text: String) {
        self.problems.push(text);
    }

    fn counter(&self, key: &str) -> u64 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(1)
    }

    fn kref_exists(&self, kref: &str) -> bool {
        if kref.starts_with("ko") {
            self.kv.contains_key(&format!("{kref}.owner"))
        } else {
            self.kv.contains_key(&format!("{kref}.state"))
        }
    }

    fn vat_exists(&self, vat: &str) -> bool {
        self.kv.contains_key(&format!("{vat}.name"))
    }

    fn check_krefs(&mut self, place: &str, data: &CapData) {
        for slot in &data.slots {
            if !self.kref_exists(slot) {
                self.problem(format!("{place} names {slot}, which does not exist"));
            }
        }
    }

    fn check_message(&mut self, place: &str, message: &Message) {
        self.check_krefs(place, &message.args);
        if let Some(result) = &message.result
            && !self.kref_exists(result)
        {
            self.problem(format!("{place} has result {result}, which does not exist"));
        }
    }

    fn run_queue(&mut self) {
        let index = |key: &str| self.get(key).map_or(Some(0), |v| v.parse::<u64>().ok());
        let (Some(head), Some(tail)) = (index("runQueue.head"), index("runQueue.tail")) else {
            return self.problem("runQueue.head or runQueue.tail is not a number".into());
        };
        if head > tail {
            return self.problem(format!("run queue head {head} is past its tail {tail}"));
        }
        for (key, value) in self.kv.range("runQueue.".to_owned()..) {
            let Some(rest) = key.strip_prefix("runQueue.") else {
                break;
            };
            if rest == "head" || rest == "tail" {
                continue;
            }
            match rest.parse::<u64>() {
                Ok(n) if (head..tail).contains(&n) => {}
                _ => self
                    .problems
                    .push(format!("{key} lies outside the run queue [{head}, {tail})")),
            }
            let _ = value;
        }
        for n in head..tail {
            let key = format!("runQueue.{n}");
            let Some(text) = self.get(&key).map(str::to_owned) else {
                self.problem(format!("{key} is missing from the run queue"));
                continue;
            };
            match serde_json::from_str::<RunQueueItem>(&text) {
                Ok(RunQueueItem::Send { target, message }) => {
                    if !self.kref_exists(&target) {
                        self.problem(format!("{key} targets {target}, which does not exist"));
                    }
                    self.check_message(&key, &message);
                }
                Ok(RunQueueItem::Notify { vat, promise }) => {
                    if !self.vat_exists(&vat) {
                        self.problem(format!("{key} notifies {vat}, which does not exist"));
                    }
                    if self
                        .get(&format!("{promise}.state"))
                        .is_none_or(|s| s == "unresolved")
                    {
                        self.problem(format!("{key} notifies of {promise}, which is not settled"));
                    }
                }
                Ok(
                    RunQueueItem::Loopback { peer: endpoint, .. }
                    | RunQueueItem::Input { endpoint, .. },
                ) => {
                    if !self.vat_exists(&endpoint) {
                        self.problem(format!(
                            "{key} is input for {endpoint}, which does not exist"
                        ));
                    }
                }
                Err(e) => self.problem(format!("{key} is not a run-queue item: {e}")),
            }
        }
    }

    fn objects_and_promises(&mut self, max_object: u64, max_promise: u64) {
        let next_object = self.counter("kernel.nextObject");
        let next_promise = self.counter("kernel.nextPromise");
        if max_object >= next_object {
            self.problem(format!(
                "ko{max_object} exists but kernel.nextObject is {next_object}"
            ));
        }
        if max_promise >= next_promise {
            self.problem(format!(
                "kp{max_promise} exists but kernel.nextPromise is {next_promise}"
            ));
        }
        let entries: Vec<(String, String)> = self
            .kv
            .iter()
            .filter(|(k, _)| k.starts_with("ko") || k.starts_with("kp"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, value) in entries {
            let Some((kref, field)) = key.split_once('.') else {
                continue;
            };
            match field {
                "owner" if !self.vat_exists(&value) => {
                    self.problem(format!("{kref} is owned by {value}, which does not exist"))
                }
                "state" => self.promise(kref, &value),
                "decider" if !self.vat_exists(&value) => self.problem(format!(
                    "{kref} is decided by {value}, which does not exist"
                )),
                "decider" if !self.kv.contains_key(&format!("{value}.decided.{kref}")) => self
                    .problem(format!(
                        "{kref} is decided by {value}, but {value}.decided does not list it"
                    )),
                f if f.starts_with("sub.") => {
                    let vat = &f["sub.".len()..];
                    if !self.vat_exists(vat) {
                        self.problem(format!("{kref} is watched by {vat}, which does not exist"));
                    }
                }
                f if f.starts_with("queue.") => match serde_json::from_str::<Message>(&value) {
                    Ok(message) => self.check_message(&key, &message),
                    Err(e) => self.problem(format!("{key} is not a message: {e}")),
                },
                "queued" => self.queue_length(kref, &value),
                _ => {}
            }
        }
    }

    /// `kp<N>.queued` says how many `kp<N>.queue.<n>` there are, numbered from 0.
    fn queue_length(&mut self, kpid: &str, value: &str) {
        let prefix = format!("{kpid}.queue.");
        let found: Vec<&String> = self
            .kv
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k)
            .collect();
        let numbered = found
            .iter()
            .enumerate()
            .all(|(n, key)| key[prefix.len()..] == format!("{n:010}"));
        if value.parse::<usize>().ok() != Some(found.len()) || !numbered {
            self.problem(format!(
                "{kpid}.queued is {value} but its queue holds {} messages",
                found.len()
            ));
        }
    }

    fn promise(&mut self, kpid: &str, state: &str) {
        match state {
            "unresolved" => {
                if self.kv.contains_key(&format!("{kpid}.data")) {
                    self.problem(format!("{kpid} is unresolved but has settlement data"));
                }
            }
            "fulfilled" | "rejected" => {
                for (field, prefix) in [
                    ("decider", format!("{kpid}.decider")),
                    ("subscriber", format!("{kpid}.sub.")),
                    ("queue", format!("{kpid}.queue")),
                ] {
                    let has = self
                        .kv
                        .range(prefix.clone()..)
                        .next()
                        .is_some_and(|(k, _)| k.starts_with(&prefix));
                    if has {
                        self.problem(format!("{kpid} is {state} but still has a {field}"));
                    }
                }
                match self
                    .get(&format!("{kpid}.data"))
                    .map(serde_json::from_str::<CapData>)
                {
                    Some(Ok(data)) => self.check_krefs(&format!("{kpid}.data"), &data),
                    Some(Err(e)) => self.problem(format!("{kpid}.data is not capdata: {e}")),
                    None => self.problem(format!("{kpid} is {state} but has no data")),
                }
            }
            other => self.problem(format!("{kpid} has unknown state {other:?}")),
        }
    }

    fn clist(&mut self, vat: &str) {
        let prefix = format!("{vat}.c.");
        let entries: Vec<(String, String)> = self
            .kv
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k[prefix.len()..].to_owned(), v.clone()))
            .collect();
        let (mut max_import_object, mut max_import_promise) = (0, 0);
        for (name, value) in entries {
            if name.starts_with("ko") || name.starts_with("kp") {
                let Some((flag, vref)) = value.split_once(' ') else {
                    self.problem(format!(
                        "{prefix}{name} is {value:?}, not 'R vref' or '_ vref'"
                    ));
                    continue;
                };
                if flag != "R" && flag != "_" {
                    self.problem(format!("{prefix}{name} has unknown flag {flag:?}"));
                }
                if self.get(&format!("{prefix}{vref}")) != Some(name.as_str()) {
                    self.problem(format!(
                        "c-list asymmetry in {vat}: {name} -> {vref}, but {vref} does not map back"
                    ));
                }
                if !self.kref_exists(&name) {
                    self.problem(format!("{vat}'s c-list names {name}, which does not exist"));
                }
                if vref.starts_with("o+") && self.get(&format!("{name}.owner")) != Some(vat) {
                    self.problem(format!(
                        "{vat} exports {name} as {vref} but does not own it"
                    ));
                }
            } else {
                if self
                    .get(&format!("{prefix}{value}"))
                    .and_then(|v| v.get(2..))
                    != Some(name.as_str())
                {
                    self.problem(format!("c-list asymmetry in {vat}: {name} -> {value}, but {value} does not map back"));
                }
                match (name.get(..2), vref_id(&name)) {
                    (Some("o-"), Some(id)) => max_import_object = max_import_object.max(id),
                    (Some("p-"), Some(id)) => max_import_promise = max_import_promise.max(id),
                    (Some("o+" | "p+"), _) if crate::ids::is_vref(&name) => {}
                    _ => self.problem(format!("{vat}'s c-list has a malformed vref {name:?}")),
                }
            }
        }
        // A peer numbers its exports (o-, p-) from one counter.
        let (objects, promises) = if vat.starts_with('r') {
            (format!("{vat}.nextExport"), format!("{vat}.nextExport"))
        } else {
            (format!("{vat}.nextObject"), format!("{vat}.nextPromise"))
        };
        for (kind, max, key) in [
            ("o-", max_import_object, objects),
            ("p-", max_import_promise, promises),
        ] {
            let next = self.counter(&key);
            if max > 0 && max >= next {
                self.problem(format!("{vat} imports {kind}{max} but {key} is {next}"));
            }
        }
    }

    /// Each endpoint's index of the promises it decides lists exactly those.
    fn decided_index(&mut self) {
        let listed: Vec<(String, String)> = self
            .kv
            .keys()
            .filter_map(|key| {
                let (endpoint, kpid) = key.split_once(".decided.")?;
                EndpointId::parse(endpoint)?;
                Some((endpoint.to_owned(), kpid.to_owned()))
            })
            .collect();
        for (endpoint, kpid) in listed {
            if self.get(&format!("{kpid}.decider")) != Some(endpoint.as_str()) {
                self.problem(format!(
                    "{endpoint}.decided lists {kpid}, which {endpoint} does not decide"
                ));
            }
        }
    }

    /// The c-lists of the endpoints beside the vats (the engines check
    /// their other records).
    fn engine_clists(&mut self) {
        let endpoints: BTreeSet<String> = self
            .kv
            .keys()
            .filter_map(|k| k.split_once(".c.").map(|(id, _)| id))
            .filter(|id| EndpointId::parse(id).is_some_and(|id| id.kind() != EndpointKind::Vat))
            .map(str::to_owned)
            .collect();
        for endpoint in endpoints {
            self.clist(&endpoint);
        }
    }

    fn vats(&mut self, bundles: &BTreeSet<String>) -> u64 {
        let names: Vec<(String, String)> = self
            .kv
            .range("vat.name.".to_owned()..)
            .take_while(|(k, _)| k.starts_with("vat.name."))
            .map(|(k, v)| (k["vat.name.".len()..].to_owned(), v.clone()))
            .collect();
        let mut max_vat = 0;
        for (name, vat) in names {
            max_vat = max_vat.max(id_of(&vat, "v").unwrap_or(0));
            if self.get(&format!("{vat}.name")) != Some(name.as_str()) {
                self.problem(format!("vat name {name} maps to {vat}, whose name differs"));
            }
            let state = self.get(&format!("{vat}.state")).map(str::to_owned);
            match state.as_deref().and_then(VatState::parse) {
                Some(VatState::Running) => {}
                Some(_) if self.kv.contains_key(&format!("{vat}.reason")) => {}
                Some(state) => self.problem(format!("{vat} is {state} with no reason")),
                None => self.problem(format!("{vat} has state {state:?}")),
            }
            let cleaning = self.kv.contains_key(&format!("cleanup.{vat}"));
            if cleaning && state.as_deref() != Some(VatState::Removed.as_str()) {
                self.problem(format!("{vat} is being deleted but was not removed"));
            }
            match self.get(&format!("{vat}.bundle")) {
                Some(cid) if bundles.contains(cid) => {}
                Some(cid) => self.problem(format!("{vat}'s bundle {cid} is not stored")),
                None => self.problem(format!("{vat} has no bundle")),
            }
            self.clist(&vat);
        }
        let dirty: Vec<String> = self
            .kv
            .range("heapDirty.".to_owned()..)
            .take_while(|(k, _)| k.starts_with("heapDirty."))
            .map(|(k, _)| k["heapDirty.".len()..].to_owned())
            .collect();
        for vat in dirty {
            match self.get(&format!("{vat}.state")) {
                Some("removed") => self.problem(format!("removed vat {vat} has a heap report")),
                Some(_) => {}
                None => self.problem(format!("heapDirty.{vat} names no vat")),
            }
        }
        let next_vat = self.counter("kernel.nextVat");
        if max_vat >= next_vat {
            self.problem(format!(
                "v{max_vat} exists but kernel.nextVat is {next_vat}"
            ));
        }
        max_vat
    }

    /// Recounts every promise's references and every object's reachable
    /// and recognizable counts, and compares with `kp<N>.refs` and `ko<N>.refs`.
    fn refs(&mut self) {
        // For promises, the first count; for objects, (reachable, recognizable).
        let mut counted: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (key, value) in self.kv {
            for (kref, reachable) in self.references_in(key, value) {
                let entry = counted.entry(kref).or_default();
                if reachable {
                    entry.0 += 1;
                }
                entry.1 += 1;
            }
        }
        self.object_counts(&counted);
        self.gc_actions();
        self.promise_counts(&counted);
    }

    /// The references entry `key` holds, each with whether it is reachable.
    fn references_in(&self, key: &str, value: &str) -> Vec<(String, bool)> {
        let mut found = Vec::new();
        let mut count = |kref: &str, reachable: bool| found.push((kref.to_owned(), reachable));
        let mut parts = key.splitn(3, '.');
        let (first, second, rest) = (parts.next(), parts.next(), parts.next());
        // An engine's own records hold what it says they hold.
        if let (Some(id), Some(field)) = (first, second)
            && field != "c"
            && let Some((engine, endpoint)) = self.engine_of(id)
        {
            for kref in engine.references_in_record(&endpoint, &key[id.len() + 1..], value) {
                count(&kref, true);
            }
            return found;
        }
        match (first, second, rest) {
            // A c-list's kref side, `v<N>.c.kp<M>`; an exporter's own
            // entry does not count.
            (Some(vat), Some("c"), Some(kref)) if EndpointId::parse(vat).is_some() => {
                let own = kref.starts_with("ko") && self.get(&format!("{kref}.owner")) == Some(vat);
                if (kref.starts_with("ko") || kref.starts_with("kp")) && !own {
                    count(kref, value.starts_with('R') || kref.starts_with("kp"));
                }
            }
            (Some("runQueue"), Some(n), None) if n.parse::<u64>().is_ok() => {
                if let Ok(item) = serde_json::from_str::<RunQueueItem>(value) {
                    krefs_in_item(&item)
                        .into_iter()
                        .for_each(|kref| count(kref, true));
                }
            }
            (Some(kref), Some("queue"), Some(_)) if kref.starts_with("kp") => {
                if let Ok(message) = serde_json::from_str::<Message>(value) {
                    krefs_in_message(&message).for_each(|kref| count(kref, true));
                }
            }
            (Some(kref), Some("data"), None) if kref.starts_with("kp") => {
                if let Ok(data) = serde_json::from_str::<CapData>(value) {
                    data.slots.iter().for_each(|slot| count(slot, true));
                }
            }
            (Some(kref), Some("pinned"), None) if kref.starts_with("kp") => count(kref, true),
            (Some("pet" | "sturdy"), Some(_), _) => count(value, true),
            (Some("shown"), Some(seq), None) if seq.bytes().all(|b| b.is_ascii_digit()) => {
                count(value, true)
            }
            _ => {}
        }
        found
    }

    /// Compares each object's stored counts with the recount, and checks
    /// that what nothing reaches was dropped and retired.
    fn object_counts(&mut self, counted: &BTreeMap<String, (u64, u64)>) {
        let objects: Vec<(String, String)> = self
            .kv
            .iter()
            .filter_map(|(k, owner)| {
                k.strip_suffix(".owner")
                    .filter(|kref| kref.starts_with("ko"))
                    .map(|kref| (kref.to_owned(), owner.clone()))
            })
            .collect();
        for (ko, owner) in objects {
            let stored = self
                .get(&format!("{ko}.refs"))
                .and_then(|text| {
                    let (r, c) = text.split_once(',')?;
                    Some((r.parse().ok()?, c.parse().ok()?))
                })
                .unwrap_or((0, 0));
            let actual = counted.get(&ko).copied().unwrap_or((0, 0));
            if stored != actual {
                self.problem(format!(
                    "{ko} has counts {},{} (reachable,recognizable) but {},{} places refer to it",
                    stored.0, stored.1, actual.0, actual.1
                ));
                continue;
            }
            let running = self.get(&format!("{owner}.state")) == Some("running");
            let pending = |action: GcAction| {
                self.kv
                    .contains_key(&format!("gc.{}.{owner}.{ko}", action.name()))
            };
            let owner_reaches = self
                .get(&format!("{owner}.c.{ko}"))
                .is_some_and(|entry| entry.starts_with('R'));
            if running && actual.0 == 0 && owner_reaches && !pending(GcAction::Drop) {
                self.problem(format!(
                    "{ko} is unreachable but {owner} was not told to drop it"
                ));
            }
            if actual.1 == 0 && (!running || !pending(GcAction::Retire)) {
                self.problem(format!("{ko} is unrecognizable but was not retired"));
            }
        }
    }

    /// Every GC action names a known action, vat and object.
    fn gc_actions(&mut self) {
        for key in self.kv.keys().filter(|k| k.starts_with("gc.")) {
            let mut parts = key["gc.".len()..].splitn(3, '.');
            let well_formed = parts.next().and_then(GcAction::parse).is_some()
                && parts.next().is_some_and(|vat| self.vat_exists(vat))
                && parts.next().is_some_and(|kref| kref.starts_with("ko"));
            if !well_formed {
                self.problems.push(format!(
                    "{key} is not a GC action on a known vat and object"
                ));
            }
        }
    }

    /// Compares each promise's stored count with the recount.
    fn promise_counts(&mut self, counted: &BTreeMap<String, (u64, u64)>) {
        let promises: Vec<String> = self
            .kv
            .keys()
            .filter_map(|k| {
                k.strip_suffix(".state")
                    .filter(|kref| kref.starts_with("kp"))
            })
            .map(str::to_owned)
            .collect();
        for kpid in promises {
            let stored: u64 = self
                .get(&format!("{kpid}.refs"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let actual = counted.get(&kpid).map_or(0, |(_, n)| *n);
            if stored != actual {
                self.problem(format!(
                    "{kpid} has refs {stored} but {actual} places refer to it"
                ));
            } else if actual == 0 {
                self.problem(format!("{kpid} has no references but was not freed"));
            }
        }
    }

    fn pet_names(&mut self) {
        let names: Vec<(String, String)> = self
            .kv
            .range("pet.".to_owned()..)
            .take_while(|(k, _)| k.starts_with("pet."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, kref) in names {
            if !self.kref_exists(&kref) {
                self.problem(format!("{key} names {kref}, which does not exist"));
            }
        }
    }
}

/// Every discrepancy in the kernel's tables; empty when they are consistent.
/// Returns how many keys were read, too.
/// Each promise record (`kp<N>.promise`) as the fields it holds, a key
/// each (`kp<N>.state`, `.refs`, and `.queued`, `.pinned`, `.decider`,
/// `.sub.<id>` when they say something), which the checks read; a damaged
/// record is a problem.
fn unfold_promise_records(kv: &mut BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let records: Vec<(String, String)> = kv
        .iter()
        .filter(|(key, _)| key.starts_with("kp") && key.ends_with(".promise"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    for (key, text) in records {
        let kpid = &key[..key.len() - ".promise".len()];
        let Some(record) = PromiseRecord::parse(&text) else {
            problems.push(format!("{key} is not a promise record: {text:?}"));
            continue;
        };
        let mut field = |name: &str, value: String| kv.insert(format!("{kpid}.{name}"), value);
        field("state", record.settlement.as_str().to_owned());
        field("refs", record.refs.to_string());
        if record.queued > 0 {
            field("queued", record.queued.to_string());
        }
        if record.pinned {
            field("pinned", "1".to_owned());
        }
        if let Some(decider) = record.decider {
            field("decider", decider.to_string());
        }
        for subscriber in &record.subscribers {
            field(&format!("sub.{subscriber}"), String::new());
        }
    }
    problems
}

pub(crate) fn check(
    state: &KernelState,
    engines: &Engines,
) -> Result<(Vec<String>, usize), swingstore::StoreError> {
    let mut problems = state.store.integrity_check()?;
    let mut kv: BTreeMap<String, String> = state.scan_prefix("")?.into_iter().collect();
    let keys_stored = kv.len();
    kv.extend(state.unstored_run_queue_entries());
    problems.extend(unfold_promise_records(&mut kv));
    let bundles = state.store.bundle_cids()?;
    let (mut max_object, mut max_promise) = (0, 0);
    for key in kv.keys() {
        let kref = key.split('.').next().unwrap_or_default();
        max_object = max_object.max(id_of(kref, "ko").unwrap_or(0));
        max_promise = max_promise.max(id_of(kref, "kp").unwrap_or(0));
    }
    for kind in [EndpointKind::Peer, EndpointKind::Device] {
        if let Some(engine) = engines.get(kind) {
            problems.extend(engine.check_records(&TablesRef::new(state))?);
        }
    }
    let mut checker = Checker {
        kv: &kv,
        engines,
        problems: Vec::new(),
    };
    checker.run_queue();
    checker.objects_and_promises(max_object, max_promise);
    checker.vats(&bundles);
    checker.engine_clists();
    checker.decided_index();
    checker.pet_names();
    checker.refs();
    problems.append(&mut checker.problems);
    Ok((problems, keys_stored))
}
