//! The client: one authenticated connection, shared by the queue handles made from it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{ClientConfig, Reconnect};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::stats::Stats;
use crate::wire::message::{Reply, Request, FEATURE_TEMPORARY, MAX_QUEUE_NAME};

/// A connection to a distq server, like Python's `BaseManager.connect()`.
///
/// # About threads and cloning
///
/// A client is one TCP connection that serves one request at a time: queue handles made from
/// it share it, and a blocking `get` on one handle holds up the others until it returns. Give
/// each thread that blocks on a queue its own `Client`; clone a client (cheap, same
/// connection) to hand it around.
///
/// Unless [`ClientConfig::auto_touch`] is turned off, each client runs one background thread
/// that extends the leases it holds and sends the acknowledgements of dropped handles.
///
/// # Examples
///
/// ```
/// use distq::{Client, Server};
///
/// let server = Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
/// let client = Client::connect(server.local_addr(), "abc")?;
/// let tasks = client.queue::<String>("tasks")?;
/// tasks.put("hello".to_string())?;
/// assert_eq!(tasks.try_get()?, "hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Client {
    route: Route,
}

/// What a client talks to.
#[derive(Clone)]
enum Route {
    Native(Arc<Connection>),
    #[cfg(feature = "redis")]
    Redis(Arc<crate::backend::redis::RedisConn>),
}

/// The random id a server picks when it starts listening, from
/// [`Client::server_instance`]. A server restarted on the same address has a new one: what a
/// client held for the old instance (leases, and results of the tasks they lease) means
/// nothing to the new one. It shows as 32 hex digits.
///
/// # Examples
///
/// ```
/// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
/// let a = distq::Client::connect(server.local_addr(), "k")?;
/// let b = distq::Client::connect(server.local_addr(), "k")?;
/// assert_eq!(a.server_instance(), b.server_instance());
/// assert_eq!(a.server_instance().to_string().len(), 32);
/// # Ok::<(), distq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerInstance([u8; 16]);

impl std::fmt::Display for ServerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::connection::hex(&self.0))
    }
}

/// Configures and opens a [`Client`]; from [`Client::builder`].
#[derive(Debug, Default)]
pub struct ClientBuilder {
    config: ClientConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer_addr())
            .finish()
    }
}

/// Every address `addr` resolves to; [`Error::Resolve`] if none.
pub(crate) fn resolve_all(
    addr: &(impl ToSocketAddrs + std::fmt::Debug),
) -> Result<Vec<SocketAddr>> {
    let failed = |source| Error::Resolve {
        addr: shown(addr),
        source,
    };
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(failed)?.collect();
    if addrs.is_empty() {
        let none = std::io::Error::new(std::io::ErrorKind::NotFound, "no address found");
        return Err(failed(none));
    }
    Ok(addrs)
}

/// `url` with `authkey` as its password when it names none (and the key is not empty).
#[cfg(feature = "redis")]
fn with_password(url: &str, authkey: &[u8]) -> Result<String> {
    if authkey.is_empty() {
        return Ok(url.to_owned());
    }
    let key = std::str::from_utf8(authkey)
        .map_err(|_| Error::Config("a Redis password must be text".into()))?;
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let host_end = rest.find('/').unwrap_or(rest.len());
    if rest[..host_end].contains('@') {
        return Ok(url.to_owned());
    }
    let mut encoded = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(b as char)
            }
            _ => encoded.push_str(&format!("%{b:02X}")),
        }
    }
    Ok(format!("{scheme}://:{encoded}@{rest}"))
}

/// A string as it was before `Debug` escaped it (a password may hold `\` or `"`).
fn undebug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(next @ ('\\' | '"' | '\''))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// An address as the caller wrote it: `Debug`, without the quotes of a string.
fn shown(addr: &impl std::fmt::Debug) -> String {
    let text = format!("{addr:?}");
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.to_owned(),
        None => text,
    }
}

impl ClientBuilder {
    /// Replaces all settings. Defaults to [`ClientConfig::default`].
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{Client, ClientConfig};
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let client = Client::builder()
    ///     .config(ClientConfig::default().auto_touch(false))
    ///     .connect(server.local_addr(), "k")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the TCP connect timeout. Defaults to 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let client = distq::Client::builder()
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .connect(server.local_addr(), "k")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = Some(timeout);
        self
    }

    /// Sets the largest frame body in bytes. Defaults to 8 MiB.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let client = distq::Client::builder()
    ///     .max_frame_size(1024 * 1024)
    ///     .connect(server.local_addr(), "k")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config = self.config.max_frame_size(bytes);
        self
    }

    /// Reconnects after a break under `policy`. Defaults to no reconnection.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use distq::Reconnect;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let client = distq::Client::builder()
    ///     .reconnect(Reconnect::default().give_up(Duration::from_secs(120)))
    ///     .connect(server.local_addr(), "k")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.config.reconnect = Some(policy);
        self
    }

    /// Connects to `addr` (trying each address it resolves to) and authenticates with
    /// `authkey`. A host name that does not resolve is [`Error::Resolve`]. A `redis://` or
    /// `rediss://` URL connects to Redis instead, as [`Client::connect`] says.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// # let addr = server.local_addr();
    /// let client = distq::Client::builder().connect(addr, "k")?;
    /// assert_eq!(client.peer_addr(), addr);
    /// let err = distq::Client::builder().connect("nosuch.invalid:1", "k").unwrap_err();
    /// assert!(matches!(err, distq::Error::Resolve { .. }), "{err}");
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn connect(
        self,
        addr: impl ToSocketAddrs + std::fmt::Debug,
        authkey: impl AsRef<[u8]>,
    ) -> Result<Client> {
        let text = shown(&addr);
        if text.starts_with("redis://") || text.starts_with("rediss://") {
            return self.connect_redis(&undebug(&text), authkey.as_ref());
        }
        let addrs = resolve_all(&addr)?;
        let conn = Connection::open(addrs, authkey.as_ref(), self.config)?;
        Ok(Client {
            route: Route::Native(conn),
        })
    }

    #[cfg(feature = "redis")]
    fn connect_redis(self, url: &str, authkey: &[u8]) -> Result<Client> {
        let url = with_password(url, authkey)?;
        let conn = crate::backend::redis::RedisConn::open(&url, self.config)?;
        Ok(Client {
            route: Route::Redis(conn),
        })
    }

    #[cfg(not(feature = "redis"))]
    fn connect_redis(self, _url: &str, _authkey: &[u8]) -> Result<Client> {
        Err(Error::Config(
            "this build of distq has no Redis support: build it with the `redis` feature".into(),
        ))
    }
}

impl Client {
    /// Connects to a server with default settings and authenticates with `authkey`.
    ///
    /// Fails with [`Error::Connect`] when the server cannot be reached, [`Error::Auth`] when
    /// the keys differ and [`Error::Refused`] when the server is at its connection limit.
    ///
    /// With the `redis` feature, `addr` may be a Redis URL, `redis://[USER:PASSWORD@]HOST:PORT`
    /// (`rediss://` for TLS, with `redis-tls`), a Redis Cluster's node included: the queues
    /// then live in Redis, declared with [`Client::declare_queue`], and `authkey` is the
    /// password when the URL has none (`""` for none). Leases there outlive a closed
    /// connection until their timeout (see the README's *Past one machine: Redis*). Without
    /// the feature a Redis URL is [`Error::Config`].
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{AuthFailure, Client, Error};
    /// # let server = distq::Server::builder().authkey("k").queue("tasks").bind("127.0.0.1:0")?;
    /// # let addr = server.local_addr();
    /// let client = Client::connect(addr, "k")?;
    /// assert!(matches!(
    ///     Client::connect(addr, "wrong key"),
    ///     Err(Error::Auth(AuthFailure::Rejected))
    /// ));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn connect(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        authkey: impl AsRef<[u8]>,
    ) -> Result<Client> {
        ClientBuilder::default().connect(addr, authkey)
    }

    /// The id of the server instance this client is connected to (the one it last
    /// reconnected to). It changes when the server restarts.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let client = distq::Client::connect(server.local_addr(), "k")?;
    /// println!("connected to server instance {}", client.server_instance());
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn server_instance(&self) -> ServerInstance {
        match &self.route {
            Route::Native(conn) => ServerInstance(conn.instance()),
            #[cfg(feature = "redis")]
            Route::Redis(conn) => ServerInstance(conn.instance()),
        }
    }

    /// Starts configuring a client.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use distq::Reconnect;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// # let addr = server.local_addr();
    /// let client = distq::Client::builder()
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .reconnect(Reconnect::default().give_up(Duration::from_secs(30)))
    ///     .connect(addr, "k")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The server's address.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let client = distq::Client::connect(server.local_addr(), "k")?;
    /// assert_eq!(client.peer_addr(), server.local_addr());
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn peer_addr(&self) -> SocketAddr {
        match &self.route {
            Route::Native(conn) => conn.peer(),
            #[cfg(feature = "redis")]
            Route::Redis(conn) => conn.peer(),
        }
    }

    /// Whether this client's queues live in Redis (it connected to a `redis://` URL).
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let client = distq::Client::connect(server.local_addr(), "k")?;
    /// assert!(!client.is_redis());
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn is_redis(&self) -> bool {
        !matches!(self.route, Route::Native(_))
    }

    /// Creates queue `name` with `config` (its bound, lease timeout and redelivery limit),
    /// and its dead-letter queue `NAME.dead`, or gives an existing queue these settings: on
    /// Redis, where queues outlive every client, this is how they come to be. A native
    /// server's queues are those it was started with: there this is
    /// [`Error::Unsupported`].
    ///
    /// Queues whose names share the part before the first `.` (`jobs.tasks` and
    /// `jobs.results`) are one *family*: on Redis Cluster they live on one node, so a
    /// worker's fused cycle between them is one atomic call.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::{Error, QueueConfig};
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let client = distq::Client::connect(server.local_addr(), "k")?;
    /// // On Redis: client.declare_queue("jobs.tasks", QueueConfig::default())?;
    /// let err = client.declare_queue("jobs.tasks", QueueConfig::default()).unwrap_err();
    /// assert!(matches!(err, Error::Unsupported { .. }));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn declare_queue(&self, name: &str, config: crate::QueueConfig) -> Result<()> {
        match &self.route {
            Route::Native(_) => {
                let _ = (name, config);
                Err(Error::Unsupported { feature: "declare" })
            }
            #[cfg(feature = "redis")]
            Route::Redis(conn) => conn.declare(name, &config),
        }
    }

    /// A handle on the server's queue `name`; [`Error::UnknownQueue`] if it hosts none.
    /// Every server queue `NAME` has a dead-letter queue `NAME.dead`, readable the same way.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("tasks").bind("127.0.0.1:0")?;
    /// let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let tasks = client.queue::<u64>("tasks")?;
    /// let dead = client.queue::<u64>("tasks.dead")?; // poison items end up here
    /// assert!(matches!(client.queue::<u64>("nope"), Err(distq::Error::UnknownQueue(_))));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn queue<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Queue<T>> {
        if name.len() > MAX_QUEUE_NAME {
            return Err(Error::UnknownQueue(name.to_owned()));
        }
        let queue = match &self.route {
            Route::Native(conn) => Queue::remote(Arc::clone(conn), name),
            #[cfg(feature = "redis")]
            Route::Redis(conn) => Queue::redis(Arc::clone(conn), name),
        };
        queue.len()?;
        Ok(queue)
    }

    /// Creates the temporary queue `name`, owned by this client, and returns a handle on it:
    /// a queue only this client reads, such as the results of the tasks it submits. Any
    /// number of clients can each have their own on a plain server.
    ///
    /// The server removes it once this client has disconnected and it is empty (after a
    /// few seconds' grace), or once no request has touched it for `idle_ttl` (capped at 7
    /// days; its items are then dropped). On Redis its keys expire `idle_ttl` after the last
    /// call that used it, and it is removed when this client is dropped leaving it empty;
    /// any client may declare it again (there is no [`Error::QueueInUse`] there). Declaring a temporary queue whose creator is gone
    /// adopts it, items and all: that is how a restarted client resumes. With a
    /// [`Reconnect`] policy this client declares its temporary queues again after each
    /// reconnection, before anything else.
    ///
    /// Fails with [`Error::QueueInUse`] when another connected client created it,
    /// [`Error::NameConflict`] for a name the server's own queues use (or one ending in
    /// `.dead`), [`Error::TemporaryLimit`] when the server holds as many as it may, and
    /// [`Error::Unsupported`] on a server too old to have them. Temporary queues never
    /// dead-letter. Declaring the same name again on this client is harmless.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("tasks").bind("127.0.0.1:0")?;
    /// let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let mine = client.temporary_queue::<String>("results-7f3a", Duration::from_secs(3600))?;
    /// mine.put("done".to_string())?;
    /// assert_eq!(mine.try_get()?, "done");
    /// let stats = client.stats()?;
    /// assert!(stats.queues.iter().any(|q| q.name == "results-7f3a" && q.temporary));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn temporary_queue<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        idle_ttl: Duration,
    ) -> Result<Queue<T>> {
        let conn = match &self.route {
            Route::Native(conn) if conn.supports(FEATURE_TEMPORARY) => conn,
            #[cfg(feature = "redis")]
            Route::Redis(conn) => {
                conn.declare_temporary(name, idle_ttl)?;
                return Ok(Queue::redis(Arc::clone(conn), name));
            }
            _ => {
                return Err(Error::Unsupported {
                    feature: FEATURE_TEMPORARY,
                })
            }
        };
        match conn.declare(name, idle_ttl)? {
            Reply::Done => Ok(Queue::remote(Arc::clone(conn), name)),
            other => Err(crate::backend::reply_error(other, name)),
        }
    }

    /// Every queue's length, leases in flight, bound, dead letters and totals, and the
    /// connections open.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("tasks").bind("127.0.0.1:0")?;
    /// let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let stats = client.stats()?;
    /// assert_eq!(stats.queues[0].name, "tasks");
    /// assert_eq!(stats.connections, 1);
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        // Without the `redis` feature there is one route only.
        #[allow(clippy::infallible_destructuring_match)]
        let conn = match &self.route {
            Route::Native(conn) => conn,
            #[cfg(feature = "redis")]
            Route::Redis(conn) => return conn.stats(),
        };
        match conn
            .call(Some(Duration::ZERO), &mut |_, _| Request::Stats)?
            .0
        {
            Reply::Stats { stats } => Ok(stats),
            _ => Err(Error::Protocol(
                "the server's reply does not answer the request".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_comes_back_as_it_was_written() {
        let url = r#"redis://:pa\ss"word@h:1"#;
        assert_eq!(super::undebug(&super::shown(&url)), url);
    }
}
