//! The accept loop: admits connections within the caps, starts a session thread for each,
//! and refuses the rest with a message.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::session;
use super::shared::Shared;
use crate::sync::lock;
use crate::wire::socket;

pub(super) fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
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
