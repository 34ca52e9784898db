//! A shared world in the spirit of a MOO: rooms, exits, things and players,
//! with verbs the players program in Rhai. Everything is durable: the
//! world survives its vat's restart, an upgrade or a SIGKILLed kernel
//! as it was at the last commit.
//!
//! The vat's root is the world owner's (the wizard facet):
//! - `lobby()`: the facet players log in through (share it: `vat share`).
//! - `portal("#N")`: room N's portal, for exits from other worlds.
//! - `link("#N", EXIT, portal)`: an exit from room N to another world's portal.
//! - `makeWizard(NAME)`: lets player NAME change anything.
//! - `players()`: the players' names.
//!
//! The lobby facet: `login(name, secret, session)`, where `session` is any
//! object with `tell(text)`: the world tells it what the player hears. The
//! first login under a name makes the character; later ones must give the
//! same secret, and the newest session is the one told. It returns the
//! player's controls: `command(line)` runs one command and answers its text.
//!
//! Two worlds, on two kernels, are joined by exits to each other's portals.
//! A player who walks through one visits the other world: a body is made
//! for them there (a `Visitor`), their commands go to it, and the other
//! world tells them what they hear through their traveller facet. `home`
//! brings a player back to their world's first room from anywhere.

mod commands;
mod model;
mod verbs;
mod world;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vom::{Baggage, Durable, Error, FromPassable, MapStore, Ref, Reply, ToPassable, Value, send};

use crate::model::{Exit, FIRST_ROOM, Sort, check_name};
use crate::world::{Map, Outcome, fail};

/// `secret_bytes_max`: the longest secret a player may log in with.
const SECRET_BYTES_MAX: usize = 256;

#[derive(Serialize, Deserialize, vom::Schema)]
struct Realm {
    map: Map,
    /// Players by lowercased name.
    players: MapStore<String, Durable<Player>>,
    /// Each room's portal, made when first asked for, so it stays one object.
    portals: MapStore<u64, Durable<Portal>>,
}

/// A room's number as the wizard writes it (`#N`).
fn room_number(map: &Map, room: &str) -> Result<u64, Error> {
    let id = room
        .strip_prefix('#')
        .and_then(|n| n.parse::<u64>().ok())
        .map_or_else(
            || fail(format!("name a room by its number, #N: {room:?}")),
            Ok,
        )?;
    if map.get(id)?.sort != Sort::Room {
        return fail(format!("#{id} is not a room"));
    }
    Ok(id)
}

fn digest(name: &str, secret: &str) -> String {
    let hash = Sha256::digest(format!("{}:{secret}", name.to_lowercase()));
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[vom::exo(facets(wizard, lobby))]
impl Realm {
    #[facet(wizard)]
    pub fn lobby(&self, this: &Durable<Realm>) -> Ref {
        this.facet("lobby")
    }

    #[facet(wizard)]
    pub fn portal(&mut self, this: &Durable<Realm>, room: String) -> Result<Ref, Error> {
        let id = room_number(&self.map, &room)?;
        if let Some(portal) = self.portals.get(&id) {
            return Ok(portal.reference());
        }
        let portal = Durable::new(Portal {
            realm: this.clone(),
            room: id,
        });
        self.portals.init(&id, &portal)?;
        Ok(portal.reference())
    }

    #[facet(wizard)]
    pub fn link(&mut self, room: String, exit: String, portal: Ref) -> Result<String, Error> {
        check_name("exit", &exit).map_err(Error::new)?;
        let id = room_number(&self.map, &room)?;
        let mut obj = self.map.get(id)?;
        obj.exits.insert(exit.clone(), Exit::Far(portal));
        self.map.put(id, &obj)?;
        Ok(format!("{} has an exit {exit} to another world", obj.name))
    }

    #[facet(wizard)]
    pub fn make_wizard(&mut self, name: String) -> Result<String, Error> {
        self.map.set_wizard(&name)?;
        Ok(format!("{name} is a wizard"))
    }

    #[facet(wizard)]
    pub fn players(&self) -> Vec<String> {
        self.players
            .values()
            .map(|p| p.with(|p| p.name.clone()))
            .collect()
    }

    #[facet(lobby)]
    pub fn login(
        &mut self,
        this: &Durable<Realm>,
        name: String,
        secret: String,
        session: Ref,
    ) -> Result<Ref, Error> {
        check_name("player", &name).map_err(Error::new)?;
        if secret.is_empty() || secret.len() > SECRET_BYTES_MAX {
            return fail(format!(
                "a secret is 1 to secret_bytes_max ({SECRET_BYTES_MAX}) bytes"
            ));
        }
        let player = self.player_for(this, &name, &secret)?;
        let (body, away) = player.with_mut(|p| {
            p.session = Some(session.clone());
            (p.body, p.away.is_some())
        });
        if !away {
            self.map.listen(body, Some(session))?;
            if self.map.get(body)?.location.is_none() {
                self.map.place(body, FIRST_ROOM)?;
            }
            let room = self.map.room_of(body)?;
            let text = format!("{} wakes up.", self.map.get(body)?.name);
            self.map.announce(room, Some(body), &text)?;
        }
        Ok(player.facet("controls"))
    }
}

impl Realm {
    /// The player `name`, checked against `secret`; made on first login.
    fn player_for(
        &mut self,
        this: &Durable<Realm>,
        name: &str,
        secret: &str,
    ) -> Result<Durable<Player>, Error> {
        let key = name.to_lowercase();
        let given = digest(name, secret);
        if let Some(player) = self.players.get(&key) {
            if player.with(|p| p.digest != given) {
                return fail(format!("wrong secret for {name}"));
            }
            return Ok(player);
        }
        let body = self.map.add_player(name)?;
        let player = Durable::new(Player {
            realm: this.clone(),
            body,
            name: name.to_owned(),
            digest: given,
            session: None,
            away: None,
        });
        self.players.init(&key, &player)?;
        Ok(player)
    }
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct Player {
    realm: Durable<Realm>,
    body: u64,
    name: String,
    digest: String,
    /// The newest session: who is told what this player hears.
    session: Option<Ref>,
    /// While visiting another world: the body there, which takes commands.
    away: Option<Ref>,
}

impl Player {
    fn tell_session(&self, text: &str) {
        if let Some(session) = &self.session {
            drop(send(session, "tell", vec![Value::string(text)]));
        }
    }

    /// Back to the first room, from wherever the player is.
    fn go_home(&mut self) -> Result<String, Error> {
        if let Some(visitor) = self.away.take() {
            drop(send(&visitor, "leave", vec![]));
        }
        let (body, session) = (self.body, self.session.clone());
        self.realm.with_mut(|r| {
            if let Ok(room) = r.map.room_of(body) {
                let text = format!("{} goes home.", self.name);
                r.map.announce(room, Some(body), &text)?;
            }
            r.map.listen(body, session)?;
            r.map.place(body, FIRST_ROOM)?;
            r.map.look(body)
        })
    }

    /// Sets out for another world's portal, from room `from`.
    fn visit(
        &self,
        this: &Durable<Player>,
        portal: &Ref,
        from: Option<u64>,
        text: String,
    ) -> Reply {
        let visiting = send(
            portal,
            "visit",
            vec![this.to_passable(), Value::string(self.name.clone())],
        );
        let (realm, body) = (self.realm.clone(), self.body);
        Reply::later(async move {
            match visiting.await {
                Ok(there) => Ok(format!("{text}\n{}", there.as_str().unwrap_or_default())),
                Err(e) => {
                    realm.with_mut(|r| r.map.place(body, from.unwrap_or(FIRST_ROOM)))?;
                    fail(format!("the way is closed ({}); you stay", e.message))
                }
            }
        })
    }
}

#[vom::exo(facets(traveller, controls))]
impl Player {
    /// One command line: run here, or by the world the player visits.
    #[facet(controls)]
    pub fn command(&mut self, this: &Durable<Player>, line: String) -> Reply {
        if line.trim() == "home" {
            return Reply::ready(self.go_home());
        }
        if let Some(visitor) = &self.away {
            return Reply::later(send(visitor, "command", vec![Value::string(line)]));
        }
        let body = self.body;
        let from = self.realm.with(|r| r.map.room_of(body).ok());
        match self.realm.with_mut(|r| r.map.run(body, &line)) {
            Ok(Outcome::Text(text)) => Reply::ready(Ok::<_, Error>(text)),
            Ok(Outcome::Far { portal, text }) => self.visit(this, &portal, from, text),
            Err(e) => Reply::Ready(Err(e)),
        }
    }

    /// What the world this player visits tells them.
    #[facet(traveller)]
    pub fn tell(&self, text: String) {
        self.tell_session(&text);
    }

    /// The world visited made a body for this player: commands go to it.
    #[facet(traveller)]
    pub fn arrived(&mut self, visitor: Ref) {
        self.away = Some(visitor);
    }

    /// The player left the world visited through an exit to `portal`.
    #[facet(traveller)]
    pub fn went(&mut self, this: &Durable<Player>, portal: Ref) -> Reply {
        self.away = None;
        let session = self.session.clone();
        let arriving = self.visit(this, &portal, None, String::new());
        let Reply::Later(arriving) = arriving else {
            return arriving;
        };
        Reply::later(async move {
            let text = match arriving.await {
                Ok(there) => there.as_str().unwrap_or_default().trim().to_owned(),
                Err(e) => e.message,
            };
            if let Some(session) = session {
                drop(send(&session, "tell", vec![Value::string(text)]));
            }
            Ok::<_, Error>(Value::Undefined)
        })
    }
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct Portal {
    realm: Durable<Realm>,
    room: u64,
}

#[vom::exo]
impl Portal {
    /// A traveller arrives: a player of this world coming home, or one of
    /// another world, who gets a body here. Answers what they see.
    pub fn visit(&self, traveller: Value, name: String) -> Result<String, Error> {
        if let Some(player) = Durable::<Player>::from_passable(&traveller) {
            let (body, session) = player.with_mut(|p| {
                p.away = None;
                (p.body, p.session.clone())
            });
            return self.realm.with_mut(|r| {
                r.map.listen(body, session)?;
                r.map.place(body, self.room)?;
                r.map
                    .announce(self.room, Some(body), &format!("{name} arrives."))?;
                r.map.look(body)
            });
        }
        let Value::Remotable(traveller) = traveller else {
            return fail("a traveller is an object with tell, arrived and went");
        };
        check_name("player", &name).map_err(Error::new)?;
        let room = self.room;
        let (body, text) = self.realm.with_mut(|r| {
            let body = r.map.add_visitor(&name, traveller.clone())?;
            r.map.place(body, room)?;
            let arrival = format!("{name} arrives from afar.");
            r.map.announce(room, Some(body), &arrival)?;
            Ok::<_, Error>((body, r.map.look(body)?))
        })?;
        let visitor = Durable::new(Visitor {
            realm: self.realm.clone(),
            body,
            traveller: traveller.clone(),
            gone: false,
        });
        drop(send(&traveller, "arrived", vec![visitor.to_passable()]));
        Ok(text)
    }
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct Visitor {
    realm: Durable<Realm>,
    body: u64,
    traveller: Ref,
    gone: bool,
}

#[vom::exo]
impl Visitor {
    /// A command of the visiting player's, run in this world.
    pub fn command(&mut self, line: String) -> Result<String, Error> {
        if self.gone {
            return fail("this visit is over");
        }
        let body = self.body;
        match self.realm.with_mut(|r| r.map.run(body, &line))? {
            Outcome::Text(text) => Ok(text),
            Outcome::Far { portal, text } => {
                self.end()?;
                drop(send(
                    &self.traveller,
                    "went",
                    vec![Value::Remotable(portal)],
                ));
                Ok(text)
            }
        }
    }

    /// The visitor went home by other means.
    pub fn leave(&mut self) -> Result<(), Error> {
        if self.gone {
            return Ok(());
        }
        let body = self.body;
        self.realm.with_mut(|r| {
            if let Ok(room) = r.map.room_of(body) {
                let text = format!("{} vanishes.", r.map.get(body)?.name);
                r.map.announce(room, Some(body), &text)?;
            }
            Ok::<_, Error>(())
        })?;
        self.end()
    }
}

impl Visitor {
    fn end(&mut self) -> Result<(), Error> {
        self.gone = true;
        let body = self.body;
        self.realm.with_mut(|r| r.map.forget(body))
    }
}

fn start(baggage: &Baggage) -> Durable<Realm> {
    vom::define::<Realm>();
    vom::define::<Player>();
    vom::define::<Portal>();
    vom::define::<Visitor>();
    baggage.get_or_init("realm", || {
        Durable::new(Realm {
            map: Map::new().expect("world invariant: a new world's first objects fit"),
            players: MapStore::new(),
            portals: MapStore::new(),
        })
    })
}

vom::vat_main!(start: start);
