//! A client's connection: one authenticated stream serving one request at a time, the
//! leases it holds, reconnection after a break, and the background thread that keeps leases
//! alive.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::config::{ClientConfig, Reconnect};
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::wire::auth::{self, Instance};
use crate::wire::frame::Framed;
use crate::wire::message::{ErrorKind, Reply, Request, ServerInfo, MAX_BATCH_ITEMS};
use crate::wire::socket;

/// What a dropped lease guard or queue handle leaves to be told to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Settle {
    Ack,
    Nack,
}

/// Which connection a lease id belongs to: ids from before a reconnection mean nothing to
/// the new one.
pub(crate) type Generation = u64;

pub(crate) struct Connection {
    addrs: Vec<SocketAddr>,
    authkey: Vec<u8>,
    config: ClientConfig,
    link: Mutex<Link>,
    /// `link.generation`, readable while a call holds the link.
    generation: AtomicU64,
    /// The address last connected to, readable while a call holds the link.
    peer: Mutex<SocketAddr>,
    /// The server instance last connected to and its settings, readable while a call holds
    /// the link.
    server: Mutex<(Instance, ServerInfo)>,
    /// The first generation of the current server instance: leases (and the results of
    /// their items) from an earlier generation belong to this instance only if their
    /// generation is at least this.
    instance_since: AtomicU64,
    book: Mutex<LeaseBook>,
    heartbeat: Mutex<Option<Heartbeat>>,
    /// The temporary queues this client declared (name, idle TTL in ms), declared again
    /// after every reconnection so this client stays (or becomes again) their creator.
    temporaries: Mutex<Vec<(String, u64)>>,
}

struct Link {
    /// `None` once a failure left the stream in an unknown state.
    wire: Option<Wire>,
    generation: Generation,
    broken_since: Option<Instant>,
    attempts: u32,
    next_attempt: Option<Instant>,
    last_error: Option<Error>,
    /// Whether the server closed the connection itself (its `closed` reply, or a clean end of
    /// stream: a master whose job is done, a restart): expected, so it is logged at info and
    /// the reconnection attempts after it at debug (giving up is the caller's error). A
    /// timeout or another failure is a warning.
    orderly: bool,
}

struct Wire {
    framed: Framed<TcpStream>,
    /// The read timeout last set on the socket, to skip redundant system calls.
    read_timeout: Option<Duration>,
}

/// The leases this connection holds, by queue, and settlements not yet sent.
#[derive(Default)]
struct LeaseBook {
    held: FxHashMap<String, FxHashSet<u64>>,
    deferred: Vec<(String, Settle, u64)>,
    touch_every: Option<Duration>,
}

struct Heartbeat {
    wake: Sender<()>,
    thread: JoinHandle<()>,
}

impl Connection {
    /// Connects to the first of `addrs` that answers and authenticates.
    pub(crate) fn open(
        addrs: Vec<SocketAddr>,
        authkey: &[u8],
        config: ClientConfig,
    ) -> Result<Arc<Self>> {
        let mut last = Error::Config("the server address resolves to nothing".into());
        for &addr in &addrs {
            match dial(addr, authkey, &config) {
                Ok((wire, server)) => {
                    let conn = Arc::new(Connection {
                        addrs,
                        authkey: authkey.to_vec(),
                        link: Mutex::new(Link {
                            wire: Some(wire),
                            generation: 0,
                            broken_since: None,
                            attempts: 0,
                            next_attempt: None,
                            last_error: None,
                            orderly: false,
                        }),
                        generation: AtomicU64::new(0),
                        peer: Mutex::new(addr),
                        server: Mutex::new(server),
                        instance_since: AtomicU64::new(0),
                        book: Mutex::new(LeaseBook::default()),
                        heartbeat: Mutex::new(None),
                        temporaries: Mutex::new(Vec::new()),
                        config,
                    });
                    if conn.config.auto_touch {
                        conn.start_heartbeat()?;
                    }
                    return Ok(conn);
                }
                Err(e @ Error::Connect { .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The server's address (the one last connected to).
    pub(crate) fn peer(&self) -> SocketAddr {
        *lock(&self.peer)
    }

    /// The id of the server instance last connected to.
    pub(crate) fn instance(&self) -> Instance {
        lock(&self.server).0
    }

    /// The largest item the server last connected to accepts.
    pub(crate) fn max_item(&self) -> usize {
        usize::try_from(lock(&self.server).1.max_item).unwrap_or(usize::MAX)
    }

    /// Whether the server last connected to understands the optional request `feature`.
    pub(crate) fn supports(&self, feature: &str) -> bool {
        lock(&self.server).1.features.iter().any(|f| f == feature)
    }

    /// The largest frame both sides accept: ours, or the server's if smaller.
    pub(crate) fn max_frame_size(&self) -> usize {
        let theirs = usize::try_from(lock(&self.server).1.max_frame_size).unwrap_or(usize::MAX);
        self.config.max_frame_size.min(theirs)
    }

    /// Whether what was received on connection `generation` came from the server instance
    /// connected now (a reconnection to the same instance keeps its queues; one to a
    /// restarted server does not).
    pub(crate) fn same_instance(&self, generation: Generation) -> bool {
        generation >= self.instance_since.load(Ordering::SeqCst)
    }

    /// Sends the request `build` makes and reads its reply. The request may be sent again
    /// after a reconnection, so `build` gets the generation it is for and the time left of
    /// `wait` (`None`: the server may take as long as it needs).
    pub(crate) fn call(
        &self,
        wait: Option<Duration>,
        build: &mut dyn FnMut(Generation, Option<Duration>) -> Request,
    ) -> Result<(Reply, Generation)> {
        self.call_checked(wait, &mut |generation, left| Ok(build(generation, left)))
    }

    /// Like [`call`](Connection::call), but `build` may refuse to send (to a server instance
    /// its request no longer suits); its error is returned with the link untouched.
    pub(crate) fn call_checked(
        &self,
        wait: Option<Duration>,
        build: &mut dyn FnMut(Generation, Option<Duration>) -> Result<Request>,
    ) -> Result<(Reply, Generation)> {
        let deadline = crate::time::deadline(wait);
        let mut link = lock(&self.link);
        loop {
            if link.wire.is_none() {
                self.reconnect(&mut link, deadline)?;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let generation = link.generation;
            let request = build(generation, left)?;
            let result = self.flush(&mut link).and_then(|()| {
                let read_timeout = left.map(|l| l.saturating_add(self.config.reply_grace));
                wire_of(&mut link)?.exchange(&request, read_timeout)
            });
            match result {
                Ok(
                    reply @ Reply::Error {
                        kind: ErrorKind::Closed,
                        accepted,
                        ..
                    },
                ) if self.config.reconnect.is_some() => {
                    self.broke(&mut link, Error::Closed);
                    // A fused get answered `closed` without `accepted` stored its results and
                    // acknowledged its tasks before the server closed: the caller must know
                    // that, and not send them again.
                    if accepted.is_none() && matches!(request, Request::Get { put: Some(_), .. }) {
                        return Ok((reply, generation));
                    }
                }
                Ok(reply) => return Ok((reply, generation)),
                // A request refused before it reached the wire: the stream is still good.
                Err(e @ Error::FrameTooLarge { .. }) => return Err(e),
                Err(e) => {
                    if self.config.reconnect.is_none() {
                        // The error goes to the caller; the log line needs only what it says.
                        let cause = match &e {
                            Error::Closed => Error::Closed,
                            other => Error::Io(std::io::Error::other(other.to_string())),
                        };
                        self.broke(&mut link, cause);
                        return Err(e);
                    }
                    self.broke(&mut link, e);
                }
            }
        }
    }

    /// Records leases just received for `queue`, so the heartbeat keeps them alive.
    pub(crate) fn hold(&self, queue: &str, generation: Generation, ids: &[u64], lease: Duration) {
        if generation != self.generation() || ids.is_empty() {
            return;
        }
        let mut book = lock(&self.book);
        // The queue's entry exists after its first get: no allocation on the hot path.
        match book.held.get_mut(queue) {
            Some(held) => held.extend(ids),
            None => {
                book.held
                    .insert(queue.to_owned(), ids.iter().copied().collect());
            }
        }
        let every = (lease / 3).max(Duration::from_millis(10));
        if book.touch_every.is_none_or(|t| every < t) {
            book.touch_every = Some(every);
            drop(book);
            // The heartbeat may be asleep on a longer interval: let it pick up this one.
            self.wake_heartbeat();
        }
    }

    /// Forgets leases that ended (acknowledged, given back or refused).
    pub(crate) fn release(&self, queue: &str, ids: &[u64]) {
        let mut book = lock(&self.book);
        if let Some(held) = book.held.get_mut(queue) {
            for id in ids {
                held.remove(id);
            }
        }
    }

    /// Leaves a settlement to be sent with the next request (or by the heartbeat soon).
    pub(crate) fn defer(&self, queue: &str, settle: Settle, generation: Generation, ids: &[u64]) {
        if generation != self.generation() {
            return; // Those leases died with the old connection.
        }
        lock(&self.book)
            .deferred
            .extend(ids.iter().map(|&id| (queue.to_owned(), settle, id)));
        self.wake_heartbeat();
    }

    fn wake_heartbeat(&self) {
        if let Some(heartbeat) = lock(&self.heartbeat).as_ref() {
            let _ = heartbeat.wake.try_send(());
        }
    }

    /// The generation of the current connection.
    pub(crate) fn generation(&self) -> Generation {
        self.generation.load(Ordering::SeqCst)
    }

    fn broke(&self, link: &mut Link, cause: Error) {
        if link.wire.take().is_some() {
            link.orderly |= matches!(cause, Error::Closed);
            let then = match self.config.reconnect {
                Some(_) => "; reconnecting",
                None => "",
            };
            match link.orderly {
                true => log::info!("the server at {} closed the connection{then}", self.peer()),
                false => log::warn!("connection to {} lost: {cause}{then}", self.peer()),
            }
            link.broken_since = Some(Instant::now());
            link.attempts = 0;
            link.next_attempt = None;
            // The server returns every lease of a broken connection: forget them.
            *lock(&self.book) = LeaseBook::default();
        }
        link.last_error = Some(cause);
    }

    /// Reconnects under the policy, waiting no later than `deadline` (then
    /// [`Error::Reconnecting`]) and no longer than the policy's give-up time (then
    /// [`Error::GaveUp`]).
    fn reconnect(&self, link: &mut Link, deadline: Option<Instant>) -> Result<()> {
        let Some(policy) = &self.config.reconnect else {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "an earlier failure broke this connection; connect a new client",
            )));
        };
        let since = *link.broken_since.get_or_insert_with(Instant::now);
        loop {
            let now = Instant::now();
            // A give-up time too far to represent means: never give up.
            let give_up = since.checked_add(policy.give_up);
            if give_up.is_some_and(|g| now >= g) {
                let last = link.last_error.take().unwrap_or(Error::Closed);
                return Err(Error::GaveUp {
                    after: now - since,
                    last: Box::new(last),
                });
            }
            let due = link.next_attempt.unwrap_or(now);
            if due > now {
                let until = give_up.map_or(due, |g| due.min(g));
                match deadline {
                    Some(d) if d < until => {
                        thread::sleep(d.saturating_duration_since(now));
                        return Err(Error::Reconnecting);
                    }
                    _ => thread::sleep(until - now),
                }
                continue;
            }
            link.attempts += 1;
            let addr = self.addrs[(link.attempts as usize - 1) % self.addrs.len()];
            let dialled = dial(addr, &self.authkey, &self.config).and_then(|(mut wire, server)| {
                // Before anything else is retried: results may be waiting for this client.
                self.redeclare(&mut wire)?;
                Ok((wire, server))
            });
            match dialled {
                Ok((wire, server)) => {
                    link.wire = Some(wire);
                    link.generation += 1;
                    link.orderly = false;
                    let mut current = lock(&self.server);
                    if current.0 == server.0 {
                        log::info!("reconnected to {addr} after {} attempt(s)", link.attempts);
                    } else {
                        // Info, not a warning: nothing to do, the restarted server never had
                        // those tasks (the master that put them has to put them again).
                        log::info!(
                            "reconnected to {addr} after {} attempt(s): a new server instance \
                             ({}), so the acknowledgements and results held for the old one \
                             are dropped",
                            link.attempts,
                            hex(&server.0)
                        );
                        self.instance_since.store(link.generation, Ordering::SeqCst);
                    }
                    *current = server;
                    drop(current);
                    self.generation.store(link.generation, Ordering::SeqCst);
                    *lock(&self.peer) = addr;
                    link.broken_since = None;
                    link.last_error = None;
                    return Ok(());
                }
                Err(e) => {
                    let wait = backoff(policy, link.attempts);
                    let level = match link.orderly {
                        true => log::Level::Debug,
                        false => log::Level::Warn,
                    };
                    log::log!(
                        level,
                        "reconnect attempt {} to {addr} failed: {e}; next in {:.2} s",
                        link.attempts,
                        wait.as_secs_f64()
                    );
                    link.last_error = Some(e);
                    let now = Instant::now();
                    link.next_attempt = Some(now.checked_add(wait).unwrap_or(now));
                }
            }
        }
    }

    /// Declares the temporary queue `name` (see [`Request::Declare`]) and remembers it, to
    /// declare it again after a reconnection.
    pub(crate) fn declare(&self, name: &str, idle_ttl: Duration) -> Result<Reply> {
        let ttl = crate::time::millis(idle_ttl);
        let (reply, _) = self.call(Some(Duration::ZERO), &mut |_, _| declare_request(name, ttl))?;
        if matches!(reply, Reply::Done) {
            let mut temporaries = lock(&self.temporaries);
            match temporaries.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = ttl,
                None => temporaries.push((name.to_owned(), ttl)),
            }
        }
        Ok(reply)
    }

    /// Declares again, on a new connection, the temporary queues this client declared. One
    /// still held by the old connection (the server has not noticed it closed yet) fails
    /// this attempt, to be tried again after the backoff.
    fn redeclare(&self, wire: &mut Wire) -> Result<()> {
        let temporaries = lock(&self.temporaries).clone();
        for (name, ttl) in temporaries {
            let reply =
                wire.exchange(&declare_request(&name, ttl), Some(self.config.reply_grace))?;
            match reply {
                Reply::Done => {}
                Reply::Error {
                    kind: ErrorKind::InUse,
                    ..
                } => return Err(Error::QueueInUse(name)),
                other => {
                    log::warn!("temporary queue {name} could not be declared again: {other:?}");
                    lock(&self.temporaries).retain(|(n, _)| *n != name);
                }
            }
        }
        Ok(())
    }

    /// Sends the settlements left by dropped handles, one request per queue and kind.
    fn flush(&self, link: &mut Link) -> Result<()> {
        let deferred = std::mem::take(&mut lock(&self.book).deferred);
        if deferred.is_empty() {
            return Ok(());
        }
        let mut groups: HashMap<(String, Settle), Vec<u64>> = HashMap::new();
        for (queue, settle, id) in deferred {
            groups.entry((queue, settle)).or_default().push(id);
        }
        for ((queue, settle), ids) in groups {
            self.release(&queue, &ids);
            for chunk in ids.chunks(MAX_BATCH_ITEMS) {
                let (queue, leases) = (queue.clone(), chunk.to_vec());
                let request = match settle {
                    Settle::Ack => Request::Ack { queue, leases },
                    Settle::Nack => Request::Nack {
                        queue,
                        leases,
                        delay_ms: None,
                        count: true,
                    },
                };
                // Refusals need no action: those leases had ended already.
                wire_of(link)?.exchange(&request, Some(self.config.reply_grace))?;
            }
        }
        Ok(())
    }

    /// One heartbeat: settle what was deferred and, when `touch` is set, extend every lease
    /// held. Never reconnects; a broken link is left to the next call.
    fn beat(&self, touch: bool) {
        let mut link = lock(&self.link);
        if link.wire.is_none() {
            return;
        }
        let mut result = self.flush(&mut link);
        if touch && result.is_ok() {
            let held: Vec<(String, Vec<u64>)> = lock(&self.book)
                .held
                .iter()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(q, ids)| (q.clone(), ids.iter().copied().collect()))
                .collect();
            let chunks = held.iter().flat_map(|(queue, ids)| {
                ids.chunks(MAX_BATCH_ITEMS)
                    .map(move |c| (queue, c.to_vec()))
            });
            for (queue, leases) in chunks {
                let request = Request::Touch {
                    queue: queue.clone(),
                    leases,
                };
                let grace = Some(self.config.reply_grace);
                match wire_of(&mut link).and_then(|w| w.exchange(&request, grace)) {
                    Ok(Reply::Leases { refused }) => self.release(queue, &refused),
                    Ok(_) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if let Err(e) = result {
            self.broke(&mut link, e);
        }
    }

    fn start_heartbeat(self: &Arc<Self>) -> Result<()> {
        let (wake, woken) = crossbeam_channel::bounded(1);
        let weak = Arc::downgrade(self);
        let thread = thread::Builder::new()
            .name("distq-heartbeat".into())
            .spawn(move || heartbeat_loop(&weak, &woken))?;
        *lock(&self.heartbeat) = Some(Heartbeat { wake, thread });
        Ok(())
    }

    fn touch_every(&self) -> Option<Duration> {
        lock(&self.book).touch_every
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropping the sender ends the heartbeat loop; join it unless this is that thread.
        if let Some(Heartbeat { wake, thread }) = lock(&self.heartbeat).take() {
            drop(wake);
            if thread.thread().id() != current() {
                let _ = thread.join();
            }
        }
        // Settle what handles left behind; the leases not settled return when we close.
        let mut link = lock(&self.link);
        if link.wire.is_some() {
            let _ = self.flush(&mut link);
        }
    }
}

fn heartbeat_loop(conn: &Weak<Connection>, woken: &Receiver<()>) {
    let mut last_touch = Instant::now();
    loop {
        let every = match conn.upgrade() {
            Some(c) => c.touch_every(),
            None => return,
        };
        // Sleep until the next touch is due; wake-ups in between only send settlements.
        let left = every.map_or(Duration::from_secs(1), |e| {
            e.saturating_sub(last_touch.elapsed())
        });
        if let Err(RecvTimeoutError::Disconnected) = woken.recv_timeout(left) {
            return;
        }
        let touch = every.is_some_and(|e| last_touch.elapsed() >= e);
        if touch {
            last_touch = Instant::now();
        }
        match conn.upgrade() {
            Some(c) => c.beat(touch),
            None => return,
        }
    }
}

fn declare_request(name: &str, idle_ttl_ms: u64) -> Request {
    Request::Declare {
        queue: name.to_owned(),
        capacity: None,
        idle_ttl_ms: Some(idle_ttl_ms),
    }
}

fn current() -> ThreadId {
    thread::current().id()
}

fn wire_of(link: &mut Link) -> Result<&mut Wire> {
    link.wire.as_mut().ok_or(Error::Closed)
}

/// An instance id as lowercase hex, for logs and `Display`.
pub(crate) fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens and authenticates one connection; returns it with the server's instance and
/// settings.
fn dial(
    addr: SocketAddr,
    authkey: &[u8],
    config: &ClientConfig,
) -> Result<(Wire, (Instance, ServerInfo))> {
    let stream =
        socket::connect(addr, config.connect_timeout).map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?;
    stream.set_read_timeout(config.handshake_timeout)?;
    stream.set_write_timeout(config.write_timeout)?;
    let mut framed = Framed::new(stream, config.max_frame_size);
    let server = auth::client_handshake(&mut framed, authkey).map_err(|e| match e {
        // A server that hangs up mid-handshake is most often not a distq server.
        Error::Closed => {
            Error::Protocol("the server closed the connection during the handshake".into())
        }
        Error::NotDistq { prefix, .. } => Error::NotDistq {
            addr: addr.to_string(),
            prefix,
        },
        e => e,
    })?;
    log::debug!("connected to {addr}, server instance {}", hex(&server.0));
    Ok((
        Wire {
            framed,
            read_timeout: config.handshake_timeout,
        },
        server,
    ))
}

impl Wire {
    fn exchange(&mut self, request: &Request, read_timeout: Option<Duration>) -> Result<Reply> {
        // A zero socket timeout is an error to the OS, not "don't wait": use the smallest one.
        let read_timeout = read_timeout.map(|t| t.max(Duration::from_millis(1)));
        if self.read_timeout != read_timeout {
            self.framed.get_ref().set_read_timeout(read_timeout)?;
            self.read_timeout = read_timeout;
        }
        self.framed.send(request)?;
        self.framed.recv().map_err(|e| match e {
            // Unlike a request refused before sending, an oversized reply leaves its body
            // unread in the stream: the connection cannot be used any more.
            Error::FrameTooLarge { len, max } => Error::Protocol(format!(
                "the server's reply of {len} bytes exceeds our max_frame_size of {max}"
            )),
            e => e,
        })
    }
}

/// The wait before attempt `attempt + 1`: doubling from the initial backoff up to the cap,
/// then drawn at random between half and all of it, so restarted workers do not stampede.
fn backoff(policy: &Reconnect, attempt: u32) -> Duration {
    let doubled = policy
        .initial_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = doubled.min(policy.max_backoff);
    let mut random = [0u8; 4];
    let fraction = match getrandom::fill(&mut random) {
        Ok(()) => f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    };
    capped.mul_f64(0.5 + fraction / 2.0)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = Reconnect::default()
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_secs(1));
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let wait = backoff(&policy, attempt);
            let full = Duration::from_millis(full);
            assert!(
                wait >= full / 2 && wait <= full,
                "attempt {attempt}: {wait:?}"
            );
        }
    }
}
