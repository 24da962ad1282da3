//! One connection to Redis (a single server, or a cluster through its slot map), opened
//! again after a break under the client's [`Reconnect`] policy, with distq's function
//! library loaded.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use ::redis::{Cmd, ConnectionLike, RedisError, Value};

use crate::config::ClientConfig;
use crate::error::{AuthFailure, Error, Result};

/// The function library, loaded on every connection that does not find it.
const LIBRARY: &str = include_str!("distq.lua");
/// Its name, from its first line: a change to what it does is a new name.
const LIBRARY_NAME: &str = "distq_1";

/// What a URL points at.
#[derive(Clone)]
enum Target {
    Single(::redis::Client),
    Cluster(::redis::cluster::ClusterClient),
}

enum Raw {
    Single(::redis::Connection),
    Cluster(Box<::redis::cluster::ClusterConnection>),
}

impl Raw {
    fn conn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Raw::Single(c) => c,
            Raw::Cluster(c) => &mut **c,
        }
    }

    fn set_read_timeout(&self, timeout: Duration) -> ::redis::RedisResult<()> {
        match self {
            Raw::Single(c) => c.set_read_timeout(Some(timeout)),
            Raw::Cluster(c) => c.set_read_timeout(Some(timeout)),
        }
    }
}

/// A connection that reopens itself.
pub(crate) struct Link {
    target: Target,
    shown: String,
    config: ClientConfig,
    raw: Option<Raw>,
    read_timeout: Option<Duration>,
    /// Since when calls have failed (kept across reconnections until one succeeds, so a
    /// command that breaks every connection still meets the policy's `give_up`).
    broken_since: Option<Instant>,
    backoff: Duration,
    next_attempt: Option<Instant>,
    /// Whether the loss was logged (and the reconnection is to be).
    lost_said: bool,
    /// Whether the last attempt found Redis up but not ready (loading its data).
    loading: bool,
}

/// What is learnt on the first connection.
pub(crate) struct Opened {
    pub(crate) link: Link,
    pub(crate) peer: SocketAddr,
    pub(crate) run_id: [u8; 16],
    pub(crate) cluster: bool,
}

/// The URL without its password, for messages.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Link {
    /// Connects to the server (or cluster) at `url`, learning which it is.
    pub(crate) fn open(url: &str, config: ClientConfig) -> Result<Opened> {
        let shown = redacted(url);
        let client = ::redis::Client::open(url).map_err(|e| {
            Error::Config(format!(
                "{shown} is not a Redis URL (redis://[USER:PASSWORD@]HOST:PORT[/DB]): {e}"
            ))
        })?;
        let peer = peer_of(&client, &shown)?;
        let mut single = connect_single(&client, &config, &shown)?;
        let info: String = ::redis::cmd("INFO")
            .arg("server")
            .arg("cluster")
            .query(&mut single)
            .map_err(|e| error(e, &shown))?;
        let run_id = run_id(&info);
        let cluster = info.lines().any(|l| l.trim() == "cluster_enabled:1");
        let (target, raw) = if cluster {
            let mut builder = ::redis::cluster::ClusterClient::builder(vec![url]);
            if let Some(t) = config.connect_timeout {
                builder = builder.connection_timeout(t);
            }
            let target = builder
                .build()
                .map_err(|e| Error::Config(format!("{shown}: {e}")))?;
            let conn = target.get_connection().map_err(|e| error(e, &shown))?;
            (Target::Cluster(target), Raw::Cluster(Box::new(conn)))
        } else {
            (Target::Single(client), Raw::Single(single))
        };
        let mut link = Link::new(target, shown, config, Some(raw));
        link.load_library()?;
        Ok(Opened {
            link,
            peer,
            run_id,
            cluster,
        })
    }

    fn new(target: Target, shown: String, config: ClientConfig, raw: Option<Raw>) -> Link {
        Link {
            target,
            shown,
            config,
            raw,
            read_timeout: None,
            broken_since: None,
            backoff: Duration::ZERO,
            next_attempt: None,
            lost_said: false,
            loading: false,
        }
    }

    /// Another connection to the same place, opened on first use.
    pub(crate) fn sibling(&self) -> Link {
        Link::new(
            self.target.clone(),
            self.shown.clone(),
            self.config.clone(),
            None,
        )
    }

    /// Runs `cmd`, waiting up to `block` beyond the usual reply time (for a blocking read).
    /// A broken connection is opened again while the reconnection policy allows, until
    /// `deadline`; without a policy the first failure is returned. `cmd` is sent again after
    /// a break only if `resend` says it may be: one that may have been carried out with its
    /// reply lost (a take) fails with `Reconnecting` instead, for its caller to call again.
    /// Refusals Redis means as "wait" (loading its data, a failover) are waited out the same
    /// way: those commands were not carried out.
    pub(crate) fn query(
        &mut self,
        cmd: &Cmd,
        block: Duration,
        deadline: Option<Instant>,
        resend: bool,
    ) -> Result<Value> {
        let mut reloaded = false;
        loop {
            if self.raw.is_none() {
                self.reconnect(deadline)?;
            }
            let timeout = block + self.config.reply_grace;
            let raw = self.raw.as_mut().ok_or(Error::Closed)?;
            if self.read_timeout != Some(timeout) {
                if let Err(e) = raw.set_read_timeout(timeout) {
                    self.broke(&e);
                    continue;
                }
                self.read_timeout = Some(timeout);
            }
            match raw.conn().req_command(cmd).and_then(refusal) {
                Ok(value) => {
                    self.answered();
                    return Ok(value);
                }
                // A server restarted without persistence has no functions: load them once.
                Err(e) if !reloaded && e.code() == Some("ERR") && missing_function(&e) => {
                    self.answered();
                    reloaded = true;
                    self.load_library()?;
                }
                Err(e) if broken(&e) || transient(&e) => {
                    let failure = error(e.clone(), &self.shown);
                    self.broke(&e);
                    if self.config.reconnect.is_none() {
                        return Err(failure);
                    }
                    if !resend && !transient(&e) {
                        return Err(Error::Reconnecting);
                    }
                }
                Err(e) => {
                    self.answered();
                    return Err(error(e, &self.shown));
                }
            }
        }
    }

    /// Redis answered a command: the connection works, whatever the answer said.
    fn answered(&mut self) {
        self.broken_since = None;
        self.backoff = Duration::ZERO;
        self.next_attempt = None;
        if std::mem::take(&mut self.lost_said) && said_down(&self.shown, false) {
            log::info!("reconnected to Redis at {}", self.shown);
        }
    }

    fn broke(&mut self, e: &RedisError) {
        // A signal that interrupted a read (a Ctrl-C being handled) is no news.
        let interrupted = e.to_string().contains("Interrupted system call");
        if self.raw.take().is_some() && !self.lost_said && !interrupted {
            self.lost_said = true;
            // With a policy this connection reconnects (giving up is the caller's error);
            // without one the caller has the error: neither is a warning. Said once per
            // process however many connections break together.
            match self.config.reconnect {
                Some(_) if said_down(&self.shown, true) => {
                    log::info!(
                        "connection to Redis at {} lost: {e}; reconnecting",
                        self.shown
                    )
                }
                _ => log::debug!("connection to Redis at {} lost: {e}", self.shown),
            }
        }
        self.broken_since.get_or_insert_with(Instant::now);
        self.read_timeout = None;
    }

    /// Opens the connection again. Without a reconnection policy that is one attempt per
    /// call; with one, attempts follow its backoff (a call whose deadline comes before the
    /// next attempt waits until its deadline, then fails with `Reconnecting`) until the
    /// connection has been down for its `give_up` time.
    fn reconnect(&mut self, deadline: Option<Instant>) -> Result<()> {
        let Some(policy) = self.config.reconnect.clone() else {
            let raw = self.connect_once()?;
            return self.opened(raw);
        };
        let since = *self.broken_since.get_or_insert_with(Instant::now);
        loop {
            if since.elapsed() >= policy.give_up {
                return Err(Error::GaveUp {
                    after: since.elapsed(),
                    last: Box::new(Error::Reconnecting),
                });
            }
            if let Some(next) = self.next_attempt {
                let now = Instant::now();
                if next > now {
                    if let Some(d) = deadline.filter(|d| *d < next) {
                        std::thread::sleep(d.saturating_duration_since(now));
                        return Err(Error::Reconnecting);
                    }
                    std::thread::sleep(next - now);
                }
            }
            self.loading = false;
            let attempt = self.connect_once().and_then(|raw| self.opened(raw));
            // The next attempt waits its turn, also after one that connected: until a command
            // is answered, a connection that breaks again is no success. A Redis that said
            // "loading" is up and asks to be asked again: soon, at the first backoff.
            self.backoff = match self.loading {
                true => policy.initial_backoff,
                false => (self.backoff * 2)
                    .max(policy.initial_backoff)
                    .min(policy.max_backoff),
            };
            // Drawn between half and all of it, so clients broken together do not knock in step.
            self.next_attempt = Some(Instant::now() + self.backoff.mul_f64(jitter()));
            match attempt {
                Ok(()) => return Ok(()),
                // Connecting worked and the answer is final: no point in trying again.
                Err(e @ (Error::Auth(_) | Error::Config(_))) => return Err(e),
                Err(e) => {
                    let after = since.elapsed();
                    if after >= policy.give_up {
                        return Err(Error::GaveUp {
                            after,
                            last: Box::new(e),
                        });
                    }
                }
            }
        }
    }

    fn opened(&mut self, raw: Raw) -> Result<()> {
        // Bounded from the first command: a Redis that accepts but never answers must not
        // hold a reconnection for ever.
        let timeout = self.config.reply_grace;
        if let Err(e) = raw.set_read_timeout(timeout) {
            return Err(error(e, &self.shown));
        }
        self.raw = Some(raw);
        self.read_timeout = Some(timeout);
        if let Err(e) = self.load_library() {
            self.raw = None;
            return Err(e);
        }
        Ok(())
    }

    fn connect_once(&self) -> Result<Raw> {
        match &self.target {
            Target::Single(client) => {
                connect_single(client, &self.config, &self.shown).map(Raw::Single)
            }
            Target::Cluster(client) => client
                .get_connection()
                .map(|c| Raw::Cluster(Box::new(c)))
                .map_err(|e| error(e, &self.shown)),
        }
    }

    /// Loads the library unless Redis has it; one of the same name with other code (another
    /// build's) is refused: the functions would not be this client's.
    fn load_library(&mut self) -> Result<()> {
        let shown = self.shown.clone();
        let raw = self.raw.as_mut().ok_or(Error::Closed)?;
        let mut load = ::redis::cmd("FUNCTION");
        load.arg("LOAD").arg(LIBRARY);
        match raw.conn().req_command(&load).and_then(refusal) {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => {
                self.loading = transient(&e);
                return Err(error(e, &shown));
            }
        }
        let mut list = ::redis::cmd("FUNCTION");
        list.arg("LIST")
            .arg("LIBRARYNAME")
            .arg(LIBRARY_NAME)
            .arg("WITHCODE");
        let listed = raw
            .conn()
            .req_command(&list)
            .and_then(refusal)
            .map_err(|e| error(e, &shown))?;
        match library_code(&listed) {
            Some(code) if code == LIBRARY.as_bytes() => Ok(()),
            _ => Err(Error::Config(format!(
                "Redis at {shown} holds a function library {LIBRARY_NAME} other than this \
                 distq's (another build's): once no client of it runs, FUNCTION DELETE \
                 {LIBRARY_NAME} there and connect again"
            ))),
        }
    }
}

fn connect_single(
    client: &::redis::Client,
    config: &ClientConfig,
    shown: &str,
) -> Result<::redis::Connection> {
    let timeout = config.connect_timeout.unwrap_or(Duration::from_secs(75));
    let conn = client
        .get_connection_with_timeout(timeout)
        .map_err(|e| error(e, shown))?;
    conn.set_write_timeout(config.write_timeout)
        .map_err(|e| error(e, shown))?;
    Ok(conn)
}

fn peer_of(client: &::redis::Client, shown: &str) -> Result<SocketAddr> {
    let (host, port) = match client.get_connection_info().addr() {
        ::redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        ::redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        _ => {
            return Err(Error::Config(format!(
                "{shown}: distq reaches Redis over TCP only (redis:// or rediss://)"
            )))
        }
    };
    let resolved = (host.as_str(), port).to_socket_addrs();
    let failed = |source| Error::Resolve {
        addr: format!("{host}:{port}"),
        source,
    };
    resolved
        .map_err(failed)?
        .next()
        .ok_or_else(|| failed(io::Error::new(io::ErrorKind::NotFound, "no address found")))
}

/// The server's run id (40 hex digits), as the 16 bytes of its first 32 digits.
fn run_id(info: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Some(hex) = info.lines().find_map(|l| l.trim().strip_prefix("run_id:")) {
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
        }
    }
    id
}

/// The `library_code` of the first library in a FUNCTION LIST reply.
fn library_code(listed: &Value) -> Option<&[u8]> {
    let Value::Array(libraries) = listed else {
        return None;
    };
    let fields: Vec<&Value> = match libraries.first()? {
        Value::Array(fields) => fields.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    fields.chunks(2).find_map(|pair| match pair {
        [key, Value::BulkString(code)] if text(key) == Some("library_code") => {
            Some(code.as_slice())
        }
        _ => None,
    })
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Records that `url` is down (`down`) or back; whether that is news to the process, so that
/// its many connections say a loss and a return once.
fn said_down(url: &str, down: bool) -> bool {
    static DOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut urls = crate::sync::lock(&DOWN);
    let known = urls.iter().position(|u| u == url);
    match (down, known) {
        (true, None) => {
            urls.push(url.to_owned());
            true
        }
        (false, Some(at)) => {
            urls.swap_remove(at);
            true
        }
        _ => false,
    }
}

/// A factor from 0.5 to 1 for the backoff.
fn jitter() -> f64 {
    let mut byte = [0u8; 1];
    match getrandom::fill(&mut byte) {
        Ok(()) => 0.5 + f64::from(byte[0]) / 510.0,
        Err(_) => 0.75,
    }
}

/// A reply that is an error, as one (the client leaves those in the value).
fn refusal(value: Value) -> ::redis::RedisResult<Value> {
    match value {
        Value::ServerError(e) => Err(e.into()),
        other => Ok(other),
    }
}

/// Refusals that mean "not now": Redis loading its data, a failover or a busy script.
/// The command was not carried out.
fn transient(e: &RedisError) -> bool {
    use ::redis::{ErrorKind, ServerErrorKind};
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
        )
    ) || matches!(
        e.code(),
        Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "BUSY")
    )
}

fn missing_function(e: &RedisError) -> bool {
    e.detail().is_some_and(|d| d.contains("Function not found"))
}

/// Whether the connection is in an unknown state after `e`.
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

/// What a Redis failure means to a distq caller.
pub(crate) fn error(e: RedisError, shown: &str) -> Error {
    if e.kind() == ::redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        log::debug!("Redis at {shown} refused the credentials: {e}");
        return Error::Auth(AuthFailure::Rejected);
    }
    if e.is_connection_refusal() {
        return Error::Connect {
            addr: shown.to_owned(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()),
        };
    }
    if e.to_string().contains("certificate") {
        return Error::Redis(format!(
            "TLS to Redis at {shown} failed: {e} (a rediss:// server must show a certificate \
             this machine trusts: point SSL_CERT_FILE at its CA's)"
        ));
    }
    if e.is_timeout() {
        return Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("Redis at {shown}: {e}"),
        ));
    }
    if e.is_io_error() || e.is_connection_dropped() {
        return Error::Io(io::Error::other(format!("Redis at {shown}: {e}")));
    }
    Error::Redis(format!("Redis at {shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(redacted("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn the_library_is_named_as_its_first_line_says() {
        let first = LIBRARY.lines().next().unwrap_or_default();
        assert_eq!(first, format!("#!lua name={LIBRARY_NAME}"));
        let listed = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"library_name".to_vec()),
            Value::BulkString(LIBRARY_NAME.into()),
            Value::BulkString(b"library_code".to_vec()),
            Value::BulkString(LIBRARY.into()),
        ])]);
        assert_eq!(library_code(&listed), Some(LIBRARY.as_bytes()));
    }

    #[test]
    fn a_loss_and_a_return_are_news_once_per_process() {
        let url = "redis://said-down-test:1";
        assert!(said_down(url, true));
        assert!(
            !said_down(url, true),
            "a second connection's loss is no news"
        );
        assert!(said_down(url, false));
        assert!(!said_down(url, false));
    }

    #[test]
    fn the_run_id_is_read_from_info() {
        let info = "# Server\r\nrun_id:00112233445566778899aabbccddeeff00112233\r\n";
        assert_eq!(run_id(info)[..3], [0x00, 0x11, 0x22]);
        assert_eq!(run_id(info)[15], 0xff);
    }
}
