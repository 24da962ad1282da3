//! Settings for servers and clients, each a plain struct with visible defaults.

use std::time::Duration;

/// The default largest frame body accepted or sent: 8 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 * 1024 * 1024;

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            handshake_timeout: Some(Duration::from_secs(10)),
            write_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl ServerConfig {
    /// Sets the largest frame body in bytes (capped at `u32::MAX`). Defaults to 8 MiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.min(u32::MAX as usize);
        self
    }

    /// Sets the handshake deadline; `None` waits forever. Defaults to 10 s.
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the write timeout for replies; `None` waits forever. Defaults to 30 s.
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_timeout = timeout;
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
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Some(Duration::from_secs(10)),
            handshake_timeout: Some(Duration::from_secs(10)),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            reply_grace: Duration::from_secs(10),
            write_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl ClientConfig {
    /// Sets the TCP connect timeout; `None` leaves it to the operating system. Defaults to 10 s.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the handshake timeout; `None` waits forever. Defaults to 10 s.
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the largest frame body in bytes (capped at `u32::MAX`). Defaults to 8 MiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.min(u32::MAX as usize);
        self
    }

    /// Sets the grace period past a request's timeout. Defaults to 10 s.
    pub fn reply_grace(mut self, grace: Duration) -> Self {
        self.reply_grace = grace;
        self
    }

    /// Sets the write timeout for requests; `None` waits forever. Defaults to 30 s.
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_timeout = timeout;
        self
    }
}
