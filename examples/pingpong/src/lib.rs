//! Ping-pong: `run(n, other)` sends `n` sequential `ping`s to `other`,
//! awaiting each reply before the next, and returns `n`. `ping(i)` answers
//! `i` and counts it; `pings()` says how many pings this vat has answered.
//!
//! `run` is a durable flow: its sends and their answers are journaled, so a
//! restart of the vat (a killed worker, a killed daemon) loses none of it and
//! repeats none of it; the run carries on and answers `n` in the end.
//! `runHeap(n, other)` is the same loop awaiting in the heap only (a restart
//! rejects it with `vatRestarted`). `burst(n, other)` sends all `n` pings at
//! once, then awaits them.
//!
//! Each ping costs two cranks (the send to `other`, then the notify back), so
//! this is the kernel's crank-rate benchmark as well as an example of `await`.

use std::rc::Rc;

use vom::flow::{Flow, FlowEnd, FlowFuture};
use vom::{Args, Baggage, Error, Exo, Ref, Reply, Root, Value, send};

/// Pings a run's journal holds before it continues as new.
const PINGS_PER_JOURNAL: u64 = 1_000;
const PINGS_KEY: &str = "pings";

struct PingPong;

fn check_reply(i: u64, reply: &Value) -> Result<(), Error> {
    if reply.as_u64() == Some(i) {
        Ok(())
    } else {
        Err(Error::new(format!("ping {i} answered {reply:?}")))
    }
}

async fn run_heap(count: u64, other: Ref) -> Result<Value, Error> {
    for i in 0..count {
        let reply = send(&other, "ping", vec![Value::from(i)]).await?;
        check_reply(i, &reply)?;
    }
    Ok(Value::from(count))
}

/// The flow behind `run`: `args` are `[count, other, done]`, `done` pings
/// already made by the runs it continues.
fn run_flow(flow: Rc<Flow>, args: Vec<Value>) -> FlowFuture {
    Box::pin(async move {
        let count = args.first().and_then(Value::as_u64).unwrap_or(0);
        let Some(Value::Remotable(other)) = args.get(1).cloned() else {
            return Err(Error::type_error("run's flow takes [count, other, done]"));
        };
        let done = args.get(2).and_then(Value::as_u64).unwrap_or(0);
        let end = count.min(done.saturating_add(PINGS_PER_JOURNAL));
        for i in done..end {
            let reply = flow.send(&other, "ping", vec![Value::from(i)]).await?;
            check_reply(i, &reply)?;
        }
        if end < count {
            let next = vec![
                Value::from(count),
                Value::Remotable(other),
                Value::from(end),
            ];
            return Ok(FlowEnd::ContinueAsNew(next));
        }
        Ok(FlowEnd::Done(Value::from(count)))
    })
}

/// Sends `count` pings at once (each in flight before any answer), then
/// awaits them all: a pipelined burst.
async fn burst(count: u64, other: Ref) -> Result<Value, Error> {
    let pending: Vec<_> = (0..count)
        .map(|i| send(&other, "ping", vec![Value::from(i)]))
        .collect();
    for (i, reply) in pending.into_iter().enumerate() {
        check_reply(i as u64, &reply.await?)?;
    }
    Ok(Value::from(count))
}

fn pings() -> u64 {
    vom::vatstore::get(PINGS_KEY).map_or(0, |n| n.parse().unwrap_or(0))
}

fn count_and_ping(args: &Args) -> Reply {
    vom::vatstore::set(PINGS_KEY, &(pings() + 1).to_string());
    Reply::ready(args.get(0).cloned())
}

impl Exo for PingPong {
    fn interface_name(&self) -> &str {
        "PingPong"
    }

    fn call(self: Rc<Self>, method: &str, args: Args) -> Reply {
        match method {
            "ping" => count_and_ping(&args),
            "pings" => Reply::ready(args.expect_count(0).map(|()| Value::from(pings()))),
            "run" | "runHeap" | "burst" => loop_call(method, &args),
            other => Reply::no_such_method(other),
        }
    }
}

/// `run`, `runHeap` or `burst`, whose arguments are `(count, other)`.
fn loop_call(method: &str, args: &Args) -> Reply {
    let (count, other) = match (args.expect_count(2), args.u64(0), args.reference(1)) {
        (Ok(()), Ok(count), Ok(other)) => (count, other),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Reply::Ready(Err(e)),
    };
    match method {
        "run" => {
            let args = vec![
                Value::from(count),
                Value::Remotable(other),
                Value::from(0u64),
            ];
            Reply::Ready(vom::flow::start("run", args).map(|promise| promise.to_value()))
        }
        "runHeap" => Reply::later(run_heap(count, other)),
        _ => Reply::later(burst(count, other)),
    }
}

fn start(_baggage: &Baggage) -> Root {
    vom::flow::define("run", run_flow);
    Root::from(PingPong)
}

vom::vat_main!(start: start);
