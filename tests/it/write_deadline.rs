//! `write_timeout` bounds the whole reply, not each write call: a client that does not read
//! its reply, or reads it a trickle at a time, loses its connection and its leases once the
//! timeout has passed.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use distq::{Server, ServerConfig};

use crate::support::raw::{Cbor, Raw};
use crate::support::{server_with, wait_until, KEY};

const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Items in the reply, of [`ITEM`] bytes each: a reply of 7 MiB, far more than the socket
/// buffers of both ends hold.
const ITEMS: u64 = 7;
const ITEM: usize = 1 << 20;

/// A server with a 2 s write timeout, and a raw client with a tiny receive buffer that has
/// asked for a reply of 7 MiB.
fn big_reply_requested() -> (Server, Raw) {
    let server = server_with(ServerConfig::default().write_timeout(Some(WRITE_TIMEOUT)));
    let local = server.queue::<Vec<u8>>("tasks").unwrap();
    for _ in 0..ITEMS {
        local.put(vec![0u8; ITEM]).unwrap();
    }
    let mut raw = Raw::authenticated(server.local_addr(), KEY);
    // A small window, so the kernel cannot swallow the reply on the client's behalf.
    socket2::SockRef::from(&raw.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    raw.send(&Cbor::variant(
        "get",
        vec![
            ("queue", Cbor::Text("tasks".into())),
            ("max", Cbor::Uint(ITEMS)),
            ("timeout_ms", Cbor::Uint(0)),
        ],
    ));
    assert!(
        wait_until(Duration::from_secs(10), || server.stats().queues[0].leased
            == ITEMS),
        "the get was not served: {:?}",
        server.stats()
    );
    (server, raw)
}

/// Whether the server dropped the client and took its leases back within the write timeout
/// plus a generous slack (the old code needed minutes for a trickle reader).
fn dropped_in_time(server: &Server, since: Instant) -> Duration {
    let limit = WRITE_TIMEOUT + Duration::from_secs(10);
    let back = wait_until(limit, || {
        let stats = server.stats();
        stats.queues[0].leased == 0 && stats.connections == 0
    });
    let took = since.elapsed();
    assert!(
        back,
        "after {took:?} the slow reader still holds its reply: {:?}",
        server.stats()
    );
    assert_eq!(server.stats().queues[0].len, ITEMS, "the items are back");
    took
}

#[test]
fn a_client_that_never_reads_its_reply_is_dropped_after_the_write_timeout() {
    let (server, raw) = big_reply_requested();
    let took = dropped_in_time(&server, Instant::now());
    eprintln!("never-reading client dropped after {took:?}");
    drop(raw);
}

#[test]
fn a_client_that_trickles_its_reply_is_dropped_after_the_write_timeout() {
    let (server, mut raw) = big_reply_requested();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        raw.stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        thread::spawn(move || {
            // 4 KiB every 200 ms: progress on every write call, never the whole reply in time.
            let mut buf = vec![0u8; 4096];
            let end = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                match raw.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let took = dropped_in_time(&server, Instant::now());
    eprintln!("trickle reader dropped after {took:?}");
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
}
