//! The server: a listener, an accept thread, one thread per connection, and the named queues.

mod accept;
mod python;
mod reaper;
mod session;
mod shared;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{JournalConfig, QueueConfig, ServerConfig, MAX_LEASE_TIMEOUT};
use crate::core::{Registry, DEAD_SUFFIX};
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::queue::Queue;
use crate::stats::Stats;
use crate::sync::lock;
use crate::time::millis;
use crate::wire::auth;
use crate::wire::message::{
    QueueInfo, ServerInfo, FEATURE_DELAY, FEATURE_TEMPORARY, FEATURE_UNCOUNTED_NACK,
    FRAME_OVERHEAD, ITEM_OVERHEAD, MAX_QUEUE_NAME,
};
use crate::wire::socket;
use shared::Shared;

/// A running server hosting named queues, like Python's `BaseManager` after `start()`.
///
/// Build one with [`Server::builder`]. It serves until [`shutdown`](Server::shutdown) is called,
/// a [`ShutdownHandle`] is used, or it is dropped; shutting down stops accepting, closes every
/// connection and joins every thread the server started.
///
/// # Examples
///
/// ```
/// use distq::Server;
///
/// let server = Server::builder()
///     .authkey("abc")
///     .queue("tasks")
///     .bounded_queue("results", 100)
///     .bind("127.0.0.1:0")?;
/// let tasks = server.queue::<u64>("tasks")?;
/// tasks.put(7)?;
/// assert_eq!(tasks.len()?, 1);
/// server.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    shared: Arc<Shared>,
    /// The accept thread and the lease reaper.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Configures and starts a [`Server`]; from [`Server::builder`].
#[derive(Debug, Default)]
pub struct ServerBuilder {
    authkey: Option<Vec<u8>>,
    queues: Vec<(String, QueueConfig)>,
    config: ServerConfig,
    journal: Option<JournalConfig>,
    /// Where the Python listener binds (resolved when given), and its registered names.
    python: Option<Result<SocketAddr>>,
    python_queues: Vec<(String, String)>,
}

/// Stops a [`Server`] from another thread (a signal handler, say); from
/// [`Server::shutdown_handle`].
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ServerBuilder {
    /// Sets the shared secret clients must prove they hold. Required; there is no default.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = distq::Server::builder().queue("tasks");
    /// assert!(matches!(builder.bind("127.0.0.1:0"), Err(distq::Error::Config(_))));
    /// let server = distq::Server::builder()
    ///     .authkey(std::env::var("DISTQ_AUTHKEY").unwrap_or_else(|_| "abc".into()))
    ///     .queue("tasks")
    ///     .bind("127.0.0.1:0")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> Self {
        self.authkey = Some(key.as_ref().to_vec());
        self
    }

    /// Hosts an unbounded queue called `name` with the default [`QueueConfig`], and its
    /// dead-letter queue `name.dead`.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder()
    ///     .authkey("abc")
    ///     .queue("tasks")
    ///     .queue("results")
    ///     .bind("127.0.0.1:0")?;
    /// assert!(server.queue::<u32>("tasks.dead").is_ok()); // each has its dead-letter queue
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn queue(self, name: impl Into<String>) -> Self {
        self.queue_with(name, QueueConfig::default())
    }

    /// Hosts a queue called `name` holding at most `maxsize` waiting items; puts wait for
    /// room.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = distq::Server::builder()
    ///     .authkey("abc")
    ///     .bounded_queue("tasks", 1)
    ///     .bind("127.0.0.1:0")?;
    /// let tasks = server.queue::<u32>("tasks")?;
    /// tasks.put(1)?;
    /// assert!(tasks.put_timeout(2, Duration::from_millis(10)).unwrap_err().is_full());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bounded_queue(self, name: impl Into<String>, maxsize: usize) -> Self {
        self.queue_with(name, QueueConfig::default().capacity(Some(maxsize)))
    }

    /// Hosts a queue called `name` with its own settings (bound, lease timeout, poison
    /// threshold).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use distq::{QueueConfig, Server};
    ///
    /// let server = Server::builder()
    ///     .authkey("abc")
    ///     .queue_with("tasks", QueueConfig::default().lease_timeout(Duration::from_secs(300)))
    ///     .bind("127.0.0.1:0")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn queue_with(mut self, name: impl Into<String>, config: QueueConfig) -> Self {
        self.queues.push((name.into(), config));
        self
    }

    /// Replaces the limits and timeouts. Defaults to [`ServerConfig::default`].
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{Server, ServerConfig};
    /// let server = Server::builder()
    ///     .authkey("abc")
    ///     .queue("tasks")
    ///     .config(ServerConfig::default().max_connections(64))
    ///     .bind("127.0.0.1:0")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Keeps a journal: every put, acknowledgement, return, delay, dead-lettering and
    /// temporary queue is recorded in `config.dir` before the put is confirmed, and a server
    /// started again on the same directory recovers every item whose put was confirmed and
    /// whose acknowledgement was not (leased items come back ready, in order, with their
    /// redelivery counts and delays; the instance id is kept, so workers' pending results
    /// are still delivered). [`bind`](ServerBuilder::bind) recovers before it listens, and
    /// fails with [`Error::Journal`] if the directory is locked by another server, holds a
    /// corrupt record, or holds items of a queue this builder does not name.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{JournalConfig, Server};
    ///
    /// let dir = std::env::temp_dir().join(format!("distq-doc-{}", std::process::id()));
    /// let server = Server::builder()
    ///     .authkey("abc")
    ///     .queue("tasks")
    ///     .journal(JournalConfig::new(&dir))
    ///     .bind("127.0.0.1:0")?;
    /// server.queue::<u32>("tasks")?.put(7)?;
    /// server.shutdown();
    /// drop(server);
    ///
    /// // Started again on the same directory: the item is still there.
    /// let server = Server::builder()
    ///     .authkey("abc")
    ///     .queue("tasks")
    ///     .journal(JournalConfig::new(&dir))
    ///     .bind("127.0.0.1:0")?;
    /// assert_eq!(server.queue::<u32>("tasks")?.try_get()?, 7);
    /// # drop(server);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn journal(mut self, config: JournalConfig) -> Self {
        self.journal = Some(config);
        self
    }

    /// Also listens on `addr` for Python's manager protocol, so unchanged
    /// `multiprocessing.managers.BaseManager` clients (`manager.connect()`) use these queues:
    /// the same authkey (as bytes) guards it, and the same limits apply. Python values cross
    /// as plain data (None, bool, int, float, str, bytes, list, tuple, dict) translated to
    /// and from the CBOR native clients use; a Python client's `get_task_queue()` is the
    /// queue [`python_queue`](ServerBuilder::python_queue) maps it to, by default
    /// `get_task_queue` → `tasks` and `get_result_queue` → `results` (where those queues
    /// exist), and every queue also under its own name. See [`Server::python_addr`].
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder()
    ///     .authkey("abc")
    ///     .queue("tasks")
    ///     .queue("results")
    ///     .python_bind("127.0.0.1:0")
    ///     .bind("127.0.0.1:0")?;
    /// assert!(server.python_addr().is_some());
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn python_bind(mut self, addr: impl ToSocketAddrs + std::fmt::Debug) -> Self {
        self.python = Some(resolve(addr));
        self
    }

    /// Makes the name a Python client registers (`QueueManager.register('get_jobs')`) stand
    /// for the queue `queue` on the Python listener. Replaces the default
    /// `get_task_queue`/`get_result_queue` names once any is given.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder()
    ///     .authkey("abc")
    ///     .queue("jobs")
    ///     .python_bind("127.0.0.1:0")
    ///     .python_queue("get_jobs", "jobs")
    ///     .bind("127.0.0.1:0")?;
    /// let wrong = distq::Server::builder()
    ///     .authkey("abc")
    ///     .queue("jobs")
    ///     .python_bind("127.0.0.1:0")
    ///     .python_queue("get_jobs", "nope")
    ///     .bind("127.0.0.1:0");
    /// assert!(matches!(wrong, Err(distq::Error::Config(_))));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn python_queue(mut self, typeid: impl Into<String>, queue: impl Into<String>) -> Self {
        self.python_queues.push((typeid.into(), queue.into()));
        self
    }

    /// Binds `addr` and starts serving. Port 0 picks a free port; see [`Server::local_addr`].
    /// A host name that does not resolve is [`Error::Resolve`].
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// // A second server cannot take the same port.
    /// let again = distq::Server::builder().authkey("abc").queue("tasks").bind(server.local_addr());
    /// assert!(matches!(again, Err(distq::Error::Bind { .. })));
    /// let err = distq::Server::builder().authkey("k").queue("q").bind("nosuch.invalid:0");
    /// assert!(matches!(err, Err(distq::Error::Resolve { .. })));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn bind(self, addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Server> {
        let authkey = self.validate()?;
        let addr = resolve(addr)?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let max_item = self
            .config
            .max_frame_size
            .saturating_sub(FRAME_OVERHEAD + ITEM_OVERHEAD);
        let mut instance = auth::new_instance()?;
        // Recovered before the listener opens: no client sees a half-restored queue.
        let journal = match &self.journal {
            Some(config) => Some(Journal::open(config, instance)?),
            None => None,
        };
        let journal_handle = journal.as_ref().map(|(j, _)| Arc::clone(j));
        if let Some(j) = &journal_handle {
            instance = j.instance();
        }
        // Any failure from here on lets go of the journal (its thread, the directory lock).
        let mut close_on_error = CloseOnError(journal_handle.clone());
        let registry = Registry::journaled(
            &self.queues,
            max_item,
            self.config.max_memory,
            &stop_rx,
            journal,
        );
        let registry = registry?;
        let listen = |addr: SocketAddr| {
            socket::listen(addr).map_err(|source| Error::Bind {
                addr: addr.to_string(),
                source,
            })
        };
        let (listener, waker) = listen(addr)?;
        let local_addr = listener.local_addr()?;
        let mut wakers = vec![waker];
        let (python, python_listener) = match self.python {
            Some(python_addr) => {
                let typeids = python_typeids(&self.python_queues, &registry)?;
                let (listener, waker) = listen(python_addr?)?;
                wakers.push(waker);
                (Some(python::PythonQueues::new(typeids)), Some(listener))
            }
            None => (None, None),
        };
        let python_addr = match &python_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let info = server_info(&self.config, max_item, &registry);
        let shared = Arc::new(Shared {
            registry,
            authkey,
            config: self.config,
            local_addr,
            instance,
            journal: journal_handle,
            info,
            pending: Mutex::new(HashMap::new()),
            refusing: AtomicUsize::new(0),
            unauthenticated_warnings: Mutex::default(),
            stopping: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            conns: Mutex::new(HashMap::new()),
            python_addr,
            python,
            wakers,
            sessions: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("distq-accept".into())
            .spawn(move || accept::accept_loop(&accept_shared, &listener, accept::NATIVE));
        let accept = match accept {
            Ok(a) => a,
            Err(e) => {
                shared.request_stop();
                return Err(e.into());
            }
        };
        let mut threads = vec![accept];
        if let Some(listener) = python_listener {
            let python_shared = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name("distq-accept-python".into())
                .spawn(move || accept::accept_loop(&python_shared, &listener, accept::PYTHON));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.request_stop();
                    threads.into_iter().for_each(|t| drop(t.join()));
                    return Err(e.into());
                }
            }
        }
        let reaper_shared = Arc::clone(&shared);
        let reaper = thread::Builder::new()
            .name("distq-leases".into())
            .spawn(move || reaper::expire_loop(&reaper_shared));
        match reaper {
            Ok(r) => threads.push(r),
            Err(e) => {
                shared.request_stop();
                threads.into_iter().for_each(|t| drop(t.join()));
                return Err(e.into());
            }
        }
        log::debug!("listening on {local_addr}");
        close_on_error.0 = None;
        Ok(Server {
            shared,
            threads: Mutex::new(threads),
        })
    }

    fn validate(&self) -> Result<Vec<u8>> {
        let key = match &self.authkey {
            Some(k) if !k.is_empty() => k.clone(),
            Some(_) => return Err(Error::Config("the authkey must not be empty".into())),
            None => {
                return Err(Error::Config(
                    "an authkey is required (authkey(...))".into(),
                ))
            }
        };
        if self.queues.is_empty() {
            return Err(Error::Config("a server needs at least one queue".into()));
        }
        let mut seen = HashSet::new();
        for (name, config) in &self.queues {
            let bad = |why: &str| Err(Error::Config(format!("queue {name:?}: {why}")));
            if name.is_empty() || name.len() > MAX_QUEUE_NAME {
                return bad(&format!("a name takes 1 to {MAX_QUEUE_NAME} bytes"));
            }
            if name.ends_with(DEAD_SUFFIX) {
                return bad(&format!(
                    "names ending in {DEAD_SUFFIX:?} are kept for dead-letter queues"
                ));
            }
            if !seen.insert(name) {
                return bad("named twice");
            }
            if config.capacity == Some(0) {
                return bad("maxsize must be at least 1");
            }
            if config.lease_timeout.is_zero() || config.lease_timeout > MAX_LEASE_TIMEOUT {
                return bad("the lease timeout must be longer than zero and at most a year");
            }
        }
        Ok(key)
    }
}

impl Server {
    /// Starts configuring a server.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// assert_ne!(server.local_addr().port(), 0);
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the server listens on (with the real port when bound to port 0).
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// let client = distq::Client::connect(server.local_addr(), "abc")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The address of the Python listener ([`ServerBuilder::python_bind`]), if it has one.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// assert_eq!(server.python_addr(), None);
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn python_addr(&self) -> Option<SocketAddr> {
        self.shared.python_addr
    }

    /// An in-process handle on the queue `name`: no network hop, same [`Queue`] type as a
    /// client's.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// assert!(server.queue::<u32>("tasks").is_ok());
    /// assert!(matches!(server.queue::<u32>("nope"), Err(distq::Error::UnknownQueue(_))));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn queue<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Queue<T>> {
        // Fixed queues only: a temporary queue belongs to the connection that declared it.
        match self.shared.registry.lookup_fixed(name) {
            Some(core) => Ok(Queue::local(Arc::clone(core))),
            None => Err(Error::UnknownQueue(name.to_owned())),
        }
    }

    /// Every queue's figures and the open connections, as `distq stats` shows them.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// server.queue::<u32>("tasks")?.put(1)?;
    /// let stats = server.stats();
    /// assert_eq!((stats.queues[0].name.as_str(), stats.queues[0].len), ("tasks", 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// A handle that can stop this server from another thread.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// let handle = server.shutdown_handle();
    /// handle.shutdown();
    /// server.wait()?; // returns at once: the handle asked already
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Blocks until a [`ShutdownHandle`] asks the server to stop, then shuts it down
    /// (Python's `serve_forever`). Returns [`Error::Journal`] when the server stopped because
    /// a write or sync of its journal failed.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// let stop = server.shutdown_handle();
    /// let waiter = std::thread::spawn(move || server.wait());
    /// stop.shutdown();
    /// waiter.join().unwrap()?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn wait(&self) -> Result<()> {
        // Never sent on: returns when the sender is dropped by `request_stop`.
        let _ = self.shared.stop_rx.recv();
        self.shutdown();
        match self.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Why the server stopped by itself, if it did: a write or sync of its journal failed
    /// (it never confirms a put it could not persist, so it stops serving instead).
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// assert!(server.failure().is_none());
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn failure(&self) -> Option<Error> {
        let journal = self.shared.journal.as_ref()?;
        journal.failure().map(Error::from)
    }

    /// Stops accepting, wakes blocked queue operations with [`Error::Closed`], closes every
    /// connection and joins every thread the server started. Idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{Client, Error, GetError};
    /// let server = distq::Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
    /// let client = Client::connect(server.local_addr(), "abc")?;
    /// let tasks = client.queue::<u32>("tasks")?;
    /// server.shutdown();
    /// server.shutdown(); // idempotent
    /// assert!(matches!(tasks.try_get(), Err(GetError::Failed(_))));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn shutdown(&self) {
        self.shared.request_stop();
        for thread in std::mem::take(&mut *lock(&self.threads)) {
            let _ = thread.join();
        }
        // The accept thread is gone, so no connection can be added from here on. Reads end
        // first: idle sessions leave at once, while those the stop woke in a wait still write
        // their `closed` reply (a worker then knows its fused get's results were stored),
        // within a short grace; then every connection is closed.
        for stream in lock(&self.shared.conns).values() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        let grace = std::time::Instant::now() + SHUTDOWN_GRACE;
        while std::time::Instant::now() < grace
            && !lock(&self.shared.sessions).iter().all(|s| s.is_finished())
        {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        for stream in lock(&self.shared.conns).values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let sessions = std::mem::take(&mut *lock(&self.shared.sessions));
        for session in sessions {
            let _ = session.join();
        }
        // Every session is gone: nothing appends any more. What is buffered goes to disk.
        if let Some(journal) = &self.shared.journal {
            journal.close();
        }
        log::debug!("server on {} stopped", self.shared.local_addr);
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("server", &self.shared.local_addr)
            .finish()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl ShutdownHandle {
    /// Asks the server to stop; [`Server::wait`] then completes the shutdown and returns.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let stop = server.shutdown_handle();
    /// std::thread::spawn(move || stop.shutdown()); // a signal handler, say
    /// server.wait()?; // returns once the handle was used, with the server shut down
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn shutdown(&self) {
        self.shared.request_stop();
    }
}

/// Closes a journal when `bind` fails after opening it.
struct CloseOnError(Option<Arc<Journal>>);

impl Drop for CloseOnError {
    fn drop(&mut self) {
        if let Some(journal) = &self.0 {
            journal.close();
        }
    }
}

/// How long shutdown lets sessions finish the reply they are writing.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What every welcome tells a client about this server.
fn server_info(config: &ServerConfig, max_item: usize, registry: &Registry) -> ServerInfo {
    ServerInfo {
        max_frame_size: config.max_frame_size as u64,
        max_item: max_item as u64,
        max_memory: config.max_memory,
        features: vec![
            FEATURE_DELAY.to_owned(),
            FEATURE_TEMPORARY.to_owned(),
            FEATURE_UNCOUNTED_NACK.to_owned(),
        ],
        queues: registry
            .primaries()
            .iter()
            .map(|q| QueueInfo {
                name: q.name().to_owned(),
                capacity: q.capacity().map(|c| c as u64),
                lease_ms: millis(q.lease_timeout()),
                max_redeliveries: q.max_redeliveries().unwrap_or(0),
            })
            .collect(),
    }
}

/// The names Python clients register on the Python listener, each with its queue: those
/// given, else `get_task_queue` → `tasks` and `get_result_queue` → `results` where those
/// exist; and every queue under its own name.
fn python_typeids(
    given: &[(String, String)],
    registry: &Registry,
) -> Result<HashMap<String, Arc<crate::core::QueueCore>>> {
    let defaults = [
        ("get_task_queue".to_owned(), "tasks".to_owned()),
        ("get_result_queue".to_owned(), "results".to_owned()),
    ];
    let mut typeids = HashMap::new();
    for queue in registry.all() {
        typeids.insert(queue.name().to_owned(), Arc::clone(queue));
    }
    let pairs: Vec<_> = match given.is_empty() {
        true => defaults
            .into_iter()
            .filter(|(_, q)| registry.lookup_fixed(q).is_some())
            .collect(),
        false => given.to_vec(),
    };
    for (typeid, queue) in pairs {
        let core = registry.lookup_fixed(&queue).ok_or_else(|| {
            Error::Config(format!(
                "the Python name {typeid:?} maps to {queue:?}, which is not a queue of this server"
            ))
        })?;
        typeids.insert(typeid, Arc::clone(core));
    }
    Ok(typeids)
}

fn resolve(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<SocketAddr> {
    Ok(crate::client::resolve_all(&addr)?[0])
}
