//! Named queues served over TCP, for spreading work over processes and machines with the
//! master/worker pattern of Python's `multiprocessing.managers.BaseManager`.
//!
//! A master hosts named queues on a TCP port guarded by an authkey; workers anywhere on the
//! network connect, take a task with a timeout, compute, and put the result back. Everything
//! is blocking and thread-based: no async runtime, no separate broker.
//!
//! ```
//! use std::time::Duration;
//! use distq::{Client, GetError, Server};
//!
//! // The master hosts the queues and uses them in-process.
//! let server = Server::builder().authkey("abc").queue("tasks").queue("results").bind("127.0.0.1:0")?;
//! let addr = server.local_addr();
//! server.queue::<u64>("tasks")?.put_many([3, 4])?;
//!
//! // A worker, normally in another process or on another machine.
//! let worker = std::thread::spawn(move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let client = Client::connect(addr, "abc")?;
//!     let (tasks, results) = (client.queue::<u64>("tasks")?, client.queue::<String>("results")?);
//!     loop {
//!         match tasks.get_timeout(Duration::from_millis(100)) {
//!             Ok(n) => results.put(format!("{n} * {n} = {}", n * n))?,
//!             Err(GetError::Empty) => return Ok(()), // the queue stayed empty: done
//!             Err(e) => return Err(e.into()),
//!         }
//!     }
//! });
//!
//! let results = server.queue::<String>("results")?;
//! assert_eq!(results.get_timeout(Duration::from_secs(10))?, "3 * 3 = 9");
//! assert_eq!(results.get_timeout(Duration::from_secs(10))?, "4 * 4 = 16");
//! worker.join().unwrap().unwrap();
//! server.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Usage
//!
//! - [`Server::builder`] names the queues, like Python's `register`, and `bind` starts serving.
//!   [`Server::queue`] hands the master an in-process [`Queue`].
//! - [`Client::connect`] opens one authenticated connection; [`Client::queue`] hands out the
//!   same [`Queue`] type, working over the network.
//! - A [`Queue<T>`] carries any `T: Serialize + DeserializeOwned`, encoded as CBOR. The server
//!   stores the encoded bytes and never decodes them.
//! - Past one machine, with the `redis` feature: [`Client::connect`] to a `redis://` URL
//!   keeps the queues in Redis Streams (a Redis Cluster too), with the same [`Queue`] and the
//!   same semantics; [`Client::declare_queue`] creates them there.
//!
//! # Timeouts
//!
//! Every queue operation has a blocking form (`get`, `put`), a non-blocking one (`try_get`,
//! `try_put`) and a timed one (`get_timeout`, `get_deadline`, `put_timeout`). A timed-out get
//! is [`GetError::Empty`] and a timed-out put [`PutError::Full`]: normal outcomes a worker
//! loops on, not failures. Connecting and handshaking are bounded by [`ClientConfig`]; a
//! remote call waits for its reply for its own timeout plus [`ClientConfig::reply_grace`].
//!
//! # Shutdown
//!
//! [`Server::shutdown`] (also run on drop) stops accepting, wakes every blocked queue
//! operation with [`Error::Closed`], closes every connection and joins every thread the server
//! started. [`ShutdownHandle`] asks for the same from another thread, and [`Server::wait`]
//! blocks until then, like Python's `serve_forever`.
//!
//! # Error handling
//!
//! Queue operations fail with [`GetError`] or [`PutError`], whose `Empty`/`Full` variants are
//! the timeouts and whose `Failed` variant wraps the crate [`Error`]: a name that does not
//! resolve, connection refused or timed out, authentication failed, protocol or version
//! mismatch, unknown queue, an item over the server's limit ([`Error::TooLarge`]), a payload
//! that does not decode as `T`, and so on. [`PutError::OverBudget`] is a put that found the
//! server's memory budget ([`ServerConfig::max_memory`]) used up until its timeout: like
//! `Full`, a reason to retry later ([`PutError::is_full`]). [`PutError::Partial`] says how many
//! items of a batch were stored before a failure. After an I/O failure a client's connection
//! is not reused: connect a new [`Client`], or build it with a [`Reconnect`] policy so it
//! reconnects by itself.
//!
//! # Limits
//!
//! Everything a peer can make a server spend is bounded: frames ([`ServerConfig::max_frame_size`],
//! 1 KiB before the handshake), items per request (65,536), stored bytes
//! ([`ServerConfig::max_memory`], with a quarter more for requests waiting for room),
//! connections and handshakes (silent or stalled handshakes are evicted to admit newcomers),
//! the time a handshake, a frame or a reply may take, and idle buffers (4 KiB after a larger
//! frame). Each request costs time linear in its size. The README lists the defaults.
//!
//! # Delivery guarantee
//!
//! At least once. An item taken over the network is leased to its connection until it is
//! acknowledged: implicitly by the handle's next get or its drop, or explicitly with
//! [`Delivery::ack`] for items taken with [`Queue::reserve`]. If the connection breaks, or the
//! lease outlives its queue's [`QueueConfig::lease_timeout`] (60 s by default) without being
//! extended, the item goes back to the queue; a client's heartbeat extends the leases it holds
//! ([`ClientConfig::auto_touch`]). So an item may be processed twice, never silently lost. An
//! item whose deliveries fail more than [`QueueConfig::max_redeliveries`] times (see
//! [`Delivery::redeliveries`]) moves to the dead-letter queue `NAME.dead`. [`Client::stats`] shows it all.
//!
//! # Log levels
//!
//! distq logs through the [`log`] facade and never installs a logger.
//! - error: nothing from the library.
//! - warn: rejected or refused connections (at most one line per 10 s for peers without the
//!   key), oversized or malformed frames, accept failures, a lost connection (a timeout or
//!   another I/O failure) and each failed reconnection attempt after it, poison items
//!   dead-lettered.
//! - info: a connection the server closed itself (a `closed` reply, an end of stream or a
//!   reset: it shut down, a master whose job is done, a restart), a successful reconnection, a reconnection that reached a new server instance
//!   (the `distq` binary also logs listening and shutdown).
//! - debug: connections opened and closed, silent connections closed at the hello timeout,
//!   evicted handshakes, leases returned or expired, reconnection attempts after the server
//!   closed the connection, server start and stop.
//! - trace: every request.
//!
//! The authkey and payloads are never logged.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod blob;
mod client;
mod codec;
mod config;
mod connection;
mod core;
mod delivery;
mod error;
pub mod exec;
mod journal;
mod payload;
pub mod python;
mod queue;
mod server;
mod stats;
mod sync;
mod time;
mod wire;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use client::{Client, ClientBuilder, ServerInstance};
pub use codec::CodecError;
pub use config::{
    ClientConfig, Fsync, JournalConfig, Keepalive, QueueConfig, Reconnect, ServerConfig,
    DEFAULT_MAX_FRAME_SIZE, MAX_LEASE_TIMEOUT,
};
pub use delivery::Delivery;
pub use error::{AuthFailure, Error, GetError, JournalError, PutError, Result};
pub use queue::Queue;
pub use server::{Server, ServerBuilder, ShutdownHandle};
pub use stats::{JournalStats, QueueStats, Stats};
