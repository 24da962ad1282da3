//! The server-wide memory budget, the cap on items per request, and puts whose client left
//! while they waited.

use std::time::Duration;

use distq::{Client, Error, GetError, PutError, Server, ServerConfig};

use crate::support::raw::{Cbor, Raw};
use crate::support::{distq, init_test_log, ms, rss_kib, serve_process, wait_until, KEY};

const MIB: u64 = 1024 * 1024;
const SECS_10: Duration = Duration::from_secs(10);

/// An item of about 8 KiB once encoded.
fn item() -> Vec<u8> {
    vec![0u8; 8 * 1024]
}

fn budget_server(max_memory: u64) -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .queue("results")
        .config(ServerConfig::default().max_memory(max_memory))
        .bind("127.0.0.1:0")
        .unwrap()
}

/// Puts items until one fails (at most 10,000 tries); returns how many went in and the error.
fn fill(q: &distq::Queue<Vec<u8>>) -> (usize, PutError) {
    for stored in 0..10_000 {
        if let Err(e) = q.put_timeout(item(), ms(200)) {
            return (stored, e);
        }
    }
    panic!("10,000 items of 8 KiB fit a 1 MiB budget");
}

#[test]
fn a_put_past_the_memory_budget_waits_then_fails_naming_it_and_the_connection_serves_on() {
    let server = budget_server(MIB);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<Vec<u8>>("tasks").unwrap();
    let (stored, err) = fill(&q);
    assert!(
        (100..=128).contains(&stored),
        "{stored} items of 8 KiB in 1 MiB"
    );
    assert!(
        matches!(err, PutError::OverBudget { accepted: 0, limit } if limit == MIB),
        "{err:?}"
    );
    assert!(err.is_full());
    let message = err.to_string();
    assert!(message.contains("memory budget of 1 MiB"), "{message}");
    assert!(message.contains("--max-memory"), "{message}");
    let stats = client.stats().unwrap();
    assert_eq!(stats.memory_limit, MIB);
    assert!(
        stats.memory_used <= MIB && stats.memory_used > MIB - 9 * 1024,
        "{stats:?}"
    );
    // One item taken for good makes room for exactly one of a batch of three.
    let local = server.queue::<Vec<u8>>("tasks").unwrap();
    local.get().unwrap();
    let err = q
        .put_many_timeout([item(), item(), item()], ms(200))
        .unwrap_err();
    assert!(
        matches!(err, PutError::OverBudget { accepted: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("1 item(s) of the batch"), "{err}");
    assert_eq!(q.len().unwrap(), stored, "the connection still serves");
    // A worker drains the queue: the budget frees and puts succeed again.
    let worker = Client::connect(server.local_addr(), KEY).unwrap();
    let tasks = worker.queue::<Vec<u8>>("tasks").unwrap();
    while let Ok(batch) = tasks.get_many(64, ms(200)) {
        assert!(!batch.is_empty());
    }
    drop(tasks); // acknowledges the last batch
    assert!(wait_until(SECS_10, || client.stats().unwrap().memory_used == 0));
    q.put_timeout(item(), ms(200)).unwrap();
    assert_eq!(q.len().unwrap(), 1);
}

#[test]
fn a_fused_get_over_the_budget_says_so_and_keeps_its_leases() {
    let server = budget_server(MIB);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    let results = client.queue::<Vec<u8>>("results").unwrap();
    tasks.put(1).unwrap();
    assert_eq!(tasks.get_many(1, SECS_10).unwrap(), vec![1]);
    fill(&results);
    let err = tasks
        .get_many_after_put(&results, [item()], 1, ms(200))
        .unwrap_err();
    assert!(
        matches!(&err, GetError::Failed(Error::OverBudget { accepted: 0, queue, limit })
            if queue == "results" && *limit == MIB),
        "{err:?}"
    );
    assert!(err.to_string().contains("memory budget of 1 MiB"), "{err}");
    tasks.give_back().unwrap();
    assert_eq!(tasks.len().unwrap(), 1, "the task was still leased");
}

#[test]
fn serve_takes_max_memory_and_stats_show_the_budget() {
    let (serve, addr) = serve_process(&["--max-memory", "1MiB"]);
    let client = Client::connect(addr, KEY).unwrap();
    let q = client.queue::<Vec<u8>>("tasks").unwrap();
    let (_, err) = fill(&q);
    assert!(err.to_string().contains("memory budget of 1 MiB"), "{err}");
    let stats = |json: bool| {
        let mut cmd = distq();
        cmd.args(["stats", "--connect", &addr.to_string(), "--authkey", KEY]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json = stats(true);
    assert!(json.contains("\"memory_limit\": 1048576"), "{json}");
    assert!(json.contains("\"memory_used\": "), "{json}");
    let text = stats(false);
    assert!(text.contains("of 1.0 MiB used"), "{text}");
    let bad = distq()
        .args(["serve", "--bind", "127.0.0.1:0", "--authkey", KEY])
        .args(["--max-memory", "lots"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("512MiB"));
    drop(serve);
}

/// A put frame as large as the default frame limit holding millions of empty items.
fn put_of_empty_items(frame: usize) -> Vec<u8> {
    let mut body = vec![0xA1, 0x63];
    body.extend_from_slice(b"put");
    body.extend_from_slice(&[0xA3, 0x65]);
    body.extend_from_slice(b"queue");
    body.push(0x65);
    body.extend_from_slice(b"tasks");
    body.push(0x6A);
    body.extend_from_slice(b"timeout_ms");
    body.push(0xF6);
    body.push(0x65);
    body.extend_from_slice(b"items");
    let count = frame - body.len() - 5;
    body.push(0x9A); // array, 4-byte length
    body.extend_from_slice(&(count as u32).to_be_bytes());
    body.resize(body.len() + count, 0x40); // empty byte strings
    body
}

#[test]
fn a_put_of_millions_of_empty_items_is_refused_before_it_costs_memory() {
    let (serve, addr) = serve_process(&[]);
    let good = Client::connect(addr, KEY).unwrap();
    let before = rss_kib(serve.id());
    let mut raw = Raw::authenticated(addr, KEY);
    raw.send_frame(&put_of_empty_items(8 * 1024 * 1024 - 16));
    match raw.recv() {
        None => {} // closed
        Some(reply) => {
            let kind = reply.get("error").and_then(|e| e.get("kind"));
            assert_eq!(kind, Some(&Cbor::Text("protocol".into())), "{reply:?}");
        }
    }
    let grown = rss_kib(serve.id()).saturating_sub(before);
    assert!(grown < 64 * 1024, "the frame cost {grown} KiB");
    let q = good.queue::<u32>("tasks").unwrap();
    assert_eq!(q.len().unwrap(), 0, "nothing of the frame was stored");
    q.put(1).unwrap();
    assert_eq!(q.len().unwrap(), 1);
}

/// `count` raw clients each send a put with no timeout, then close.
fn abandoned_puts(server: &Server, count: usize) {
    let addr = server.local_addr();
    let peers: Vec<Raw> = (0..count)
        .map(|_| {
            let mut raw = Raw::authenticated(addr, KEY);
            raw.send(&Cbor::variant(
                "put",
                vec![
                    ("queue", Cbor::Text("tasks".into())),
                    (
                        "items",
                        Cbor::Array(vec![Cbor::Bytes(vec![0x07; 16 * 1024])]),
                    ),
                    ("timeout_ms", Cbor::Null),
                ],
            ));
            raw
        })
        .collect();
    assert!(
        wait_until(SECS_10, || server.stats().connections == count as u64),
        "the producers did not connect"
    );
    drop(peers);
    let released = wait_until(SECS_10, || server.stats().connections == 0);
    assert!(
        released,
        "{} session(s) of closed producers stayed",
        server.stats().connections
    );
}

#[test]
fn puts_blocked_on_a_full_queue_end_with_their_client() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .bounded_queue("tasks", 1)
        .bind("127.0.0.1:0")
        .unwrap();
    let q = server.queue::<u32>("tasks").unwrap();
    q.put(1).unwrap();
    abandoned_puts(&server, 20);
    assert_eq!(q.get().unwrap(), 1);
    // Had a dead producer's put been waiting still, it would have taken the freed slot.
    assert!(q.get_timeout(ms(1500)).unwrap_err().is_empty());
    assert_eq!(server.stats().queues[0].put, 1);
}

#[test]
fn puts_waiting_for_memory_end_with_their_client() {
    // A quarter of the budget may wait: room for the three producers' 16 KiB puts.
    let server = budget_server(256 * 1024);
    let q = server.queue::<Vec<u8>>("tasks").unwrap();
    let (stored, _) = fill(&q);
    abandoned_puts(&server, 3);
    for _ in 0..stored {
        q.get().unwrap();
    }
    assert_eq!(server.stats().memory_used, 0);
    assert!(q.get_timeout(ms(1500)).unwrap_err().is_empty());
}

#[test]
fn batches_past_the_item_cap_are_split_by_the_client() {
    let server = budget_server(512 * MIB);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<u8>("tasks").unwrap();
    let n = 150_000;
    q.put_many(vec![7u8; n]).unwrap();
    assert_eq!(q.len().unwrap(), n);
    let mut held = Vec::new();
    while held.len() < n {
        held.extend(q.reserve_many(n, SECS_10).unwrap());
    }
    assert_eq!(server.stats().queues[0].leased, n as u64);
    q.ack_many(held).unwrap();
    assert_eq!(server.stats().queues[0].leased, 0);
    assert_eq!(server.stats().memory_used, 0);
}

/// A put that has to wait for room holds its decoded items in memory meanwhile: requests may
/// wait only while those already waiting hold less than a quarter of the budget. Past that a
/// put is answered at once (a raw peer sees `over_budget` without delay) and the Rust client
/// offers it again until its timeout, so it still succeeds once workers make room.
#[test]
fn requests_waiting_for_room_hold_at_most_a_quarter_of_the_budget() {
    let server = budget_server(MIB);
    let local = server.queue::<Vec<u8>>("tasks").unwrap();
    let (stored, _) = fill(&local);
    let put_of = |items: usize| {
        Cbor::variant(
            "put",
            vec![
                ("queue", Cbor::Text("tasks".into())),
                (
                    "items",
                    Cbor::Array(vec![Cbor::Bytes(vec![7; 8 * 1024]); items]),
                ),
                ("timeout_ms", Cbor::Null),
            ],
        )
    };
    // 200 KiB waits (within the quarter: 256 KiB) and gets no answer while the budget is full.
    let mut waiting = Raw::authenticated(server.local_addr(), KEY);
    waiting.send(&put_of(25));
    // Another 200 KiB would pass the quarter: answered at once, nothing stored.
    let mut refused = Raw::authenticated(server.local_addr(), KEY);
    refused
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    refused.send(&put_of(25));
    let reply = refused.recv().expect("an answer at once, not a wait");
    let over = reply
        .get("over_budget")
        .unwrap_or_else(|| panic!("over_budget, not {reply:?}"));
    assert!(
        matches!(over.get("accepted"), Some(Cbor::Uint(0))),
        "{reply:?}"
    );
    // The Rust client is answered the same, and offers the put again until it fits.
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<Vec<u8>>("tasks").unwrap();
    let producer = std::thread::spawn(move || q.put_many((0..25).map(|_| item())));
    std::thread::sleep(ms(300));
    assert!(
        !producer.is_finished(),
        "the put went in over a full budget"
    );
    for _ in 0..stored {
        local.get().unwrap();
    }
    producer.join().unwrap().expect("stored once room was made");
    assert!(wait_until(SECS_10, || local.len().unwrap() == 50));
    drop(waiting);
}

/// A put answered `over_budget` early is offered again, but an item larger than the whole
/// budget never fits: it fails at once, not at its timeout (or never, without one).
#[test]
fn an_item_larger_than_the_whole_budget_fails_at_once() {
    let server = budget_server(MIB);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<Vec<u8>>("tasks").unwrap();
    let started = std::time::Instant::now();
    let err = q
        .put_timeout(vec![0u8; 2 * MIB as usize], SECS_10)
        .unwrap_err();
    assert!(
        matches!(err, PutError::OverBudget { accepted: 0, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retried for {:?}",
        started.elapsed()
    );
}
