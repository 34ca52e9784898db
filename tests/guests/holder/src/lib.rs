//! Test guest for garbage collection and promises: it makes objects, holds
//! references (on the heap or durably) under names, passes them on, drops
//! them, and decides promises when told to.
//!
//! - `make(label)`: a new heap object (`describe()` answers its label).
//! - `makeDurable(label)`: a new durable object, not kept by the vat.
//! - `hold(name, ref)` / `holdDurably(name, ref)`: keep `ref` on the heap / in baggage.
//! - `drop(name)`: forget it (both places); `held()`: the names held.
//! - `give(name, to, newName)`: send the held ref to `to.hold(newName, ref)`.
//! - `call(name, method)`: send `method()` to the held ref and await the answer.
//! - `later(name)`: a promise this vat settles when told: `fire(name, value)`
//!   fulfills it with `value`, `fail(name, reason)` rejects it.
//! - `ask(to, name)`: send `to.later(name)` and hold the result promise, un-awaited, as `name`.
//! - `queueOn(name, method, argName)`: send `method(held[argName])` to the held promise `name`.
//! - `await(name)`: await the held promise `name`; hold what it resolves to under the same name.
//! - `relay(to, method, arg)`: return the promise of `to.method(arg)` (a chain link).
//! - `chain(hops, value)`: `hops[0].chain(rest, value)`, returning its promise; `value` at the end.
//! - `take(from, label, name)`: await `from.make(label)` and hold the new object as `name`.
//! - `fireHeld(name, heldName)`: fulfill `later(name)` with what is held as `heldName`, and drop it.
//! - `churn(from, n)`: `n` times, await `from.make(..)` and drop the result.
//! - `echo(x)`: returns `x`. `trap()`: traps (the vat is terminated).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};
use vom::{Args, Baggage, Error, Exo, MapStore, Promise, Ref, Reply, Value, send};

#[derive(Serialize, Deserialize, vom::Schema)]
struct Token {
    label: String,
}

#[vom::exo]
impl Token {
    pub fn describe(&self) -> String {
        self.label.clone()
    }
}

struct Cell {
    label: String,
}

impl Exo for Cell {
    fn interface_name(&self) -> &str {
        "Cell"
    }

    fn call(self: Rc<Self>, method: &str, args: Args) -> Reply {
        match method {
            "describe" => Reply::ready(
                args.expect_count(0)
                    .map(|()| Value::from(self.label.clone())),
            ),
            other => Reply::no_such_method(other),
        }
    }
}

#[derive(Default)]
struct Deferred {
    outcome: Option<Result<Value, Error>>,
    waker: Option<Waker>,
}

thread_local! {
    static HELD: RefCell<HashMap<String, Value>> = RefCell::new(HashMap::new());
    static DEFERRED: RefCell<HashMap<String, Rc<RefCell<Deferred>>>> = RefCell::new(HashMap::new());
    static DURABLE: RefCell<Option<MapStore<String, Ref>>> = const { RefCell::new(None) };
}

struct Later(Rc<RefCell<Deferred>>);

impl Future for Later {
    type Output = Result<Value, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut deferred = self.0.borrow_mut();
        match deferred.outcome.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                deferred.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn held(name: &str) -> Result<Value, Error> {
    HELD.with(|h| h.borrow().get(name).cloned())
        .ok_or_else(|| Error::new(format!("nothing held as {name}")))
}

fn held_ref(name: &str) -> Result<Ref, Error> {
    match held(name)? {
        Value::Remotable(r) | Value::Promise(r) => Ok(r),
        _ => Err(Error::new(format!("{name} is not a reference"))),
    }
}

fn settle_later(name: &str, outcome: Result<Value, Error>) -> Result<Value, Error> {
    let deferred = DEFERRED
        .with(|d| d.borrow_mut().remove(name))
        .ok_or_else(|| Error::new(format!("no promise {name}")))?;
    let waker = {
        let mut deferred = deferred.borrow_mut();
        deferred.outcome = Some(outcome);
        deferred.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
    Ok(Value::Undefined)
}

struct Holder;

impl Exo for Holder {
    fn interface_name(&self) -> &str {
        "Holder"
    }

    fn call(self: Rc<Self>, method: &str, args: Args) -> Reply {
        match method {
            "make" => Reply::ready(
                args.string(0)
                    .map(|label| vom::export(Rc::new(Cell { label }))),
            ),
            "makeDurable" => Reply::ready(
                args.string(0)
                    .map(|label| vom::ToPassable::to_passable(&vom::Durable::new(Token { label }))),
            ),
            "hold" => Reply::ready((|| {
                let name = args.string(0)?;
                let value = args.get(1)?.clone();
                HELD.with(|h| h.borrow_mut().insert(name, value));
                Ok(Value::Undefined)
            })()),
            "holdDurably" => Reply::ready((|| {
                let name = args.string(0)?;
                let reference = args.reference(1)?;
                DURABLE.with(|d| {
                    d.borrow()
                        .as_ref()
                        .expect("started")
                        .insert(&name, &reference)
                })?;
                Ok(Value::Undefined)
            })()),
            "drop" => Reply::ready(args.string(0).map(|name| {
                let heap = HELD.with(|h| h.borrow_mut().remove(&name)).is_some();
                let durable = DURABLE.with(|d| d.borrow().as_ref().expect("started").delete(&name));
                Value::from(heap || durable)
            })),
            "held" => Reply::ready(Ok(Value::Array(HELD.with(|h| {
                let mut names: Vec<String> = h.borrow().keys().cloned().collect();
                names.sort();
                names.into_iter().map(Value::from).collect()
            })))),
            "give" => Reply::ready((|| {
                let (name, to, new_name) = (args.string(0)?, args.reference(1)?, args.string(2)?);
                let value = held(&name)?;
                // Not awaited: the hold lands when the receiver gets it.
                drop(send(&to, "hold", vec![Value::from(new_name), value]));
                Ok(Value::Undefined)
            })()),
            "call" => match (args.string(0), args.string(1)) {
                (Ok(name), Ok(method)) => match held_ref(&name) {
                    Ok(target) => Reply::later(send(&target, &method, vec![])),
                    Err(e) => Reply::Ready(Err(e)),
                },
                (Err(e), _) | (_, Err(e)) => Reply::Ready(Err(e)),
            },
            "later" => match args.string(0) {
                Ok(name) => {
                    // A name asked again replaces the old promise, which is rejected.
                    if DEFERRED.with(|d| d.borrow().contains_key(&name)) {
                        let _ = settle_later(&name, Err(Error::new("replaced")));
                    }
                    let deferred = Rc::new(RefCell::new(Deferred::default()));
                    DEFERRED.with(|d| d.borrow_mut().insert(name, deferred.clone()));
                    Reply::later(Later(deferred))
                }
                Err(e) => Reply::Ready(Err(e)),
            },
            "fire" => Reply::ready((|| {
                let name = args.string(0)?;
                let value = args.get(1)?.clone();
                settle_later(&name, Ok(value))
            })()),
            "fail" => Reply::ready((|| {
                let name = args.string(0)?;
                let reason = args.string(1)?;
                settle_later(&name, Err(Error::new(reason)))
            })()),
            "ask" => Reply::ready((|| {
                let (to, name) = (args.reference(0)?, args.string(1)?);
                let promise = send(&to, "later", vec![Value::from(name.clone())]);
                HELD.with(|h| h.borrow_mut().insert(name, promise.to_value()));
                Ok(Value::Undefined)
            })()),
            "queueOn" => Reply::ready((|| {
                let (name, method, arg_name) = (args.string(0)?, args.string(1)?, args.string(2)?);
                let target = held_ref(&name)?;
                let arg = held(&arg_name)?;
                drop(send(&target, &method, vec![Value::from(arg_name), arg]));
                Ok(Value::Undefined)
            })()),
            "await" => match args.string(0).and_then(|name| Ok((held_ref(&name)?, name))) {
                Ok((promise, name)) => Reply::later(async move {
                    let value = Promise::from_ref(&promise).await?;
                    HELD.with(|h| h.borrow_mut().insert(name, value.clone()));
                    Ok(value)
                }),
                Err(e) => Reply::Ready(Err(e)),
            },
            "relay" => match (args.reference(0), args.string(1), args.get(2)) {
                (Ok(to), Ok(method), Ok(arg)) => {
                    let promise = send(&to, &method, vec![arg.clone()]);
                    Reply::ready(Ok(promise.to_value()))
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Reply::Ready(Err(e)),
            },
            "chain" => match (args.get(0), args.get(1)) {
                (Ok(Value::Array(hops)), Ok(value)) => match hops.split_first() {
                    None => Reply::ready(Ok(value.clone())),
                    Some((Value::Remotable(next), rest)) => {
                        let promise = send(
                            next,
                            "chain",
                            vec![Value::Array(rest.to_vec()), value.clone()],
                        );
                        Reply::ready(Ok(promise.to_value()))
                    }
                    Some(_) => Reply::Ready(Err(Error::new("hops are references"))),
                },
                _ => Reply::Ready(Err(Error::new("chain(hops, value)"))),
            },
            "take" => match (args.reference(0), args.string(1), args.string(2)) {
                (Ok(from), Ok(label), Ok(name)) => Reply::later(async move {
                    let object = send(&from, "make", vec![Value::from(label)]).await?;
                    HELD.with(|h| h.borrow_mut().insert(name, object));
                    Ok(Value::Undefined)
                }),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Reply::Ready(Err(e)),
            },
            "fireHeld" => Reply::ready((|| {
                let (name, held_name) = (args.string(0)?, args.string(1)?);
                let value = held(&held_name)?;
                HELD.with(|h| h.borrow_mut().remove(&held_name));
                settle_later(&name, Ok(value))
            })()),
            "churn" => match (args.reference(0), args.u64(1)) {
                (Ok(from), Ok(count)) => Reply::later(async move {
                    for _ in 0..count {
                        // Made, received, and dropped at once: garbage for the kernel to collect.
                        let object = send(&from, "make", vec![Value::from("churn")]).await?;
                        drop(object);
                    }
                    Ok(Value::from(count))
                }),
                (Err(e), _) | (_, Err(e)) => Reply::Ready(Err(e)),
            },
            "echo" => Reply::ready(args.get(0).cloned()),
            "trap" => panic!("trap requested"),
            other => Reply::no_such_method(other),
        }
    }
}

fn start(baggage: &Baggage) -> vom::Root {
    vom::define::<Token>();
    let durable = baggage.get_or_init("held", MapStore::<String, Ref>::new);
    DURABLE.with(|d| *d.borrow_mut() = Some(durable));
    vom::Root::Heap(Rc::new(Holder))
}

vom::vat_main!(start: start);
