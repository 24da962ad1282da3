//! What the accept thread, the sessions and the server's handles share.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::config::ServerConfig;
use crate::core::Registry;
use crate::journal::Journal;
use crate::stats::{QueueStats, Stats};
use crate::sync::lock;
use crate::wire::auth::Instance;
use crate::wire::message::ServerInfo;
use crate::wire::socket::ListenerWaker;

use super::accept::Throttled;

/// What the accept thread, the sessions and the handles share.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) authkey: Vec<u8>,
    pub(crate) config: ServerConfig,
    pub(crate) local_addr: SocketAddr,
    /// This server's random id, sent in every welcome: a client that reconnects to another
    /// instance knows its old leases and results mean nothing here.
    pub(crate) instance: Instance,
    /// The journal, when the server keeps one.
    pub(crate) journal: Option<Arc<Journal>>,
    /// The settings every welcome carries.
    pub(crate) info: ServerInfo,
    /// Connections accepted and still in the handshake, by connection id.
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    /// Refusals being delivered.
    pub(super) refusing: AtomicUsize,
    /// Warnings about peers that never authenticated (failed handshakes, refusals): anyone
    /// who can connect causes them, so they are throttled like the accept loop's.
    pub(super) unauthenticated_warnings: Mutex<Throttled>,
    pub(super) stopping: AtomicBool,
    /// Never sent on; dropping it wakes every blocked queue wait (see `registry`).
    pub(super) stop_tx: Mutex<Option<Sender<()>>>,
    pub(super) stop_rx: Receiver<()>,
    /// Every open connection (the stream its session uses), to shut them down and wake
    /// their threads.
    pub(super) conns: Mutex<HashMap<u64, Arc<TcpStream>>>,
    /// The Python listener's address and registered names, when it has one.
    pub(crate) python_addr: Option<SocketAddr>,
    pub(crate) python: Option<super::python::PythonQueues>,
    /// Wake the accept threads without opening a descriptor.
    pub(super) wakers: Vec<ListenerWaker>,
    pub(super) sessions: Mutex<Vec<JoinHandle<()>>>,
    pub(super) next_id: AtomicU64,
}

impl Shared {
    /// Figures for `stats`.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            queues: self
                .registry
                .primaries()
                .iter()
                .map(|q| q.stats())
                .chain(self.registry.temporaries().iter().map(|q| QueueStats {
                    temporary: true,
                    ..q.stats()
                }))
                .collect(),
            connections: lock(&self.conns).len() as u64,
            memory_used: self.registry.memory().used(),
            memory_limit: self.registry.memory().limit(),
            journal: self.journal.as_ref().map(|j| j.stats()),
        }
    }

    /// Connection `id`'s peer sent the first byte of its hello: it may no longer be evicted
    /// as a silent peer.
    pub(crate) fn hello_started(&self, id: u64) {
        if let Some(pending) = lock(&self.pending).get_mut(&id) {
            pending.spoke = true;
        }
    }

    /// Connection `id` proved its key: it leaves the pending handshakes, so it can no longer
    /// be evicted; `false` if it was evicted already (its socket is being shut down).
    pub(crate) fn admit(&self, id: u64) -> bool {
        lock(&self.pending).remove(&id).is_some()
    }

    /// Connection `id` finished its handshake, either way (or was evicted already).
    pub(crate) fn handshake_done(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Logs a warning about a peer that has not authenticated, at most once per throttle
    /// period: a loop of connections without the key cannot flood the log.
    pub(super) fn warn_unauthenticated(&self, message: &str) {
        lock(&self.unauthenticated_warnings).warn(message);
    }

    pub(super) fn request_stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.stop_tx).take();
        // Puts waiting for memory wait on a condition variable, not on the stop channel.
        self.registry.memory().wake_all();
        // Wake the accept threads, which then see the flag. No new descriptor is needed, so
        // this works when the process has none left.
        for waker in &self.wakers {
            waker.wake();
        }
    }
}

/// A connection still in the handshake.
pub(super) struct Pending {
    pub(super) ip: IpAddr,
    pub(super) started: Instant,
    /// Whether the first byte of its hello has arrived.
    pub(super) spoke: bool,
}
