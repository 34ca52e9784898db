//! Players' verbs: Rhai scripts, run inside the world vat in a sandbox.
//!
//! A verb is given what it may touch and nothing else: `this` (the object
//! the verb is on), `player` (who typed the command), `room` (where they
//! are), `args` (the words after the verb) and `argstr` (them as typed).
//! Rhai has no way to name another object: a script cannot make a handle,
//! only use the three it was given. It may read their names and
//! properties, `tell` the player or the room, and set properties of `this`
//! alone. What it does is applied only if it finishes: a verb that fails,
//! on a limit or otherwise, changes nothing.
//!
//! Every resource a script uses is bounded by a named limit, checked by
//! Rhai as it runs; the vat's own fuel and memory limits stand behind them.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rhai::{Array, CallFnOptions, Dynamic, Engine, EvalAltResult, Position, Scope};

use crate::model::{PROPS_PER_OBJECT_MAX, Prop, check_name};

/// `verb_operations_max`: Rhai operations one verb run may take.
pub const VERB_OPERATIONS_MAX: u64 = 200_000;
/// `verb_call_levels_max`: how deep a verb's function calls may nest.
pub const VERB_CALL_LEVELS_MAX: usize = 24;
/// `verb_expr_depth_max`: how deep a verb's expressions may nest.
pub const VERB_EXPR_DEPTH_MAX: usize = 48;
/// `verb_string_bytes_max`: the longest string a verb may make.
pub const VERB_STRING_BYTES_MAX: usize = 64 << 10;
/// `verb_array_items_max`: the most items in a verb's array (nested ones counted).
pub const VERB_ARRAY_ITEMS_MAX: usize = 10_000;
/// `verb_map_items_max`: the most entries in a verb's object map.
pub const VERB_MAP_ITEMS_MAX: usize = 1_000;
/// `verb_variables_max`: the most variables a verb may have at once.
pub const VERB_VARIABLES_MAX: usize = 256;
/// `verb_source_bytes_max`: the longest verb source.
pub const VERB_SOURCE_BYTES_MAX: usize = 16 << 10;
/// `verb_tells_max`: how many lines one verb run may tell.
pub const VERB_TELLS_MAX: usize = 100;

/// One object a verb is given, as it sees it: properties its own and
/// inherited, flattened.
#[derive(Clone)]
pub struct Given {
    pub id: u64,
    pub name: String,
    pub props: BTreeMap<String, Prop>,
}

/// A verb to run, and what it is given.
pub struct Run<'a> {
    pub verb: &'a str,
    pub code: &'a str,
    pub player: Given,
    pub this: Given,
    pub room: Option<Given>,
    pub args: Vec<String>,
    pub argstr: String,
}

/// Who a verb told something.
#[derive(Debug, PartialEq)]
pub enum Whom {
    /// The player who typed the command.
    Player,
    /// Everyone else in the room.
    Room,
}

/// What a verb did, to be applied once it finished.
#[derive(Debug, Default)]
pub struct Effects {
    pub tells: Vec<(Whom, String)>,
    /// Properties of `this` it set, in order.
    pub sets: Vec<(String, Prop)>,
    /// What the verb returned, when not `()`.
    pub reply: Option<String>,
}

/// Which of the given objects a handle is.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Player,
    This,
    Room,
}

/// A script's handle on a given object; it cannot be made from a number.
#[derive(Clone)]
struct Handle(Role);

struct Sandbox {
    player: Given,
    this: Given,
    room: Option<Given>,
    effects: Effects,
}

thread_local! {
    static SANDBOX: RefCell<Option<Sandbox>> = const { RefCell::new(None) };
    static ENGINE: Engine = engine();
}

type Fallible<T> = Result<T, Box<EvalAltResult>>;

fn refuse<T>(text: impl Into<String>) -> Fallible<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(text.into()),
        Position::NONE,
    )))
}

fn with_sandbox<T>(f: impl FnOnce(&mut Sandbox) -> Fallible<T>) -> Fallible<T> {
    SANDBOX.with(|cell| match cell.borrow_mut().as_mut() {
        Some(sandbox) => f(sandbox),
        None => refuse("no verb is running"),
    })
}

impl Sandbox {
    fn given(&self, role: Role) -> Fallible<&Given> {
        match role {
            Role::Player => Ok(&self.player),
            Role::This => Ok(&self.this),
            Role::Room => self
                .room
                .as_ref()
                .map_or_else(|| refuse("the player is in no room"), Ok),
        }
    }

    fn tell(&mut self, whom: Whom, text: String) -> Fallible<()> {
        if self.effects.tells.len() >= VERB_TELLS_MAX {
            return refuse(format!("verb_tells_max ({VERB_TELLS_MAX}) reached"));
        }
        self.effects.tells.push((whom, text));
        Ok(())
    }
}

fn to_dynamic(prop: Option<&Prop>) -> Dynamic {
    match prop {
        None => Dynamic::UNIT,
        Some(Prop::Int(n)) => Dynamic::from(*n),
        Some(Prop::Bool(b)) => Dynamic::from(*b),
        Some(Prop::Text(t)) => Dynamic::from(t.clone()),
    }
}

fn from_dynamic(value: &Dynamic) -> Fallible<Prop> {
    if let Ok(n) = value.as_int() {
        return Ok(Prop::Int(n));
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Prop::Bool(b));
    }
    if value.is_string() {
        return Ok(Prop::Text(value.to_string()));
    }
    refuse(format!(
        "a property holds a number, true/false or text, not {}",
        value.type_name()
    ))
}

fn get_prop(handle: &mut Handle, name: &str) -> Fallible<Dynamic> {
    with_sandbox(|s| Ok(to_dynamic(s.given(handle.0)?.props.get(name))))
}

fn set_prop(handle: &mut Handle, name: &str, value: Dynamic) -> Fallible<()> {
    if handle.0 != Role::This {
        return refuse("a verb sets properties of `this` only");
    }
    check_name("property", name).or_else(refuse)?;
    let prop = from_dynamic(&value)?;
    with_sandbox(|s| {
        if !s.this.props.contains_key(name) && s.this.props.len() >= PROPS_PER_OBJECT_MAX {
            return refuse(format!(
                "props_per_object_max ({PROPS_PER_OBJECT_MAX}) reached"
            ));
        }
        s.this.props.insert(name.to_owned(), prop.clone());
        s.effects.sets.push((name.to_owned(), prop));
        Ok(())
    })
}

fn tell(handle: &mut Handle, text: Dynamic) -> Fallible<()> {
    let text = text.to_string();
    with_sandbox(|s| match handle.0 {
        Role::Player => s.tell(Whom::Player, text),
        Role::Room => s.tell(Whom::Room, text),
        Role::This if s.this.id == s.player.id => s.tell(Whom::Player, text),
        Role::This => refuse("`this` is not a player: tell the player or the room"),
    })
}

fn engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(VERB_OPERATIONS_MAX);
    engine.set_max_call_levels(VERB_CALL_LEVELS_MAX);
    engine.set_max_expr_depths(VERB_EXPR_DEPTH_MAX, VERB_EXPR_DEPTH_MAX);
    engine.set_max_string_size(VERB_STRING_BYTES_MAX);
    engine.set_max_array_size(VERB_ARRAY_ITEMS_MAX);
    engine.set_max_map_size(VERB_MAP_ITEMS_MAX);
    engine.set_max_variables(VERB_VARIABLES_MAX);
    engine.disable_symbol("eval");
    engine.on_print(|text| {
        let _ = with_sandbox(|s| s.tell(Whom::Player, text.to_owned()));
    });
    engine.on_debug(|text, _, _| {
        let _ = with_sandbox(|s| s.tell(Whom::Player, text.to_owned()));
    });
    engine
        .register_type_with_name::<Handle>("Obj")
        .register_get("name", |h: &mut Handle| {
            with_sandbox(|s| Ok(s.given(h.0)?.name.clone()))
        })
        .register_get("id", |h: &mut Handle| {
            with_sandbox(|s| Ok(format!("#{}", s.given(h.0)?.id)))
        })
        .register_fn("get", get_prop)
        .register_fn("set", set_prop)
        .register_fn("tell", tell)
        .register_fn("to_string", |h: &mut Handle| {
            with_sandbox(|s| Ok(s.given(h.0)?.name.clone()))
        });
    engine
}

/// The script as a function, so that `this` can be bound to it.
fn wrapped(code: &str) -> String {
    format!("fn verb(player, room, args, argstr) {{\n{code}\n}}")
}

/// A verb compiled: its code as the body of `verb`, or, when the code
/// defines functions (which Rhai allows only at the top), the code as it
/// is, which must then define `fn verb(player, room, args, argstr)`.
fn compile(engine: &Engine, code: &str) -> Result<rhai::AST, String> {
    if code.len() > VERB_SOURCE_BYTES_MAX {
        return Err(format!(
            "the verb is longer than verb_source_bytes_max ({VERB_SOURCE_BYTES_MAX})"
        ));
    }
    let describe_parse = |e: rhai::ParseError| describe(&EvalAltResult::from(e));
    if !code.contains("fn ") {
        return engine.compile(wrapped(code)).map_err(describe_parse);
    }
    let ast = engine.compile(code).map_err(describe_parse)?;
    if !ast
        .iter_functions()
        .any(|f| f.name == "verb" && f.params.len() == 4)
    {
        return Err("a verb that defines functions defines its body as \
                    fn verb(player, room, args, argstr) { ... }"
            .into());
    }
    Ok(ast)
}

/// Whether `code` is a verb the world can run (it parses, within limits).
pub fn check(code: &str) -> Result<(), String> {
    ENGINE.with(|engine| compile(engine, code).map(drop))
}

/// Runs a verb; its effects, or what stopped it (a limit by name).
pub fn run(run: Run<'_>) -> Result<Effects, String> {
    let ast = ENGINE.with(|engine| compile(engine, run.code))?;
    let Run {
        verb,
        player,
        this,
        room,
        args,
        argstr,
        ..
    } = run;
    let has_room = room.is_some();
    SANDBOX.with(|cell| {
        *cell.borrow_mut() = Some(Sandbox {
            player,
            this,
            room,
            effects: Effects::default(),
        });
    });
    let outcome = ENGINE.with(|engine| {
        let args: Array = args.into_iter().map(Dynamic::from).collect();
        let room = if has_room {
            Dynamic::from(Handle(Role::Room))
        } else {
            Dynamic::UNIT
        };
        let mut this = Dynamic::from(Handle(Role::This));
        let options = CallFnOptions::new()
            .eval_ast(false)
            .bind_this_ptr(&mut this);
        engine.call_fn_with_options::<Dynamic>(
            options,
            &mut Scope::new(),
            &ast,
            "verb",
            (Dynamic::from(Handle(Role::Player)), room, args, argstr),
        )
    });
    let sandbox = SANDBOX.with(|cell| cell.borrow_mut().take());
    let mut effects = sandbox.map(|s| s.effects).unwrap_or_default();
    match outcome {
        Ok(value) if value.is_unit() => Ok(effects),
        Ok(value) => {
            effects.reply = Some(value.to_string());
            Ok(effects)
        }
        Err(e) => Err(format!("verb {verb} failed: {}", describe(&e))),
    }
}

/// What stopped a script, naming the limit when it was one.
fn describe(error: &EvalAltResult) -> String {
    match error {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => describe(inner),
        EvalAltResult::ErrorTooManyOperations(_) => {
            format!("verb_operations_max ({VERB_OPERATIONS_MAX}) reached")
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            format!("verb_call_levels_max ({VERB_CALL_LEVELS_MAX}) reached")
        }
        EvalAltResult::ErrorTooManyVariables(_) => {
            format!("verb_variables_max ({VERB_VARIABLES_MAX}) reached")
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => format!(
            "{what} is past its limit (verb_string_bytes_max {VERB_STRING_BYTES_MAX}, \
             verb_array_items_max {VERB_ARRAY_ITEMS_MAX}, verb_map_items_max {VERB_MAP_ITEMS_MAX})"
        ),
        EvalAltResult::ErrorParsing(rhai::ParseErrorType::ExprTooDeep, _) => {
            format!("verb_expr_depth_max ({VERB_EXPR_DEPTH_MAX}) reached")
        }
        EvalAltResult::ErrorRuntime(value, _) => value.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(id: u64) -> Given {
        Given {
            id,
            name: format!("o{id}"),
            props: BTreeMap::new(),
        }
    }

    fn run_code(code: &str) -> Result<Effects, String> {
        run(Run {
            verb: "v",
            code,
            player: given(1),
            this: given(2),
            room: Some(given(3)),
            args: vec!["a".into()],
            argstr: "a".into(),
        })
    }

    #[test]
    fn a_verb_sees_what_it_is_given_and_sets_this_only() {
        let effects = run_code(
            "this.set(\"n\", 2); room.tell(player.name + \" \" + args[0]); this.get(\"n\") + 1",
        )
        .unwrap();
        assert_eq!(effects.sets, vec![("n".to_owned(), Prop::Int(2))]);
        assert_eq!(effects.tells, vec![(Whom::Room, "o1 a".to_owned())]);
        assert_eq!(effects.reply.as_deref(), Some("3"));
        let refused = run_code("player.set(\"x\", 1)").unwrap_err();
        assert!(refused.contains("`this` only"), "{refused}");
    }

    #[test]
    fn hostile_verbs_stop_on_a_named_limit() {
        let cases = [
            ("loop { }", "verb_operations_max"),
            ("let s = \"xx\"; loop { s += s; }", "verb_string_bytes_max"),
            ("let a = [1]; loop { a += a; }", "verb_array_items_max"),
            (
                "fn down(n) { down(n + 1) } fn verb(player, room, args, argstr) { down(0) }",
                "verb_call_levels_max",
            ),
        ];
        for (code, limit) in cases {
            let failed = run_code(code).unwrap_err();
            assert!(failed.contains(limit), "{code}: {failed}");
        }
    }
}
