//! One server-side connection: the handshake, then read a request, serve it, write the reply.
//! Whatever the connection still holds under lease when it ends goes back to its queue.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use crate::blob::Blob;
use crate::core::Owner;
use crate::core::{due_after, memory_cost, GetOutcome, Pending, PutOutcome, QueueCore};
use crate::core::{DeclareError, DEFAULT_IDLE_TTL};
use crate::error::{Error, Result};
use crate::journal::{Committed, EarlyReply};
use crate::time::{deadline, deadline_ms, millis};
use crate::wire::auth;
use crate::wire::frame::Framed;
use crate::wire::message::{Delivered, ErrorKind, Reply, Request};
use crate::wire::message::{FRAME_OVERHEAD, MAX_BATCH_ITEMS};
use crate::wire::socket::DeadlineStream;

/// Serves one connection until the peer leaves, breaks the protocol, or the server stops.
pub(crate) fn serve(stream: Arc<TcpStream>, peer: SocketAddr, owner: Owner, shared: &Shared) {
    let config = &shared.config;
    let mut session = Session {
        conn: Framed::new(DeadlineStream::new(stream), config.max_frame_size),
        shared,
        owner,
        budget: config.max_frame_size.saturating_sub(FRAME_OVERHEAD),
        early: None,
        unsettled: None,
    };
    let authenticated = session.handshake();
    shared.handshake_done(owner);
    match authenticated {
        Ok(()) => match session.run() {
            Ok(()) | Err(Error::Closed) => log::debug!("{peer}: disconnected"),
            Err(e) => log::warn!("{peer}: closing connection: {e}"),
        },
        Err(Error::Closed) => log::debug!("{peer}: disconnected in the handshake"),
        // Anyone who can connect can cause these, as fast as they can connect.
        // The error's own text speaks to the client; the server's log says what the peer did.
        Err(Error::Auth(_)) => {
            shared.warn_unauthenticated(&format!("{peer}: a client presented the wrong authkey"))
        }
        Err(e @ Error::Version { .. }) => {
            shared.warn_unauthenticated(&format!("{peer}: handshake rejected: {e}"))
        }
        Err(e) => shared.warn_unauthenticated(&format!("{peer}: closing connection: {e}")),
    }
    shared.registry.release(owner);
    shared.registry.disconnected(owner);
}

/// How often a connection waiting for its next request checks on a put whose reply the
/// journal's writer sends: the longest a reply the writer could not send waits.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// The largest frame accepted before the peer has authenticated.
const HANDSHAKE_FRAME: usize = 1024;

struct Session<'a> {
    conn: Framed<DeadlineStream>,
    shared: &'a Shared,
    /// The lease owner id of this connection.
    owner: Owner,
    /// Bytes of payload one reply may carry.
    budget: usize,
    /// Where its put replies wait for the journal's writer to send them (made at the first
    /// put that waits for a commit).
    early: Option<Arc<EarlyReply>>,
    /// A put whose reply the journal's writer sends (see [`Session::commit_and_send`]).
    unsettled: Option<Pending>,
}

/// What a request gets.
enum Answer {
    Reply(Reply),
    /// A reply to send once the journal has committed the put's records.
    Committed(Reply, Pending),
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Answer {
        Answer::Reply(reply)
    }
}

impl Session<'_> {
    fn handshake(&mut self) -> Result<()> {
        let config = &self.shared.config;
        self.conn
            .get_mut()
            .set_write_timeout(config.write_timeout)?;
        // A peer that never finishes authenticating cannot hold a thread past the deadline,
        // and one that stays silent gets a shorter one: real clients send their hello at once.
        let whole = deadline(config.handshake_timeout);
        let silent = deadline(config.hello_timeout);
        let first_byte = match (whole, silent) {
            (Some(w), Some(s)) => Some(w.min(s)),
            (w, s) => w.or(s),
        };
        self.conn.get_mut().set_deadline(first_byte)?;
        match self.conn.frame_started() {
            Ok(_) => {}
            // Port scanners, health checks and the like connect and say nothing: nothing for
            // a person to act on, so no warning (and an attack of them cannot flood the log).
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                log::debug!("a connection sent nothing within the hello timeout: closed");
                return Err(Error::Closed);
            }
            Err(e) => return Err(e),
        }
        self.shared.hello_started(self.owner);
        self.conn.get_mut().set_deadline(whole)?;
        // Handshake messages are tiny: an unauthenticated peer gets no bigger frames.
        self.conn.set_max_frame_size(HANDSHAKE_FRAME);
        let shared = self.shared;
        let owner = self.owner;
        auth::server_handshake(
            &mut self.conn,
            &shared.authkey,
            &shared.instance,
            &shared.info,
            &mut || shared.admit(owner),
        )?;
        self.conn.set_max_frame_size(config.max_frame_size);
        self.conn.get_mut().set_deadline(None)?;
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        let ended = self.serve_requests();
        // However the connection ends, a put confirmed to the journal gets its reply if the
        // peer is still there to read it (its retry would put the item twice).
        if ended.is_err() {
            let _ = self.settle();
        }
        ended
    }

    fn serve_requests(&mut self) -> Result<()> {
        loop {
            let request = self.read_request()?;
            log::trace!("request {request:?}");
            // A request may block (a get, a put into a full queue): a put's reply the writer
            // could not send all of goes out first, not after it.
            if self.unsettled.is_some() && !self.early.as_ref().is_some_and(|e| e.delivered()) {
                self.settle()?;
            }
            // If a send fails, the leases just granted return to their queues with the session.
            match self.handle(request) {
                Answer::Reply(reply) => self.send(&reply)?,
                Answer::Committed(reply, pending) => self.commit_and_send(&reply, pending)?,
            }
        }
    }

    /// Sends `reply` once `pending` is committed, or an error if the commit failed. Under
    /// `--fsync always` the journal's writer sends the reply itself the moment its sync
    /// covers the put, and this thread goes on reading at once (settling before it sends
    /// anything else): a durable put costs the connection no wait and no wake-up.
    fn commit_and_send(&mut self, reply: &Reply, pending: Pending) -> Result<()> {
        self.settle()?;
        let armed = match pending.replies_early() {
            true => {
                let stream = self.conn.get_ref().shared();
                let early = self.early.get_or_insert_with(|| EarlyReply::new(stream));
                let conn = &self.conn;
                early.arm(|frame| conn.encode(reply, frame).is_ok())
            }
            false => None,
        };
        // Another policy, or not encodable (then `send` names the error): the plain way.
        let (Some(armed), Some(early)) = (armed, self.early.clone()) else {
            return match pending.commit() {
                Ok(()) => self.send(reply),
                Err(_) => self.send(&closed_reply()),
            };
        };
        match pending.commit_replying(&armed) {
            Ok(Committed::Detached) => {
                self.unsettled = Some(pending);
                Ok(())
            }
            Ok(Committed::Done) => self.finish_reply(&early),
            Err(_) => self.refuse_reply(&early),
        }
    }

    /// Waits for the commit of a put that went on without it, then sends what of its reply
    /// the journal's writer could not (or an error if the commit failed).
    fn settle(&mut self) -> Result<()> {
        let (Some(pending), Some(early)) = (self.unsettled.take(), self.early.clone()) else {
            return Ok(());
        };
        match pending.commit() {
            Ok(()) => self.finish_reply(&early),
            Err(_) => self.refuse_reply(&early),
        }
    }

    /// Sends the part of a committed put's reply that the journal's writer did not.
    fn finish_reply(&mut self, early: &EarlyReply) -> Result<()> {
        if early.delivered() {
            return early.finish(|_| Ok(()));
        }
        self.conn.get_mut().start_reply()?;
        let out = self.conn.get_mut();
        early.finish(|rest| out.write_all(rest))?;
        Ok(())
    }

    /// A put's commit failed: its reply is withdrawn and the put refused, unless the reply is
    /// out already (its own write was synced; a later one failed), in which case it stands.
    fn refuse_reply(&mut self, early: &EarlyReply) -> Result<()> {
        match early.withdraw() {
            true => self.send(&closed_reply()),
            false => self.finish_reply(early),
        }
    }

    /// Waits for the next request to start. While a put's reply is unsettled, the wait polls
    /// every [`SETTLE_POLL`]: if the journal's writer could not send all of the reply (a
    /// peer slow to read), or the commit failed, the peer may be waiting for it, so it is
    /// settled here instead of after a next request that may never come.
    fn await_request(&mut self) -> Result<()> {
        loop {
            if self.unsettled.is_some() {
                self.conn.get_mut().set_idle_timeout(Some(SETTLE_POLL))?;
            }
            match self.conn.frame_started() {
                Ok(_) => return Ok(()),
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    self.settle()?;
                    self.conn.get_mut().set_idle_timeout(None)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one reply, all of it within `write_timeout`, however slowly the peer reads.
    fn send(&mut self, reply: &Reply) -> Result<()> {
        self.settle()?;
        self.conn.get_mut().start_reply()?;
        self.conn.send(reply)
    }

    /// Waits as long as needed for a request to start, then bounds the rest of its frame by
    /// the frame timeout, so a peer stalling mid-frame cannot pin this thread.
    fn read_request(&mut self) -> Result<Request> {
        self.await_request()?;
        let whole = self.conn.frame_started()?;
        if !whole {
            // The poll is for a request to start: the rest of it may take its time.
            self.conn.get_mut().set_idle_timeout(None)?;
        }
        let bounded = !whole && self.shared.config.frame_timeout.is_some();
        if bounded {
            let until = deadline(self.shared.config.frame_timeout);
            self.conn.get_mut().set_deadline(until)?;
        }
        let request = self.conn.recv::<Request>();
        if bounded {
            self.conn.get_mut().set_deadline(None)?;
        }
        match request {
            Err(e @ Error::Protocol(_)) => {
                let _ = self.send(&error_reply(ErrorKind::Protocol, &e, None));
                Err(e)
            }
            other => other,
        }
    }

    fn handle(&mut self, request: Request) -> Answer {
        let Some(name) = request.queue() else {
            return Answer::Reply(match request {
                Request::Declare {
                    queue,
                    capacity,
                    idle_ttl_ms,
                } => self.declare(&queue, capacity, idle_ttl_ms),
                _ => Reply::Stats {
                    stats: self.shared.stats(),
                },
            });
        };
        let registry = &self.shared.registry;
        let Some(core) = registry.lookup(name) else {
            let e = Error::UnknownQueue(name.to_owned());
            return error_reply(ErrorKind::UnknownQueue, &e, None).into();
        };
        self.handle_queue(request, &core)
    }

    fn declare(&self, name: &str, capacity: Option<u64>, idle_ttl_ms: Option<u64>) -> Reply {
        let idle_ttl = idle_ttl_ms.map_or(DEFAULT_IDLE_TTL, Duration::from_millis);
        let limit = self.shared.config.max_temporary_queues;
        let registry = &self.shared.registry;
        let (kind, message) = match registry.declare(name, self.owner, capacity, idle_ttl, limit) {
            Ok(declared) => {
                log::debug!("temporary queue {name}: {declared:?}");
                return Reply::Done;
            }
            Err(DeclareError::InUse) => (
                ErrorKind::InUse,
                format!(
                    "temporary queue {name:?} is in use by another connection (pick another \
                     name, or wait until that client has left)"
                ),
            ),
            Err(DeclareError::Name(why)) => (ErrorKind::NameConflict, why),
            Err(DeclareError::Limit(why)) => (ErrorKind::TemporaryLimit, why),
        };
        Reply::Error {
            kind,
            message,
            accepted: None,
        }
    }

    fn handle_queue(&mut self, request: Request, core: &QueueCore) -> Answer {
        let Request::Put {
            items,
            timeout_ms,
            delay_ms,
            ..
        } = request
        else {
            return self.handle_other(request, core).into();
        };
        let stream = self.conn.get_ref().stream();
        // A client that leaves while its request waits must not have items stored.
        let alive = || peer_alive(stream);
        let held = held(&items);
        let due = delay_due(delay_ms);
        let (outcome, pending) = core.put_staged(items, due, deadline_ms(timeout_ms), &alive, held);
        let reply = put_reply(core, outcome);
        match pending {
            Some(pending) => Answer::Committed(reply, pending),
            None => reply.into(),
        }
    }

    /// Every request on a queue but a plain put.
    fn handle_other(&mut self, request: Request, core: &QueueCore) -> Reply {
        let owner = self.owner;
        let stream = self.conn.get_ref().stream();
        // A client that leaves while its request waits must not have items stored or taken.
        let alive = || peer_alive(stream);
        match request {
            Request::Get {
                max,
                timeout_ms,
                ack,
                put,
                ..
            } => {
                // One deadline for the whole request: the put and the take share the timeout.
                let deadline = deadline_ms(timeout_ms);
                if let Some(first) = put {
                    let Some(target) = self.shared.registry.lookup(&first.queue) else {
                        let e = Error::UnknownQueue(first.queue);
                        return error_reply(ErrorKind::UnknownQueue, &e, None);
                    };
                    // Only once the results are stored may the tasks be acknowledged.
                    let held = held(&first.items);
                    match target.put(first.items, deadline, &alive, held) {
                        PutOutcome::Done => {}
                        outcome => return put_reply(&target, outcome),
                    }
                }
                if !ack.is_empty() {
                    let refused = core.ack(owner, &ack);
                    if !refused.is_empty() {
                        log::debug!(
                            "queue {}: {} late implicit ack(s) refused",
                            core.name(),
                            refused.len()
                        );
                    }
                }
                // Capped so the reply's lease ids fit the next request's ack.
                let max = (max as usize).clamp(1, MAX_BATCH_ITEMS);
                match core.take_leased(owner, max, deadline, self.budget, &alive) {
                    GetOutcome::Items(items) => Reply::Items {
                        items: items
                            .into_iter()
                            .map(|l| Delivered(l.lease, l.payload, l.redeliveries))
                            .collect(),
                        lease_ms: millis(core.lease_timeout()),
                    },
                    GetOutcome::Empty => Reply::Empty,
                    GetOutcome::Closed => error_reply(ErrorKind::Closed, &Error::Closed, None),
                }
            }
            Request::Ack { leases, .. } => Reply::Leases {
                refused: core.ack(owner, &leases),
            },
            Request::Nack {
                leases,
                delay_ms,
                count,
                ..
            } => Reply::Leases {
                refused: core.nack_due(owner, &leases, delay_due(delay_ms), count),
            },
            Request::Touch { leases, .. } => Reply::Leases {
                refused: core.touch(owner, &leases),
            },
            Request::Len { .. } => Reply::Len {
                len: core.len() as u64,
                capacity: core.capacity().map(|c| c as u64),
            },
            Request::Put { .. } | Request::Stats | Request::Declare { .. } => unreachable_reply(),
        }
    }
}

/// When items delayed by `delay_ms` are due; `None` (no delay) for an absent or zero delay.
fn delay_due(delay_ms: Option<u64>) -> Option<std::time::Instant> {
    delay_ms
        .filter(|&ms| ms > 0)
        .map(|ms| due_after(Duration::from_millis(ms)))
}

/// What a request's decoded items take in memory while it waits for room.
fn held(items: &[Blob]) -> u64 {
    items.iter().map(memory_cost).sum()
}

/// Whether the peer is still connected: no end of stream or error waiting on its socket.
/// (Bytes waiting are a pipelined request: alive.)
pub(super) fn peer_alive(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let alive = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).is_ok() && alive
}

fn put_reply(core: &QueueCore, outcome: PutOutcome) -> Reply {
    match outcome {
        PutOutcome::Done => Reply::Done,
        PutOutcome::Full { accepted } => Reply::Full {
            accepted: accepted as u64,
        },
        PutOutcome::TooLarge { accepted } => Reply::Error {
            kind: ErrorKind::TooLarge,
            message: format!(
                "item {accepted} of the batch exceeds the largest item of {} bytes",
                core.max_item()
            ),
            accepted: Some(accepted as u64),
        },
        PutOutcome::OverBudget { accepted } => Reply::OverBudget {
            accepted: accepted as u64,
            used: core.memory().used(),
            limit: core.memory().limit(),
        },
        PutOutcome::Closed { accepted } => {
            error_reply(ErrorKind::Closed, &Error::Closed, Some(accepted))
        }
    }
}

/// A put refused because the server could not persist it (it is stopping).
fn closed_reply() -> Reply {
    error_reply(ErrorKind::Closed, &Error::Closed, Some(0))
}

/// `stats` names no queue and is answered before a queue is looked up.
fn unreachable_reply() -> Reply {
    let e = Error::Protocol("request without a queue".into());
    error_reply(ErrorKind::Protocol, &e, None)
}

fn error_reply(kind: ErrorKind, error: &Error, accepted: Option<usize>) -> Reply {
    Reply::Error {
        kind,
        message: error.to_string(),
        accepted: accepted.map(|a| a as u64),
    }
}
