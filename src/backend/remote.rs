//! The network flavor: each operation is one request on the client's connection (a large
//! put is split over frames), and every item taken is leased to that connection.

use std::time::{Duration, Instant};

use super::{Fetched, Pending};
use crate::blob::Blob;
use crate::connection::{Connection, Generation, Settle};
use crate::error::{Error, GetError, PutError, Result};
use crate::time::{deadline, millis};
use crate::wire::message::{
    ErrorKind, PutFirst, Reply, Request, FEATURE_DELAY, FEATURE_UNCOUNTED_NACK, FRAME_OVERHEAD,
    MAX_BATCH_ITEMS,
};

/// Refuses a batch holding an item the server would refuse, before any of it is sent, so a
/// too-large item never leaves part of a batch stored.
pub(super) fn check_sizes(conn: &Connection, items: &[Blob]) -> Result<()> {
    let max = conn.max_item();
    match items.iter().find(|i| i.len() > max) {
        Some(item) => Err(Error::TooLarge {
            len: item.len(),
            max,
        }),
        None => Ok(()),
    }
}

/// Stores `items`. With `answering` (the generation the tasks these items answer were taken
/// on), nothing is sent to a server instance other than the one that handed out those tasks:
/// `Ok(false)` says the items were dropped.
pub(super) fn put(
    conn: &Connection,
    name: &str,
    items: Vec<Blob>,
    timeout: Option<Duration>,
    answering: Option<Generation>,
    delay: Option<Duration>,
) -> Result<bool, PutError> {
    check_sizes(conn, &items)?;
    if delay.is_some() {
        require(conn, FEATURE_DELAY)?;
    }
    let budget = conn.max_frame_size().saturating_sub(FRAME_OVERHEAD);
    let deadline = deadline(timeout);
    let mut accepted = 0;
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let mut batch = super::next_batch(&mut items, budget, MAX_BATCH_ITEMS);
        // A reply of `full` or `over_budget` with time left means the server could not let
        // this request wait (too many bytes already wait there): offer the rest again.
        let mut backoff = RETRY_FIRST;
        loop {
            let sent = batch.len();
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let called = conn.call_checked(left, &mut |generation, left| match answering {
                Some(taken) if !conn.same_instance(taken) => Err(Error::Closed),
                _ => {
                    debug_assert!(conn.generation() == generation);
                    Ok(Request::Put {
                        queue: name.to_owned(),
                        items: batch.clone(),
                        timeout_ms: left.map(millis),
                        delay_ms: delay.map(millis),
                    })
                }
            });
            let reply = match called {
                Ok((reply, _)) => reply,
                // The build refused: the tasks' server is gone, so are their results.
                Err(Error::Closed) if answering.is_some_and(|g| !conn.same_instance(g)) => {
                    log::debug!(
                        "queue {name}: dropped results of tasks from an earlier server instance"
                    );
                    return Ok(false);
                }
                Err(e) if accepted > 0 => return Err(PutError::Partial { accepted, error: e }),
                Err(e) => return Err(e.into()),
            };
            let (n, limit) = match reply {
                Reply::Done => {
                    accepted += sent;
                    break;
                }
                Reply::Full { accepted: n } => (clamp(n, sent), None),
                Reply::OverBudget {
                    accepted: n, limit, ..
                } => (clamp(n, sent), Some(limit)),
                Reply::Error {
                    accepted: Some(n), ..
                } if accepted + clamp(n, sent) > 0 => {
                    let stored = accepted + clamp(n, sent);
                    return Err(PutError::Partial {
                        accepted: stored,
                        error: reply_error(reply, name, &batch, conn.max_item()),
                    });
                }
                other => {
                    let error = reply_error(other, name, &batch, conn.max_item());
                    return Err(match accepted {
                        0 => PutError::Failed(error),
                        _ => PutError::Partial { accepted, error },
                    });
                }
            };
            accepted += n;
            batch.drain(..n);
            // An item larger than the whole budget is refused at once and would be forever.
            let never_fits = limit.is_some_and(|limit| {
                batch
                    .first()
                    .is_some_and(|item| crate::core::memory_cost(item) > limit)
            });
            match retry_after(deadline, &mut backoff).filter(|_| !never_fits) {
                Some(wait) => std::thread::sleep(wait),
                None => {
                    return Err(match limit {
                        None => PutError::Full { accepted },
                        Some(limit) => PutError::OverBudget { accepted, limit },
                    })
                }
            }
        }
    }
    Ok(true)
}

/// The first wait before a put the server answered early is offered again, doubling up to
/// [`RETRY_LAST`].
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_LAST: Duration = Duration::from_millis(500);

/// How long to wait before offering a put again, or `None` once its deadline has passed.
fn retry_after(deadline: Option<Instant>, backoff: &mut Duration) -> Option<Duration> {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(RETRY_LAST);
    match deadline {
        None => Some(wait),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| wait.min(left))
        }
    }
}

/// A count the server reports, never more than were sent whatever it says.
fn clamp(n: u64, sent: usize) -> usize {
    usize::try_from(n).map_or(sent, |n| n.min(sent))
}

pub(super) fn fetch(
    conn: &Connection,
    name: &str,
    max: usize,
    timeout: Option<Duration>,
    put: Option<PutFirst>,
    pending: Pending,
) -> Result<Fetched, (GetError, Option<Pending>)> {
    let max = u32::try_from(max).unwrap_or(u32::MAX);
    let fused = put.is_some();
    if let Some(Err(e)) = put.as_ref().map(|p| check_sizes(conn, &p.items)) {
        // Nothing was sent: the handle's leases are still held.
        return Err((e.into(), Some(pending)));
    }
    let mut dropped = false;
    let called = conn.call(timeout, &mut |generation, left| Request::Get {
        queue: name.to_owned(),
        max,
        timeout_ms: left.map(millis),
        // Leases die with their connection: acknowledge them only on it.
        ack: if generation == pending.generation {
            pending.ids.clone()
        } else {
            Vec::new()
        },
        // The results answer the pending tasks: a restarted server never had those, so
        // storing them there would be phantom results.
        put: if pending.ids.is_empty() || conn.same_instance(pending.generation) {
            put.clone()
        } else {
            if !dropped {
                log::debug!(
                    "queue {name}: dropped results of tasks from an earlier server instance"
                );
                dropped = true;
            }
            None
        },
    });
    let (reply, generation) = match called {
        Ok(answer) => answer,
        Err(e) => return Err((e.into(), Some(pending))),
    };
    match reply {
        Reply::Items { items, lease_ms } if !items.is_empty() => {
            conn.release(name, &pending.ids);
            let ids: Vec<u64> = items.iter().map(|d| d.0).collect();
            conn.hold(name, generation, &ids, Duration::from_millis(lease_ms));
            Ok((items, generation))
        }
        Reply::Empty => {
            conn.release(name, &pending.ids);
            Err((GetError::Empty, None))
        }
        // The put of a fused get failed, so the server acknowledged nothing: the leases
        // are still held, to be given back or acknowledged later.
        Reply::Full { accepted } => Err((
            GetError::Failed(Error::ResultsFull {
                queue: put.map(|p| p.queue).unwrap_or_default(),
                accepted: usize::try_from(accepted).unwrap_or(usize::MAX),
            }),
            Some(pending),
        )),
        Reply::OverBudget {
            accepted, limit, ..
        } => Err((
            GetError::Failed(Error::OverBudget {
                queue: put.map(|p| p.queue).unwrap_or_default(),
                accepted: usize::try_from(accepted).unwrap_or(usize::MAX),
                limit,
            }),
            Some(pending),
        )),
        Reply::Error { kind, .. } if fused && kind != ErrorKind::Closed => {
            let items = put.map(|p| p.items).unwrap_or_default();
            Err((
                reply_error(reply, name, &items, conn.max_item()).into(),
                Some(pending),
            ))
        }
        other => {
            conn.release(name, &pending.ids);
            Err((reply_error(other, name, &[], 0).into(), None))
        }
    }
}

pub(super) fn len_and_capacity(conn: &Connection, name: &str) -> Result<(usize, Option<usize>)> {
    let (reply, _) = conn.call(Some(Duration::ZERO), &mut |_, _| Request::Len {
        queue: name.to_owned(),
    })?;
    match reply {
        Reply::Len { len, capacity } => Ok((
            usize::try_from(len).unwrap_or(usize::MAX),
            capacity.map(|c| usize::try_from(c).unwrap_or(usize::MAX)),
        )),
        other => Err(reply_error(other, name, &[], 0)),
    }
}

pub(super) fn settle(
    conn: &Connection,
    name: &str,
    settle: Settle,
    generation: Generation,
    ids: &[u64],
) -> Result<Vec<u64>> {
    // Every chunk is sent even if one fails, so none is left neither acked nor nacked.
    let mut refused = Vec::new();
    let mut failure = None;
    for chunk in ids.chunks(MAX_BATCH_ITEMS) {
        let result = leases(conn, name, generation, &mut |_, _| match settle {
            Settle::Ack => Request::Ack {
                queue: name.to_owned(),
                leases: chunk.to_vec(),
            },
            Settle::Nack => Request::Nack {
                queue: name.to_owned(),
                leases: chunk.to_vec(),
                delay_ms: None,
                count: true,
            },
        });
        match result {
            Ok(Some(r)) => refused.extend(r),
            Ok(None) => refused.extend_from_slice(chunk),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    conn.release(name, ids);
    match failure {
        Some(e) => Err(e),
        None => Ok(refused),
    }
}

pub(super) fn touch(
    conn: &Connection,
    name: &str,
    generation: Generation,
    ids: &[u64],
) -> Result<Vec<u64>> {
    let mut refused = Vec::new();
    for chunk in ids.chunks(MAX_BATCH_ITEMS) {
        let answer = leases(conn, name, generation, &mut |_, _| Request::Touch {
            queue: name.to_owned(),
            leases: chunk.to_vec(),
        })?;
        refused.extend(answer.unwrap_or_else(|| chunk.to_vec()));
    }
    conn.release(name, &refused);
    Ok(refused)
}

/// Sends an ack, nack or touch; `None` when the leases belong to an earlier connection,
/// which the server has forgotten (so all are refused).
fn leases(
    conn: &Connection,
    name: &str,
    generation: Generation,
    build: &mut dyn FnMut(Generation, Option<Duration>) -> Request,
) -> Result<Option<Vec<u64>>> {
    if generation != conn.generation() {
        return Ok(None);
    }
    let (reply, now) = conn.call(Some(Duration::ZERO), build)?;
    if now != generation {
        return Ok(None); // Reconnected on the way: the server forgot those leases.
    }
    match reply {
        Reply::Leases { refused } => Ok(Some(refused)),
        other => Err(reply_error(other, name, &[], 0)),
    }
}

/// Refuses a request the server would not understand (an older server ignores unknown
/// fields, so it would do the wrong thing silently).
pub(crate) fn require(conn: &Connection, feature: &'static str) -> Result<()> {
    match conn.supports(feature) {
        true => Ok(()),
        false => Err(Error::Unsupported { feature }),
    }
}

/// Gives leases back to come back after `delay` (now if `None`), counted as failed
/// deliveries or not; returns the ids no longer held.
pub(super) fn nack_with(
    conn: &Connection,
    name: &str,
    generation: Generation,
    ids: &[u64],
    delay: Option<Duration>,
    count: bool,
) -> Result<Vec<u64>> {
    if delay.is_some() {
        require(conn, FEATURE_DELAY)?;
    }
    if !count {
        require(conn, FEATURE_UNCOUNTED_NACK)?;
    }
    let mut refused = Vec::new();
    for chunk in ids.chunks(MAX_BATCH_ITEMS) {
        let result = leases(conn, name, generation, &mut |_, _| Request::Nack {
            queue: name.to_owned(),
            leases: chunk.to_vec(),
            delay_ms: delay.map(millis),
            count,
        });
        match result? {
            Some(r) => refused.extend(r),
            None => refused.extend_from_slice(chunk),
        }
    }
    conn.release(name, ids);
    Ok(refused)
}

/// The error a reply stands for when it is not the expected one; `items` are the put's (a
/// `too_large` reply's `accepted` says which one is too large) and `max_item` the limit the
/// server announced.
pub(crate) fn reply_error(reply: Reply, queue: &str, items: &[Blob], max_item: usize) -> Error {
    match reply {
        Reply::Error {
            kind,
            message,
            accepted,
        } => match kind {
            ErrorKind::UnknownQueue => Error::UnknownQueue(queue.to_owned()),
            ErrorKind::Closed => Error::Closed,
            // Sizes are checked against the server's announced limit before sending, so this
            // means the server's limit is not what it announced; say what it refused.
            ErrorKind::TooLarge => {
                let index = accepted.and_then(|n| usize::try_from(n).ok());
                let len = index.and_then(|i| items.get(i)).map_or(0, Blob::len);
                log::debug!("the server refused an item of {len} bytes: {message}");
                Error::TooLarge { len, max: max_item }
            }
            ErrorKind::Protocol => Error::Protocol(format!("the server says: {message}")),
            ErrorKind::InUse => Error::QueueInUse(queue.to_owned()),
            ErrorKind::NameConflict => Error::NameConflict(format!("{queue:?}: {message}")),
            ErrorKind::TemporaryLimit => Error::TemporaryLimit(message),
        },
        _ => Error::Protocol("the server's reply does not answer the request".into()),
    }
}
