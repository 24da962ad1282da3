//! What `stats` reports: per queue sizes and totals, and the open connections.

use serde::{Deserialize, Serialize};

/// A snapshot of a server, from [`Client::stats`](crate::Client::stats) or
/// [`Server::stats`](crate::Server::stats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per queue named when the server started, in that order, then one per
    /// temporary queue, by name. On Redis: every declared queue, by name.
    pub queues: Vec<QueueStats>,
    /// Connections open now, authenticated or still in the handshake. On Redis: all its
    /// clients (`connected_clients`), distq's or not.
    pub connections: u64,
    /// Bytes of the memory budget the stored items use now (payloads and bookkeeping). On
    /// Redis: all it uses (`used_memory`).
    #[serde(default)]
    pub memory_used: u64,
    /// The server's memory budget in bytes (`ServerConfig::max_memory`). On Redis its
    /// `maxmemory`, 0 for none.
    #[serde(default)]
    pub memory_limit: u64,
    /// The journal's figures, when the server keeps one.
    #[serde(default)]
    pub journal: Option<JournalStats>,
}

/// A server journal's figures (see [`JournalConfig`](crate::JournalConfig)).
///
/// # Examples
///
/// ```
/// let dir = std::env::temp_dir().join(format!("distq-stats-doc-{}", std::process::id()));
/// let server = distq::Server::builder()
///     .authkey("abc")
///     .queue("tasks")
///     .journal(distq::JournalConfig::new(&dir))
///     .bind("127.0.0.1:0")?;
/// server.queue::<u32>("tasks")?.put(1)?;
/// let journal = server.stats().journal.expect("the server keeps a journal");
/// assert_eq!((journal.items, journal.policy.as_str()), (1, "always"));
/// assert!(journal.bytes_on_disk >= journal.live_bytes);
/// # drop(server);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JournalStats {
    /// The journal directory.
    pub dir: String,
    /// The fsync policy: `always`, `every N ms` or `never`.
    pub policy: String,
    /// Bytes the journal's files take on disk.
    pub bytes_on_disk: u64,
    /// Bytes the live items (and queue definitions) would take in a fresh snapshot.
    pub live_bytes: u64,
    /// Items the journal holds.
    pub items: u64,
    /// Milliseconds since the last `fdatasync`; `None` if there was none yet.
    pub last_fsync_ms: Option<u64>,
    /// Bytes written but not yet synced.
    pub unsynced_bytes: u64,
    /// `fdatasync`s of the journal's segments since the server started (puts per fsync
    /// shows how well concurrent puts share them).
    pub fsyncs: u64,
    /// Compactions done since the server started.
    pub compactions: u64,
    /// The longest time, in microseconds, a compaction held up the journal's writers.
    pub longest_pause_us: u64,
    /// Items recovered when the server started, and how long it took in milliseconds.
    pub recovered_items: u64,
    /// Of the items recovered, those that were leased out when the server stopped: they
    /// came back ready, and the lease was not counted as a delivery.
    pub recovered_in_flight: u64,
    /// See `recovered_items`.
    pub recovery_ms: u64,
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
