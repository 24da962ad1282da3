//! Idle connections hold a few KiB each, whatever they once sent or received.

use std::time::Duration;

use distq::Client;

use crate::support::{distq, rss_kib, wait_until, ChildGuard, KEY};

const CONNECTIONS: usize = 200;
const ITEM: usize = 600_000;

#[test]
fn idle_connections_that_once_moved_a_large_item_keep_small_buffers() {
    // glibc keeps freed large blocks in each of its per-thread arenas (up to 8 per core) once
    // its adaptive mmap threshold has risen: a fixed threshold makes RSS show what the server
    // holds rather than what the allocator caches, on any number of cores.
    let child = ChildGuard::spawn(
        "serve",
        distq()
            .args(["serve", "--bind", "127.0.0.1:0", "--authkey", KEY])
            .env("MALLOC_MMAP_THRESHOLD_", "131072"),
    );
    let addr = child.listening_addr();
    let producer = Client::connect(addr, KEY).unwrap();
    let stats = producer.stats().unwrap();
    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let client = Client::connect(addr, KEY).unwrap();
        // A first round trip, so the session is set up before the baseline is taken.
        client
            .queue::<serde_bytes::ByteBuf>("tasks")
            .unwrap()
            .len()
            .unwrap();
        idle.push(client);
    }
    assert!(wait_until(Duration::from_secs(10), || producer
        .stats()
        .is_ok_and(
            |s| s.connections == stats.connections + CONNECTIONS as u64
        )));
    let before = rss_kib(child.id());
    for client in &idle {
        // Each connection puts a large item (a large request) and takes one (a large reply).
        let q = client.queue::<serde_bytes::ByteBuf>("tasks").unwrap();
        q.put(serde_bytes::ByteBuf::from(vec![7u8; ITEM])).unwrap();
        let delivery = q.reserve().unwrap();
        assert_eq!(delivery.item().len(), ITEM);
        delivery.ack().unwrap();
    }
    let s = producer.stats().unwrap();
    assert_eq!((s.queues[0].len, s.queues[0].leased), (0, 0), "{s:?}");
    let after = rss_kib(child.id());
    let grew = after.saturating_sub(before);
    eprintln!(
        "RSS {before} KiB -> {after} KiB: {grew} KiB for {CONNECTIONS} idle connections ({} KiB each)",
        grew / CONNECTIONS as u64
    );
    // 32 KiB a connection plus 8 MiB of slack; the old code kept each request's 600 KB
    // buffer, over 117 MiB here.
    let bound = CONNECTIONS as u64 * 32 + 8 * 1024;
    assert!(grew < bound, "RSS grew by {grew} KiB (bound {bound} KiB)");
    drop(idle);
}
