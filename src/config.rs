//! Settings for servers and clients, each a plain struct with visible defaults.

use std::time::Duration;

/// The default largest frame body accepted or sent: 8 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 * 1024 * 1024;

/// The longest lease timeout a queue accepts: a year.
pub const MAX_LEASE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Settings of one queue, given to [`ServerBuilder::queue_with`](crate::ServerBuilder::queue_with).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// The most items waiting in the queue (leased items not counted); `None` is unbounded.
    pub capacity: Option<usize>,
    /// How long an item taken over the network stays leased to its taker before it goes
    /// back to the queue, unless acknowledged or extended (beanstalkd's TTR).
    pub lease_timeout: Duration,
    /// How many failed deliveries an item may have (see
    /// [`Delivery::redeliveries`](crate::Delivery::redeliveries)) before it is moved to the
    /// dead-letter queue `NAME.dead` as a poison item. Of the leases a broken connection
    /// returns, only its oldest on the queue counts.
    pub max_redeliveries: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: None,
            lease_timeout: Duration::from_secs(60),
            max_redeliveries: 5,
        }
    }
}

impl QueueConfig {
    /// Bounds the queue to `maxsize` waiting items (at least 1). Defaults to unbounded.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::QueueConfig::default().capacity(Some(100));
    /// assert_eq!(config.capacity, Some(100));
    /// ```
    pub fn capacity(mut self, maxsize: Option<usize>) -> Self {
        self.capacity = maxsize;
        self
    }

    /// Sets the lease time limit, from just over zero to [`MAX_LEASE_TIMEOUT`]. Defaults to
    /// 60 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// // Tasks that run for minutes: a lease long enough not to need touching.
    /// let config = distq::QueueConfig::default().lease_timeout(Duration::from_secs(600));
    /// assert_eq!(config.lease_timeout, Duration::from_secs(600));
    /// ```
    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.lease_timeout = timeout;
        self
    }

    /// Sets how many redeliveries make an item poison. Defaults to 5.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::QueueConfig::default().max_redeliveries(2);
    /// assert_eq!(config.max_redeliveries, 2);
    /// ```
    pub fn max_redeliveries(mut self, n: u32) -> Self {
        self.max_redeliveries = n;
        self
    }
}

/// Server settings. `ServerConfig::default()` is what [`Server::builder`](crate::Server::builder)
/// starts from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest frame body, in bytes, accepted from or sent to a client.
    pub max_frame_size: usize,
    /// How long a new connection has to complete the handshake before it is closed.
    pub handshake_timeout: Option<Duration>,
    /// How long a reply may take to write before the connection is considered dead.
    pub write_timeout: Option<Duration>,
    /// How long the rest of a frame may take to arrive once its first byte has, so a peer
    /// that stalls mid-frame cannot pin a thread.
    pub frame_timeout: Option<Duration>,
    /// The most connections served at once; more are refused with a message.
    pub max_connections: usize,
    /// The most connections still in the handshake at once. A newcomer past the cap evicts
    /// the oldest handshake that has not sent a byte yet, else the oldest unfinished one, so
    /// silent or stalling peers cannot crowd out real clients (who finish in a round trip or
    /// two).
    pub max_handshakes: usize,
    /// The most connections in the handshake at once from one IP address. A newcomer past
    /// the cap evicts that address's oldest silent (else oldest unfinished) handshake.
    pub max_handshakes_per_ip: usize,
    /// How long a new connection may stay silent before the first byte of its hello arrives
    /// (real clients send it at once); capped by `handshake_timeout`.
    pub hello_timeout: Option<Duration>,
    /// TCP keepalive on every connection, so a peer whose link is cut is noticed and its
    /// connection (and leases) let go.
    pub keepalive: Keepalive,
    /// The server-wide memory budget, in bytes, for stored items: each item counts its
    /// payload and its bookkeeping (queue slot, lease entry). A put that would exceed it
    /// waits for room like a put into a full queue, then fails.
    pub max_memory: u64,
    /// The most temporary queues (`Client::temporary_queue`) that exist at once. Past it, a
    /// `declare` removes the one whose creator has been gone the longest to make room (its
    /// items dropped), and fails only when every creator is still connected. One connection
    /// may create at most 64 of them.
    pub max_temporary_queues: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            handshake_timeout: Some(Duration::from_secs(10)),
            write_timeout: Some(Duration::from_secs(30)),
            frame_timeout: Some(Duration::from_secs(30)),
            max_connections: 2048,
            max_handshakes: 256,
            max_handshakes_per_ip: 64,
            hello_timeout: Some(Duration::from_secs(3)),
            keepalive: Keepalive::default(),
            max_memory: default_memory_limit(),
            max_temporary_queues: 1024,
        }
    }
}

impl ServerConfig {
    /// Sets the largest frame body in bytes (capped at `u32::MAX`). Defaults to 8 MiB.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::ServerConfig::default().max_frame_size(64 * 1024 * 1024);
    /// assert_eq!(config.max_frame_size, 64 * 1024 * 1024);
    /// ```
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.min(u32::MAX as usize);
        self
    }

    /// Sets the handshake deadline; `None` waits forever. Defaults to 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = distq::ServerConfig::default().handshake_timeout(Some(Duration::from_secs(5)));
    /// assert_eq!(config.handshake_timeout, Some(Duration::from_secs(5)));
    /// ```
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the write timeout for replies; `None` waits forever. Defaults to 30 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = distq::ServerConfig::default().write_timeout(Some(Duration::from_secs(5)));
    /// assert_eq!(config.write_timeout, Some(Duration::from_secs(5)));
    /// ```
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets how long the rest of a started frame may take; `None` waits forever.
    /// Defaults to 30 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = distq::ServerConfig::default().frame_timeout(Some(Duration::from_secs(5)));
    /// assert_eq!(config.frame_timeout, Some(Duration::from_secs(5)));
    /// ```
    pub fn frame_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// Sets the cap on connections served at once. Defaults to 2048.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::ServerConfig::default().max_connections(100);
    /// assert_eq!(config.max_connections, 100);
    /// ```
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the cap on connections in the handshake at once. Defaults to 256.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::ServerConfig::default().max_handshakes(32);
    /// assert_eq!(config.max_handshakes, 32);
    /// ```
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n;
        self
    }

    /// Sets the memory budget for stored items, in bytes: payloads plus their bookkeeping
    /// (64 bytes per queued item, 32 more for a payload over 46 bytes, 200 more while
    /// leased). Puts that would exceed it wait for room, then fail with
    /// [`PutError::OverBudget`](crate::PutError::OverBudget). Requests waiting for room (for
    /// the budget or in a full queue) may hold a quarter of it more in decoded items; past
    /// that a put is answered at once and the client offers it again. Defaults to half of physical
    /// memory (`MemTotal` in /proc/meminfo), or 1 GiB where that cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{Server, ServerConfig};
    ///
    /// let server = Server::builder()
    ///     .authkey("abc")
    ///     .queue("tasks")
    ///     .config(ServerConfig::default().max_memory(512 * 1024 * 1024))
    ///     .bind("127.0.0.1:0")?;
    /// assert_eq!(server.stats().memory_limit, 512 * 1024 * 1024);
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = bytes;
        self
    }

    /// Sets the cap on connections in the handshake at once from one IP address (at least
    /// 1). Defaults to 64.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::ServerConfig::default().max_handshakes_per_ip(16);
    /// assert_eq!(config.max_handshakes_per_ip, 16);
    /// ```
    pub fn max_handshakes_per_ip(mut self, n: usize) -> Self {
        self.max_handshakes_per_ip = n.max(1);
        self
    }

    /// Sets how long a new connection may stay silent before its hello starts; `None` leaves
    /// only `handshake_timeout`. Defaults to 3 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = distq::ServerConfig::default().hello_timeout(Some(Duration::from_secs(1)));
    /// assert_eq!(config.hello_timeout, Some(Duration::from_secs(1)));
    /// ```
    pub fn hello_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// Sets the TCP keepalive of every connection. Defaults to [`Keepalive::default`]: a
    /// dead peer is noticed within 45 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use distq::{Keepalive, ServerConfig};
    ///
    /// let quick = Keepalive::default().idle(Duration::from_secs(5)).interval(Duration::from_secs(1));
    /// let config = ServerConfig::default().keepalive(quick);
    /// assert_eq!(config.keepalive.timeout(), Duration::from_secs(8));
    /// ```
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Sets how many temporary queues may exist at once (0 refuses every `declare`).
    /// Defaults to 1024.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::ServerConfig::default().max_temporary_queues(16);
    /// assert_eq!(config.max_temporary_queues, 16);
    /// ```
    pub fn max_temporary_queues(mut self, n: usize) -> Self {
        self.max_temporary_queues = n;
        self
    }
}

/// TCP keepalive settings, to notice a peer whose link was cut (no FIN, no RST ever comes).
///
/// After `idle` without traffic the kernel sends a probe every `interval`; after `retries`
/// unanswered probes the connection fails. The same total, [`timeout`](Keepalive::timeout),
/// is also the connection's `TCP_USER_TIMEOUT` (Linux), which bounds how long sent data may
/// stay unacknowledged: keepalive alone never fires while a reply is being retransmitted.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let keepalive = distq::Keepalive::default();
/// assert_eq!(keepalive.timeout(), Duration::from_secs(45));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Quiet time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes after which the peer is dead.
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(5),
            retries: 3,
        }
    }
}

impl Keepalive {
    /// Sets the quiet time before the first probe (at least 1 s). Defaults to 30 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let keepalive = distq::Keepalive::default().idle(Duration::from_secs(10));
    /// assert_eq!(keepalive.timeout(), Duration::from_secs(25));
    /// ```
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_secs(1));
        self
    }

    /// Sets the time between probes (at least 1 s). Defaults to 5 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let keepalive = distq::Keepalive::default().interval(Duration::from_secs(10));
    /// assert_eq!(keepalive.timeout(), Duration::from_secs(60));
    /// ```
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_secs(1));
        self
    }

    /// Sets how many unanswered probes mean the peer is dead (at least 1). Defaults to 3.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let keepalive = distq::Keepalive::default().retries(1);
    /// assert_eq!(keepalive.timeout(), Duration::from_secs(35));
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n.max(1);
        self
    }

    /// How long a dead peer goes unnoticed at most: `idle + interval × retries`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(distq::Keepalive::default().timeout().as_secs(), 45);
    /// ```
    pub fn timeout(&self) -> Duration {
        self.idle
            .saturating_add(self.interval.saturating_mul(self.retries))
    }
}

/// How a client reconnects after its connection breaks; see [`ClientConfig::reconnect`].
///
/// Attempts wait `initial_backoff`, doubling up to `max_backoff`, each wait drawn at random
/// between half and all of it (jitter), until `give_up` has passed since the break.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconnect {
    /// The wait before the second attempt (the first is immediate).
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// How long after the break to keep trying before failing with
    /// [`Error::GaveUp`](crate::Error::GaveUp).
    pub give_up: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            give_up: Duration::from_secs(60),
        }
    }
}

impl Reconnect {
    /// Sets the first wait. Defaults to 100 ms.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let policy = distq::Reconnect::default().initial_backoff(Duration::from_millis(10));
    /// assert_eq!(policy.initial_backoff, Duration::from_millis(10));
    /// ```
    pub fn initial_backoff(mut self, wait: Duration) -> Self {
        self.initial_backoff = wait;
        self
    }

    /// Sets the longest wait. Defaults to 5 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let policy = distq::Reconnect::default().max_backoff(Duration::from_secs(1));
    /// assert_eq!(policy.max_backoff, Duration::from_secs(1));
    /// ```
    pub fn max_backoff(mut self, wait: Duration) -> Self {
        self.max_backoff = wait;
        self
    }

    /// Sets how long to keep trying. Defaults to 60 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// // Keep trying for as long as an hour-long maintenance window.
    /// let policy = distq::Reconnect::default().give_up(Duration::from_secs(3600));
    /// assert_eq!(policy.give_up, Duration::from_secs(3600));
    /// ```
    pub fn give_up(mut self, after: Duration) -> Self {
        self.give_up = after;
        self
    }
}

/// Client settings, used by [`Client::builder`](crate::Client::builder).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long to wait for the TCP connection to open.
    pub connect_timeout: Option<Duration>,
    /// How long the handshake may take once connected.
    pub handshake_timeout: Option<Duration>,
    /// Largest frame body, in bytes, accepted from or sent to the server.
    pub max_frame_size: usize,
    /// How long past a request's own timeout to wait for its reply before giving the
    /// connection up as dead.
    pub reply_grace: Duration,
    /// How long a request may take to write.
    pub write_timeout: Option<Duration>,
    /// Whether a background thread extends this client's leases while they are held, so a
    /// long task is not redelivered just for being long.
    pub auto_touch: bool,
    /// Whether and how to reconnect when the connection breaks; `None` fails instead.
    pub reconnect: Option<Reconnect>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Some(Duration::from_secs(10)),
            handshake_timeout: Some(Duration::from_secs(10)),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            reply_grace: Duration::from_secs(10),
            write_timeout: Some(Duration::from_secs(30)),
            auto_touch: true,
            reconnect: None,
        }
    }
}

impl ClientConfig {
    /// Sets the TCP connect timeout; `None` leaves it to the operating system. Defaults to 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = distq::ClientConfig::default().connect_timeout(Some(Duration::from_secs(2)));
    /// assert_eq!(config.connect_timeout, Some(Duration::from_secs(2)));
    /// ```
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the handshake timeout; `None` waits forever. Defaults to 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = distq::ClientConfig::default().handshake_timeout(Some(Duration::from_secs(2)));
    /// assert_eq!(config.handshake_timeout, Some(Duration::from_secs(2)));
    /// ```
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the largest frame body in bytes (capped at `u32::MAX`). Defaults to 8 MiB.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::ClientConfig::default().max_frame_size(1024 * 1024);
    /// assert_eq!(config.max_frame_size, 1024 * 1024);
    /// ```
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.min(u32::MAX as usize);
        self
    }

    /// Sets the grace period past a request's timeout. Defaults to 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = distq::ClientConfig::default().reply_grace(Duration::from_secs(30));
    /// assert_eq!(config.reply_grace, Duration::from_secs(30));
    /// ```
    pub fn reply_grace(mut self, grace: Duration) -> Self {
        self.reply_grace = grace;
        self
    }

    /// Sets the write timeout for requests; `None` waits forever. Defaults to 30 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = distq::ClientConfig::default().write_timeout(None);
    /// assert_eq!(config.write_timeout, None);
    /// ```
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Turns automatic lease extension on or off. Defaults to on: every third of a queue's
    /// lease timeout, a background thread touches the leases this client holds.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{Client, ClientConfig};
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// // Leases are touched by hand (Delivery::touch), or left to expire.
    /// let client = Client::builder()
    ///     .config(ClientConfig::default().auto_touch(false))
    ///     .connect(server.local_addr(), "k")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn auto_touch(mut self, on: bool) -> Self {
        self.auto_touch = on;
        self
    }

    /// Sets the reconnection policy; `None` turns reconnection off. Defaults to `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{ClientConfig, Reconnect};
    ///
    /// let config = ClientConfig::default().reconnect(Some(Reconnect::default()));
    /// assert!(config.reconnect.is_some());
    /// ```
    pub fn reconnect(mut self, policy: Option<Reconnect>) -> Self {
        self.reconnect = policy;
        self
    }
}

/// The default budget: half of physical memory (`MemTotal` in /proc/meminfo), or 1 GiB where
/// that cannot be read.
fn default_memory_limit() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| mem_total(&info))
        .map_or(FALLBACK_LIMIT, |total| total / 2)
}

/// The budget where physical memory cannot be read.
const FALLBACK_LIMIT: u64 = 1 << 30;

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let info = "MemTotal:       16318480 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total(info), Some(16318480 * 1024));
        assert_eq!(mem_total("nothing"), None);
        assert!(default_memory_limit() > 0);
    }
}

/// When a server with a journal flushes its records to disk with `fdatasync`
/// ([`JournalConfig::fsync`]). In every mode a put's records are written to the journal file
/// before the put is confirmed, so a killed server process never loses a confirmed put; the
/// modes differ in what a power cut or an OS crash may lose.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use distq::Fsync;
///
/// assert_eq!(Fsync::Every(Duration::from_millis(50)).to_string(), "every 50 ms");
/// assert_eq!(Fsync::Every(Duration::from_secs(3600)).to_string(), "every 3600 s");
/// assert_eq!(Fsync::Always.to_string(), "always");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// A put is confirmed only once its records are on disk (concurrent puts, and every
    /// item of a batch, share one `fdatasync`). Nothing confirmed is lost to a power cut.
    Always,
    /// Records are on disk at most this long after they were written, by a timer that also
    /// runs while the server is otherwise idle. A power cut may lose the puts of that last
    /// interval (Redis `appendfsync everysec`, beanstalkd `-f`).
    Every(Duration),
    /// Left to the operating system (about 30 s on Linux); only a clean shutdown syncs.
    Never,
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fsync::Always => f.write_str("always"),
            Fsync::Never => f.write_str("never"),
            Fsync::Every(d) if d.as_millis() >= 1000 && d.as_millis() % 1000 == 0 => {
                write!(f, "every {} s", d.as_secs())
            }
            Fsync::Every(d) => write!(f, "every {} ms", crate::time::millis(*d)),
        }
    }
}

/// Where and how a server keeps its journal, given to
/// [`ServerBuilder::journal`](crate::ServerBuilder::journal): every put, acknowledgement,
/// return, delay, dead-lettering and temporary queue is recorded there, so a restarted server
/// on the same directory has every item whose put was confirmed and whose acknowledgement was
/// not.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use distq::{Fsync, JournalConfig};
///
/// let config = JournalConfig::new("/var/lib/distq").fsync(Fsync::Every(Duration::from_millis(50)));
/// assert_eq!(config.fsync, Fsync::Every(Duration::from_millis(50)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalConfig {
    /// The directory (created if missing), locked while the server runs.
    pub dir: std::path::PathBuf,
    /// When records are synced to disk. Defaults to [`Fsync::Always`].
    pub fsync: Fsync,
    /// The size at which the journal starts a new segment file, and checks whether to
    /// compact. Defaults to 64 MiB.
    pub segment_size: u64,
    /// The journal is compacted (its live items written to a snapshot, older files removed)
    /// once it takes more than twice its live data and more than this. Defaults to 64 MiB.
    pub compact_min: u64,
}

impl JournalConfig {
    /// A journal in `dir`, synced on every put ([`Fsync::Always`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::JournalConfig::new("journal");
    /// assert_eq!(config.fsync, distq::Fsync::Always);
    /// ```
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            fsync: Fsync::Always,
            segment_size: 64 << 20,
            compact_min: 64 << 20,
        }
    }

    /// Sets when records are synced to disk.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::JournalConfig::new("journal").fsync(distq::Fsync::Never);
    /// assert_eq!(config.fsync, distq::Fsync::Never);
    /// ```
    pub fn fsync(mut self, fsync: Fsync) -> Self {
        self.fsync = fsync;
        self
    }

    /// Sets the segment size in bytes (at least 4 KiB).
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::JournalConfig::new("journal").segment_size(1 << 20);
    /// assert_eq!(config.segment_size, 1 << 20);
    /// ```
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Sets the journal size below which it is never compacted.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = distq::JournalConfig::new("journal").compact_min(1 << 20);
    /// assert_eq!(config.compact_min, 1 << 20);
    /// ```
    pub fn compact_min(mut self, bytes: u64) -> Self {
        self.compact_min = bytes;
        self
    }
}
