//! The world's objects as they are stored: one record per object, keyed by
//! its number (`#N`), as in a MOO. Properties and verbs are looked up along
//! the parent chain, so a prototype's description, properties and verbs
//! are its children's until they set their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vom::Ref;

/// `line_bytes_max`: the longest command line (or `say`) a player may send.
pub const LINE_BYTES_MAX: usize = 4096;
/// `name_bytes_max`: the longest name of an object, exit, property or verb.
pub const NAME_BYTES_MAX: usize = 64;
/// `parent_chain_max`: how far a lookup climbs the parent chain.
pub const PARENT_CHAIN_MAX: usize = 32;
/// `props_per_object_max`: properties one object may set itself.
pub const PROPS_PER_OBJECT_MAX: usize = 128;
/// `verbs_per_object_max`: verbs one object may define itself.
pub const VERBS_PER_OBJECT_MAX: usize = 64;
/// `exits_per_room_max`: exits one room may have.
pub const EXITS_PER_ROOM_MAX: usize = 64;
/// `contents_max`: what one room or player may hold at once.
pub const CONTENTS_MAX: usize = 1_000;
/// `objects_max`: how many objects one world may have.
pub const OBJECTS_MAX: u64 = 100_000;

/// The first objects of every world: the prototypes and the first room.
pub const GENERIC_ROOM: u64 = 1;
pub const GENERIC_THING: u64 = 2;
pub const GENERIC_PLAYER: u64 = 3;
pub const FIRST_ROOM: u64 = 4;

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sort {
    Room,
    Thing,
    Player,
}

/// A property's value: what a verb reads and writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Prop {
    Int(i64),
    Bool(bool),
    Text(String),
}

impl Prop {
    /// Reads what a builder typed: a number, `true`/`false`, else text.
    pub fn parse(text: &str) -> Prop {
        match text {
            "true" => Prop::Bool(true),
            "false" => Prop::Bool(false),
            _ => text
                .parse::<i64>()
                .map_or_else(|_| Prop::Text(text.to_owned()), Prop::Int),
        }
    }
}

impl std::fmt::Display for Prop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prop::Int(n) => write!(f, "{n}"),
            Prop::Bool(b) => write!(f, "{b}"),
            Prop::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// Where an exit leads: a room of this world, or a room's portal in
/// another (a reference, usually from a sturdy ref on another kernel).
#[derive(Serialize, Deserialize, Clone)]
pub enum Exit {
    Here(u64),
    Far(Ref),
}

/// A verb: Rhai source, and the player who wrote it.
#[derive(Serialize, Deserialize, Clone)]
pub struct Verb {
    pub owner: Option<u64>,
    pub code: String,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct Obj {
    pub name: String,
    pub sort: Sort,
    pub parent: Option<u64>,
    /// The player who may change it; `None` for the world's own objects.
    pub owner: Option<u64>,
    /// Players the owner granted editing to.
    pub editors: Vec<u64>,
    pub wizard: bool,
    pub location: Option<u64>,
    pub contents: Vec<u64>,
    pub exits: BTreeMap<String, Exit>,
    pub props: BTreeMap<String, Prop>,
    pub verbs: BTreeMap<String, Verb>,
    /// A player's: who is told what it hears (its session, or for a
    /// visitor from another world, its traveller there).
    pub listener: Option<Ref>,
    /// A room's: the listeners of the players in it, so that what is said
    /// reaches them all with one read.
    pub listeners: BTreeMap<u64, Ref>,
}

impl Obj {
    pub fn new(name: &str, sort: Sort, parent: Option<u64>, owner: Option<u64>) -> Obj {
        Obj {
            name: name.to_owned(),
            sort,
            parent,
            owner,
            editors: Vec::new(),
            wizard: false,
            location: None,
            contents: Vec::new(),
            exits: BTreeMap::new(),
            props: BTreeMap::new(),
            verbs: BTreeMap::new(),
            listener: None,
            listeners: BTreeMap::new(),
        }
    }
}

/// Checks a name a player gave: not empty, not too long, one word of
/// letters, digits, `_` or `-` (so commands can be split on spaces).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("a {what} needs a name"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "the {what} name is longer than name_bytes_max ({NAME_BYTES_MAX})"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "a {what} name is one word of letters, digits, _ and -: {name:?}"
        ));
    }
    Ok(())
}
