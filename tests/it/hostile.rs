//! Bad input cannot take the server down: garbage, hostile length prefixes, truncated and
//! stalled frames, non-requests, unknown queues, silent connection floods. In every case the
//! server stays up, a client connected at the same time is served, and memory stays bounded.

use std::time::{Duration, Instant};

use distq::{Client, Error, Server, ServerConfig};

use crate::support::raw::{Cbor, Raw};
use crate::support::{init_test_log, ms, rss_kib, serve_process, server_with, wait_until, KEY};

const SECS_10: Duration = Duration::from_secs(10);

/// A round trip through the `tasks` queue.
fn served(client: &Client) {
    let q = client.queue::<u64>("tasks").expect("queue");
    q.put(7).expect("put");
    assert_eq!(q.get_timeout(SECS_10).expect("get"), 7);
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn smoke() {
    let (_serve, addr) = serve_process(&[]);
    served(&Client::connect(addr, KEY).unwrap());
}

#[test]
fn garbage_of_every_kind_leaves_the_server_serving_in_bounded_memory() {
    let (serve, addr) = serve_process(&[]);
    let good = Client::connect(addr, KEY).unwrap();
    served(&good);
    let before = rss_kib(serve.id());
    for round in 0..40u64 {
        // Random bytes where a handshake should be.
        let mut r = Raw::connect(addr);
        r.write(&noise(round, 4096));
        assert!(r.closed_within(SECS_10), "random bytes: still open");

        // A length prefix of 0xFFFFFFFF: refused before anything is allocated.
        let mut r = Raw::connect(addr);
        r.write(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
        assert!(r.closed_within(SECS_10), "huge prefix: still open");

        // A truncated frame, then the client vanishes.
        let mut r = Raw::connect(addr);
        r.write(&[0, 0, 0, 100, 0xA1, 0x65]);
        drop(r);

        // Valid framing, but a request where the handshake should be.
        let mut r = Raw::connect(addr);
        r.send(&Cbor::variant(
            "len",
            vec![("queue", Cbor::Text("tasks".into()))],
        ));
        assert!(
            r.closed_within(SECS_10),
            "request before the handshake: still open"
        );

        // Authenticated, then CBOR that is not a request: an error reply, then closed.
        let mut r = Raw::authenticated(addr, KEY);
        r.send(&Cbor::Uint(42));
        let reply = r.recv().expect("an error reply");
        let kind = reply.get("error").and_then(|e| e.get("kind"));
        assert_eq!(kind, Some(&Cbor::Text("protocol".into())), "{reply:?}");
        assert!(r.closed_within(SECS_10), "non-request: still open");

        // Authenticated, then a client that vanishes in the middle of a frame.
        let mut r = Raw::authenticated(addr, KEY);
        r.write(&[0, 0, 0, 50, 0xA1, 0x63, b'g']);
        drop(r);

        served(&good);
    }
    served(&Client::connect(addr, KEY).unwrap());
    let grown = rss_kib(serve.id()).saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "the server grew by {grown} KiB over 240 hostile connections"
    );
}

#[test]
fn unknown_queue_gets_an_error_and_the_session_goes_on() {
    let (_serve, addr) = serve_process(&[]);
    let mut r = Raw::authenticated(addr, KEY);
    r.send(&Cbor::variant(
        "len",
        vec![("queue", Cbor::Text("nope".into()))],
    ));
    let reply = r.recv().expect("reply");
    let kind = reply.get("error").and_then(|e| e.get("kind"));
    assert_eq!(kind, Some(&Cbor::Text("unknown_queue".into())), "{reply:?}");
    r.send(&Cbor::variant(
        "len",
        vec![("queue", Cbor::Text("tasks".into()))],
    ));
    let reply = r.recv().expect("reply");
    assert_eq!(reply.tag(), Some("len"), "{reply:?}");
}

#[test]
fn hundreds_of_silent_connections_are_capped_and_cost_little() {
    let (serve, addr) = serve_process(&[]);
    let good = Client::connect(addr, KEY).unwrap();
    let before = rss_kib(serve.id());
    // Past the default cap of 256 connections in the handshake.
    let silent: Vec<Raw> = (0..300).map(|_| Raw::connect(addr)).collect();
    served(&good);
    // While the cap is full, a newcomer evicts a silent peer rather than being shut out.
    let admitted = Client::connect(addr, KEY);
    assert!(
        admitted.is_ok(),
        "silent peers shut a newcomer out: {admitted:?}"
    );
    let grown = rss_kib(serve.id()).saturating_sub(before);
    assert!(grown < 64 * 1024, "300 silent connections cost {grown} KiB");
    drop(silent);
    assert!(
        wait_until(SECS_10, || Client::connect(addr, KEY).is_ok()),
        "never recovered"
    );
    served(&good);
}

#[test]
fn a_peer_that_stalls_mid_frame_is_cut_off() {
    let server = server_with(ServerConfig::default().frame_timeout(Some(ms(300))));
    let good = Client::connect(server.local_addr(), KEY).unwrap();
    let mut r = Raw::authenticated(server.local_addr(), KEY);
    let start = Instant::now();
    r.write(&[0, 0, 0, 100, 0xA1, 0x63, b'l', b'e']);
    assert!(
        r.closed_within(SECS_10),
        "the stalled peer was never cut off"
    );
    assert!(
        start.elapsed() >= ms(250),
        "cut off before the frame timeout: {:?}",
        start.elapsed()
    );
    served(&good);
}

#[test]
fn connections_past_the_limit_are_refused_with_a_reason() {
    let server = server_with(ServerConfig::default().max_connections(3));
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..3)
        .map(|_| Client::connect(addr, KEY).unwrap())
        .collect();
    match Client::connect(addr, KEY) {
        Err(e @ Error::Refused(_)) => {
            assert!(e.to_string().contains("too many connections"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    served(&clients[0]);
    clients.pop();
    assert!(
        wait_until(SECS_10, || Client::connect(addr, KEY).is_ok()),
        "a freed slot was never reused"
    );
}

#[test]
fn announced_frames_cost_nothing_before_the_handshake() {
    let (serve, addr) = serve_process(&[]);
    let good = Client::connect(addr, KEY).unwrap();
    let before = rss_kib(serve.id());
    // Each announces an 8 MiB frame (the server's limit) and sends one byte of it.
    let announcers: Vec<Raw> = (0..100)
        .map(|_| {
            let mut r = Raw::connect(addr);
            r.write(&[0x00, 0x7F, 0xFF, 0x00, 0xA1]);
            r
        })
        .collect();
    served(&good);
    let grown = rss_kib(serve.id()).saturating_sub(before);
    assert!(grown < 32 * 1024, "100 announced frames cost {grown} KiB");
    drop(announcers);
}

#[test]
fn an_oversized_reply_breaks_the_client_connection_cleanly() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .bind("127.0.0.1:0")
        .unwrap();
    let client = Client::builder()
        .max_frame_size(64 * 1024)
        .connect(server.local_addr(), KEY)
        .unwrap();
    let q = client.queue::<serde_bytes::ByteBuf>("tasks").unwrap();
    server
        .queue::<serde_bytes::ByteBuf>("tasks")
        .unwrap()
        .put(serde_bytes::ByteBuf::from(vec![1u8; 100_000]))
        .unwrap();
    let err = q.get_timeout(SECS_10).unwrap_err();
    assert!(
        err.to_string().contains("exceeds our max_frame_size"),
        "{err}"
    );
    // Not a garbled stream afterwards: the connection is given up, and the item is back.
    let err = q.len().unwrap_err();
    assert!(err.to_string().contains("connect a new client"), "{err}");
    assert!(wait_until(SECS_10, || server.stats().queues[0].len == 1));
}

#[test]
fn peers_without_the_key_cannot_flood_the_log() {
    // Each of these costs an attacker one connect; each used to cost the server a warning
    // line, so a loop of them wrote thousands of lines a second.
    let (serve, addr) = crate::support::serve_process(&[]);
    let rounds = 100;
    for _ in 0..rounds {
        // A wrong proof.
        let mut peer = Raw::connect(addr);
        peer.send(&Cbor::variant(
            "hello",
            vec![
                ("version", Cbor::Uint(1)),
                ("nonce", Cbor::Bytes(vec![1; 32])),
            ],
        ));
        let _ = peer.recv();
        peer.send(&Cbor::variant(
            "proof",
            vec![("mac", Cbor::Bytes(vec![0; 32]))],
        ));
        let _ = peer.recv();
        // Garbage, then a hello cut short by a close.
        Raw::connect(addr).write(&[0, 0, 0, 1, 0xFF]);
        Raw::connect(addr).write(&[0]);
    }
    // Every one of them was handled (a real client is served after them all) ...
    let client = Client::connect(addr, KEY).unwrap();
    served(&client);
    drop(client);
    serve.signal("TERM");
    let out = serve.wait_output(Duration::from_secs(20));
    assert!(out.status.success(), "{}", out.stderr);
    // ... and reported in a few lines, not one each.
    let warnings = out.stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        (1..=20).contains(&warnings),
        "{} connections without the key wrote {warnings} warnings:\n{}",
        3 * rounds,
        out.stderr
    );
}
