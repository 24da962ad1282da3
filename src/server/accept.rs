//! The accept loop: admits connections within the caps, starts a session thread for each,
//! and refuses the rest with a message.

use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::session;
use super::shared::{Pending, Shared};
use crate::core::Owner;
use crate::sync::lock;
use crate::wire::frame::Framed;
use crate::wire::message::Handshake;
use crate::wire::socket;

/// What a client is told when the server has no descriptor left for it.
pub(super) const OUT_OF_FDS: &str = "the server is out of file descriptors (raise ulimit -n)";

/// What serves one admitted connection until it ends: the native session, or the Python
/// listener's. Both share the accept loop, its caps and its refusals.
pub(super) type Serve = fn(Arc<TcpStream>, SocketAddr, Owner, &Shared);

/// A listener's protocol: how its connections are served, and how one is told it is refused.
#[derive(Clone, Copy)]
pub(super) struct Protocol {
    pub(super) serve: Serve,
    pub(super) send_refusal: fn(&TcpStream, &str) -> crate::error::Result<()>,
}

/// distq's own protocol.
pub(super) const NATIVE: Protocol = Protocol {
    serve: session::serve,
    send_refusal: native_refusal,
};

/// Python's manager protocol.
pub(super) const PYTHON: Protocol = Protocol {
    serve: super::python::serve,
    send_refusal: super::python::send_refusal,
};

fn native_refusal(stream: &TcpStream, reason: &str) -> crate::error::Result<()> {
    Framed::new(stream, 1024).send(&Handshake::Refused {
        reason: reason.to_owned(),
    })
}

pub(super) fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, protocol: Protocol) {
    // The classic trick: one descriptor held back, given up to accept and refuse a client
    // when the process has run out, so it hears why instead of waiting for a timeout.
    let mut reserve = File::open("/dev/null").ok();
    let mut failures = Throttled::default();
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = start_session(shared, stream, peer, protocol) {
                    log::warn!("{peer}: could not start a session: {e}");
                }
            }
            // The listener's receive timeout: time to look at the stop flag.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if out_of_descriptors(&e) && reserve.is_some() => {
                drop(reserve.take());
                if let Ok((stream, _)) = listener.accept() {
                    deliver_refusal(&stream, OUT_OF_FDS, protocol, QUICK_LINGER, 2);
                }
                reserve = File::open("/dev/null").ok();
                failures.warn(&format!(
                    "accept failed: {e}: refusing new connections: {OUT_OF_FDS}"
                ));
            }
            Err(e) => {
                // Aborted handshakes and the like pass; the server goes on.
                failures.warn(&format!("accept failed: {e}"));
                thread::sleep(Duration::from_millis(50));
            }
        }
        reap_finished(shared);
    }
}

/// `EMFILE` or `ENFILE` (the same numbers on Linux and the BSDs).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// A warning printed at most once per `THROTTLE`, with how many were held back, so a failure
/// that repeats many times a second cannot flood the log.
#[derive(Default)]
pub(super) struct Throttled {
    last: Option<Instant>,
    held_back: u64,
}

/// The shortest time between two throttled warnings.
const THROTTLE: Duration = Duration::from_secs(10);

impl Throttled {
    pub(super) fn warn(&mut self, message: &str) {
        let due = self.last.is_none_or(|last| last.elapsed() >= THROTTLE);
        if !due {
            self.held_back += 1;
            return;
        }
        match self.held_back {
            0 => log::warn!("{message}"),
            n => log::warn!("{message} ({n} more like it since the last such line)"),
        }
        self.last = Some(Instant::now());
        self.held_back = 0;
    }
}

/// Sends a refusal within `linger` for each part, then drains what the peer sent (its
/// hello, if it speaks first), so the close is not a reset that destroys the message: the
/// accept thread uses it with a short linger when there is no descriptor to spare for a
/// refusal thread's longer one.
fn deliver_refusal(
    stream: &TcpStream,
    reason: &str,
    protocol: Protocol,
    linger: Duration,
    reads: usize,
) {
    let _ = stream.set_write_timeout(Some(linger));
    if (protocol.send_refusal)(stream, reason).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(linger));
    let mut sink = [0u8; 512];
    let mut stream = stream;
    for _ in 0..reads {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// How long the accept thread spends on each part of a refusal it delivers itself.
const QUICK_LINGER: Duration = Duration::from_millis(20);

/// How long a refusal thread keeps a refused connection to deliver its refusal.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

fn start_session(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
) -> io::Result<()> {
    let config = &shared.config;
    let ip = peer.ip();
    let id = {
        let mut pending = lock(&shared.pending);
        // Each cap first makes room by evicting a silent handshake, else a stalled one; a
        // newcomer is refused only when neither is left to evict.
        let open = lock(&shared.conns).len();
        if open >= config.max_connections && !evict_idle(shared, &mut pending, None) {
            drop(pending);
            let reason = format!(
                "too many connections (the limit is {})",
                config.max_connections
            );
            return refuse(shared, stream, peer, reason, protocol);
        }
        let from_ip = pending.values().filter(|p| p.ip == ip).count();
        if from_ip >= config.max_handshakes_per_ip && !evict_idle(shared, &mut pending, Some(ip)) {
            drop(pending);
            let reason = format!(
                "too many connections in the handshake from {ip} (the limit is {})",
                config.max_handshakes_per_ip
            );
            return refuse(shared, stream, peer, reason, protocol);
        }
        if pending.len() >= config.max_handshakes && !evict_idle(shared, &mut pending, None) {
            drop(pending);
            let reason = format!(
                "too many connections in the handshake (the limit is {})",
                config.max_handshakes
            );
            return refuse(shared, stream, peer, reason, protocol);
        }
        socket::tune(&stream, &config.keepalive)?;
        // Accepted sockets inherit the listener's receive timeout; sessions set their own.
        stream.set_read_timeout(None)?;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(
            id,
            Pending {
                ip,
                started: Instant::now(),
                spoke: false,
            },
        );
        id
    };
    // One descriptor per connection: the session and the registry share the stream.
    let stream = Arc::new(stream);
    lock(&shared.conns).insert(id, Arc::clone(&stream));
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
            (protocol.serve)(stream, peer, id, &session_shared);
        });
    match spawned {
        Ok(handle) => {
            lock(&shared.sessions).push(handle);
            Ok(())
        }
        Err(e) => {
            shared.handshake_done(id);
            lock(&shared.conns).remove(&id);
            Err(e)
        }
    }
}

/// Evicts a handshake to admit a newcomer (from `ip` if given): the oldest that has not sent
/// a byte, else the oldest unfinished one. A real client finishes in a round trip or two, so
/// the oldest unfinished handshake is the one most likely stalling (a peer that sends a byte
/// and stalls, slowloris-style, or cycles its sockets to stay young); an attacker would have
/// to open a cap's worth of connections within a real client's handshake to evict it. It
/// leaves the table at once and its socket is shut down, so its thread ends at once too.
/// Returns whether there was one.
fn evict_idle(
    shared: &Shared,
    pending: &mut std::collections::HashMap<u64, Pending>,
    ip: Option<IpAddr>,
) -> bool {
    let from_ip = |p: &Pending| ip.is_none_or(|ip| p.ip == ip);
    let oldest = |spoke: bool| {
        pending
            .iter()
            .filter(|(_, p)| p.spoke == spoke && from_ip(p))
            .min_by_key(|(_, p)| p.started)
            .map(|(&id, _)| id)
    };
    let Some(id) = oldest(false).or_else(|| oldest(true)) else {
        return false;
    };
    if let Some(p) = pending.remove(&id) {
        log::debug!(
            "{}: evicted a handshake {} for {:?} to admit a newcomer",
            p.ip,
            if p.spoke { "unfinished" } else { "silent" },
            p.started.elapsed()
        );
    }
    if let Some(stream) = lock(&shared.conns).get(&id) {
        let _ = stream.shutdown(Shutdown::Both);
    }
    true
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
    protocol: Protocol,
) -> io::Result<()> {
    if shared.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSERS {
        shared.refusing.fetch_sub(1, Ordering::SeqCst);
        shared.warn_unauthenticated(&format!("{peer}: refused without a word: {reason}"));
        return Ok(());
    }
    let refuser_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("distq-refuse".into())
        .stack_size(SESSION_STACK)
        .spawn(move || {
            refuser_shared.warn_unauthenticated(&format!("{peer}: refused: {reason}"));
            log::debug!("{peer}: refusing: {reason}");
            deliver_refusal(&stream, &reason, protocol, REFUSAL_LINGER, 8);
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
