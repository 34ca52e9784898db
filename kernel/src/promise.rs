//! A kernel promise's record: one key (`kp<N>.promise`) for what a crank
//! reads and changes about a promise (its state, reference count, waiting
//! messages' count, pin, decider, subscribers), so that allocating,
//! passing, subscribing to, pinning and settling a promise each write one
//! key, and a read of any of them finds the record in the store's memory
//! once the promise was made or read. Its settlement data (`kp<N>.data`)
//! and waiting messages (`kp<N>.queue.<n>`) stay keys of their own: they
//! can be large or many. Subscribers are at most one per endpoint.
//!
//! The text is `<state> <refs> <queued> <pinned> <decider> <subscribers>`,
//! e.g. `unresolved 2 0 0 v3 r2,v1` (pinned is `0` or `1`; no decider, or
//! no subscriber, is `-`). Schema 5's records lack the last field
//! ([`PromiseRecord::parse_schema_5`]).

use crate::ids::EndpointId;

/// Where a promise is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    Unresolved,
    Fulfilled,
    Rejected,
}

impl Settlement {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Settlement::Unresolved => "unresolved",
            Settlement::Fulfilled => "fulfilled",
            Settlement::Rejected => "rejected",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Settlement> {
        match text {
            "unresolved" => Some(Settlement::Unresolved),
            "fulfilled" => Some(Settlement::Fulfilled),
            "rejected" => Some(Settlement::Rejected),
            _ => None,
        }
    }
}

/// A promise's record, as `kp<N>.promise` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PromiseRecord {
    pub(crate) settlement: Settlement,
    /// How many places refer to it (c-lists, run-queue items, promise
    /// queues, settlement data, pet names, a host's pin).
    pub(crate) refs: u64,
    /// How many messages wait on it (`kp<N>.queue.<n>`).
    pub(crate) queued: u64,
    /// Whether a host (the CLI) waits for its settlement.
    pub(crate) pinned: bool,
    /// The endpoint that may resolve it (none: the kernel).
    pub(crate) decider: Option<EndpointId>,
    /// The endpoints to notify when it settles, each once, in id order
    /// (as text: the order they are notified in; none once it settled).
    pub(crate) subscribers: Vec<EndpointId>,
}

impl PromiseRecord {
    /// A new unresolved promise decided by `decider`.
    pub(crate) fn new(decider: Option<EndpointId>) -> PromiseRecord {
        PromiseRecord {
            settlement: Settlement::Unresolved,
            refs: 0,
            queued: 0,
            pinned: false,
            decider,
            subscribers: Vec::new(),
        }
    }

    /// The record `text` holds, if it is one.
    pub(crate) fn parse(text: &str) -> Option<PromiseRecord> {
        let (fields, subscribers) = text.rsplit_once(' ')?;
        let mut record = PromiseRecord::parse_schema_5(fields)?;
        if subscribers != "-" {
            for id in subscribers.split(',') {
                let id = EndpointId::parse(id)?;
                let ascending = record
                    .subscribers
                    .last()
                    .is_none_or(|last| last.as_str() < id.as_str());
                if !ascending {
                    return None;
                }
                record.subscribers.push(id);
            }
        }
        Some(record)
    }

    /// A record as schema 5 wrote it, without subscribers (they were keys
    /// of their own, `kp<N>.sub.<id>`).
    pub(crate) fn parse_schema_5(text: &str) -> Option<PromiseRecord> {
        let mut fields = text.split(' ');
        let settlement = Settlement::parse(fields.next()?)?;
        let refs = fields.next()?.parse().ok()?;
        let queued = fields.next()?.parse().ok()?;
        let pinned = match fields.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let decider = match fields.next()? {
            "-" => None,
            id => Some(EndpointId::parse(id)?),
        };
        if fields.next().is_some() {
            return None;
        }
        Some(PromiseRecord {
            settlement,
            refs,
            queued,
            pinned,
            decider,
            subscribers: Vec::new(),
        })
    }

    /// The record as text. Built by hand: a crank writes several records,
    /// and `format!` cost several times more.
    pub(crate) fn to_text(&self) -> String {
        let decider = self.decider.as_deref().unwrap_or("-");
        let (mut refs, mut queued) = (itoa::Buffer::new(), itoa::Buffer::new());
        let pinned = if self.pinned { "1" } else { "0" };
        let mut text = String::with_capacity(32);
        for part in [
            self.settlement.as_str(),
            " ",
            refs.format(self.refs),
            " ",
            queued.format(self.queued),
            " ",
            pinned,
            " ",
            decider,
            " ",
        ] {
            text.push_str(part);
        }
        if self.subscribers.is_empty() {
            text.push('-');
        }
        for (n, id) in self.subscribers.iter().enumerate() {
            if n > 0 {
                text.push(',');
            }
            text.push_str(id.as_str());
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let mut record = PromiseRecord::new(EndpointId::parse("v3"));
        assert_eq!(record.to_text(), "unresolved 0 0 0 v3 -");
        record.subscribers = vec![EndpointId::from_table("r2"), EndpointId::from_table("v1")];
        assert_eq!(record.to_text(), "unresolved 0 0 0 v3 r2,v1");
        assert_eq!(
            PromiseRecord::parse(&record.to_text()),
            Some(record.clone())
        );
        record.subscribers.clear();
        record.refs = 12;
        record.queued = 2;
        record.pinned = true;
        assert_eq!(
            PromiseRecord::parse(&record.to_text()),
            Some(record.clone())
        );
        record.settlement = Settlement::Rejected;
        record.decider = None;
        assert_eq!(record.to_text(), "rejected 12 2 1 - -");
        assert_eq!(PromiseRecord::parse(&record.to_text()), Some(record));
    }

    #[test]
    fn damaged_records_are_not_read() {
        for text in [
            "",
            "unresolved",
            "unresolved 1 0 0",
            "pending 1 0 0 -",
            "unresolved -1 0 0 -",
            "unresolved 1 0 2 -",
            "unresolved 1 0 0 vat3",
            "unresolved 1 0 0 - - extra",
            "unresolved  1 0 0 - -",
            "unresolved 1 0 0 -",
            "unresolved 1 0 0 - v1,",
            "unresolved 1 0 0 - v1,v1",
            "unresolved 1 0 0 - v2,v1",
            "unresolved 1 0 0 - vat1",
        ] {
            assert_eq!(PromiseRecord::parse(text), None, "{text:?}");
        }
    }
}
