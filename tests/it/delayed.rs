//! Delayed items: a put or a nack with a delay parks items in the queue's delayed lane until
//! they are due (beanstalkd's delayed state), over TCP and in-process.

use std::time::{Duration, Instant};

use distq::{Client, ClientConfig, QueueConfig, Server, ServerConfig};

use crate::support::raw::{Cbor, Raw};
use crate::support::{init_test_log, ms, start_server, wait_until, KEY};

const SECS_10: Duration = Duration::from_secs(10);

fn tasks_delayed(server: &Server) -> u64 {
    server.stats().queues[0].delayed
}

#[test]
fn smoke() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    let put = Instant::now();
    tasks.put_delayed(7, ms(300)).unwrap();
    assert_eq!(tasks_delayed(&server), 1);
    assert_eq!(
        tasks.len().unwrap(),
        0,
        "a delayed item is not waiting to be taken"
    );
    assert!(tasks.try_get().unwrap_err().is_empty());
    assert_eq!(tasks.get_timeout(SECS_10).unwrap(), 7);
    assert!(put.elapsed() >= ms(300), "taken before it was due");
    assert_eq!(tasks_delayed(&server), 0);
}

#[test]
fn delayed_items_come_due_in_order_and_ahead_of_new_ones() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    tasks.put_delayed(2, ms(400)).unwrap();
    tasks.put_many_delayed([1, 11], ms(200)).unwrap();
    assert!(wait_until(SECS_10, || tasks_delayed(&server) == 0));
    tasks.put(3).unwrap();
    let got = tasks.get_many(10, ms(500)).unwrap();
    assert_eq!(got, vec![1, 11, 2, 3], "earliest due first, then new items");
}

#[test]
fn a_delayed_nack_brings_the_item_back_later_counted_as_a_failed_delivery() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .queue_with("tasks", QueueConfig::default().max_redeliveries(1))
        .bind("127.0.0.1:0")
        .unwrap();
    server.queue::<u32>("tasks").unwrap().put(5).unwrap();
    let config = ClientConfig::default().auto_touch(false);
    let client = Client::builder()
        .config(config)
        .connect(server.local_addr(), KEY)
        .unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    let first = tasks.reserve_timeout(SECS_10).unwrap();
    let nacked = Instant::now();
    first.nack_delayed(ms(300)).unwrap();
    assert_eq!(
        (tasks_delayed(&server), server.stats().queues[0].leased),
        (1, 0)
    );
    let again = tasks.reserve_timeout(SECS_10).unwrap();
    assert!(nacked.elapsed() >= ms(300), "back before its delay");
    assert_eq!((*again, again.redeliveries()), (5, 1));
    // Past the poison limit a delayed nack dead-letters at once: nothing is delayed.
    again.nack_delayed(Duration::from_secs(3600)).unwrap();
    let s = &server.stats().queues[0];
    assert_eq!((s.delayed, s.dead), (0, 1));
}

#[test]
fn delayed_items_count_in_the_memory_budget_and_take_no_place_in_a_bounded_queue() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .bounded_queue("tasks", 1)
        .config(ServerConfig::default().max_memory(64 * 1024))
        .bind("127.0.0.1:0")
        .unwrap();
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let tasks = client.queue::<Vec<u8>>("tasks").unwrap();
    tasks.put(vec![1; 1000]).unwrap(); // the queue is full
    tasks
        .put_many_delayed((0..3).map(|_| vec![2u8; 1000]), Duration::from_secs(3600))
        .unwrap();
    let stats = server.stats();
    assert_eq!((stats.queues[0].len, stats.queues[0].delayed), (1, 3));
    assert!(stats.memory_used >= 4 * 1000, "{stats:?}");
}

#[test]
fn a_raw_peer_delays_with_delay_ms_and_the_welcome_says_the_server_can() {
    let (server, addr) = start_server();
    let (mut raw, welcome) = Raw::welcomed(addr, KEY);
    assert!(Raw::offers(&welcome, "delay"), "{welcome:?}");
    raw.send(&Cbor::variant(
        "put",
        vec![
            ("queue", Cbor::Text("tasks".into())),
            ("items", Cbor::Array(vec![Cbor::Bytes(vec![0x01])])),
            ("timeout_ms", Cbor::Null),
            ("delay_ms", Cbor::Uint(60_000)),
        ],
    ));
    assert_eq!(raw.recv(), Some(Cbor::Text("done".into())));
    assert_eq!(tasks_delayed(&server), 1);
}
