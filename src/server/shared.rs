//! What the accept thread, the sessions and the server's handles share.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::ServerConfig;
use crate::core::Registry;
use crate::stats::Stats;
use crate::sync::lock;

/// What the accept thread, the sessions and the handles share.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) authkey: Vec<u8>,
    pub(crate) config: ServerConfig,
    pub(crate) local_addr: SocketAddr,
    /// Connections accepted and still in the handshake.
    pub(super) handshaking: AtomicUsize,
    /// Refusals being delivered.
    pub(super) refusing: AtomicUsize,
    pub(super) stopping: AtomicBool,
    /// Never sent on; dropping it wakes every blocked queue wait (see `registry`).
    pub(super) stop_tx: Mutex<Option<Sender<()>>>,
    pub(super) stop_rx: Receiver<()>,
    /// A clone of every open connection, to shut them down and wake their threads.
    pub(super) conns: Mutex<HashMap<u64, TcpStream>>,
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
                .collect(),
            connections: lock(&self.conns).len() as u64,
            memory_used: self.registry.memory().used(),
            memory_limit: self.registry.memory().limit(),
        }
    }

    /// A session finished its handshake, either way.
    pub(crate) fn handshake_done(&self) {
        self.handshaking.fetch_sub(1, Ordering::SeqCst);
    }

    pub(super) fn request_stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.stop_tx).take();
        // Puts waiting for memory wait on a condition variable, not on the stop channel.
        self.registry.memory().wake_all();
        // Wake the accept thread, which then sees the flag.
        match TcpStream::connect_timeout(&wake_addr(self.local_addr), Duration::from_secs(1)) {
            Ok(_) => {}
            // A client's connection woke it first, and it has closed the listener already.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => log::warn!("could not wake the accept thread: {e}"),
        }
    }
}

/// Where to connect to reach our own listener (an unspecified address is not dialable).
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}
