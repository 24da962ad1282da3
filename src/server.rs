//! The server: a listener, an accept thread, one thread per connection, and the named queues.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{QueueConfig, ServerConfig, MAX_LEASE_TIMEOUT};
use crate::error::{Error, Result};
use crate::message::MAX_QUEUE_NAME;
use crate::queue::Queue;
use crate::registry::{Registry, DEAD_SUFFIX, FRAME_OVERHEAD, ITEM_OVERHEAD};
use crate::session;
use crate::socket;
use crate::stats::Stats;

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
}

/// Stops a [`Server`] from another thread (a signal handler, say); from
/// [`Server::shutdown_handle`].
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

/// What the accept thread, the sessions and the handles share.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) authkey: Vec<u8>,
    pub(crate) config: ServerConfig,
    local_addr: SocketAddr,
    /// Connections accepted and still in the handshake.
    handshaking: AtomicUsize,
    /// Refusals being delivered.
    refusing: AtomicUsize,
    stopping: AtomicBool,
    /// Never sent on; dropping it wakes every blocked queue wait (see `registry`).
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    /// A clone of every open connection, to shut them down and wake their threads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    sessions: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
}

impl ServerBuilder {
    /// Sets the shared secret clients must prove they hold. Required; there is no default.
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> Self {
        self.authkey = Some(key.as_ref().to_vec());
        self
    }

    /// Hosts an unbounded queue called `name` with the default [`QueueConfig`], and its
    /// dead-letter queue `name.dead`.
    pub fn queue(self, name: impl Into<String>) -> Self {
        self.queue_with(name, QueueConfig::default())
    }

    /// Hosts a queue called `name` holding at most `maxsize` waiting items; puts wait for
    /// room.
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
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds `addr` and starts serving. Port 0 picks a free port; see [`Server::local_addr`].
    pub fn bind(self, addr: impl ToSocketAddrs) -> Result<Server> {
        let authkey = self.validate()?;
        let addr = resolve(addr)?;
        let listener = socket::listen(addr).map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let local_addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let max_item = self
            .config
            .max_frame_size
            .saturating_sub(FRAME_OVERHEAD + ITEM_OVERHEAD);
        let shared = Arc::new(Shared {
            registry: Registry::new(&self.queues, max_item, &stop_rx),
            authkey,
            config: self.config,
            local_addr,
            handshaking: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            conns: Mutex::new(HashMap::new()),
            sessions: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("distq-accept".into())
            .spawn(move || accept_loop(&accept_shared, &listener))?;
        let reaper_shared = Arc::clone(&shared);
        let reaper = thread::Builder::new()
            .name("distq-leases".into())
            .spawn(move || expire_loop(&reaper_shared));
        let reaper = match reaper {
            Ok(r) => r,
            Err(e) => {
                shared.request_stop();
                let _ = accept.join();
                return Err(e.into());
            }
        };
        log::debug!("listening on {local_addr}");
        Ok(Server {
            shared,
            threads: Mutex::new(vec![accept, reaper]),
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
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
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
        match self.shared.registry.lookup(name) {
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
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Blocks until a [`ShutdownHandle`] asks the server to stop, then shuts it down
    /// (Python's `serve_forever`).
    pub fn wait(&self) {
        // Never sent on: returns when the sender is dropped by `request_stop`.
        let _ = self.shared.stop_rx.recv();
        self.shutdown();
    }

    /// Stops accepting, wakes blocked queue operations with [`Error::Closed`], closes every
    /// connection and joins every thread the server started. Idempotent.
    pub fn shutdown(&self) {
        self.shared.request_stop();
        for thread in std::mem::take(&mut *lock(&self.threads)) {
            let _ = thread.join();
        }
        // The accept thread is gone, so no connection can be added from here on.
        for stream in lock(&self.shared.conns).values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let sessions = std::mem::take(&mut *lock(&self.shared.sessions));
        for session in sessions {
            let _ = session.join();
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
    pub fn shutdown(&self) {
        self.shared.request_stop();
    }
}

impl Shared {
    /// Figures for `stats`.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            queues: self
                .registry
                .primaries()
                .iter()
                .map(|q| q.stats())
                .collect(),
            connections: lock(&self.conns).len() as u64,
        }
    }

    /// A session finished its handshake, either way.
    pub(crate) fn handshake_done(&self) {
        self.handshaking.fetch_sub(1, Ordering::SeqCst);
    }

    fn request_stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.stop_tx).take();
        // Wake the accept thread, which then sees the flag.
        match TcpStream::connect_timeout(&wake_addr(self.local_addr), Duration::from_secs(1)) {
            Ok(_) => {}
            // A client's connection woke it first, and it has closed the listener already.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => log::warn!("could not wake the accept thread: {e}"),
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = start_session(shared, stream, peer) {
                    log::warn!("{peer}: could not start a session: {e}");
                }
            }
            Err(e) => {
                // Out of descriptors, aborted handshakes and the like pass; the server goes on.
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
        reap_finished(shared);
    }
}

fn start_session(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let open = lock(&shared.conns).len();
    if open >= shared.config.max_connections {
        let reason = format!(
            "too many connections (the limit is {})",
            shared.config.max_connections
        );
        return refuse(shared, stream, peer, reason);
    }
    if shared.handshaking.load(Ordering::SeqCst) >= shared.config.max_handshakes {
        let reason = format!(
            "too many connections in the handshake (the limit is {})",
            shared.config.max_handshakes
        );
        return refuse(shared, stream, peer, reason);
    }
    socket::tune(&stream)?;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&shared.conns).insert(id, stream.try_clone()?);
    shared.handshaking.fetch_add(1, Ordering::SeqCst);
    let session_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("distq-conn-{id}"))
        .stack_size(SESSION_STACK)
        .spawn(move || {
            log::debug!("{peer}: connected");
            // Even if the session panics, its connection leaves the registry and closes.
            let _registered = Registered {
                shared: &session_shared,
                id,
            };
            session::serve(stream, peer, id, &session_shared);
        });
    match spawned {
        Ok(handle) => {
            lock(&shared.sessions).push(handle);
            Ok(())
        }
        Err(e) => {
            shared.handshake_done();
            lock(&shared.conns).remove(&id);
            Err(e)
        }
    }
}

/// A connection's place in the registry, given up on drop.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(stream) = lock(&self.shared.conns).remove(&self.id) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Refuses a connection on a short-lived thread, so a slow peer cannot stall the accept
/// loop; past `MAX_REFUSERS` at once, the connection is just closed.
fn refuse(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    reason: String,
) -> io::Result<()> {
    if shared.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSERS {
        shared.refusing.fetch_sub(1, Ordering::SeqCst);
        log::warn!("{peer}: refused without a word: {reason}");
        return Ok(());
    }
    let refuser_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("distq-refuse".into())
        .stack_size(SESSION_STACK)
        .spawn(move || {
            session::refuse(stream, peer, &reason);
            refuser_shared.refusing.fetch_sub(1, Ordering::SeqCst);
        });
    match spawned {
        Ok(handle) => {
            lock(&shared.sessions).push(handle);
            Ok(())
        }
        Err(e) => {
            shared.refusing.fetch_sub(1, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// The most refusals delivered at once.
const MAX_REFUSERS: usize = 16;

/// Sessions need little stack (no deep recursion; CBOR nesting is capped by the decoder), so
/// thousands of idle connections stay cheap.
const SESSION_STACK: usize = 512 * 1024;

/// Returns expired leases to their queues until the server stops.
fn expire_loop(shared: &Shared) {
    let shortest = shared
        .registry
        .all()
        .iter()
        .map(|q| q.lease_timeout())
        .min()
        .unwrap_or(Duration::from_secs(1));
    // Expiry is checked often enough to be late by a small fraction of the lease at most.
    let tick = (shortest / 20).clamp(Duration::from_millis(5), Duration::from_millis(100));
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = shared.stop_rx.recv_timeout(tick)
    {
        let now = std::time::Instant::now();
        for queue in shared.registry.all() {
            queue.expire(now);
        }
    }
}

/// Joins the threads of connections that have ended, so the list stays short.
fn reap_finished(shared: &Shared) {
    let mut sessions = lock(&shared.sessions);
    let (done, running): (Vec<_>, Vec<_>) = sessions.drain(..).partition(|h| h.is_finished());
    *sessions = running;
    drop(sessions);
    for handle in done {
        let _ = handle.join();
    }
}

fn resolve(addr: impl ToSocketAddrs) -> Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| Error::Config("the bind address resolves to nothing".into()))
}

/// Where to connect to reach our own listener (an unspecified address is not dialable).
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// Locks a mutex, carrying on if a thread panicked while holding it: the data guarded here
/// (handles and stream clones) stays valid.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
