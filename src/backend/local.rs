//! The in-process flavor: a handle from `Server::queue` works on the queue's storage
//! directly, with no lease to lose between taking and acknowledging.

use std::time::Duration;

use super::{Fetched, Pending};
use crate::blob::Blob;
use crate::connection::Settle;
use serde::de::DeserializeOwned;

use crate::core::{GetOutcome, PutOutcome, QueueCore, LOCAL};
use crate::error::{Error, GetError, PutError};
use crate::payload::decode_all;
use crate::time::deadline;
use crate::wire::message::Delivered;

pub(super) fn put(
    core: &QueueCore,
    items: Vec<Blob>,
    timeout: Option<Duration>,
    delay: Option<Duration>,
) -> Result<(), PutError> {
    // Checked up front, as over the network, so a too-large item stores nothing.
    let max = core.max_item();
    if let Some(item) = items.iter().find(|i| i.len() > max) {
        return Err(PutError::Failed(Error::TooLarge {
            len: item.len(),
            max,
        }));
    }
    // The items are the caller's own memory, not a peer's: no share of the budget needed.
    let due = delay.map(crate::core::due_after);
    let (outcome, pending) = core.put_staged(items, due, deadline(timeout), &|| true, 0);
    match crate::core::committed(outcome, pending) {
        PutOutcome::Done => Ok(()),
        PutOutcome::Full { accepted } => Err(PutError::Full { accepted }),
        PutOutcome::OverBudget { accepted } => Err(PutError::OverBudget {
            accepted,
            limit: core.memory().limit(),
        }),
        // Not after the check above; kept so the outcome is never silently dropped.
        PutOutcome::TooLarge { accepted } => Err(PutError::Partial {
            accepted,
            error: Error::TooLarge { len: max + 1, max },
        }),
        PutOutcome::Closed { .. } => Err(PutError::Failed(Error::Closed)),
    }
}

pub(super) fn take_decoded<T: DeserializeOwned>(
    core: &QueueCore,
    max: usize,
    timeout: Option<Duration>,
) -> Result<Vec<T>, GetError> {
    let items = match core.take(max, deadline(timeout)) {
        GetOutcome::Items(items) => items,
        GetOutcome::Empty => return Err(GetError::Empty),
        GetOutcome::Closed => return Err(GetError::Failed(Error::Closed)),
    };
    decode_all(items.iter().map(|i| &i.payload)).map_err(|e| {
        core.give_back(items);
        GetError::Failed(e)
    })
}

pub(super) fn fetch(
    core: &QueueCore,
    max: usize,
    timeout: Option<Duration>,
    pending: Pending,
) -> Result<Fetched, (GetError, Option<Pending>)> {
    core.ack(LOCAL, &pending.ids);
    match core.take_leased(LOCAL, max, deadline(timeout), usize::MAX, &|| true) {
        GetOutcome::Items(items) => Ok((
            items
                .into_iter()
                .map(|l| Delivered(l.lease, l.payload, l.redeliveries))
                .collect(),
            0,
        )),
        GetOutcome::Empty => Err((GetError::Empty, None)),
        GetOutcome::Closed => Err((GetError::Failed(Error::Closed), None)),
    }
}

pub(super) fn settle(core: &QueueCore, settle: Settle, ids: &[u64]) -> Vec<u64> {
    match settle {
        Settle::Ack => core.ack(LOCAL, ids),
        Settle::Nack => core.nack(LOCAL, ids),
    }
}
