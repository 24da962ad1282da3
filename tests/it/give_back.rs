//! A give-back that does not count: `Delivery::give_back` (a `nack` with `count: false`)
//! returns an item with its redelivery count unchanged, so it never dead-letters for it.

use std::time::Duration;

use distq::{Client, QueueConfig, Server};

use crate::support::raw::{Cbor, Raw};
use crate::support::{init_test_log, ms, start_server, KEY};

const SECS_10: Duration = Duration::from_secs(10);

fn server_with_poison_limit(max_redeliveries: u32) -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .queue_with(
            "tasks",
            QueueConfig::default().max_redeliveries(max_redeliveries),
        )
        .bind("127.0.0.1:0")
        .unwrap()
}

#[test]
fn a_given_back_item_keeps_its_redelivery_count_and_a_nack_still_counts() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    tasks.put(1).unwrap();
    tasks.reserve_timeout(SECS_10).unwrap().give_back().unwrap();
    let again = tasks.reserve_timeout(SECS_10).unwrap();
    assert_eq!(
        again.redeliveries(),
        0,
        "a give-back is not a failed delivery"
    );
    assert_eq!(server.stats().queues[0].redelivered, 1, "but it came back");
    again.nack().unwrap();
    assert_eq!(tasks.reserve_timeout(SECS_10).unwrap().redeliveries(), 1);
}

#[test]
fn a_delayed_give_back_comes_back_later_uncounted() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    tasks.put(2).unwrap();
    let first = tasks.reserve_timeout(SECS_10).unwrap();
    first.give_back_delayed(ms(300)).unwrap();
    assert_eq!(server.stats().queues[0].delayed, 1);
    assert!(tasks.try_reserve().is_err(), "not due yet");
    let back = tasks.reserve_timeout(SECS_10).unwrap();
    assert_eq!((*back, back.redeliveries()), (2, 0));
}

#[test]
fn an_item_given_back_a_hundred_times_is_never_dead_lettered() {
    let server = server_with_poison_limit(1);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    tasks.put(3).unwrap();
    for _ in 0..100 {
        tasks.reserve_timeout(SECS_10).unwrap().give_back().unwrap();
    }
    let stats = &server.stats().queues[0];
    assert_eq!((stats.len, stats.dead, stats.dead_lettered), (1, 0, 0));
    assert_eq!(tasks.reserve_timeout(SECS_10).unwrap().redeliveries(), 0);
}

#[test]
fn in_process_give_back_does_not_count_either() {
    let server = server_with_poison_limit(0);
    let tasks = server.queue::<u32>("tasks").unwrap();
    tasks.put(4).unwrap();
    tasks.reserve().unwrap().give_back().unwrap();
    assert_eq!(server.stats().queues[0].dead, 0);
    assert_eq!(tasks.reserve().unwrap().redeliveries(), 0);
}

#[test]
fn a_raw_peer_nacks_with_count_false_and_the_welcome_says_the_server_can() {
    let server = server_with_poison_limit(0);
    server.queue::<u32>("tasks").unwrap().put(5).unwrap();
    let (mut raw, welcome) = Raw::welcomed(server.local_addr(), KEY);
    assert!(Raw::offers(&welcome, "uncounted_nack"), "{welcome:?}");
    let get = Cbor::variant(
        "get",
        vec![
            ("queue", Cbor::Text("tasks".into())),
            ("max", Cbor::Uint(1)),
            ("timeout_ms", Cbor::Uint(5000)),
        ],
    );
    raw.send(&get);
    let got = raw.recv().unwrap();
    let Some(Cbor::Array(items)) = got.get("items").and_then(|i| i.get("items")) else {
        panic!("{got:?}")
    };
    let Cbor::Array(first) = &items[0] else {
        panic!("{items:?}")
    };
    raw.send(&Cbor::variant(
        "nack",
        vec![
            ("queue", Cbor::Text("tasks".into())),
            ("leases", Cbor::Array(vec![first[0].clone()])),
            ("count", Cbor::Bool(false)),
        ],
    ));
    let reply = raw.recv().unwrap();
    assert_eq!(
        reply.get("leases").and_then(|l| l.get("refused")),
        Some(&Cbor::Array(vec![]))
    );
    // With max_redeliveries 0 a counted nack would have dead-lettered it.
    let stats = &server.stats().queues[0];
    assert_eq!((stats.len, stats.dead), (1, 0));
}
