//! Unauthenticated peers cannot lock real clients out: silent sockets held open against the
//! handshake cap are evicted to admit newcomers.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use distq::{Client, ClientConfig, ServerConfig};

use crate::support::raw::{Cbor, Raw};
use crate::support::{distq, ms, server_with, wait_until, ChildGuard, KEY};

/// Sockets the attacker holds open: past the default cap of 256 handshakes.
const SILENT: usize = 260;

/// An attacker holding `SILENT` sockets open that never send a byte, reopening any the server
/// closes, until dropped.
struct SilentFlood {
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SilentFlood {
    fn start(addr: SocketAddr) -> SilentFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let reopened = Arc::new(AtomicU64::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&reopened));
        let thread = thread::spawn(move || {
            let open = || {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s)
            };
            let mut sockets: Vec<Option<TcpStream>> = (0..SILENT).map(|_| open()).collect();
            while !flag.load(Ordering::Relaxed) {
                for slot in &mut sockets {
                    // Anything the server sends (a refusal) or an end of stream: reopen.
                    let closed = match slot {
                        Some(s) => !matches!(s.peek(&mut [0u8; 1]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock),
                        None => true,
                    };
                    if closed {
                        *slot = open();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Pacing, so the sweep does not spin a core of a shared machine.
                thread::sleep(ms(1));
            }
        });
        SilentFlood {
            stop,
            reopened,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn silent_sockets_held_open_do_not_lock_real_clients_out() {
    let server = server_with(ServerConfig::default());
    let addr = server.local_addr();
    let flood = SilentFlood::start(addr);
    // Full: the flood holds at least a per-address cap of slots, and the server has started
    // closing (evicting or refusing) its sockets.
    assert!(
        wait_until(Duration::from_secs(30), || {
            server.stats().connections >= 64 && flood.reopened.load(Ordering::Relaxed) > 0
        }),
        "the flood never filled the handshake slots: {:?}",
        server.stats()
    );
    // The measure: 2 s to connect and finish the handshake, each attempt.
    let config = ClientConfig::default()
        .connect_timeout(Some(Duration::from_secs(2)))
        .handshake_timeout(Some(Duration::from_secs(2)));
    let attempts = 100;
    let mut served = 0;
    let mut failures = Vec::new();
    for _ in 0..attempts {
        let outcome = Client::builder()
            .config(config.clone())
            .connect(addr, KEY)
            .and_then(|c| c.queue::<u64>("tasks")?.len());
        match outcome {
            Ok(_) => served += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    let stats = ChildGuard::spawn(
        "stats",
        distq().args(["stats", "--connect", &addr.to_string(), "--authkey", KEY]),
    )
    .wait_output(Duration::from_secs(30));
    println!(
        "under a flood of {SILENT} silent sockets ({} reopened): {served} of {attempts} \
         legitimate connects served",
        flood.reopened.load(Ordering::Relaxed)
    );
    // Without the eviction none gets through (0 of 100); on a loaded 2-core machine a few
    // attempts can miss their 2 s, so the bar is well above nothing, below perfect.
    assert!(
        served >= 80,
        "only {served} of {attempts} legitimate connects were served; failures: {failures:?}"
    );
    assert!(
        stats.status.success(),
        "distq stats was locked out: {}",
        stats.stderr
    );
}

/// A peer that has spoken and stalls mid-handshake: it sent its hello, and the server's
/// challenge (which it never answers) shows the server has read it.
fn spoken(addr: SocketAddr) -> Raw {
    let mut raw = Raw::connect(addr);
    raw.send(&Cbor::variant(
        "hello",
        vec![
            ("version", Cbor::Uint(1)),
            ("nonce", Cbor::Bytes(vec![1; 32])),
        ],
    ));
    let challenge = raw.recv().expect("a challenge");
    assert_eq!(challenge.tag(), Some("challenge"), "{challenge:?}");
    raw
}

#[test]
fn a_silent_handshake_is_evicted_before_an_older_one_that_has_spoken() {
    let server = server_with(ServerConfig::default().max_handshakes_per_ip(2));
    let addr = server.local_addr();
    let mut speaking = spoken(addr);
    let mut silent = Raw::connect(addr);
    assert!(wait_until(Duration::from_secs(10), || server
        .stats()
        .connections
        == 2));
    let client = Client::connect(addr, KEY).expect("the newcomer is admitted");
    assert!(
        silent.closed_within(Duration::from_secs(5)),
        "the silent one stays"
    );
    assert!(
        !speaking.closed_within(ms(200)),
        "the one that had spoken was evicted while a silent one was there"
    );
    // With only speaking handshakes left, the oldest unfinished one makes room.
    let mut second = spoken(addr);
    let other = Client::connect(addr, KEY).expect("the newcomer is admitted");
    assert!(
        speaking.closed_within(Duration::from_secs(5)),
        "the oldest stays"
    );
    assert!(
        !second.closed_within(ms(200)),
        "the younger one was evicted"
    );
    drop((client, other));
}

#[test]
fn a_silent_connection_closed_at_the_hello_timeout_is_no_warning() {
    let (serve, addr) = crate::support::serve_process(&[]);
    let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The server closes each after the hello timeout (3 s): a read then sees the end.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let got = std::io::Read::read(&mut s, &mut [0u8; 16]);
        assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    }
    serve.signal("TERM");
    let out = serve.wait_output(Duration::from_secs(10));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        !out.stderr.contains("WARN"),
        "silent connections logged warnings:\n{}",
        out.stderr
    );
}

/// One byte is enough to count as speaking: 64 sockets from one address that each send one
/// byte and stall must not hold that address's handshake cap (all local workers connect from
/// it) for the handshake timeout.
#[test]
fn one_byte_per_socket_from_the_clients_address_does_not_lock_real_clients_out() {
    let server = server_with(ServerConfig::default());
    let addr = server.local_addr();
    let stalled: Vec<Raw> = (0..64)
        .map(|_| {
            let mut raw = Raw::connect(addr);
            raw.write(&[0]);
            raw
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        server.stats().connections == 64
    }));
    thread::sleep(ms(200)); // every session has read its byte
    let served = (0..10)
        .filter(|_| Client::connect(addr, KEY).is_ok())
        .count();
    drop(stalled);
    assert!(served >= 9, "only {served} of 10 real clients were served");
}

#[test]
fn handshakes_stalled_after_one_byte_do_not_lock_newcomers_out() {
    // Slowloris: each peer sends one byte of its hello and stalls, so none is silent. Held
    // for the whole (long) handshake timeout and reopened at once, they would lock every
    // other client of their address out; a stalled handshake must make room instead.
    let server = server_with(
        ServerConfig::default()
            .max_handshakes_per_ip(4)
            .handshake_timeout(Some(Duration::from_secs(120))),
    );
    let addr = server.local_addr();
    let mut stalled: Vec<Raw> = (0..4).map(|_| Raw::connect(addr)).collect();
    for peer in &mut stalled {
        peer.write(&[0]);
    }
    assert!(
        wait_until(Duration::from_secs(10), || server.stats().connections == 4),
        "connections: {:?}",
        server.stats()
    );
    let mut refusals = Vec::new();
    let served = wait_until(Duration::from_secs(30), || {
        match Client::connect(addr, KEY).and_then(|c| c.queue::<u64>("tasks")?.len()) {
            Ok(_) => true,
            Err(e) => {
                refusals.push(e.to_string());
                thread::sleep(ms(200));
                false
            }
        }
    });
    assert!(
        served,
        "stalled handshakes locked a newcomer out for 30 s: {} refusals, the last: {:?}",
        refusals.len(),
        refusals.last()
    );
    let evicted = stalled
        .iter_mut()
        .map(|p| p.closed_within(ms(100)))
        .filter(|&closed| closed)
        .count();
    assert!(evicted >= 1, "no stalled handshake made room");
}
