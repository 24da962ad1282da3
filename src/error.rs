//! The crate error, and the small per-operation errors of [`Queue`](crate::Queue).

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::codec::CodecError;

/// A `Result` whose error is the crate [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in distq apart from the normal outcomes of a queue operation
/// (an empty queue is [`GetError::Empty`], a full one [`PutError::Full`]).
///
/// Each variant says what failed; its message says what to do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The address's host name did not resolve (or resolved to no address), so nothing was
    /// dialled or bound.
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// Could not open a TCP connection to the server.
    Connect {
        /// The address that was dialled.
        addr: String,
        /// Why: `ConnectionRefused` (nothing listens there), `TimedOut`, ...
        source: io::Error,
    },
    /// The server could not listen on its address.
    Bind {
        /// The address asked for.
        addr: String,
        /// Why: `AddrInUse`, `PermissionDenied`, ...
        source: io::Error,
    },
    /// Reading or writing an established connection failed.
    Io(io::Error),
    /// The handshake failed because the two sides do not share the authkey.
    Auth(AuthFailure),
    /// The peer speaks another protocol version.
    Version {
        /// The version this side speaks.
        ours: u32,
        /// The version the peer announced.
        theirs: u32,
    },
    /// The peer sent something that is not valid distq protocol.
    Protocol(String),
    /// The peer's first reply to the handshake is not a distq frame: another kind of server
    /// (HTTP, SSH, a database, ...) listens at that address.
    NotDistq {
        /// The address that was dialled.
        addr: String,
        /// The first four bytes of the reply, where distq has its length prefix (`HTTP` from
        /// a web server); `None` when they made a plausible length but the frame was not a
        /// handshake message.
        prefix: Option<[u8; 4]>,
    },
    /// An item is larger than the server's per-item limit, in-process and over the network
    /// alike. Sizes are checked before a request is sent, so nothing of that request was
    /// stored (a long batch sent in several requests reports earlier ones as
    /// [`PutError::Partial`]).
    TooLarge {
        /// The item's encoded length in bytes.
        len: usize,
        /// The largest item the server accepts (`max_frame_size` less the frame overhead).
        max: usize,
    },
    /// A frame was larger than the configured `max_frame_size`.
    FrameTooLarge {
        /// The length the frame announced.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The server hosts no queue of this name.
    UnknownQueue(String),
    /// A value could not be encoded to CBOR.
    Encode(CodecError),
    /// A payload taken from a queue does not decode as the requested type.
    Payload(CodecError),
    /// The server is shutting down (or the connection was closed), so the request was not served.
    Closed,
    /// A builder was given settings that cannot work (no authkey, a duplicate queue, ...).
    Config(String),
    /// The server would not take this connection (it is at its connection limit).
    Refused(String),
    /// The connection is down and reconnection goes on: the call's own timeout ran out
    /// first. Call again.
    Reconnecting,
    /// The connection stayed down past the reconnection policy's `give_up` time.
    GaveUp {
        /// How long the connection had been down.
        after: std::time::Duration,
        /// Why the last attempt failed.
        last: Box<Error>,
    },
    /// The lease ended before this call: its time limit passed, or the connection that held
    /// it was lost. The item was, or will be, delivered again.
    LeaseExpired,
    /// The server does not understand an optional request (`feature`, such as `"delay"`):
    /// it is older than this client. Nothing was sent.
    Unsupported {
        /// The feature the server lacks.
        feature: &'static str,
    },
    /// The queue a fused get (`get_many_after_put`) was to store results in stayed full:
    /// `accepted` of them were stored, nothing was taken, and the handle's earlier items
    /// are still leased to it (see [`Queue::give_back`](crate::Queue::give_back)).
    ResultsFull {
        /// The queue that stayed full.
        queue: String,
        /// How many of the items were stored.
        accepted: usize,
    },
    /// Another client, still connected, created the temporary queue this one declared
    /// ([`Client::temporary_queue`](crate::Client::temporary_queue)). Pick another name, or
    /// wait until that client has left.
    QueueInUse(String),
    /// The name cannot be a temporary queue's: it names a queue the server was started
    /// with, ends in `.dead`, or is empty or too long. Holds the name and what the server
    /// said.
    NameConflict(String),
    /// The server holds as many temporary queues as it may (`--max-temporary-queues`), all
    /// of them created by clients still connected, this connection does (64), or the bound
    /// asked for cannot be had.
    TemporaryLimit(String),
    /// The put of a fused get (`get_many_after_put`) found the server's memory budget used
    /// up until its timeout: `accepted` items were stored in `queue`, nothing was taken, and
    /// the handle's earlier items are still leased to it. Retry once workers have drained
    /// some items, or raise the server's `--max-memory`.
    OverBudget {
        /// The queue the items were for.
        queue: String,
        /// How many of the items were stored.
        accepted: usize,
        /// The server's budget in bytes.
        limit: u64,
    },
    /// The server's journal could not be opened or recovered, or failed while serving (the
    /// server stops then: it never confirms what it could not persist).
    Journal(Box<JournalError>),
    /// A Python manager raised an exception on a call, or refused it: the exception's class
    /// (`exceptions.TypeError`) or the traceback Python sent.
    Python(String),
    /// Redis refused or failed a command (a queue on Redis: `Client::connect("redis://…")`):
    /// what it said, e.g. that it is out of memory (`OOM`) or read-only (a replica).
    Redis(String),
}

/// What went wrong with a server's journal (`--journal DIR`); see [`Error::Journal`].
///
/// # Examples
///
/// ```
/// use distq::{Error, JournalConfig, JournalError, Server};
///
/// let dir = std::env::temp_dir().join(format!("distq-lock-doc-{}", std::process::id()));
/// let first = Server::builder().authkey("k").queue("q").journal(JournalConfig::new(&dir));
/// let _running = first.bind("127.0.0.1:0")?;
/// let second = Server::builder().authkey("k").queue("q").journal(JournalConfig::new(&dir));
/// match second.bind("127.0.0.1:0") {
///     Err(Error::Journal(e)) => assert!(matches!(*e, JournalError::Locked { .. })),
///     other => panic!("{other:?}"),
/// }
/// # drop(_running);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// Another server (or process) holds the journal directory's lock.
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },
    /// A record is damaged somewhere other than the torn end of the last file: recovery
    /// stops rather than lose what follows it.
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Where the bad record starts, in bytes from the start of the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A journal file that the files after it depend on is missing.
    Missing {
        /// The file that should be there.
        file: PathBuf,
        /// The first file found after the gap.
        before: PathBuf,
    },
    /// Reading, writing or syncing a journal file failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("write", "fdatasync", ...).
        action: &'static str,
        /// What the system said.
        source: io::Error,
    },
    /// The journal holds items of a queue this server was not started with.
    UnknownQueue {
        /// The queue.
        queue: String,
        /// How many items it holds.
        items: u64,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Locked { dir } => write!(
                f,
                "journal {} is in use: another server holds its lock (stop that server, or give this one another --journal)",
                dir.display()
            ),
            JournalError::Corrupt { file, offset, reason } => write!(
                f,
                "journal file {} is corrupt at byte offset {offset}: {reason} (refusing to start rather than lose the records after it; restore the directory from a backup, or accept losing the records from there on with `truncate -s {offset} {}`)",
                file.display(),
                file.display()
            ),
            JournalError::Missing { file, before } => write!(
                f,
                "journal file {} is missing, though {} comes after it (refusing to start rather than lose its records in silence; put it back, or accept the loss by moving the files from it on away)",
                file.display(),
                before.display()
            ),
            JournalError::Io { path, action, source } => {
                write!(f, "journal {action} of {} failed: {source}", path.display())?;
                // errno values are Linux's: ENOSPC, EROFS, EACCES/EPERM, EEXIST/ENOTDIR.
                match source.raw_os_error() {
                    Some(28) => write!(f, " (the disk is full: free space, then restart)"),
                    Some(30) => write!(f, " (the file system is read-only: give --journal a writable directory)"),
                    Some(13) | Some(1) => write!(f, " (permission denied: run the server as a user who may write there, or give --journal another directory)"),
                    Some(17) | Some(20) => write!(f, " (the path, or a part of it, is not a directory: give --journal a directory)"),
                    _ => write!(f, " (check the disk, then restart)"),
                }
            }
            JournalError::UnknownQueue { queue, items } => write!(
                f,
                "the journal holds {items} item(s) of queue {queue:?}, which this server is not started with (start it with --queue {queue}, or give it another --journal)"
            ),
        }
    }
}

impl From<JournalError> for Error {
    fn from(e: JournalError) -> Self {
        Error::Journal(Box::new(e))
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Which side of the mutual authentication failed; see [`Error::Auth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The server did not accept our proof: our authkey is not the server's.
    Rejected,
    /// The server's proof was wrong: the server does not know our authkey.
    ServerUnproven,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Resolve { addr, source } => {
                // "127.0.0.1" alone is not a socket address: the port is what is missing.
                let hint = match addr.trim_matches('"').contains(':') {
                    true => "check the host name, or give an IP address",
                    false => "give HOST:PORT, e.g. 127.0.0.1:5000",
                };
                write!(f, "cannot resolve {addr}: {source} ({hint})")
            }
            Error::Connect { addr, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::ConnectionRefused if addr.starts_with("redis") => {
                        " (is Redis listening there?)"
                    }
                    io::ErrorKind::ConnectionRefused => {
                        " (is a distq server listening there?)"
                    }
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                        " (timed out: check the address, the network and any firewall)"
                    }
                    _ => "",
                };
                write!(f, "cannot connect to {addr}: {source}{hint}")
            }
            Error::Bind { addr, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::AddrInUse => " (another process holds the port: stop it or pick another)",
                    _ => "",
                };
                write!(f, "cannot listen on {addr}: {source}{hint}")
            }
            Error::Io(e) => write!(
                f,
                "connection i/o failed: {e} (check the network; with Reconnect the client retries)"
            ),
            Error::Auth(AuthFailure::Rejected) => write!(
                f,
                "authentication failed: the server rejected our authkey (use the server's key)"
            ),
            Error::Auth(AuthFailure::ServerUnproven) => write!(
                f,
                "authentication failed: the server could not prove it knows the authkey"
            ),
            Error::Version { ours, theirs } => write!(
                f,
                "protocol version mismatch: we speak {ours}, the peer speaks {theirs} (upgrade one side)"
            ),
            Error::Protocol(msg) => write!(f, "protocol error: {msg}"),
            Error::NotDistq { addr, prefix } => {
                write!(f, "{addr} is not a distq server: it answered with ")?;
                match prefix {
                    // Most other protocols open with text ("HTTP", "SSH-"): it names the service.
                    Some(b) if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') => {
                        write!(f, "a reply starting {:?}", String::from_utf8_lossy(b))?
                    }
                    Some(b) => write!(
                        f,
                        "a frame header announcing {} bytes",
                        u32::from_be_bytes(*b)
                    )?,
                    None => write!(f, "a reply that is not a distq handshake message")?,
                }
                write!(
                    f,
                    " (check the address and port: another service listens there)"
                )
            }
            Error::TooLarge { len, max } => write!(
                f,
                "item of {len} bytes exceeds the server's largest item of {max} bytes (send smaller items, or raise max_frame_size on the server)"
            ),
            Error::FrameTooLarge { len, max } => write!(
                f,
                "frame of {len} bytes exceeds the limit of {max} bytes (raise max_frame_size on both sides or send smaller items)"
            ),
            Error::UnknownQueue(name) => write!(
                f,
                "the server hosts no queue named {name:?} (a distq server's queues are named when it starts; on Redis, declare it first: distq declare)"
            ),
            Error::Encode(e) => write!(f, "cannot encode value: {e}"),
            Error::Payload(e) => write!(
                f,
                "payload does not decode as the requested type (do both sides use the same item type?): {e}"
            ),
            Error::Closed => write!(
                f,
                "the server is shutting down or closed the connection (a client with Reconnect connects again)"
            ),
            Error::Config(msg) => write!(f, "invalid configuration: {msg}"),
            Error::Refused(reason) => write!(f, "the server refused the connection: {reason}"),
            Error::Reconnecting => write!(f, "the connection is down; reconnecting (call again)"),
            Error::GaveUp { after, last } => write!(
                f,
                "gave up reconnecting after {:.1} s: {last}",
                after.as_secs_f64()
            ),
            Error::LeaseExpired => write!(
                f,
                "the lease ended before this call (time limit passed or connection lost); the item is delivered again"
            ),
            Error::Unsupported { feature } => write!(
                f,
                "the server does not support {feature:?} requests (upgrade the server)"
            ),
            Error::ResultsFull { queue, accepted } => write!(
                f,
                "queue {queue:?} stayed full: {accepted} result(s) stored and nothing taken (drain it, or give the tasks back)"
            ),
            Error::QueueInUse(name) => write!(
                f,
                "temporary queue {name:?} is in use by another connection (pick another name, or wait until that client has left)"
            ),
            Error::NameConflict(message) => {
                write!(f, "cannot declare temporary queue {message}")
            }
            Error::TemporaryLimit(message) => {
                write!(f, "cannot declare a temporary queue: {message}")
            }
            Error::OverBudget { queue, accepted, limit } => write!(
                f,
                "the server's memory budget of {} is used up: {accepted} item(s) stored in queue {queue:?} and nothing taken (let workers drain the queues or raise --max-memory; the tasks taken before are still leased)",
                human_bytes(*limit)
            ),
            Error::Journal(e) => e.fmt(f),
            Error::Python(what) => write!(f, "the Python manager raised: {}", what.trim()),
            Error::Redis(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Resolve { source, .. }
            | Error::Connect { source, .. }
            | Error::Bind { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            Error::Encode(e) | Error::Payload(e) => Some(e),
            Error::GaveUp { last, .. } => Some(last.as_ref()),
            Error::Journal(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            // A read timeout surfaces as WouldBlock on Unix; say what it is.
            io::ErrorKind::WouldBlock => Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out waiting for the peer",
            )),
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Error::Closed,
            _ => Error::Io(e),
        }
    }
}

/// Why a get returned no item.
#[derive(Debug)]
pub enum GetError {
    /// No item arrived before the timeout (Python's `queue.Empty`). A normal outcome: poll again.
    Empty,
    /// The get failed; see the [`Error`].
    Failed(Error),
}

impl GetError {
    /// `true` when the queue was simply empty until the timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// match q.get_timeout(Duration::from_millis(10)) {
    ///     Err(e) if e.is_empty() => println!("task queue is empty."),
    ///     other => panic!("expected an empty queue, got {other:?}"),
    /// }
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        matches!(self, GetError::Empty)
    }
}

impl From<Error> for GetError {
    fn from(e: Error) -> Self {
        GetError::Failed(e)
    }
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::Empty => write!(f, "queue is empty"),
            GetError::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for GetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GetError::Empty => None,
            GetError::Failed(e) => Some(e),
        }
    }
}

/// Why a put did not store (all of) its items.
#[derive(Debug)]
pub enum PutError {
    /// The bounded queue stayed full until the timeout (Python's `queue.Full`).
    /// `accepted` items of a batch were stored before that, in order; the rest were not.
    Full {
        /// How many items, from the front of the batch, the queue did take.
        accepted: usize,
    },
    /// The server's memory budget (`max_memory`, `--max-memory`) stayed used up until the
    /// timeout: `accepted` items of a batch were stored, in order; the rest were not. Like
    /// [`Full`](PutError::Full) it means "retry later": the budget frees as workers take
    /// and acknowledge items.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{PutError, Server, ServerConfig};
    ///
    /// let server = Server::builder()
    ///     .authkey("k")
    ///     .queue("q")
    ///     .config(ServerConfig::default().max_memory(4096))
    ///     .bind("127.0.0.1:0")?;
    /// let q = server.queue::<Vec<u8>>("q")?;
    /// let err = q.try_put(vec![0u8; 8192]).unwrap_err();
    /// assert!(matches!(err, PutError::OverBudget { accepted: 0, limit: 4096 }));
    /// assert!(err.is_full());
    /// assert!(err.to_string().contains("memory budget of 4 KiB"), "{err}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    OverBudget {
        /// How many items, from the front of the batch, were stored.
        accepted: usize,
        /// The server's budget in bytes.
        limit: u64,
    },
    /// The put failed and stored nothing of the batch (or, after an i/o error, it is
    /// unknown what reached the server); see the [`Error`].
    Failed(Error),
    /// The put failed part way: `accepted` items from the front of the batch were stored
    /// (the server said so), the rest were not; see the [`Error`].
    Partial {
        /// How many items, from the front of the batch, were stored.
        accepted: usize,
        /// Why the rest were not.
        error: Error,
    },
}

impl PutError {
    /// `true` when the queue was full, or the server's memory budget used up, until the
    /// timeout: either way, retry later.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").bounded_queue("q", 1).bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(1)?;
    /// assert!(q.try_put(2).unwrap_err().is_full());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full { .. } | PutError::OverBudget { .. })
    }

    /// How many items from the front of the batch are known to be stored.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").bounded_queue("q", 2).bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// let err = q.put_many_timeout([1, 2, 3], Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(err.accepted(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn accepted(&self) -> usize {
        match self {
            PutError::Full { accepted }
            | PutError::OverBudget { accepted, .. }
            | PutError::Partial { accepted, .. } => *accepted,
            PutError::Failed(_) => 0,
        }
    }

    /// The same outcome with `before` more items counted as stored.
    pub(crate) fn after(self, before: usize) -> PutError {
        match self {
            PutError::Full { accepted } => PutError::Full {
                accepted: before + accepted,
            },
            PutError::OverBudget { accepted, limit } => PutError::OverBudget {
                accepted: before + accepted,
                limit,
            },
            PutError::Partial { accepted, error } => PutError::Partial {
                accepted: before + accepted,
                error,
            },
            PutError::Failed(error) if before > 0 => PutError::Partial {
                accepted: before,
                error,
            },
            failed => failed,
        }
    }
}

/// A byte count as people write it: `512 MiB`, `1.5 GiB`, `300 bytes`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

impl From<Error> for PutError {
    fn from(e: Error) -> Self {
        PutError::Failed(e)
    }
}

impl fmt::Display for PutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full { accepted } => {
                write!(
                    f,
                    "queue is full ({accepted} item(s) of the batch were stored)"
                )
            }
            PutError::OverBudget { accepted, limit } => write!(
                f,
                "the server's memory budget of {} is used up: {accepted} item(s) of the batch were stored (let workers drain the queues or raise --max-memory)",
                human_bytes(*limit)
            ),
            PutError::Failed(e) => e.fmt(f),
            PutError::Partial { accepted, error } => {
                write!(
                    f,
                    "{error} ({accepted} item(s) of the batch were stored before)"
                )
            }
        }
    }
}

impl std::error::Error for PutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PutError::Full { .. } | PutError::OverBudget { .. } => None,
            PutError::Failed(e) | PutError::Partial { error: e, .. } => Some(e),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn errors_stay_small() {
        // Errors travel through every Result on the hot path; keep them a few words wide.
        assert!(
            std::mem::size_of::<Error>() <= 40,
            "{}",
            std::mem::size_of::<Error>()
        );
        assert!(std::mem::size_of::<GetError>() <= 40);
    }

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(human_bytes(300), "300 bytes");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn refused_connect_names_the_cause() {
        let e = Error::Connect {
            addr: "127.0.0.1:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(e.to_string().contains("connection refused"), "{e}");
    }

    #[test]
    fn an_address_without_a_port_is_told_to_give_one() {
        let source = || io::Error::new(io::ErrorKind::InvalidInput, "invalid socket address");
        let no_port = Error::Resolve {
            addr: "\"127.0.0.1\"".into(),
            source: source(),
        };
        assert!(no_port.to_string().contains("HOST:PORT"), "{no_port}");
        let bad_host = Error::Resolve {
            addr: "\"nosuch.invalid:1\"".into(),
            source: source(),
        };
        assert!(bad_host.to_string().contains("host name"), "{bad_host}");
    }

    #[test]
    fn would_block_becomes_timed_out() {
        match Error::from(io::Error::from(io::ErrorKind::WouldBlock)) {
            Error::Io(e) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("unexpected {other:?}"),
        }
    }
}
