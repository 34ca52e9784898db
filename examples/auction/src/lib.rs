//! A house of auctions: durable objects that close themselves on time.
//!
//! - The root is the house. `open(item, durationMs, timer)` opens an
//!   auction and answers its admin facet; `list()` names the open auctions
//!   in the order they opened, each with its best bid.
//! - An auction has two facets over one state. The bidder facet
//!   (`admin.bidderFacet()`) has `bid(name, amount)`, and cannot close the
//!   auction. Both facets have `best()` (one method on several facets:
//!   `#[facet(admin, bidder)]`). The admin facet has `status()`, `close()`, and
//!   `deadline(settlement, extra)`: the durable watcher of the timer's
//!   promise, so the auction closes itself at its deadline, whatever
//!   restarts come between.
//! - `outbid(auction, name, raise)` bids as `name` through a durable flow:
//!   it reads the best bid, then bids `raise` more. If the vat restarts
//!   between the two, the flow carries on from its journal and bids once.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use vom::flow::{Flow, FlowEnd, FlowFuture};
use vom::{Baggage, Durable, Error, FromPassable, MapStore, Record, Ref, Value};

#[derive(Serialize, Deserialize, vom::Schema)]
struct Auction {
    item: String,
    best: u64,
    leader: String,
    closed: bool,
}

/// The best bid, as `best()` answers it.
#[derive(Serialize, Deserialize)]
struct Best {
    amount: u64,
    name: String,
}

impl Auction {
    fn best_bid(&self) -> Record<Best> {
        Record(Best {
            amount: self.best,
            name: self.leader.clone(),
        })
    }
}

#[vom::exo(facets(admin, bidder))]
impl Auction {
    #[facet(bidder)]
    pub fn bid(&mut self, name: String, amount: u64) -> Result<u64, Error> {
        if self.closed {
            return Err(Error::new(format!(
                "the auction of {} is closed",
                self.item
            )));
        }
        if amount <= self.best {
            return Err(Error::new(format!(
                "a bid must beat {} (by {})",
                self.best, self.leader
            )));
        }
        self.best = amount;
        self.leader = name;
        Ok(amount)
    }

    #[facet(admin, bidder)]
    pub fn best(&self) -> Record<Best> {
        self.best_bid()
    }

    #[facet(admin)]
    pub fn bidder_facet(&self, this: &Durable<Auction>) -> Ref {
        this.facet("bidder")
    }

    #[facet(admin)]
    pub fn status(&self) -> String {
        match (self.closed, self.best) {
            (false, _) => format!(
                "{}: open, best {} by {:?}",
                self.item, self.best, self.leader
            ),
            (true, 0) => format!("{}: closed, no bids", self.item),
            (true, best) => format!("{}: closed, sold to {} for {best}", self.item, self.leader),
        }
    }

    #[facet(admin)]
    pub fn close(&mut self) -> String {
        self.closed = true;
        self.status()
    }

    /// The watcher of the timer's promise.
    #[facet(admin)]
    pub fn deadline(&mut self, _settlement: Value, _extra: Value) -> String {
        self.close()
    }
}

#[derive(Serialize, Deserialize, vom::Schema)]
struct House {
    next: u64,
    open: MapStore<u64, Durable<Auction>>,
}

#[vom::exo]
impl House {
    pub fn open(&mut self, item: String, duration_ms: u64, timer: Ref) -> Result<Ref, Error> {
        let auction = Durable::new(Auction {
            item,
            best: 0,
            leader: String::new(),
            closed: false,
        });
        self.next += 1;
        self.open.init(&self.next, &auction)?;
        let deadline = vom::send(&timer, "after", vec![Value::from(duration_ms)]);
        let admin = auction.facet("admin");
        vom::watch(&deadline, &admin, "deadline", Value::Null)?;
        Ok(admin)
    }

    /// The open auctions, in the order they opened (closed ones leave the list).
    pub fn list(&mut self) -> Vec<Value> {
        let mut open = Vec::new();
        let mut closed = Vec::new();
        for (seq, auction) in self.open.entries() {
            auction.with(|a| {
                if a.closed {
                    closed.push(seq);
                } else {
                    open.push(Value::record([
                        ("item", Value::string(a.item.clone())),
                        ("best", vom::ToPassable::to_passable(&a.best_bid())),
                    ]));
                }
            });
        }
        for seq in closed {
            self.open.delete(&seq);
        }
        open
    }

    pub fn outbid(&self, auction: Ref, name: String, raise: u64) -> Result<Value, Error> {
        let args = vec![
            Value::Remotable(auction),
            Value::from(name),
            Value::from(raise),
        ];
        vom::flow::start("outbid", args).map(|promise| promise.to_value())
    }
}

/// The flow behind `outbid`: `[auction, name, raise]`.
fn outbid_flow(flow: Rc<Flow>, args: Vec<Value>) -> FlowFuture {
    Box::pin(async move {
        let (Some(Value::Remotable(auction)), Some(name), Some(raise)) = (
            args.first(),
            args.get(1),
            args.get(2).and_then(Value::as_u64),
        ) else {
            return Err(Error::type_error("outbid takes (auction, name, raise)"));
        };
        let best = flow.send(auction, "best", vec![]).await?;
        let Some(Record(best)) = Record::<Best>::from_passable(&best) else {
            return Err(Error::new("best() answered no bid"));
        };
        let bid = vec![name.clone(), Value::from(best.amount + raise)];
        Ok(FlowEnd::Done(flow.send(auction, "bid", bid).await?))
    })
}

fn start(baggage: &Baggage) -> Durable<House> {
    vom::define::<Auction>();
    vom::define::<House>();
    vom::flow::define("outbid", outbid_flow);
    baggage.get_or_init("house", || {
        Durable::new(House {
            next: 0,
            open: MapStore::new(),
        })
    })
}

vom::vat_main!(start: start);
