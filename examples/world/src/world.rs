//! The world's map: its objects, where each one is, and who hears what.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vom::{Error, MapStore, Ref, Value, send};

use crate::model::{
    CONTENTS_MAX, FIRST_ROOM, GENERIC_PLAYER, GENERIC_ROOM, OBJECTS_MAX, Obj, PARENT_CHAIN_MAX,
    Prop, Sort, Verb,
};

/// Every object of one world, stored one record per object.
#[derive(Serialize, Deserialize)]
pub struct Map {
    objects: MapStore<u64, Obj>,
    next_id: u64,
    /// Players by lowercased name, to their bodies.
    players: MapStore<String, u64>,
}

/// What a command came to.
pub enum Outcome {
    /// The answer to show the player.
    Text(String),
    /// The player left through an exit to another world's portal: they are
    /// out of this world's rooms, and are to visit it.
    Far { portal: Ref, text: String },
}

pub fn fail<T>(text: impl Into<String>) -> Result<T, Error> {
    Err(Error::new(text))
}

impl Map {
    /// A new world: the prototypes (#1 room, #2 thing, #3 player) and its
    /// first room (#4), where players start, open for anyone to dig from.
    pub fn new() -> Result<Map, Error> {
        let mut map = Map {
            objects: MapStore::new(),
            next_id: 1,
            players: MapStore::new(),
        };
        let mut room = Obj::new("generic room", Sort::Room, None, None);
        room.props.insert(
            "description".into(),
            Prop::Text("An unremarkable place.".into()),
        );
        map.create(room)?;
        let mut thing = Obj::new("generic thing", Sort::Thing, None, None);
        thing.props.insert(
            "description".into(),
            Prop::Text("You see nothing special.".into()),
        );
        map.create(thing)?;
        let mut player = Obj::new("generic player", Sort::Player, None, None);
        player.props.insert(
            "description".into(),
            Prop::Text("A person like any other.".into()),
        );
        map.create(player)?;
        let mut lobby = Obj::new("The Lobby", Sort::Room, Some(GENERIC_ROOM), None);
        lobby.props.insert(
            "description".into(),
            Prop::Text("A bare hall where every journey starts.".into()),
        );
        lobby.props.insert("public".into(), Prop::Bool(true));
        let first = map.create(lobby)?;
        assert_eq!(first, FIRST_ROOM, "world invariant: the first room is #4");
        Ok(map)
    }

    pub fn get(&self, id: u64) -> Result<Obj, Error> {
        self.objects
            .get(&id)
            .map_or_else(|| fail(format!("there is no object #{id}")), Ok)
    }

    pub fn put(&self, id: u64, obj: &Obj) -> Result<(), Error> {
        self.objects.set(&id, obj)
    }

    pub fn create(&mut self, obj: Obj) -> Result<u64, Error> {
        if self.objects.len() >= OBJECTS_MAX {
            return fail(format!("the world has objects_max ({OBJECTS_MAX}) objects"));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.objects.init(&id, &obj)?;
        Ok(id)
    }

    /// Deletes an object that is nowhere (a visitor's body that left).
    pub fn forget(&mut self, id: u64) -> Result<(), Error> {
        self.unplace(id)?;
        self.objects.delete(&id);
        Ok(())
    }

    /// The first answer `found` gives along `id`'s parent chain.
    pub fn inherited<T>(&self, id: u64, mut found: impl FnMut(&Obj) -> Option<T>) -> Option<T> {
        let mut next = Some(id);
        for _ in 0..PARENT_CHAIN_MAX {
            let obj = self.objects.get(&next?)?;
            if let Some(answer) = found(&obj) {
                return Some(answer);
            }
            next = obj.parent;
        }
        None
    }

    pub fn prop(&self, id: u64, name: &str) -> Option<Prop> {
        self.inherited(id, |o| o.props.get(name).cloned())
    }

    /// Every property `id` has, its own and inherited (its own win).
    pub fn props(&self, id: u64) -> BTreeMap<String, Prop> {
        let mut chain = Vec::new();
        self.inherited(id, |o| {
            chain.push(o.props.clone());
            None::<()>
        });
        let mut props = BTreeMap::new();
        for own in chain.into_iter().rev() {
            props.extend(own);
        }
        props
    }

    /// The verb `name` as `id` has it, and the object that defines it.
    pub fn verb(&self, id: u64, name: &str) -> Option<Verb> {
        self.inherited(id, |o| o.verbs.get(name).cloned())
    }

    pub fn description(&self, id: u64) -> String {
        match self.prop(id, "description") {
            Some(Prop::Text(text)) => text,
            Some(other) => other.to_string(),
            None => "You see nothing special.".into(),
        }
    }

    /// Whether `actor` may change `id`: a wizard, its owner, or a player
    /// its owner granted.
    pub fn may_edit(&self, actor: u64, id: u64) -> Result<bool, Error> {
        let who = self.get(actor)?;
        let obj = self.get(id)?;
        Ok(who.wizard || obj.owner == Some(actor) || obj.editors.contains(&actor))
    }

    /// Tells everyone in `room` but `except`.
    pub fn announce(&self, room: u64, except: Option<u64>, text: &str) -> Result<(), Error> {
        for (who, listener) in self.get(room)?.listeners {
            if Some(who) != except {
                drop(send(&listener, "tell", vec![Value::string(text)]));
            }
        }
        Ok(())
    }

    /// Puts `what` into `place` (a room, or a player's inventory).
    pub fn place(&mut self, what: u64, place: u64) -> Result<(), Error> {
        self.unplace(what)?;
        let mut obj = self.get(what)?;
        let mut container = self.get(place)?;
        if container.contents.len() >= CONTENTS_MAX {
            return fail(format!(
                "{} is full (contents_max {CONTENTS_MAX})",
                container.name
            ));
        }
        container.contents.push(what);
        if let Some(listener) = &obj.listener {
            container.listeners.insert(what, listener.clone());
        }
        obj.location = Some(place);
        self.put(place, &container)?;
        self.put(what, &obj)
    }

    /// Takes `what` out of wherever it is; where that was.
    pub fn unplace(&mut self, what: u64) -> Result<Option<u64>, Error> {
        let mut obj = self.get(what)?;
        let Some(place) = obj.location.take() else {
            return Ok(None);
        };
        let mut container = self.get(place)?;
        container.contents.retain(|c| *c != what);
        container.listeners.remove(&what);
        self.put(place, &container)?;
        self.put(what, &obj)?;
        Ok(Some(place))
    }

    /// Sets who a player's body tells what it hears, where it is too.
    pub fn listen(&mut self, who: u64, listener: Option<Ref>) -> Result<(), Error> {
        let mut obj = self.get(who)?;
        obj.listener = listener.clone();
        self.put(who, &obj)?;
        if let Some(place) = obj.location {
            let mut room = self.get(place)?;
            match listener {
                Some(l) => room.listeners.insert(who, l),
                None => room.listeners.remove(&who),
            };
            self.put(place, &room)?;
        }
        Ok(())
    }

    pub fn player(&self, name: &str) -> Option<u64> {
        self.players.get(&name.to_lowercase())
    }

    /// A new player's body, in the first room's keeping (not yet placed).
    pub fn add_player(&mut self, name: &str) -> Result<u64, Error> {
        let body = self.create(Obj::new(name, Sort::Player, Some(GENERIC_PLAYER), None))?;
        let mut obj = self.get(body)?;
        obj.owner = Some(body);
        self.put(body, &obj)?;
        self.players.init(&name.to_lowercase(), &body)?;
        Ok(body)
    }

    /// A visitor's body: a player of another world, owning nothing here.
    pub fn add_visitor(&mut self, name: &str, listener: Ref) -> Result<u64, Error> {
        let mut obj = Obj::new(name, Sort::Player, Some(GENERIC_PLAYER), None);
        obj.listener = Some(listener);
        self.create(obj)
    }

    /// Players who have a listener, and where they are.
    pub fn awake(&self) -> Vec<(String, String)> {
        let mut awake = Vec::new();
        for (_, body) in self.players.entries() {
            let Ok(obj) = self.get(body) else { continue };
            if obj.listener.is_some() {
                let place = obj
                    .location
                    .and_then(|l| self.get(l).ok())
                    .map_or_else(|| "elsewhere".to_owned(), |o| o.name);
                awake.push((obj.name, place));
            }
        }
        awake
    }

    pub fn set_wizard(&mut self, name: &str) -> Result<(), Error> {
        let Some(body) = self.player(name) else {
            return fail(format!("there is no player {name:?}"));
        };
        let mut obj = self.get(body)?;
        obj.wizard = true;
        self.put(body, &obj)
    }

    /// Where a player is, as a room.
    pub fn room_of(&self, actor: u64) -> Result<u64, Error> {
        match self.get(actor)?.location {
            Some(place) if self.get(place)?.sort == Sort::Room => Ok(place),
            _ => fail("you are between places"),
        }
    }

    /// What a player sees of the room they are in.
    pub fn look(&self, actor: u64) -> Result<String, Error> {
        let room_id = self.room_of(actor)?;
        let room = self.get(room_id)?;
        let mut text = format!("{}\n{}", room.name, self.description(room_id));
        let exits: Vec<&str> = room.exits.keys().map(String::as_str).collect();
        if !exits.is_empty() {
            text.push_str(&format!("\nExits: {}.", exits.join(", ")));
        }
        let (mut people, mut things) = (Vec::new(), Vec::new());
        for id in room.contents.iter().filter(|id| **id != actor) {
            let obj = self.get(*id)?;
            match obj.sort {
                Sort::Player => people.push(obj.name),
                _ => things.push(obj.name),
            }
        }
        if !things.is_empty() {
            text.push_str(&format!("\nYou see: {}.", things.join(", ")));
        }
        if !people.is_empty() {
            text.push_str(&format!("\nHere: {}.", people.join(", ")));
        }
        Ok(text)
    }

    /// A thing near `actor` named `word`: `me`, `here`, `#N`, or the name of
    /// something they carry, something in the room, or the room.
    pub fn resolve(&self, actor: u64, word: &str) -> Result<u64, Error> {
        match word {
            "me" => return Ok(actor),
            "here" => return self.room_of(actor),
            _ => {}
        }
        if let Some(number) = word.strip_prefix('#') {
            let id = number
                .parse::<u64>()
                .map_or_else(|_| fail(format!("{word:?} is not an object number")), Ok)?;
            return self.get(id).map(|_| id);
        }
        let me = self.get(actor)?;
        let mut near = me.contents.clone();
        if let Some(place) = me.location {
            near.extend(self.get(place)?.contents);
            near.push(place);
        }
        for id in near {
            if self.get(id)?.name.eq_ignore_ascii_case(word) {
                return Ok(id);
            }
        }
        fail(format!("I see no {word:?} here"))
    }
}
