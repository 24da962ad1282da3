//! Putting and getting over real TCP: the seed scenario, several workers, batches, big items.

use std::collections::HashSet;
use std::thread;
use std::time::Duration;

use distq::{Client, Error, GetError};

use crate::support::{ms, server_with, start_server, KEY};

#[test]
fn smoke() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    tasks.put(7).unwrap();
    assert_eq!(
        server
            .queue::<u32>("tasks")
            .unwrap()
            .get_timeout(ms(1000))
            .unwrap(),
        7
    );
}

/// The article's taskmanager.py and task_worker.py: ten random integers out, ten squares back.
#[test]
fn seed_scenario() {
    let (server, addr) = start_server();
    let tasks = server.queue::<i64>("tasks").unwrap();
    let results = server.queue::<String>("results").unwrap();
    let numbers: Vec<i64> = (0..10).map(|i| (i * 7919) % 10_001).collect();
    for n in &numbers {
        tasks.put(n).unwrap();
    }
    let worker = thread::spawn(move || {
        let client = Client::connect(addr, KEY).unwrap();
        let tasks = client.queue::<i64>("tasks").unwrap();
        let results = client.queue::<String>("results").unwrap();
        let mut empties = 0;
        while empties < 2 {
            match tasks.get_timeout(Duration::from_secs(1)) {
                Ok(n) => results.put(format!("{n} * {n} = {}", n * n)).unwrap(),
                Err(GetError::Empty) => empties += 1,
                Err(e) => panic!("worker: {e}"),
            }
        }
    });
    let mut got: Vec<String> = (0..10)
        .map(|_| results.get_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    let mut want: Vec<String> = numbers
        .iter()
        .map(|n| format!("{n} * {n} = {}", n * n))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    worker.join().unwrap();
}

#[test]
fn several_workers_process_every_task_exactly_once() {
    let (server, addr) = start_server();
    const TASKS: u64 = 2_000;
    server
        .queue::<u64>("tasks")
        .unwrap()
        .put_many(0..TASKS)
        .unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let client = Client::connect(addr, KEY).unwrap();
                let tasks = client.queue::<u64>("tasks").unwrap();
                let results = client.queue::<u64>("results").unwrap();
                let mut done = 0;
                loop {
                    match tasks.get_timeout(ms(200)) {
                        Ok(n) => {
                            results.put(n).unwrap();
                            done += 1;
                        }
                        Err(GetError::Empty) => return done,
                        Err(e) => panic!("worker: {e}"),
                    }
                }
            })
        })
        .collect();
    let counts: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(counts.iter().sum::<u64>(), TASKS, "per worker: {counts:?}");
    let results = server.queue::<u64>("results").unwrap();
    let mut seen = HashSet::new();
    while let Ok(n) = results.try_get() {
        assert!(seen.insert(n), "task {n} processed twice");
    }
    assert_eq!(seen.len() as u64, TASKS);
}

#[test]
fn one_mebibyte_payload() {
    let (_server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let q = client.queue::<serde_bytes::ByteBuf>("tasks").unwrap();
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    q.put(serde_bytes::ByteBuf::from(big.clone())).unwrap();
    assert_eq!(q.get_timeout(ms(5000)).unwrap().into_vec(), big);
}

#[test]
fn batches_round_trip_in_order() {
    let (_server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let q = client.queue::<String>("tasks").unwrap();
    let items: Vec<String> = (0..500).map(|i| format!("item {i}")).collect();
    q.put_many(&items).unwrap();
    assert_eq!(q.len().unwrap(), 500);
    let first = q.get_many(200, ms(1000)).unwrap();
    assert_eq!(first, items[..200]);
    let rest = q.get_many(1000, ms(1000)).unwrap();
    assert_eq!(rest, items[200..]);
    assert!(q.get_many(10, ms(20)).unwrap_err().is_empty());
}

#[test]
fn batches_larger_than_a_frame_are_split_and_kept_whole() {
    // 64 KiB frames; 100 items of 4 KiB need several frames each way.
    let server = server_with(distq::ServerConfig::default().max_frame_size(64 * 1024));
    let client = Client::builder()
        .max_frame_size(64 * 1024)
        .connect(server.local_addr(), KEY)
        .unwrap();
    let q = client.queue::<serde_bytes::ByteBuf>("tasks").unwrap();
    let items: Vec<_> = (0..100u8)
        .map(|i| serde_bytes::ByteBuf::from(vec![i; 4096]))
        .collect();
    q.put_many(&items).unwrap();
    let mut got = Vec::new();
    while got.len() < items.len() {
        let batch = q.get_many(1000, ms(1000)).unwrap();
        assert!(
            batch.len() < items.len(),
            "a 64 KiB frame cannot carry all 400 KiB"
        );
        got.extend(batch);
    }
    assert_eq!(got, items);
}

#[test]
fn unknown_queue_is_a_clear_error() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let err = client.queue::<u32>("nope").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownQueue(name) if name == "nope"),
        "{err}"
    );
    assert!(err.to_string().contains("nope"));
    // The connection is still good for the queues that exist.
    let tasks = client.queue::<u32>("tasks").unwrap();
    tasks.put(1).unwrap();
    assert!(matches!(
        server.queue::<u32>("nope"),
        Err(Error::UnknownQueue(_))
    ));
}

#[test]
fn payload_of_another_type_is_a_payload_error() {
    let (_server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    client
        .queue::<String>("tasks")
        .unwrap()
        .put("not a number".to_string())
        .unwrap();
    let err = client
        .queue::<u64>("tasks")
        .unwrap()
        .get_timeout(ms(1000))
        .unwrap_err();
    assert!(matches!(err, GetError::Failed(Error::Payload(_))), "{err}");
}
