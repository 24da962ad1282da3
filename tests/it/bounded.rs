//! Bounded queues: `Full` after the timeout, and puts that wait for room.

use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, PutError, Server};

use crate::support::{init_test_log, ms, KEY};

fn bounded_server(maxsize: usize) -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .bounded_queue("results", maxsize)
        .bind("127.0.0.1:0")
        .unwrap()
}

#[test]
fn smoke() {
    let server = bounded_server(2);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<u8>("results").unwrap();
    assert_eq!(q.capacity().unwrap(), Some(2));
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert!(q.try_put(3).unwrap_err().is_full());
}

#[test]
fn put_timeout_on_a_full_queue_is_full_after_about_the_timeout() {
    let server = bounded_server(1);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<u8>("results").unwrap();
    q.put(1).unwrap();
    let start = Instant::now();
    let err = q.put_timeout(2, ms(300)).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, PutError::Full { accepted: 0 }), "{err}");
    assert!(took >= ms(300) && took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn put_many_timeout_reports_how_many_fit() {
    let server = bounded_server(3);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let remote = client.queue::<u8>("results").unwrap();
    let local = server.queue::<u8>("results").unwrap();
    remote.put(0).unwrap();
    let err = remote.put_many_timeout([1, 2, 3, 4], ms(50)).unwrap_err();
    assert!(matches!(err, PutError::Full { accepted: 2 }), "{err}");
    assert!(matches!(
        local.put_many_timeout([5], ms(10)),
        Err(PutError::Full { accepted: 0 })
    ));
    assert_eq!(local.get_many(10, ms(100)).unwrap(), vec![0, 1, 2]);
}

#[test]
fn blocked_put_completes_when_a_consumer_makes_room() {
    let server = bounded_server(1);
    let addr = server.local_addr();
    let local = server.queue::<u8>("results").unwrap();
    local.put(1).unwrap();
    let producer = thread::spawn(move || {
        let client = Client::connect(addr, KEY).unwrap();
        client.queue::<u8>("results").unwrap().put(2)
    });
    assert_eq!(local.get_timeout(Duration::from_secs(5)).unwrap(), 1);
    assert_eq!(local.get_timeout(Duration::from_secs(5)).unwrap(), 2);
    producer.join().unwrap().unwrap();
}
