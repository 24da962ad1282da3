//! The network flavor: each operation is one request on the client's connection (a large
//! put is split over frames), and every item taken is leased to that connection.

use std::time::Duration;

use super::{Fetched, Pending};
use crate::blob::Blob;
use crate::connection::{Connection, Generation, Settle};
use crate::error::{Error, GetError, PutError, Result};
use crate::time::{deadline, millis};
use crate::wire::message::{
    ErrorKind, PutFirst, Reply, Request, FRAME_OVERHEAD, ITEM_OVERHEAD, MAX_BATCH_ITEMS,
};

pub(super) fn put(
    conn: &Connection,
    name: &str,
    items: Vec<Blob>,
    timeout: Option<Duration>,
) -> Result<(), PutError> {
    let budget = conn.config().max_frame_size.saturating_sub(FRAME_OVERHEAD);
    let deadline = deadline(timeout);
    let mut accepted = 0;
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let mut batch = Vec::new();
        let mut used = 0;
        while let Some(item) = items.next_if(|i| {
            batch.is_empty()
                || (batch.len() < MAX_BATCH_ITEMS && used + i.len() + ITEM_OVERHEAD <= budget)
        }) {
            used += item.len() + ITEM_OVERHEAD;
            batch.push(item);
        }
        let sent = batch.len();
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let (reply, _) = conn.call(left, &mut |_, left| Request::Put {
            queue: name.to_owned(),
            items: batch.clone(),
            timeout_ms: left.map(millis),
        })?;
        match reply {
            Reply::Done => accepted += sent,
            Reply::Full { accepted: n } => {
                // Never more than were sent, whatever the server says.
                let n = usize::try_from(n).map_or(sent, |n| n.min(sent));
                return Err(PutError::Full {
                    accepted: accepted + n,
                });
            }
            Reply::OverBudget {
                accepted: n, limit, ..
            } => {
                let n = usize::try_from(n).map_or(sent, |n| n.min(sent));
                return Err(PutError::OverBudget {
                    accepted: accepted + n,
                    limit,
                });
            }
            other => return Err(reply_error(other, name).into()),
        }
    }
    Ok(())
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
    let called = conn.call(timeout, &mut |generation, left| Request::Get {
        queue: name.to_owned(),
        max,
        timeout_ms: left.map(millis),
        ack: if generation == pending.generation {
            pending.ids.clone()
        } else {
            Vec::new()
        },
        put: put.clone(),
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
            Err((reply_error(reply, name).into(), Some(pending)))
        }
        other => {
            conn.release(name, &pending.ids);
            Err((reply_error(other, name).into(), None))
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
        other => Err(reply_error(other, name)),
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
        other => Err(reply_error(other, name)),
    }
}

/// The error a reply stands for when it is not the expected one.
pub(crate) fn reply_error(reply: Reply, queue: &str) -> Error {
    match reply {
        Reply::Error { kind, message, .. } => match kind {
            ErrorKind::UnknownQueue => Error::UnknownQueue(queue.to_owned()),
            ErrorKind::Closed => Error::Closed,
            ErrorKind::TooLarge => Error::Server(message),
            ErrorKind::Protocol => Error::Protocol(format!("the server says: {message}")),
        },
        _ => Error::Protocol("the server's reply does not answer the request".into()),
    }
}
