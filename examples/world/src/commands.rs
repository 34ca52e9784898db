//! What players type: one line, one command, run against the map. A
//! command either answers (its text is the player's to read) or fails with
//! an error saying what was wrong; either way it is one crank, so a command
//! that fails changes nothing.

use vom::Error;

use crate::model::{
    EXITS_PER_ROOM_MAX, Exit, GENERIC_ROOM, GENERIC_THING, LINE_BYTES_MAX, NAME_BYTES_MAX, Obj,
    PROPS_PER_OBJECT_MAX, Prop, Sort, VERBS_PER_OBJECT_MAX, Verb, check_name,
};
use crate::verbs::{self, Given, Run, Whom};
use crate::world::{Map, Outcome, fail};

pub const HELP: &str = "\
look [THING]          what is here (or a closer look at THING); also l
go EXIT, or EXIT      walk through an exit
say TEXT              speak to the room; also \"TEXT
emote TEXT            act; also :TEXT
take THING, drop THING, inventory (i), who, help
@dig EXIT[|BACK] NAME       a new room through a new exit (and a way back)
@create NAME [from PARENT]  a new thing, in your hands
@describe THING as TEXT     set what `look THING` says
@property THING.NAME VALUE  set a property (a number, true/false or text)
@verb THING:NAME            add a verb; @program THING:NAME CODE sets its Rhai code
@grant THING to PLAYER      let PLAYER change THING too
@examine THING              its number, owner, parent, properties and verbs
A verb runs as `NAME [THING] [WORDS]`, with this, player, room, args and argstr.";

/// The first word of a line, and the rest (`"` and `:` stand alone).
fn split_word(line: &str) -> (&str, &str) {
    if let Some(rest) = line.strip_prefix('"') {
        return ("\"", rest.trim());
    }
    if let Some(rest) = line.strip_prefix(':') {
        return (":", rest.trim());
    }
    match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    }
}

fn needs(rest: &str, usage: &str) -> Result<(), Error> {
    if rest.is_empty() {
        return fail(format!("usage: {usage}"));
    }
    Ok(())
}

fn named(what: &str, name: &str) -> Result<(), Error> {
    check_name(what, name).map_err(Error::new)
}

/// A room's name may have spaces, but no control characters.
fn check_title(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return fail(format!(
            "a room's name is 1 to name_bytes_max ({NAME_BYTES_MAX}) bytes of plain text"
        ));
    }
    Ok(())
}

impl Map {
    /// Runs one command of `actor`'s.
    pub fn run(&mut self, actor: u64, line: &str) -> Result<Outcome, Error> {
        if line.len() > LINE_BYTES_MAX {
            return fail(format!(
                "the line is longer than line_bytes_max ({LINE_BYTES_MAX})"
            ));
        }
        let (word, rest) = split_word(line.trim());
        let text = match word {
            "" => String::new(),
            "look" | "l" => self.look_at(actor, rest)?,
            "go" => return self.go(actor, rest),
            "say" | "\"" => self.say(actor, rest)?,
            "emote" | ":" => self.emote(actor, rest)?,
            "take" | "get" => self.take(actor, rest)?,
            "drop" => self.put_down(actor, rest)?,
            "inventory" | "i" => self.inventory(actor)?,
            "who" => self.who(),
            "help" => HELP.to_owned(),
            _ if word.starts_with('@') => self.build(actor, word, rest)?,
            _ => return self.exit_or_verb(actor, word, rest),
        };
        Ok(Outcome::Text(text))
    }

    fn build(&mut self, actor: u64, word: &str, rest: &str) -> Result<String, Error> {
        match word {
            "@dig" => self.dig(actor, rest),
            "@create" => self.create_thing(actor, rest),
            "@describe" => self.describe(actor, rest),
            "@property" => self.set_property(actor, rest),
            "@verb" => self.add_verb(actor, rest),
            "@program" => self.program(actor, rest),
            "@grant" => self.grant(actor, rest),
            "@examine" => self.examine(actor, rest),
            _ => fail(format!("there is no command {word}; type help")),
        }
    }

    fn look_at(&self, actor: u64, rest: &str) -> Result<String, Error> {
        if rest.is_empty() {
            return self.look(actor);
        }
        let id = self.resolve(actor, rest)?;
        Ok(format!("{}\n{}", self.get(id)?.name, self.description(id)))
    }

    fn go(&mut self, actor: u64, exit: &str) -> Result<Outcome, Error> {
        needs(exit, "go EXIT")?;
        let room = self.room_of(actor)?;
        let Some(way) = self.get(room)?.exits.get(exit).cloned() else {
            return fail(format!("there is no exit {exit:?} here"));
        };
        let name = self.get(actor)?.name;
        self.announce(room, Some(actor), &format!("{name} goes {exit}."))?;
        match way {
            Exit::Here(dest) => {
                self.place(actor, dest)?;
                self.announce(dest, Some(actor), &format!("{name} arrives."))?;
                Ok(Outcome::Text(self.look(actor)?))
            }
            Exit::Far(portal) => {
                self.unplace(actor)?;
                let text = format!("You go {exit}.");
                Ok(Outcome::Far { portal, text })
            }
        }
    }

    fn say(&self, actor: u64, text: &str) -> Result<String, Error> {
        needs(text, "say TEXT")?;
        let room = self.room_of(actor)?;
        let name = self.get(actor)?.name;
        self.announce(room, Some(actor), &format!("{name} says, \"{text}\""))?;
        Ok(format!("You say, \"{text}\""))
    }

    fn emote(&self, actor: u64, text: &str) -> Result<String, Error> {
        needs(text, "emote TEXT")?;
        let room = self.room_of(actor)?;
        let line = format!("{} {text}", self.get(actor)?.name);
        self.announce(room, Some(actor), &line)?;
        Ok(line)
    }

    fn take(&mut self, actor: u64, what: &str) -> Result<String, Error> {
        needs(what, "take THING")?;
        let room = self.room_of(actor)?;
        let id = self.resolve(actor, what)?;
        let thing = self.get(id)?;
        if thing.sort != Sort::Thing || thing.location != Some(room) {
            return fail(format!("you cannot take {}", thing.name));
        }
        if self.prop(id, "fixed") == Some(Prop::Bool(true)) {
            return fail(format!("{} is fixed in place", thing.name));
        }
        self.place(id, actor)?;
        let name = self.get(actor)?.name;
        self.announce(room, Some(actor), &format!("{name} takes {}.", thing.name))?;
        Ok(format!("You take {}.", thing.name))
    }

    fn put_down(&mut self, actor: u64, what: &str) -> Result<String, Error> {
        needs(what, "drop THING")?;
        let room = self.room_of(actor)?;
        let id = self.resolve(actor, what)?;
        let thing = self.get(id)?;
        if thing.location != Some(actor) {
            return fail(format!("you do not have {}", thing.name));
        }
        self.place(id, room)?;
        let name = self.get(actor)?.name;
        self.announce(room, Some(actor), &format!("{name} drops {}.", thing.name))?;
        Ok(format!("You drop {}.", thing.name))
    }

    fn inventory(&self, actor: u64) -> Result<String, Error> {
        let mut names = Vec::new();
        for id in self.get(actor)?.contents {
            names.push(self.get(id)?.name);
        }
        if names.is_empty() {
            return Ok("You carry nothing.".into());
        }
        Ok(format!("You carry: {}.", names.join(", ")))
    }

    fn who(&self) -> String {
        let lines: Vec<String> = self
            .awake()
            .into_iter()
            .map(|(name, place)| format!("{name} ({place})"))
            .collect();
        format!("Awake: {}.", lines.join(", "))
    }

    /// Whether `actor` may change `room` by adding exits: its editors, or
    /// anyone if it is `public`.
    fn may_dig(&self, actor: u64, room: u64) -> Result<bool, Error> {
        Ok(self.may_edit(actor, room)? || self.prop(room, "public") == Some(Prop::Bool(true)))
    }

    fn dig(&mut self, actor: u64, rest: &str) -> Result<String, Error> {
        let usage = "@dig EXIT[|BACK] NAME";
        let (exits, title) = rest
            .split_once(' ')
            .map_or((rest, ""), |(e, t)| (e, t.trim()));
        needs(title, usage)?;
        check_title(title)?;
        let (exit, back) = exits
            .split_once('|')
            .map_or((exits, None), |(e, b)| (e, Some(b)));
        named("exit", exit)?;
        if let Some(back) = back {
            named("exit", back)?;
        }
        let here = self.room_of(actor)?;
        if !self.may_dig(actor, here)? {
            return fail("you may not dig here: this room is not yours, nor public");
        }
        let mut room = self.get(here)?;
        if room.exits.contains_key(exit) {
            return fail(format!("there is an exit {exit:?} here already"));
        }
        if room.exits.len() >= EXITS_PER_ROOM_MAX {
            return fail(format!(
                "this room has exits_per_room_max ({EXITS_PER_ROOM_MAX}) exits"
            ));
        }
        let mut new = Obj::new(title, Sort::Room, Some(GENERIC_ROOM), Some(actor));
        if let Some(back) = back {
            new.exits.insert(back.to_owned(), Exit::Here(here));
        }
        let id = self.create(new)?;
        room.exits.insert(exit.to_owned(), Exit::Here(id));
        self.put(here, &room)?;
        Ok(format!("You dig {exit} to {title} (#{id})."))
    }

    fn create_thing(&mut self, actor: u64, rest: &str) -> Result<String, Error> {
        needs(rest, "@create NAME [from PARENT]")?;
        let (name, parent) = match rest.split_once(" from ") {
            Some((name, parent)) => (name.trim(), self.resolve(actor, parent.trim())?),
            None => (rest, GENERIC_THING),
        };
        named("thing", name)?;
        if self.get(parent)?.sort != Sort::Thing {
            return fail("a thing's parent is a thing");
        }
        let id = self.create(Obj::new(name, Sort::Thing, Some(parent), Some(actor)))?;
        self.place(id, actor)?;
        Ok(format!("You create {name} (#{id}), a child of #{parent}."))
    }

    /// The object `word` names, if `actor` may change it.
    fn editable(&self, actor: u64, word: &str) -> Result<(u64, Obj), Error> {
        let id = self.resolve(actor, word)?;
        if !self.may_edit(actor, id)? {
            return fail(format!("{} is not yours to change", self.get(id)?.name));
        }
        Ok((id, self.get(id)?))
    }

    fn describe(&mut self, actor: u64, rest: &str) -> Result<String, Error> {
        let Some((what, text)) = rest.split_once(" as ") else {
            return fail("usage: @describe THING as TEXT");
        };
        let (id, mut obj) = self.editable(actor, what.trim())?;
        obj.props
            .insert("description".into(), Prop::Text(text.trim().to_owned()));
        self.put(id, &obj)?;
        Ok(format!("You describe {}.", obj.name))
    }

    fn set_property(&mut self, actor: u64, rest: &str) -> Result<String, Error> {
        let (target, value) = split_word(rest);
        let Some((what, prop)) = target.rsplit_once('.') else {
            return fail("usage: @property THING.NAME VALUE");
        };
        named("property", prop)?;
        let (id, mut obj) = self.editable(actor, what)?;
        if value.is_empty() {
            obj.props.remove(prop);
            self.put(id, &obj)?;
            return Ok(format!("{}.{prop} is cleared.", obj.name));
        }
        if !obj.props.contains_key(prop) && obj.props.len() >= PROPS_PER_OBJECT_MAX {
            return fail(format!(
                "props_per_object_max ({PROPS_PER_OBJECT_MAX}) reached"
            ));
        }
        let value = Prop::parse(value);
        let shown = format!("{}.{prop} = {value}", obj.name);
        obj.props.insert(prop.to_owned(), value);
        self.put(id, &obj)?;
        Ok(shown)
    }

    /// `THING:VERB` as the object (which `actor` may change) and the name.
    fn verb_target<'a>(&self, actor: u64, target: &'a str) -> Result<(u64, Obj, &'a str), Error> {
        let Some((what, verb)) = target.rsplit_once(':') else {
            return fail("name a verb as THING:VERB");
        };
        named("verb", verb)?;
        let (id, obj) = self.editable(actor, what)?;
        Ok((id, obj, verb))
    }

    fn add_verb(&mut self, actor: u64, rest: &str) -> Result<String, Error> {
        needs(rest, "@verb THING:NAME")?;
        let (id, mut obj, verb) = self.verb_target(actor, rest)?;
        if obj.verbs.contains_key(verb) {
            return fail(format!("{} has a verb {verb} already", obj.name));
        }
        if obj.verbs.len() >= VERBS_PER_OBJECT_MAX {
            return fail(format!(
                "verbs_per_object_max ({VERBS_PER_OBJECT_MAX}) reached"
            ));
        }
        let code = String::new();
        obj.verbs.insert(
            verb.to_owned(),
            Verb {
                owner: Some(actor),
                code,
            },
        );
        self.put(id, &obj)?;
        Ok(format!(
            "{} has a verb {verb}: @program {}:{verb} CODE",
            obj.name, obj.name
        ))
    }

    fn program(&mut self, actor: u64, rest: &str) -> Result<String, Error> {
        let (target, code) = split_word(rest);
        needs(code, "@program THING:NAME CODE")?;
        let (id, mut obj, verb) = self.verb_target(actor, target)?;
        let Some(entry) = obj.verbs.get_mut(verb) else {
            return fail(format!("{} has no verb {verb}: @verb it first", obj.name));
        };
        verbs::check(code).map_err(|e| Error::new(format!("{verb} is not programmed: {e}")))?;
        entry.code = code.to_owned();
        entry.owner = Some(actor);
        self.put(id, &obj)?;
        Ok(format!("{}:{verb} is programmed.", obj.name))
    }

    fn grant(&mut self, actor: u64, rest: &str) -> Result<String, Error> {
        let Some((what, whom)) = rest.split_once(" to ") else {
            return fail("usage: @grant THING to PLAYER");
        };
        let (id, mut obj) = self.editable(actor, what.trim())?;
        let Some(player) = self.player(whom.trim()) else {
            return fail(format!("there is no player {:?}", whom.trim()));
        };
        if !obj.editors.contains(&player) {
            obj.editors.push(player);
        }
        self.put(id, &obj)?;
        Ok(format!("{} may change {} now.", whom.trim(), obj.name))
    }

    fn examine(&self, actor: u64, rest: &str) -> Result<String, Error> {
        needs(rest, "@examine THING")?;
        let id = self.resolve(actor, rest)?;
        let obj = self.get(id)?;
        let owner = match obj.owner {
            Some(owner) => self.get(owner)?.name,
            None => "the world".into(),
        };
        let parent = obj
            .parent
            .map_or_else(|| "none".to_owned(), |p| format!("#{p}"));
        let props: Vec<String> = self
            .props(id)
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let verbs: Vec<&str> = obj.verbs.keys().map(String::as_str).collect();
        Ok(format!(
            "{} (#{id}), a {:?}; parent {parent}; owner {owner}\nproperties: {}\nverbs: {}",
            obj.name,
            obj.sort,
            props.join(", "),
            verbs.join(", ")
        ))
    }

    /// A bare word: an exit here, else a verb of the thing named next, of
    /// the player, or of the room.
    fn exit_or_verb(&mut self, actor: u64, word: &str, rest: &str) -> Result<Outcome, Error> {
        let room = self.room_of(actor).ok();
        if let Some(room) = room
            && self.get(room)?.exits.contains_key(word)
        {
            return self.go(actor, word);
        }
        let args: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
        let mut candidates = Vec::new();
        if let Some(Ok(thing)) = args.first().map(|a| self.resolve(actor, a)) {
            candidates.push(thing);
        }
        candidates.push(actor);
        candidates.extend(room);
        for this in candidates {
            if let Some(verb) = self.verb(this, word) {
                let text = self.run_verb(actor, this, word, &verb, args, rest)?;
                return Ok(Outcome::Text(text));
            }
        }
        fail(format!("I don't understand {word:?}; type help"))
    }

    fn given(&self, id: u64) -> Result<Given, Error> {
        Ok(Given {
            id,
            name: self.get(id)?.name,
            props: self.props(id),
        })
    }

    fn run_verb(
        &mut self,
        actor: u64,
        this: u64,
        name: &str,
        verb: &Verb,
        args: Vec<String>,
        argstr: &str,
    ) -> Result<String, Error> {
        let room = self.room_of(actor).ok();
        let run = Run {
            verb: name,
            code: &verb.code,
            player: self.given(actor)?,
            this: self.given(this)?,
            room: room.map(|r| self.given(r)).transpose()?,
            args,
            argstr: argstr.to_owned(),
        };
        let effects = verbs::run(run).map_err(Error::new)?;
        let mut obj = self.get(this)?;
        obj.props.extend(effects.sets);
        self.put(this, &obj)?;
        let mut lines = Vec::new();
        for (whom, text) in effects.tells {
            match (whom, room) {
                (Whom::Player, _) => lines.push(text),
                (Whom::Room, Some(room)) => self.announce(room, Some(actor), &text)?,
                (Whom::Room, None) => {}
            }
        }
        lines.extend(effects.reply);
        Ok(lines.join("\n"))
    }
}
