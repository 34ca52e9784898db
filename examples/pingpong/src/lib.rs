//! Ping-pong: `run(n, other)` sends `n` sequential `ping`s to `other`, awaiting
//! each reply before the next, and returns `n`. `ping(i)` answers `i`.
//! `burst(n, other)` sends all `n` pings at once, then awaits them.
//!
//! Each ping costs two cranks (the send to `other`, then the notify back), so
//! this is the kernel's crank-rate benchmark as well as an example of `await`.

use std::rc::Rc;

use vom::{Args, Error, Exo, Reply, Value, send};

struct PingPong;

async fn run(count: u64, other: vom::Ref) -> Result<Value, Error> {
    for i in 0..count {
        let reply = send(&other, "ping", vec![Value::from(i)]).await?;
        if reply.as_u64() != Some(i) {
            return Err(Error::new(format!("ping {i} answered {reply:?}")));
        }
    }
    Ok(Value::from(count))
}

/// Sends `count` pings at once (each in flight before any answer), then
/// awaits them all: a pipelined burst.
async fn burst(count: u64, other: vom::Ref) -> Result<Value, Error> {
    let pending: Vec<_> = (0..count)
        .map(|i| send(&other, "ping", vec![Value::from(i)]))
        .collect();
    for (i, reply) in pending.into_iter().enumerate() {
        let reply = reply.await?;
        if reply.as_u64() != Some(i as u64) {
            return Err(Error::new(format!("ping {i} answered {reply:?}")));
        }
    }
    Ok(Value::from(count))
}

impl Exo for PingPong {
    fn interface_name(&self) -> &str {
        "PingPong"
    }

    fn call(self: Rc<Self>, method: &str, args: Args) -> Reply {
        match method {
            "ping" => Reply::ready(args.get(0).cloned()),
            "run" | "burst" => match (args.expect_count(2), args.u64(0), args.reference(1)) {
                (Ok(()), Ok(count), Ok(other)) if method == "run" => {
                    Reply::later(run(count, other))
                }
                (Ok(()), Ok(count), Ok(other)) => Reply::later(burst(count, other)),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Reply::Ready(Err(e)),
            },
            other => Reply::no_such_method(other),
        }
    }
}

vom::vat_main!(PingPong);
