//! A kernel promise's record: one key (`kp<N>.promise`) for what a crank
//! reads and changes about a promise (its state, reference count, waiting
//! messages' count, pin, decider), so that allocating, passing, pinning and
//! settling a promise each write one key, and a read of any of them finds
//! the record in the store's memory once the promise was made or read.
//! Its settlement data (`kp<N>.data`), subscribers (`kp<N>.sub.<id>`) and
//! waiting messages (`kp<N>.queue.<n>`) stay keys of their own: they can
//! be large or many.
//!
//! The text is `<state> <refs> <queued> <pinned> <decider>`, e.g.
//! `unresolved 2 0 0 v3` (pinned is `0` or `1`; no decider is `-`).

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
        }
    }

    /// The record `text` holds, if it is one.
    pub(crate) fn parse(text: &str) -> Option<PromiseRecord> {
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
        })
    }

    /// The record as text. Built by hand: a crank writes several records,
    /// and `format!` cost several times more.
    pub(crate) fn to_text(&self) -> String {
        let decider = self.decider.as_deref().unwrap_or("-");
        let (mut refs, mut queued) = (itoa::Buffer::new(), itoa::Buffer::new());
        let pinned = if self.pinned { "1" } else { "0" };
        [
            self.settlement.as_str(),
            " ",
            refs.format(self.refs),
            " ",
            queued.format(self.queued),
            " ",
            pinned,
            " ",
            decider,
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let mut record = PromiseRecord::new(EndpointId::parse("v3"));
        assert_eq!(record.to_text(), "unresolved 0 0 0 v3");
        record.refs = 12;
        record.queued = 2;
        record.pinned = true;
        assert_eq!(
            PromiseRecord::parse(&record.to_text()),
            Some(record.clone())
        );
        record.settlement = Settlement::Rejected;
        record.decider = None;
        assert_eq!(record.to_text(), "rejected 12 2 1 -");
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
            "unresolved 1 0 0 - extra",
            "unresolved  1 0 0 -",
        ] {
            assert_eq!(PromiseRecord::parse(text), None, "{text:?}");
        }
    }
}
