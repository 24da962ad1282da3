//! What `stats` reports: per queue sizes and totals, and the open connections.

use serde::{Deserialize, Serialize};

/// A snapshot of a server, from [`Client::stats`](crate::Client::stats) or
/// [`Server::stats`](crate::Server::stats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per queue named when the server started, in that order, then one per
    /// temporary queue, by name.
    pub queues: Vec<QueueStats>,
    /// Connections open now, authenticated or still in the handshake.
    pub connections: u64,
    /// Bytes of the memory budget the stored items use now (payloads and bookkeeping).
    #[serde(default)]
    pub memory_used: u64,
    /// The server's memory budget in bytes (`ServerConfig::max_memory`).
    #[serde(default)]
    pub memory_limit: u64,
}

/// One queue's figures. Totals count since the server started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Items waiting to be taken.
    pub len: u64,
    /// Items taken and not yet acknowledged (in flight).
    pub leased: u64,
    /// Items in the delayed lane (a delayed put or nack), not yet ready to be taken.
    #[serde(default)]
    pub delayed: u64,
    /// The bound of a bounded queue.
    pub capacity: Option<u64>,
    /// Items waiting in the dead-letter queue `NAME.dead`.
    pub dead: u64,
    /// Items put, in total.
    pub put: u64,
    /// Items acknowledged (or taken for good in-process), in total.
    pub acked: u64,
    /// Times an item came back to the queue for another delivery (expired lease, nack, or a
    /// lease its closed connection returned), in total. This counts every return, also those
    /// that do not count towards the poison limit (see
    /// [`Delivery::redeliveries`](crate::Delivery::redeliveries)).
    pub redelivered: u64,
    /// Items moved to the dead-letter queue, in total.
    pub dead_lettered: u64,
    /// Whether this is a temporary queue a client declared (see
    /// [`Client::temporary_queue`](crate::Client::temporary_queue)), listed after the queues
    /// the server was started with. A temporary queue has no dead-letter queue.
    #[serde(default)]
    pub temporary: bool,
}
