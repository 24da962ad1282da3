//! Gets on an empty queue end in `Empty` after about their timeout, not before and not much
//! later.

use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, GetError};

use crate::support::{ms, start_server, KEY};

#[test]
fn smoke() {
    let (_server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let q = client.queue::<u32>("tasks").unwrap();
    assert!(matches!(q.try_get(), Err(GetError::Empty)));
}

#[test]
fn get_timeout_on_an_empty_queue_is_empty_after_about_the_timeout() {
    let (_server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let q = client.queue::<u32>("tasks").unwrap();
    for wait in [ms(50), ms(400)] {
        let start = Instant::now();
        let err = q.get_timeout(wait).unwrap_err();
        let took = start.elapsed();
        assert!(err.is_empty(), "{err}");
        assert!(
            took >= wait,
            "returned after {took:?}, before the {wait:?} timeout"
        );
        assert!(
            took < wait + Duration::from_secs(2),
            "took {took:?} for {wait:?}"
        );
    }
}

#[test]
fn local_get_timeout_is_empty_after_about_the_timeout() {
    let (server, _addr) = start_server();
    let q = server.queue::<u32>("tasks").unwrap();
    let start = Instant::now();
    assert!(q.get_timeout(ms(100)).unwrap_err().is_empty());
    assert!(start.elapsed() >= ms(100));
}

#[test]
fn a_waiting_get_takes_an_item_that_arrives_later() {
    let (server, addr) = start_server();
    let local = server.queue::<u32>("tasks").unwrap();
    let getter = thread::spawn(move || {
        let client = Client::connect(addr, KEY).unwrap();
        client
            .queue::<u32>("tasks")
            .unwrap()
            .get_timeout(Duration::from_secs(10))
    });
    local.put(42).unwrap();
    assert_eq!(getter.join().unwrap().unwrap(), 42);
}

#[test]
fn get_deadline_in_the_past_tries_once() {
    let (server, addr) = start_server();
    server.queue::<u32>("tasks").unwrap().put(3).unwrap();
    let client = Client::connect(addr, KEY).unwrap();
    let q = client.queue::<u32>("tasks").unwrap();
    let past = Instant::now() - ms(10);
    assert_eq!(q.get_deadline(past).unwrap(), 3);
    assert!(q.get_deadline(past).unwrap_err().is_empty());
}
