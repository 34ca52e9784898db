//! Test guest for work in flight that outlives the heap: durable watchers
//! and durable promises. Its root is a durable `Waiter`:
//!
//! - `ask(to, method, args)`: sends `to.method(...args)` and watches the
//!   answer with a durable watcher (`answered`, noted with the method), then
//!   returns at once.
//! - `askThen(to, method, then)`: sends `to.method()`, pipelines `then()` on
//!   its answer, and watches that (noted with `then`).
//! - `answered(settlement, note)`: the watcher: records the settlement.
//! - `answers()`: what the watcher recorded, one line per settlement, in order.
//! - `later()`: answers with a durable promise whose resolver it keeps;
//!   `release(value)` fulfills every one it keeps, and returns how many.
//! - `pending()`: how many resolvers it keeps.
//! - `heapLater()`: answers with a promise only its heap knows (it never
//!   settles unless the vat restarts, which rejects it with `vatRestarted`).
//! - `takeObject(obj)`: answers whether `obj` arrived as an object, not a promise.
//! - `object()`: a durable object (to pipeline on).
//! - `makeSettler()`: a durable promise whose resolver is wrapped in a
//!   durable `Settler` object (`settle(value)`), which it answers; the
//!   promise is watched here (noted `settler`). `keep(settler)` keeps
//!   another vat's settler; `settleKept(value)` settles it: a resolver
//!   passed to another vat, as a capability.
//! - `say(text)`: logs `said: <text>` (`vom::log!`); `sayAndFail(text)`
//!   logs, then panics.
//! - For the benchmarks: `echo(x)` answers `x`; `watchMany(to, n)` sends
//!   `to.echo(i)` n times, each answer watched by `tally`, which counts it
//!   (`tallied()`); `awaitMany(to, n)` does the same awaiting on the heap;
//!   `watchPending(to, n)` watches `n` of `to.heapLater()`'s promises.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use vom::{Baggage, Durable, Error, Ref, Reply, Resolver, Value};

#[derive(Serialize, Deserialize, vom::Schema)]
struct Waiter {
    answers: Vec<String>,
    resolvers: Vec<Resolver>,
    #[serde(default)]
    tallied: u64,
    #[serde(default)]
    kept: Option<Ref>,
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct Settler {
    resolver: Resolver,
}

#[vom::exo]
impl Settler {
    pub fn settle(&self, value: Value) -> Result<(), Error> {
        self.resolver.resolve(value)
    }
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct Thing {
    label: String,
}

#[vom::exo]
impl Thing {
    pub fn label(&self) -> String {
        self.label.clone()
    }
}

/// A future that never completes: what a heap-only wait looks like.
struct Never;

impl Future for Never {
    type Output = Result<Value, Error>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

fn line(settlement: &Value) -> String {
    let field = |name: &str| match settlement {
        Value::Record(entries) => entries.get(name).cloned(),
        _ => None,
    };
    match (field("status"), field("value"), field("reason")) {
        (_, Some(value), _) => {
            let body = vom::capdata::encode(&value).body;
            format!("fulfilled {}", body.trim_start_matches('#'))
        }
        (_, _, Some(Value::Error(error))) => format!("rejected {}: {}", error.name, error.message),
        other => format!("unexpected {other:?}"),
    }
}

#[vom::exo]
impl Waiter {
    pub fn ask(
        &mut self,
        this: &Durable<Waiter>,
        to: Ref,
        method: String,
        args: Vec<Value>,
    ) -> Result<(), Error> {
        let answer = vom::send(&to, &method, args);
        vom::watch(&answer, &this.reference(), "answered", Value::from(method))
    }

    pub fn ask_then(
        &mut self,
        this: &Durable<Waiter>,
        to: Ref,
        method: String,
        then: String,
    ) -> Result<(), Error> {
        let answer = vom::send(&to, &method, vec![]);
        let Value::Promise(answer) = answer.to_value() else {
            return Err(Error::new("a send answers with a promise"));
        };
        let then_answer = vom::send(&answer, &then, vec![]);
        vom::watch(
            &then_answer,
            &this.reference(),
            "answered",
            Value::from(then),
        )
    }

    pub fn answered(&mut self, settlement: Value, note: Value) {
        let note = note.as_str().unwrap_or("?").to_owned();
        self.answers.push(format!("{note}: {}", line(&settlement)));
    }

    pub fn answers(&self) -> Vec<String> {
        self.answers.clone()
    }

    pub fn later(&mut self) -> Value {
        let (promise, resolver) = vom::durable_promise();
        self.resolvers.push(resolver);
        promise.to_value()
    }

    pub fn release(&mut self, value: Value) -> Result<u64, Error> {
        let resolvers = std::mem::take(&mut self.resolvers);
        for resolver in &resolvers {
            resolver.resolve(value.clone())?;
        }
        Ok(resolvers.len() as u64)
    }

    pub fn pending(&self) -> u64 {
        self.resolvers.len() as u64
    }

    pub fn heap_later(&self) -> Reply {
        Reply::Later(Box::pin(Never))
    }

    pub fn take_object(&self, obj: Value) -> bool {
        matches!(obj, Value::Remotable(_))
    }

    pub fn make_settler(&mut self, this: &Durable<Waiter>) -> Result<Durable<Settler>, Error> {
        let (promise, resolver) = vom::durable_promise();
        vom::watch(
            &promise,
            &this.reference(),
            "answered",
            Value::from("settler"),
        )?;
        Ok(Durable::new(Settler { resolver }))
    }

    pub fn keep(&mut self, settler: Ref) {
        self.kept = Some(settler);
    }

    pub fn settle_kept(&self, value: Value) -> Result<(), Error> {
        let settler = self
            .kept
            .as_ref()
            .ok_or_else(|| Error::new("no settler kept"))?;
        // Nothing awaits the answer: settling is the point.
        drop(vom::send(settler, "settle", vec![value]));
        Ok(())
    }

    pub fn say(&self, text: String) {
        vom::log!("said: {text}");
    }

    pub fn say_and_fail(&self, text: String) {
        vom::log!("about to fail: {text}");
        panic!("failing on purpose");
    }

    pub fn echo(&self, x: Value) -> Value {
        x
    }

    pub fn watch_many(&mut self, this: &Durable<Waiter>, to: Ref, n: u64) -> Result<(), Error> {
        for i in 0..n {
            let answer = vom::send(&to, "echo", vec![Value::from(i)]);
            vom::watch(&answer, &this.reference(), "tally", Value::Null)?;
        }
        Ok(())
    }

    pub fn watch_pending(&mut self, this: &Durable<Waiter>, to: Ref, n: u64) -> Result<(), Error> {
        for _ in 0..n {
            let answer = vom::send(&to, "heapLater", vec![]);
            vom::watch(&answer, &this.reference(), "tally", Value::Null)?;
        }
        Ok(())
    }

    pub fn tally(&mut self, _settlement: Value, _note: Value) {
        self.tallied += 1;
    }

    pub fn tallied(&self) -> u64 {
        self.tallied
    }

    pub fn await_many(&self, to: Ref, n: u64) -> Reply {
        Reply::later(async move {
            let pending: Vec<_> = (0..n)
                .map(|i| vom::send(&to, "echo", vec![Value::from(i)]))
                .collect();
            for answer in pending {
                answer.await?;
            }
            Ok::<_, Error>(Value::from(n))
        })
    }

    /// Awaits `to.method()` on the heap (not durably): until it settles
    /// the heap holds what the store does not, so the vat stays awake.
    pub fn await_answer(&self, to: Ref, method: String) -> Reply {
        Reply::later(async move { vom::send(&to, &method, vec![]).await })
    }

    pub fn object(&self) -> Durable<Thing> {
        Durable::new(Thing {
            label: "thing".into(),
        })
    }
}

fn start(baggage: &Baggage) -> Durable<Waiter> {
    vom::define::<Thing>();
    vom::define::<Settler>();
    vom::define::<Waiter>();
    baggage.get_or_init("waiter", || {
        Durable::new(Waiter {
            answers: Vec::new(),
            resolvers: Vec::new(),
            tallied: 0,
            kept: None,
        })
    })
}

vom::vat_main!(start: start);
