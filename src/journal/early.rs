//! A put's reply sent by the thread whose sync covered the put.
//!
//! Under `--fsync always` a put is confirmed once a group commit has synced its records. If
//! the writer that synced them only woke the putting connection's thread to send the
//! reply, every durable put would cost that thread a park and a wake-up, which on a busy
//! machine is most of the put's cost. So the putting thread encodes its reply into its
//! connection's slot and, if another thread is writing, goes back to reading its
//! connection; the writer sends the reply straight after the sync, without blocking.
//! Whatever the socket does not take at once, the connection's own thread sends when it
//! settles, which it does before it sends anything else.

use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use socket2::SockRef;

use crate::sync::lock;

/// Flags of the writer's send: it never blocks (a peer that does not read cannot stall the
/// commit of everyone else), nor raises `SIGPIPE` for a peer gone.
#[cfg(target_os = "linux")]
const FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// One connection's slot for a reply sent on its behalf; reused for each of its puts.
pub(crate) struct EarlyReply {
    stream: Arc<TcpStream>,
    slot: Mutex<Slot>,
}

struct Slot {
    frame: Vec<u8>,
    state: State,
    /// Counts the replies armed, so a writer holding an older one sends nothing.
    generation: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// No reply handed over.
    Idle,
    /// A reply waits for the writer.
    Armed,
    /// The writer sent this many of its bytes.
    Sent(usize),
}

/// One armed reply: what a writer holds to send it.
#[derive(Clone)]
pub(crate) struct Armed {
    reply: Arc<EarlyReply>,
    generation: u64,
}

impl EarlyReply {
    /// A slot for the connection on `stream`.
    pub(crate) fn new(stream: Arc<TcpStream>) -> Arc<EarlyReply> {
        Arc::new(EarlyReply {
            stream,
            slot: Mutex::new(Slot {
                frame: Vec::new(),
                state: State::Idle,
                generation: 0,
            }),
        })
    }

    /// Hands over the reply frame `fill` writes, for the commit that follows; `fill`
    /// returns false to hand over nothing, and then this returns `None`.
    pub(crate) fn arm(self: &Arc<Self>, fill: impl FnOnce(&mut Vec<u8>) -> bool) -> Option<Armed> {
        let mut slot = lock(&self.slot);
        slot.frame.clear();
        slot.generation += 1;
        if !fill(&mut slot.frame) {
            slot.state = State::Idle;
            return None;
        }
        slot.state = State::Armed;
        Some(Armed {
            reply: Arc::clone(self),
            generation: slot.generation,
        })
    }

    /// The connection's thread, once the put is committed: takes the reply back and calls
    /// `rest` with the part not sent yet (all of it if the writer did not send it, nothing
    /// if it sent it all). `rest` runs without the lock, so a slow peer keeps no writer
    /// waiting.
    pub(crate) fn finish<R>(&self, rest: impl FnOnce(&[u8]) -> R) -> R {
        let (frame, sent) = {
            let mut slot = lock(&self.slot);
            let sent = match std::mem::replace(&mut slot.state, State::Idle) {
                State::Sent(n) => n,
                State::Idle | State::Armed => 0,
            };
            (std::mem::take(&mut slot.frame), sent)
        };
        let result = rest(frame.get(sent..).unwrap_or_default());
        // The buffer back for the next reply (no other thread arms this slot).
        lock(&self.slot).frame = frame;
        result
    }

    /// Takes the reply back unsent if the writer has not sent any of it (the commit failed,
    /// so it must not go out); says whether it did. If not, the reply is out, and stands.
    pub(crate) fn withdraw(&self) -> bool {
        let mut slot = lock(&self.slot);
        match slot.state {
            State::Armed | State::Idle | State::Sent(0) => {
                slot.state = State::Idle;
                true
            }
            State::Sent(_) => false,
        }
    }

    /// Whether the whole reply is out (nothing left for `finish` to send).
    pub(crate) fn delivered(&self) -> bool {
        let slot = lock(&self.slot);
        slot.state == State::Sent(slot.frame.len())
    }
}

impl Armed {
    /// The writer, once the put is synced: sends as much of the reply as the socket takes
    /// now, unless the connection took it back (or armed a newer one) meanwhile. An error
    /// (the peer gone, its buffer full) leaves the reply to the connection's own thread,
    /// which meets the same error, or waits its write timeout, on its own time.
    pub(crate) fn send(&self) {
        let mut slot = lock(&self.reply.slot);
        if slot.state != State::Armed || slot.generation != self.generation {
            return;
        }
        let sent = SockRef::from(&*self.reply.stream)
            .send_with_flags(&slot.frame, FLAGS)
            .unwrap_or(0);
        slot.state = State::Sent(sent);
    }
}
