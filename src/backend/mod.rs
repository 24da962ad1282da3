//! Where a [`Queue`](crate::Queue) handle's operations go: the server's own storage
//! in-process ([`local`]), a server across the network ([`remote`]) or, with the `redis`
//! feature, Redis Streams ([`redis`](self::redis)). `Queue` and
//! `Delivery` speak to a `Backend` and never to a flavor directly, and no flavor knows of
//! them, so a new backend is a new file and one more arm here.

mod local;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod remote;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::blob::Blob;
use crate::connection::{Connection, Generation, Settle};
use crate::core::QueueCore;
use crate::error::{GetError, PutError, Result};
use crate::wire::message::{Delivered, PutFirst};

/// One queue, reached in-process or over a connection.
#[derive(Clone)]
pub(crate) enum Backend {
    Local(Arc<QueueCore>),
    Remote {
        conn: Arc<Connection>,
        name: String,
    },
    #[cfg(feature = "redis")]
    Redis {
        conn: Arc<self::redis::RedisConn>,
        name: String,
    },
}

/// Leases a handle took with its last get, to acknowledge with its next one.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) generation: Generation,
    pub(crate) ids: Vec<u64>,
}

/// What a get handed out, with the connection generation its lease ids belong to.
pub(crate) type Fetched = (Vec<Delivered>, Generation);

/// The next batch of `items` that fits one request of `budget` bytes and `max` items (at
/// least one item, however large: the caller refuses items that can never fit).
pub(crate) fn next_batch(
    items: &mut std::iter::Peekable<std::vec::IntoIter<Blob>>,
    budget: usize,
    max: usize,
) -> Vec<Blob> {
    use crate::wire::message::ITEM_OVERHEAD;
    let mut batch = Vec::new();
    let mut used = 0;
    while let Some(item) = items.next_if(|i| {
        batch.is_empty() || (batch.len() < max && used + i.len() + ITEM_OVERHEAD <= budget)
    }) {
        used += item.len() + ITEM_OVERHEAD;
        batch.push(item);
    }
    batch
}

/// The error a reply that does not answer its request stands for (no items involved).
pub(crate) fn reply_error(reply: crate::wire::message::Reply, queue: &str) -> crate::error::Error {
    remote::reply_error(reply, queue, &[], 0)
}

impl Backend {
    /// The queue's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Backend::Local(core) => core.name(),
            Backend::Remote { name, .. } => name,
            #[cfg(feature = "redis")]
            Backend::Redis { name, .. } => name,
        }
    }

    /// Which route (in-process queue or client connection) this is, as a number equal for
    /// handles that share it.
    pub(crate) fn route_id(&self) -> usize {
        match self {
            Backend::Local(core) => Arc::as_ptr(core) as usize,
            Backend::Remote { conn, .. } => Arc::as_ptr(conn) as usize,
            #[cfg(feature = "redis")]
            Backend::Redis { conn, .. } => Arc::as_ptr(conn) as usize,
        }
    }

    /// Whether this is the server's own process (no network between).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Backend::Local(_))
    }

    /// Whether `self` and `other` go over the same connection (or are both in-process), so
    /// one request can carry work for both.
    pub(crate) fn same_route(&self, other: &Backend) -> bool {
        match (self, other) {
            (Backend::Local(_), Backend::Local(_)) => true,
            (Backend::Remote { conn: a, .. }, Backend::Remote { conn: b, .. }) => Arc::ptr_eq(a, b),
            #[cfg(feature = "redis")]
            (Backend::Redis { conn: a, .. }, Backend::Redis { conn: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Bytes of items one request frame may carry; `None` in-process, where there are no
    /// frames.
    pub(crate) fn frame_budget(&self) -> Option<usize> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote { conn, .. } => Some(
                conn.max_frame_size()
                    .saturating_sub(crate::wire::message::FRAME_OVERHEAD),
            ),
            #[cfg(feature = "redis")]
            Backend::Redis { conn, .. } => Some(conn.budget()),
        }
    }

    /// In-process only: takes up to `max` items for good (no lease: nothing can die between
    /// taking and acknowledging) and decodes them; if one does not decode, all go back.
    /// `None` for a remote queue, whose gets are leased.
    pub(crate) fn take_decoded<T: DeserializeOwned>(
        &self,
        max: usize,
        timeout: Option<Duration>,
    ) -> Option<Result<Vec<T>, GetError>> {
        match self {
            Backend::Local(core) => Some(local::take_decoded(core, max, timeout)),
            _ => None,
        }
    }

    /// Stores encoded items in order, waiting up to `timeout` (`None`: for ever) for room.
    pub(crate) fn put(&self, items: Vec<Blob>, timeout: Option<Duration>) -> Result<(), PutError> {
        match self {
            Backend::Local(core) => local::put(core, items, timeout, None),
            Backend::Remote { conn, name } => {
                remote::put(conn, name, items, timeout, None, None).map(drop)
            }
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => self::redis::put(conn, name, items, timeout, None),
        }
    }

    /// Stores items in the queue's delayed lane: they can be taken only after `delay`.
    pub(crate) fn put_delayed(
        &self,
        items: Vec<Blob>,
        timeout: Option<Duration>,
        delay: Duration,
    ) -> Result<(), PutError> {
        match self {
            Backend::Local(core) => local::put(core, items, timeout, Some(delay)),
            Backend::Remote { conn, name } => {
                remote::put(conn, name, items, timeout, None, Some(delay)).map(drop)
            }
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => {
                self::redis::put(conn, name, items, timeout, Some(delay))
            }
        }
    }

    /// Gives leases back to come back after `delay` (now if `None`), counted as failed
    /// deliveries (`count`) or not; returns the ids no longer held.
    pub(crate) fn nack_with(
        &self,
        generation: Generation,
        ids: &[u64],
        delay: Option<Duration>,
        count: bool,
    ) -> Result<Vec<u64>> {
        match self {
            Backend::Local(core) => {
                let due = delay.map(crate::core::due_after);
                Ok(core.nack_due(crate::core::LOCAL, ids, due, count))
            }
            Backend::Remote { conn, name } => {
                remote::nack_with(conn, name, generation, ids, delay, count)
            }
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => self::redis::nack_with(conn, name, ids, delay, count),
        }
    }

    /// Stores the results of tasks taken on connection `generation`, like [`put`]
    /// (Backend::put), unless the connection has since reached another server instance,
    /// which never had those tasks: then nothing is sent and the answer is `Ok(false)`.
    pub(crate) fn put_answering(
        &self,
        items: Vec<Blob>,
        timeout: Option<Duration>,
        generation: Generation,
    ) -> Result<bool, PutError> {
        match self {
            Backend::Local(core) => local::put(core, items, timeout, None).map(|()| true),
            Backend::Remote { conn, name } => {
                remote::put(conn, name, items, timeout, Some(generation), None)
            }
            // Leases outlive reconnections (and a restarted Redis keeps what it persisted):
            // results always go.
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => {
                self::redis::put(conn, name, items, timeout, None).map(|()| true)
            }
        }
    }

    /// Takes up to `max` items under leases after acknowledging `pending`; a remote get
    /// first stores `put` (the fused worker cycle). On failure `pending` is handed back
    /// when its leases may still be held.
    pub(crate) fn fetch(
        &self,
        max: usize,
        timeout: Option<Duration>,
        put: Option<PutFirst>,
        pending: Pending,
    ) -> Result<Fetched, (GetError, Option<Pending>)> {
        match self {
            Backend::Local(core) => local::fetch(core, max, timeout, pending),
            Backend::Remote { conn, name } => remote::fetch(conn, name, max, timeout, put, pending),
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => {
                self::redis::fetch(conn, name, max, timeout, put, pending)
            }
        }
    }

    /// The number of waiting items and the bound.
    pub(crate) fn len_and_capacity(&self) -> Result<(usize, Option<usize>)> {
        match self {
            Backend::Local(core) => Ok((core.len(), core.capacity())),
            Backend::Remote { conn, name } => remote::len_and_capacity(conn, name),
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => self::redis::len_and_capacity(conn, name),
        }
    }

    /// Acknowledges or gives back leases now; returns the ids no longer held.
    pub(crate) fn settle(
        &self,
        settle: Settle,
        generation: Generation,
        ids: &[u64],
    ) -> Result<Vec<u64>> {
        match self {
            Backend::Local(core) => Ok(local::settle(core, settle, ids)),
            Backend::Remote { conn, name } => remote::settle(conn, name, settle, generation, ids),
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => {
                self::redis::settle(conn, name, settle, generation, ids)
            }
        }
    }

    /// Extends leases by a full lease timeout; returns the ids no longer held.
    pub(crate) fn touch(&self, generation: Generation, ids: &[u64]) -> Result<Vec<u64>> {
        match self {
            Backend::Local(core) => Ok(core.touch(crate::core::LOCAL, ids)),
            Backend::Remote { conn, name } => remote::touch(conn, name, generation, ids),
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => self::redis::touch(conn, name, ids),
        }
    }

    /// Settles leases soon, without waiting: for drops, which cannot fail or block.
    pub(crate) fn defer(&self, settle: Settle, generation: Generation, ids: &[u64]) {
        match self {
            Backend::Local(core) => {
                local::settle(core, settle, ids);
            }
            Backend::Remote { conn, name } => conn.defer(name, settle, generation, ids),
            #[cfg(feature = "redis")]
            Backend::Redis { conn, name } => conn.defer(name, settle, generation, ids),
        }
    }
}
