//! The client: one authenticated connection, shared by the queue handles made from it.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth;
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::frame::Framed;
use crate::message::{Reply, Request};
use crate::queue::Queue;
use crate::socket;

/// A connection to a distq server, like Python's `BaseManager.connect()`.
///
/// # About threads and cloning
///
/// A client is one TCP connection that serves one request at a time: queue handles made from
/// it share it, and a blocking `get` on one handle holds up the others until it returns. Give
/// each thread that blocks on a queue its own `Client`; clone a client (cheap, same
/// connection) to hand it around.
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
    conn: Arc<Connection>,
}

/// Configures and opens a [`Client`]; from [`Client::builder`].
#[derive(Debug, Default)]
pub struct ClientBuilder {
    config: ClientConfig,
}

/// The shared connection behind a client's queue handles.
pub(crate) struct Connection {
    /// `None` once an I/O failure left the stream in an unknown state.
    framed: Mutex<Option<Wire>>,
    config: ClientConfig,
    peer: SocketAddr,
}

struct Wire {
    framed: Framed<TcpStream>,
    /// The read timeout last set on the socket, to skip redundant system calls.
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.conn.peer)
            .finish()
    }
}

impl ClientBuilder {
    /// Replaces all settings. Defaults to [`ClientConfig::default`].
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the TCP connect timeout. Defaults to 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = Some(timeout);
        self
    }

    /// Sets the largest frame body in bytes. Defaults to 8 MiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config = self.config.max_frame_size(bytes);
        self
    }

    /// Connects to `addr` (trying each address it resolves to) and authenticates with
    /// `authkey`.
    pub fn connect(self, addr: impl ToSocketAddrs, authkey: impl AsRef<[u8]>) -> Result<Client> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let mut last = Error::Config("the server address resolves to nothing".into());
        for addr in addrs {
            match open(addr, authkey.as_ref(), &self.config) {
                Ok(conn) => {
                    return Ok(Client {
                        conn: Arc::new(conn),
                    })
                }
                Err(e @ Error::Connect { .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

fn open(addr: SocketAddr, authkey: &[u8], config: &ClientConfig) -> Result<Connection> {
    let stream =
        socket::connect(addr, config.connect_timeout).map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?;
    stream.set_read_timeout(config.handshake_timeout)?;
    stream.set_write_timeout(config.write_timeout)?;
    let mut framed = Framed::new(stream, config.max_frame_size);
    auth::client_handshake(&mut framed, authkey).map_err(|e| match e {
        // A server that hangs up mid-handshake is most often refusing us (too many
        // connections, or not a distq server); say so rather than a bare "closed".
        Error::Closed => {
            Error::Protocol("the server closed the connection during the handshake".into())
        }
        e => e,
    })?;
    log::debug!("connected to {addr}");
    Ok(Connection {
        framed: Mutex::new(Some(Wire {
            framed,
            read_timeout: config.handshake_timeout,
        })),
        config: config.clone(),
        peer: addr,
    })
}

impl Client {
    /// Connects to a server with default settings and authenticates with `authkey`.
    ///
    /// Fails with [`Error::Connect`] when the server cannot be reached and [`Error::Auth`]
    /// when the keys differ.
    pub fn connect(addr: impl ToSocketAddrs, authkey: impl AsRef<[u8]>) -> Result<Client> {
        ClientBuilder::default().connect(addr, authkey)
    }

    /// Starts configuring a client.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// # let addr = server.local_addr();
    /// let client = distq::Client::builder()
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .connect(addr, "k")?;
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer
    }

    /// A handle on the server's queue `name`; [`Error::UnknownQueue`] if it hosts none.
    pub fn queue<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Queue<T>> {
        let queue = Queue::remote(Arc::clone(&self.conn), name);
        queue.len()?;
        Ok(queue)
    }
}

impl Connection {
    /// The client's settings.
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends `request` and reads its reply, waiting at most `wait` (plus the grace period)
    /// for it; `None` waits as long as the server takes.
    pub(crate) fn call(&self, request: &Request, wait: Option<Duration>) -> Result<Reply> {
        let mut guard = self.framed.lock().unwrap_or_else(PoisonError::into_inner);
        let wire = guard.as_mut().ok_or_else(|| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "an earlier failure broke this connection; connect a new client",
            ))
        })?;
        // A zero socket timeout is an error to the OS, not "don't wait": use the smallest one.
        let read_timeout = wait
            .map(|w| w.saturating_add(self.config.reply_grace))
            .map(|t| t.max(Duration::from_millis(1)));
        let result = wire.exchange(request, read_timeout);
        match result {
            // A refused oversized request never reached the wire: the stream is still fine.
            Err(Error::FrameTooLarge { .. }) | Ok(_) => result,
            Err(e) => {
                // Mid-exchange the stream's state is unknown; never reuse it.
                *guard = None;
                Err(e)
            }
        }
    }
}

impl Wire {
    fn exchange(&mut self, request: &Request, read_timeout: Option<Duration>) -> Result<Reply> {
        if self.read_timeout != read_timeout {
            self.framed.get_ref().set_read_timeout(read_timeout)?;
            self.read_timeout = read_timeout;
        }
        self.framed.send(request)?;
        self.framed.recv()
    }
}
