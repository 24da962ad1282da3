//! The Redis flavor: a queue is a stream read by one consumer group, and each step is one
//! call of distq's function library (`distq.lua`), so it is atomic. A client is one
//! consumer of every group, named at random when it connects, so a reconnection keeps its
//! leases; a second connection touches them and sends the settlements of dropped handles.
//!
//! Where Redis differs from the native server: a closed connection frees nothing, so a
//! dead client's leases come back at their timeout, not at once.

mod keys;
mod link;

use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ::redis::{Cmd, Value};
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::{FxHashMap, FxHashSet};

use super::{Fetched, Pending};
use crate::blob::Blob;
use crate::config::{ClientConfig, QueueConfig, MAX_LEASE_TIMEOUT};
use crate::connection::{Generation, Settle};
use crate::error::{Error, GetError, PutError, Result};
use crate::stats::{QueueStats, Stats};
use crate::sync::lock;
use crate::time::{deadline, millis};
use crate::wire::message::{Delivered, PutFirst, ITEM_OVERHEAD};
use link::Link;

/// Items per function call: a batch larger than this is split.
const MAX_CALL_ITEMS: usize = 4096;
/// The longest a blocked read waits before the queue is looked at again, whatever it said.
const LONGEST_BLOCK: Duration = Duration::from_secs(5);
/// The longest a temporary queue outlives its last use, as on the native server.
const MAX_TEMPORARY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Lease ids carry the delivery count (mod 256) in their top byte, the entry's sequence
/// below: 2^56 entries per queue.
const SEQ_BITS: u32 = 56;

/// A client's connections to Redis and the leases it holds.
pub(crate) struct RedisConn {
    main: Mutex<Link>,
    shared: Arc<Shared>,
    peer: std::net::SocketAddr,
    run_id: [u8; 16],
    cluster: bool,
    config: ClientConfig,
    heartbeat: Mutex<Option<(Sender<Job>, JoinHandle<()>)>>,
    /// Tells the heartbeat that new leases are held (its next touch may be due sooner).
    wake: Sender<()>,
}

/// What the heartbeat thread shares with callers.
struct Shared {
    consumer: String,
    auto_touch: bool,
    book: Mutex<Book>,
}

/// The leases held, by queue, with the queue's lease timeout; and every queue used.
#[derive(Default)]
struct Book {
    held: FxHashMap<String, (Duration, FxHashSet<u64>)>,
    used: FxHashSet<String>,
    /// The temporary queues this client declared, removed when it leaves if empty.
    temporaries: FxHashSet<String>,
}

enum Job {
    /// Queue, what to do, when the leases were taken, their ids.
    Settle(String, Settle, Generation, Vec<u64>),
}

/// What a take answered.
enum Taken {
    /// `when`: the server's clock at the take (ms), the generation of the items' leases.
    Items {
        dead: i64,
        lease: Duration,
        when: u64,
        items: Vec<Delivered>,
    },
    Empty {
        dead: i64,
        tails: [Vec<u8>; 2],
        due: Option<Duration>,
    },
    /// The fused cycle's results did not all fit: this many were stored.
    ResultsFull(usize),
}

impl RedisConn {
    /// Connects to the Redis server or cluster at `url` (`redis://` or `rediss://`).
    pub(crate) fn open(url: &str, config: ClientConfig) -> Result<Arc<Self>> {
        let opened = Link::open(url, config.clone())?;
        let side = opened.link.sibling();
        let shared = Arc::new(Shared {
            consumer: format!("c-{}", crate::connection::hex(&random())),
            auto_touch: config.auto_touch,
            book: Mutex::new(Book::default()),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wake, woken) = crossbeam_channel::bounded(1);
        let thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("distq-redis-heartbeat".into())
                .spawn(move || heartbeat(&shared, side, &rx, &woken))?
        };
        Ok(Arc::new(RedisConn {
            main: Mutex::new(opened.link),
            shared,
            peer: opened.peer,
            run_id: opened.run_id,
            cluster: opened.cluster,
            config,
            heartbeat: Mutex::new(Some((tx, thread))),
            wake,
        }))
    }

    /// The server's address (the first a cluster URL names).
    pub(crate) fn peer(&self) -> std::net::SocketAddr {
        self.peer
    }

    /// The server's run id, which changes when it restarts.
    pub(crate) fn instance(&self) -> [u8; 16] {
        self.run_id
    }

    /// The most bytes of items one call carries.
    pub(crate) fn budget(&self) -> usize {
        self.config.max_frame_size
    }

    /// Runs `cmd` on the main connection (sent again after a break: see `Link::query`).
    fn call(&self, cmd: &Cmd, block: Duration, deadline: Option<Instant>) -> Result<Value> {
        lock(&self.main).query(cmd, block, deadline, true)
    }

    /// Runs a take, never sent twice: one whose reply was lost leased items already.
    fn call_once(&self, cmd: &Cmd, deadline: Option<Instant>) -> Result<Value> {
        lock(&self.main).query(cmd, Duration::ZERO, deadline, false)
    }

    /// Settles soon, on the heartbeat's connection: for drops, which may not block.
    pub(crate) fn defer(&self, queue: &str, settle: Settle, taken: Generation, ids: &[u64]) {
        release(&self.shared, queue, ids);
        if let Some((tx, _)) = &*lock(&self.heartbeat) {
            let _ = tx.send(Job::Settle(queue.to_owned(), settle, taken, ids.to_vec()));
        }
    }

    /// Creates queue `name` (and its dead-letter queue) or changes its settings.
    pub(crate) fn declare(&self, name: &str, config: &QueueConfig) -> Result<()> {
        self.declare_with(name, config, Duration::ZERO)
    }

    /// Creates (or adopts) the temporary queue `name`: its keys expire `idle_ttl` after
    /// the last call that used it, and it is removed when this client leaves it empty.
    pub(crate) fn declare_temporary(&self, name: &str, idle_ttl: Duration) -> Result<()> {
        let ttl = idle_ttl.clamp(Duration::from_millis(1), MAX_TEMPORARY_TTL);
        self.declare_with(name, &QueueConfig::default(), ttl)?;
        let mut book = lock(&self.shared.book);
        book.used.insert(name.to_owned());
        book.temporaries.insert(name.to_owned());
        Ok(())
    }

    fn declare_with(&self, name: &str, config: &QueueConfig, ttl: Duration) -> Result<()> {
        if let Some(why) = keys::unfit(name) {
            return Err(Error::NameConflict(format!("{name:?}: {why}")));
        }
        if config.lease_timeout.is_zero() || config.lease_timeout > MAX_LEASE_TIMEOUT {
            return Err(Error::Config(format!(
                "queue {name}: the lease timeout must be from 1 ms to a year"
            )));
        }
        if config.capacity == Some(0) {
            return Err(Error::Config(format!(
                "queue {name}: a bound must be at least 1"
            )));
        }
        let mut cmd = fcall("distq_1_declare", &[name, &keys::dead(name)]);
        let cap = config
            .capacity
            .map_or(-1, |c| i64::try_from(c).unwrap_or(i64::MAX));
        cmd.arg(cap)
            .arg(millis(config.lease_timeout).max(1))
            .arg(config.max_redeliveries)
            .arg(millis(ttl));
        self.call(&cmd, Duration::ZERO, now())
            .map_err(|e| named(e, name))?;
        let mut register = ::redis::cmd("SADD");
        register.arg(keys::REGISTRY).arg(name);
        self.call(&register, Duration::ZERO, now())?;
        Ok(())
    }

    /// Every declared queue's figures, and the server's.
    pub(crate) fn stats(&self) -> Result<Stats> {
        let mut members = ::redis::cmd("SMEMBERS");
        members.arg(keys::REGISTRY);
        let mut names: Vec<String> =
            ::redis::from_redis_value(self.call(&members, Duration::ZERO, now())?)
                .map_err(|e| Error::Protocol(e.to_string()))?;
        names.sort();
        let mut queues = Vec::with_capacity(names.len());
        for name in names {
            let cmd = fcall("distq_1_stats", &[&name, &keys::dead(&name)]);
            let figures = match self
                .call(&cmd, Duration::ZERO, None)
                .map_err(|e| named(e, &name))
            {
                Ok(v) => ints(&v)?,
                // A temporary queue that expired or was removed, or one deleted by hand.
                Err(Error::UnknownQueue(_)) => {
                    let mut forget = ::redis::cmd("SREM");
                    forget.arg(keys::REGISTRY).arg(&name);
                    self.call(&forget, Duration::ZERO, now())?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let [len, leased, delayed, cap, put, acked, redelivered, dead_lettered, dead, temporary] =
                figures[..]
            else {
                return Err(unexpected());
            };
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            queues.push(QueueStats {
                name,
                len: n(len),
                leased: n(leased),
                delayed: n(delayed),
                capacity: u64::try_from(cap).ok(),
                dead: n(dead),
                put: n(put),
                acked: n(acked),
                redelivered: n(redelivered),
                dead_lettered: n(dead_lettered),
                temporary: temporary == 1,
            });
        }
        let mut info = ::redis::cmd("INFO");
        info.arg("clients").arg("memory");
        // A cluster answers for each primary: the figures are their sums.
        let texts: Vec<String> = match self.call(&info, Duration::ZERO, now())? {
            Value::Map(nodes) => nodes
                .into_iter()
                .map(|(_, text)| ::redis::from_redis_value(text))
                .collect::<std::result::Result<_, _>>(),
            one => ::redis::from_redis_value(one).map(|t| vec![t]),
        }
        .map_err(|e| Error::Protocol(e.to_string()))?;
        let field = |name: &str| -> u64 {
            texts
                .iter()
                .flat_map(|t| t.lines())
                .filter_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        };
        Ok(Stats {
            queues,
            connections: field("connected_clients"),
            memory_used: field("used_memory"),
            memory_limit: field("maxmemory"),
            journal: None,
        })
    }
}

impl Drop for RedisConn {
    fn drop(&mut self) {
        // Dropping the sender ends the heartbeat once it has sent what is queued.
        if let Some((tx, thread)) = lock(&self.heartbeat).take() {
            drop(tx);
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// The deadline of a call that does not wait: while the connection is down it makes one
/// attempt to reopen it, then fails with `Reconnecting`.
fn now() -> Option<Instant> {
    Some(Instant::now())
}

fn random() -> [u8; 8] {
    let mut bytes = [0u8; 8];
    // No randomness at all is not worth failing a connection over: the time will do.
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes = (now.as_nanos() as u64).to_le_bytes();
    }
    bytes
}

/// `FCALL function` with the keys of `queues`, in order.
fn fcall(function: &str, queues: &[&str]) -> Cmd {
    let mut cmd = ::redis::cmd("FCALL");
    cmd.arg(function).arg(queues.len() * 6);
    for q in queues {
        cmd.arg(&keys::of(q)[..]);
    }
    cmd
}

fn unexpected() -> Error {
    Error::Protocol("Redis answered a distq function with something else".into())
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(unexpected),
        _ => Err(unexpected()),
    }
}

fn ints(v: &Value) -> Result<Vec<i64>> {
    match v {
        Value::Array(items) => items.iter().map(int).collect(),
        _ => Err(unexpected()),
    }
}

fn bytes(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        _ => Err(unexpected()),
    }
}

/// An entry id `0-SEQ` and its delivery count as one lease id.
fn lease_id(id: &[u8], count: i64) -> Result<u64> {
    let seq: u64 = std::str::from_utf8(id)
        .ok()
        .and_then(|s| s.strip_prefix("0-"))
        .and_then(|s| s.parse().ok())
        .filter(|&s| s < 1 << SEQ_BITS)
        .ok_or_else(unexpected)?;
    let count = u64::try_from(count).map_err(|_| unexpected())? & 0xFF;
    Ok(seq | count << SEQ_BITS)
}

/// An item taken: its lease id, payload and redelivery count.
fn delivered(id: &[u8], count: i64, payload: Vec<u8>) -> Result<Delivered> {
    let redeliveries = u32::try_from(count - 1).unwrap_or(u32::MAX);
    Ok(Delivered(
        lease_id(id, count)?,
        Blob::from(payload),
        redeliveries,
    ))
}

/// A lease id as the function library's pair (entry id, delivery count).
fn lease_args(cmd: &mut Cmd, ids: &[u64]) {
    for id in ids {
        cmd.arg(format!("0-{}", id & ((1 << SEQ_BITS) - 1)))
            .arg(id >> SEQ_BITS);
    }
}

/// The ids of `asked` whose entry id is in the list a function returned.
fn refused(asked: &[u64], v: &Value) -> Result<Vec<u64>> {
    let Value::Array(lost) = v else {
        return Err(unexpected());
    };
    let lost: FxHashSet<Vec<u8>> = lost.iter().cloned().map(bytes).collect::<Result<_>>()?;
    Ok(asked
        .iter()
        .copied()
        .filter(|id| lost.contains(format!("0-{}", id & ((1 << SEQ_BITS) - 1)).as_bytes()))
        .collect())
}

fn hold(shared: &Shared, queue: &str, ids: &[u64], lease: Duration) {
    let mut book = lock(&shared.book);
    let entry = book
        .held
        .entry(queue.to_owned())
        .or_insert_with(|| (lease, FxHashSet::default()));
    entry.0 = lease;
    entry.1.extend(ids);
}

fn release(shared: &Shared, queue: &str, ids: &[u64]) {
    if let Some((_, held)) = lock(&shared.book).held.get_mut(queue) {
        for id in ids {
            held.remove(id);
        }
    }
}

/// Refuses a batch holding an item larger than one call may carry.
fn check_sizes(conn: &RedisConn, items: &[Blob]) -> Result<()> {
    let max = conn.budget().saturating_sub(ITEM_OVERHEAD);
    match items.iter().find(|i| i.len() > max) {
        Some(item) => Err(Error::TooLarge {
            len: item.len(),
            max,
        }),
        None => Ok(()),
    }
}

/// Waits before asking a full queue again: short at first, then up to 50 ms.
fn backoff(wait: &mut Duration, deadline: Option<Instant>) -> bool {
    let now = Instant::now();
    if deadline.is_some_and(|d| now >= d) {
        return false;
    }
    *wait = (*wait * 2).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let nap = deadline.map_or(*wait, |d| (*wait).min(d - now));
    thread::sleep(nap);
    true
}

/// Stores `items` in order (into the delayed lane after `delay`), waiting up to `timeout`
/// for room in a bounded queue.
pub(crate) fn put(
    conn: &RedisConn,
    name: &str,
    items: Vec<Blob>,
    timeout: Option<Duration>,
    delay: Option<Duration>,
) -> Result<(), PutError> {
    check_sizes(conn, &items)?;
    let deadline = deadline(timeout);
    let delay_ms = delay.map_or(0, |d| millis(d).max(1));
    let mut accepted = 0;
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let mut batch = super::next_batch(&mut items, conn.budget(), MAX_CALL_ITEMS);
        let mut wait = Duration::ZERO;
        while !batch.is_empty() {
            let mut cmd = fcall("distq_1_put", &[name]);
            cmd.arg(delay_ms);
            for item in &batch {
                cmd.arg(item.as_bytes());
            }
            let stored = match conn
                .call(&cmd, Duration::ZERO, deadline)
                .and_then(|v| int(&v))
            {
                Ok(n) => usize::try_from(n).unwrap_or(0).min(batch.len()),
                Err(e) => return Err(failed(e, name, accepted)),
            };
            accepted += stored;
            batch.drain(..stored);
            if stored > 0 {
                wait = Duration::ZERO;
            }
            if !batch.is_empty() && !backoff(&mut wait, deadline) {
                return Err(PutError::Full { accepted });
            }
        }
    }
    Ok(())
}

fn failed(e: Error, name: &str, accepted: usize) -> PutError {
    let e = named(e, name);
    match accepted {
        0 => PutError::Failed(e),
        _ => PutError::Partial { accepted, error: e },
    }
}

/// Puts the queue's name into an "unknown queue" error.
fn named(e: Error, name: &str) -> Error {
    match e {
        Error::Redis(text) if text.contains("DISTQUNKNOWN") => Error::UnknownQueue(name.to_owned()),
        Error::Redis(text) if text.contains("DISTQCONFLICT") => Error::NameConflict(format!(
            "{name:?}: a temporary queue and a lasting one cannot share a name"
        )),
        other => other,
    }
}

/// Takes up to `max` items under leases after acknowledging `pending` (and, first,
/// storing `put`: the fused worker cycle), waiting up to `timeout` for one.
pub(crate) fn fetch(
    conn: &RedisConn,
    name: &str,
    max: usize,
    timeout: Option<Duration>,
    put: Option<PutFirst>,
    pending: Pending,
) -> Result<Fetched, (GetError, Option<Pending>)> {
    let deadline = deadline(timeout);
    let max = max.clamp(1, MAX_CALL_ITEMS);
    let mut results = put.map(|p| (p.queue, p.items));
    // On Redis Cluster, queues of two families may live on two nodes: store the results
    // on their own first (they must be stored before the tasks are acknowledged).
    if let Some((queue, items)) =
        results.take_if(|(q, _)| conn.cluster && keys::family(q) != keys::family(name))
    {
        if let Err(e) = self::put(conn, &queue, items, timeout, None) {
            return Err((crate::queue::put_failure(e, &queue), Some(pending)));
        }
    }
    let mut acks = Some(pending);
    let mut wait = Duration::ZERO;
    let mut accepted = 0;
    loop {
        let taken = match take(conn, name, max, acks.as_ref(), results.as_ref(), deadline) {
            Ok(t) => t,
            // The connection broke under the take: its items (if it ran) come back at their
            // lease timeout. A get with time left takes again (the next call reconnects).
            Err(Error::Reconnecting) if deadline.is_none_or(|d| Instant::now() < d) => {
                continue;
            }
            Err(e) => return Err((GetError::Failed(named(e, name)), acks)),
        };
        match taken {
            Taken::ResultsFull(stored) => {
                let (queue, items) = results
                    .as_mut()
                    .ok_or_else(|| (GetError::Failed(unexpected()), None))?;
                items.drain(..stored.min(items.len()));
                accepted += stored;
                if stored > 0 {
                    wait = Duration::ZERO;
                }
                if !backoff(&mut wait, deadline) {
                    let error = Error::ResultsFull {
                        queue: queue.clone(),
                        accepted,
                    };
                    return Err((GetError::Failed(error), acks));
                }
                continue;
            }
            Taken::Items {
                dead,
                lease,
                when,
                items,
            } => {
                warn_dead(name, dead);
                let ids: Vec<u64> = items.iter().map(|d| d.0).collect();
                hold(&conn.shared, name, &ids, lease);
                if conn.shared.auto_touch {
                    let _ = conn.wake.try_send(());
                }
                if let Some(done) = &acks {
                    release(&conn.shared, name, &done.ids);
                }
                return Ok((items, when));
            }
            Taken::Empty { dead, tails, due } => {
                warn_dead(name, dead);
                // The acknowledgements and results went with the first call.
                if let Some(done) = acks.take() {
                    release(&conn.shared, name, &done.ids);
                }
                results = None;
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if left.is_some_and(|l| l.is_zero()) {
                    return Err((GetError::Empty, None));
                }
                let block = [left, due, Some(LONGEST_BLOCK)]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(LONGEST_BLOCK)
                    .max(Duration::from_millis(1));
                let k = keys::of(name);
                let mut read = ::redis::cmd("XREAD");
                read.arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(millis(block).max(1))
                    .arg("STREAMS")
                    .arg(&k[0])
                    .arg(&k[5])
                    .arg(&tails[0][..])
                    .arg(&tails[1][..]);
                if let Err(e) = conn.call(&read, block, deadline) {
                    return Err((GetError::Failed(e), None));
                }
            }
        }
    }
}

fn warn_dead(name: &str, dead: i64) {
    if dead > 0 {
        log::warn!(
            "queue {name}: {dead} item(s) came back more times than the queue allows; moved to {}",
            keys::dead(name)
        );
    }
}

/// One take call (a cycle when there are results to store first).
fn take(
    conn: &RedisConn,
    name: &str,
    max: usize,
    acks: Option<&Pending>,
    results: Option<&(String, Vec<Blob>)>,
    deadline: Option<Instant>,
) -> Result<Taken> {
    let dead = keys::dead(name);
    let mut cmd = match results {
        Some((queue, _)) => fcall("distq_1_cycle", &[queue, name, &dead]),
        None => fcall("distq_1_take", &[name, &dead]),
    };
    let (ids, taken) = acks.map_or((&[][..], 0), |p| (&p.ids[..], p.generation));
    cmd.arg(&conn.shared.consumer)
        .arg(max)
        .arg(conn.budget())
        .arg(taken)
        .arg(ids.len());
    lease_args(&mut cmd, ids);
    if let Some((_, items)) = results {
        for item in items {
            cmd.arg(item.as_bytes());
        }
    }
    let Value::Array(reply) = conn.call_once(&cmd, deadline)? else {
        return Err(unexpected());
    };
    let mut reply = reply.into_iter();
    let mut next = || reply.next().ok_or_else(unexpected);
    match int(&next()?)? {
        2 => Ok(Taken::ResultsFull(
            usize::try_from(int(&next()?)?).unwrap_or(0),
        )),
        1 => {
            let dead = int(&next()?)?;
            let lease = Duration::from_millis(u64::try_from(int(&next()?)?).unwrap_or(1));
            let when = u64::try_from(int(&next()?)?).unwrap_or(0);
            let (Value::Array(again), Value::Array(fresh)) = (next()?, next()?) else {
                return Err(unexpected());
            };
            let mut items = Vec::with_capacity(again.len() / 3 + fresh.len());
            let mut again = again.into_iter();
            while let Some(id) = again.next() {
                let count = int(&again.next().ok_or_else(unexpected)?)?;
                let payload = bytes(again.next().ok_or_else(unexpected)?)?;
                items.push(delivered(&bytes(id)?, count, payload)?);
            }
            for entry in fresh {
                // {id, {"d", payload}}, as XREADGROUP gives it: a first delivery.
                let Value::Array(entry) = entry else {
                    return Err(unexpected());
                };
                let mut entry = entry.into_iter();
                let id = bytes(entry.next().ok_or_else(unexpected)?)?;
                let Some(Value::Array(fields)) = entry.next() else {
                    return Err(unexpected());
                };
                let payload = bytes(fields.into_iter().nth(1).ok_or_else(unexpected)?)?;
                items.push(delivered(&id, 1, payload)?);
            }
            Ok(Taken::Items {
                dead,
                lease,
                when,
                items,
            })
        }
        0 => {
            let dead = int(&next()?)?;
            let tails = [bytes(next()?)?, bytes(next()?)?];
            let due = u64::try_from(int(&next()?)?)
                .ok()
                .map(Duration::from_millis);
            Ok(Taken::Empty { dead, tails, due })
        }
        _ => Err(unexpected()),
    }
}

/// Acknowledges, gives back (`delay`: when it may come back; `count`: as a failed
/// delivery) or extends leases; returns the ids no longer held.
fn settle_with(
    conn: &RedisConn,
    name: &str,
    op: &str,
    taken: Generation,
    ids: &[u64],
    delay: Option<Duration>,
) -> Result<Vec<u64>> {
    let mut lost = Vec::new();
    for chunk in ids.chunks(MAX_CALL_ITEMS) {
        let mut cmd = fcall("distq_1_settle", &[name]);
        cmd.arg(&conn.shared.consumer)
            .arg(op)
            .arg(delay.map_or(0, millis))
            .arg(taken);
        lease_args(&mut cmd, chunk);
        let called = conn
            .call(&cmd, Duration::ZERO, None)
            .map_err(|e| named(e, name))
            .and_then(|v| refused(chunk, &v));
        match called {
            Ok(refused) => lost.extend(refused),
            // The caller has let go of these leases whatever happened: the heartbeat must
            // not keep them alive (unsettled, they come back at their timeout).
            Err(e) if op != "touch" => {
                release(&conn.shared, name, ids);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    if op != "touch" {
        release(&conn.shared, name, ids);
    } else {
        release(&conn.shared, name, &lost);
    }
    Ok(lost)
}

/// Acknowledges or gives back leases now.
pub(crate) fn settle(
    conn: &RedisConn,
    name: &str,
    settle: Settle,
    taken: Generation,
    ids: &[u64],
) -> Result<Vec<u64>> {
    settle_with(conn, name, op_of(settle), taken, ids, None)
}

fn op_of(settle: Settle) -> &'static str {
    match settle {
        Settle::Ack => "ack",
        Settle::Nack => "nack",
    }
}

/// Gives leases back to come back after `delay`, counted as failed deliveries or not.
pub(crate) fn nack_with(
    conn: &RedisConn,
    name: &str,
    ids: &[u64],
    delay: Option<Duration>,
    count: bool,
) -> Result<Vec<u64>> {
    let op = if count { "nack" } else { "free" };
    settle_with(conn, name, op, 0, ids, delay)
}

/// Extends leases by a full lease timeout.
pub(crate) fn touch(conn: &RedisConn, name: &str, ids: &[u64]) -> Result<Vec<u64>> {
    settle_with(conn, name, "touch", 0, ids, None)
}

/// The number of waiting items and the bound.
pub(crate) fn len_and_capacity(conn: &RedisConn, name: &str) -> Result<(usize, Option<usize>)> {
    let cmd = fcall("distq_1_len", &[name]);
    let v = conn
        .call(&cmd, Duration::ZERO, None)
        .map_err(|e| named(e, name))?;
    lock(&conn.shared.book).used.insert(name.to_owned());
    match ints(&v)?[..] {
        [len, cap, _lease] => Ok((usize::try_from(len).unwrap_or(0), usize::try_from(cap).ok())),
        _ => Err(unexpected()),
    }
}

/// The heartbeat: sends deferred settlements at once and, with auto-touch, extends every
/// lease held a third of the way into its timeout. On its way out it removes this client
/// from the groups of the queues it used, where it holds nothing.
/// How long the heartbeat skips settlements after Redis did not answer one.
const PAUSE: Duration = Duration::from_secs(5);

fn heartbeat(shared: &Shared, mut link: Link, jobs: &Receiver<Job>, woken: &Receiver<()>) {
    let mut last_touch = Instant::now();
    let mut down: Option<Instant> = None;
    loop {
        let every = shared.auto_touch.then(|| {
            lock(&shared.book)
                .held
                .values()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(lease, _)| *lease / 3)
                .min()
        });
        let every = every.flatten();
        let left = every.map_or(Duration::from_secs(1), |e| {
            e.saturating_sub(last_touch.elapsed())
        });
        crossbeam_channel::select! {
            recv(jobs) -> job => match job {
                // After a failure, settlements wait out a short pause (they would each wait for
                // a connect timeout, and a dropped client waits for this thread): skipped,
                // their leases come back at their timeout.
                Ok(Job::Settle(queue, _, _, ids)) if down.is_some_and(|t| t.elapsed() < PAUSE) => {
                    log::debug!("queue {queue}: {} settlement(s) skipped: Redis unreachable", ids.len());
                }
                Ok(Job::Settle(queue, settle, taken, ids)) => {
                    let ok = side_settle(shared, &mut link, &queue, op_of(settle), taken, &ids);
                    down = (!ok).then(Instant::now);
                }
                Err(_) => break,
            },
            recv(woken) -> _ => {}
            default(left) => {}
        }
        if every.is_some_and(|e| last_touch.elapsed() >= e) {
            last_touch = Instant::now();
            let held: Vec<(String, Vec<u64>)> = lock(&shared.book)
                .held
                .iter()
                .filter(|(_, (_, ids))| !ids.is_empty())
                .map(|(q, (_, ids))| (q.clone(), ids.iter().copied().collect()))
                .collect();
            for (queue, ids) in held {
                if !side_settle(shared, &mut link, &queue, "touch", 0, &ids) {
                    break;
                }
            }
        }
    }
    let (used, temporaries) = {
        let mut book = lock(&shared.book);
        (
            std::mem::take(&mut book.used),
            std::mem::take(&mut book.temporaries),
        )
    };
    if down.is_some_and(|t| t.elapsed() < PAUSE) {
        return;
    }
    for queue in used {
        let mut cmd = fcall("distq_1_leave", &[&queue]);
        cmd.arg(&shared.consumer);
        if temporaries.contains(&queue) {
            cmd.arg("drop");
        }
        match link.query(&cmd, Duration::ZERO, Some(Instant::now()), true) {
            Ok(Value::Int(-1)) => {
                let mut forget = ::redis::cmd("SREM");
                forget.arg(keys::REGISTRY).arg(&queue);
                let _ = link.query(&forget, Duration::ZERO, Some(Instant::now()), true);
            }
            Ok(_) => {}
            Err(e) => {
                log::debug!("queue {queue}: could not leave the consumer group: {e}");
                return;
            }
        }
    }
}

/// Settles on the heartbeat's connection; whether Redis answered.
fn side_settle(
    shared: &Shared,
    link: &mut Link,
    queue: &str,
    op: &str,
    taken: Generation,
    ids: &[u64],
) -> bool {
    for chunk in ids.chunks(MAX_CALL_ITEMS) {
        let mut cmd = fcall("distq_1_settle", &[queue]);
        cmd.arg(&shared.consumer).arg(op).arg(0).arg(taken);
        lease_args(&mut cmd, chunk);
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        match link.query(&cmd, Duration::ZERO, deadline, true) {
            Ok(v) if op == "touch" => {
                if let Ok(lost) = refused(chunk, &v) {
                    release(shared, queue, &lost);
                }
            }
            Ok(_) => {}
            // The leases come back at their timeout: nothing is lost.
            Err(e) => {
                log::debug!(
                    "queue {queue}: could not {op} {} lease(s): {e}",
                    chunk.len()
                );
                // Only a Redis that does not answer pauses the heartbeat.
                let unreachable = matches!(
                    e,
                    Error::Io(_)
                        | Error::Connect { .. }
                        | Error::GaveUp { .. }
                        | Error::Reconnecting
                );
                return !unreachable;
            }
        }
    }
    true
}
