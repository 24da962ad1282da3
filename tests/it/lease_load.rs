//! Requests that name one lease many times cost what their size says, once per distinct id,
//! and never lock other clients of the queue out while they run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, GetError};

use crate::support::raw::{Cbor, Raw};
use crate::support::{start_server, KEY};

/// Takes one item of `tasks` on `raw` and returns its lease id.
fn take_one(raw: &mut Raw) -> u64 {
    raw.send(&Cbor::variant(
        "get",
        vec![
            ("queue", Cbor::Text("tasks".into())),
            ("max", Cbor::Uint(1)),
            ("timeout_ms", Cbor::Uint(5000)),
        ],
    ));
    let reply = raw.recv().expect("an items reply");
    match reply.get("items").and_then(|i| i.get("items")) {
        Some(Cbor::Array(items)) => match items.first() {
            Some(Cbor::Array(parts)) => match parts.first() {
                Some(Cbor::Uint(lease)) => *lease,
                other => panic!("no lease id in {other:?}"),
            },
            other => panic!("no item in {other:?}"),
        },
        _ => panic!("expected items, got {reply:?}"),
    }
}

fn leases_request(verb: &str, ids: Vec<u64>) -> Cbor {
    Cbor::variant(
        verb,
        vec![
            ("queue", Cbor::Text("tasks".into())),
            (
                "leases",
                Cbor::Array(ids.into_iter().map(Cbor::Uint).collect()),
            ),
        ],
    )
}

fn refused(reply: &Cbor) -> Vec<u64> {
    match reply.get("leases").and_then(|l| l.get("refused")) {
        Some(Cbor::Array(ids)) => ids
            .iter()
            .map(|id| match id {
                Cbor::Uint(n) => *n,
                other => panic!("not an id: {other:?}"),
            })
            .collect(),
        _ => panic!("expected a leases reply, got {reply:?}"),
    }
}

#[test]
fn a_touch_naming_one_lease_65536_times_does_not_block_other_clients() {
    let (server, addr) = start_server();
    let local = server.queue::<u32>("tasks").unwrap();
    local.put_many([1, 2, 3]).unwrap();
    let mut raw = Raw::authenticated(addr, KEY);
    let lease = take_one(&mut raw);
    // Generous: the old code took 11.5 s on an idle machine.
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let started = Instant::now();
    raw.send(&leases_request("touch", vec![lease; 65_536]));
    let replied = Arc::new(AtomicBool::new(false));
    let toucher = {
        let replied = Arc::clone(&replied);
        thread::spawn(move || {
            let reply = raw.recv();
            replied.store(true, Ordering::SeqCst);
            (reply, started.elapsed())
        })
    };
    let client = Client::connect(addr, KEY).unwrap();
    let q = client.queue::<u32>("tasks").unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    let mut slowest = Duration::ZERO;
    loop {
        let asked = Instant::now();
        match q.try_get() {
            Ok(_) | Err(GetError::Empty) => {}
            Err(e) => panic!("try_get failed: {e}"),
        }
        let took = asked.elapsed();
        slowest = slowest.max(took);
        // A liveness bound, not a speed target: the old code blocked this for 11.3 s.
        assert!(
            took < Duration::from_secs(2),
            "try_get waited {took:?} behind the touch"
        );
        if replied.load(Ordering::SeqCst) || Instant::now() > end {
            break;
        }
    }
    let (reply, touch_took) = toucher.join().unwrap();
    let reply = reply.expect("the touch is answered");
    assert_eq!(refused(&reply), Vec::<u64>::new(), "the lease is held");
    eprintln!("touch of 65536 copies (the most one request may carry) answered in {touch_took:?}; slowest try_get {slowest:?}");
}

#[test]
fn duplicate_ids_in_one_request_are_handled_once_and_refused_once() {
    let (server, addr) = start_server();
    server
        .queue::<u32>("tasks")
        .unwrap()
        .put_many([1, 2])
        .unwrap();
    let mut raw = Raw::authenticated(addr, KEY);
    let a = take_one(&mut raw);
    let b = take_one(&mut raw);
    let unknown = 1 << 40;
    raw.send(&leases_request("touch", vec![a, a, unknown, a, unknown]));
    assert_eq!(refused(&raw.recv().unwrap()), vec![unknown]);
    raw.send(&leases_request("ack", vec![a, unknown, a, unknown, a]));
    assert_eq!(
        refused(&raw.recv().unwrap()),
        vec![unknown],
        "a is acked once"
    );
    raw.send(&leases_request("nack", vec![b, b, unknown, b]));
    assert_eq!(
        refused(&raw.recv().unwrap()),
        vec![unknown],
        "b goes back once"
    );
    let stats = &server.stats().queues[0];
    assert_eq!(
        (stats.len, stats.leased, stats.acked),
        (1, 0, 1),
        "{stats:?}"
    );
    assert_eq!(stats.redelivered, 1, "{stats:?}");
}
