//! A chat room in the spirit of a shared MOO world, and its users. One
//! module plays both parts; everything is durable, so a room or a user
//! restarts (or its kernel is SIGKILLed) with nothing lost.
//!
//! Room (spawned on one kernel, shared with `vat share`):
//! - `join(name, member)`: `member` is any object with `tell(n, line)`; the
//!   room keeps it (a reference across kernels when the member is remote).
//! - `post(name, text)`: appends post `n`, tells every other member
//!   `tell(n, "name: text")`, returns `n`.
//! - `history()`: every post, in order.
//!
//! User (spawned on another kernel, with the room enlivened there):
//! - `enter(room, name)`: joins `room` as `name`, with itself as the member.
//! - `say(text)`: posts to the room it entered; returns the post's number.
//! - `tell(n, line)`: what the room calls: keeps post `n` once, however
//!   often it is told (a resent message changes nothing).
//! - `inbox()`: the posts it was told, in order; `told()`: how many times
//!   `tell` was called, duplicates included.

use serde::{Deserialize, Serialize};
use vom::{Baggage, Durable, Error, MapStore, Ref, Reply, Value, send};

#[derive(Serialize, Deserialize, vom::Schema)]
struct Chat {
    /// As a room: members by name, and the posts by number.
    members: MapStore<String, Ref>,
    posts: MapStore<u64, String>,
    /// As a user: the room entered, under which name, and what it was told.
    room: Option<Ref>,
    name: String,
    inbox: MapStore<u64, String>,
    /// How many times `tell` was called, duplicates included.
    #[serde(default)]
    told: u64,
}

#[vom::exo]
impl Chat {
    pub fn join(&mut self, name: String, member: Ref) -> Result<String, Error> {
        self.members.insert(&name, &member)?;
        Ok(format!("welcome {name}: {} members", self.members.len()))
    }

    pub fn post(&mut self, name: String, text: String) -> Result<u64, Error> {
        if !self.members.has(&name) {
            return Err(Error::new(format!("{name} has not joined this room")));
        }
        let number = self.posts.len() + 1;
        let line = format!("{name}: {text}");
        self.posts.init(&number, &line)?;
        for (other, member) in self.members.entries() {
            if other != name {
                // Fire and forget: a member that is gone does not stop the room.
                drop(send(
                    &member,
                    "tell",
                    vec![Value::from(number), Value::string(line.clone())],
                ));
            }
        }
        Ok(number)
    }

    pub fn history(&self) -> Vec<String> {
        self.posts.values().collect()
    }

    pub fn enter(&mut self, this: &Durable<Chat>, room: Ref, name: String) -> Reply {
        self.room = Some(room.clone());
        self.name = name.clone();
        let joined = send(
            &room,
            "join",
            vec![Value::string(name), Value::Remotable(this.reference())],
        );
        Reply::later(joined)
    }

    pub fn say(&self, text: String) -> Reply {
        let Some(room) = &self.room else {
            return Reply::Ready(Err(Error::new("enter a room first")));
        };
        let posted = send(
            room,
            "post",
            vec![Value::string(self.name.clone()), Value::string(text)],
        );
        Reply::later(posted)
    }

    pub fn tell(&mut self, number: u64, line: String) -> Result<u64, Error> {
        self.told += 1;
        if !self.inbox.has(&number) {
            self.inbox.init(&number, &line)?;
        }
        Ok(self.inbox.len())
    }

    pub fn inbox(&self) -> Vec<String> {
        self.inbox.values().collect()
    }

    /// How many times this user was told a post (a message delivered twice
    /// would count twice here, though the inbox keeps each post once).
    pub fn told(&self) -> u64 {
        self.told
    }
}

fn start(baggage: &Baggage) -> Durable<Chat> {
    vom::define::<Chat>();
    baggage.get_or_init("chat", || {
        Durable::new(Chat {
            members: MapStore::new(),
            posts: MapStore::new(),
            room: None,
            name: String::new(),
            inbox: MapStore::new(),
            told: 0,
        })
    })
}

vom::vat_main!(start: start);
