//! Clients that reconnect after the server goes away, and clients that do not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use distq::{Client, Error, GetError, Reconnect, Server};

use crate::support::{init_test_log, ms, start_server, KEY};

const SECS_5: Duration = Duration::from_secs(5);

fn reconnecting_client(addr: SocketAddr, give_up: Duration) -> Client {
    let policy = Reconnect::default()
        .initial_backoff(ms(20))
        .max_backoff(ms(200))
        .give_up(give_up);
    Client::builder()
        .reconnect(policy)
        .connect(addr, KEY)
        .unwrap()
}

fn server_at(addr: SocketAddr) -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .bind(addr)
        .unwrap()
}

#[test]
fn smoke() {
    let (_server, addr) = start_server();
    let client = reconnecting_client(addr, SECS_5);
    client.queue::<u8>("tasks").unwrap().put(1).unwrap();
}

#[test]
fn a_client_carries_on_after_the_server_restarts_on_the_same_address() {
    let (first, addr) = start_server();
    let client = reconnecting_client(addr, Duration::from_secs(20));
    let tasks = client.queue::<u32>("tasks").unwrap();
    tasks.put(1).unwrap();
    assert_eq!(tasks.get_timeout(SECS_5).unwrap(), 1);
    first.shutdown();
    drop(first);

    let second = server_at(addr);
    second.queue::<u32>("tasks").unwrap().put(2).unwrap();
    // The same handle, the same client: the next call reconnects and is served.
    let got = loop {
        match tasks.get_timeout(SECS_5) {
            Ok(n) => break n,
            Err(GetError::Failed(Error::Reconnecting)) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(got, 2);
    assert_eq!(second.stats().connections, 1);
}

#[test]
fn a_timed_call_reports_reconnecting_and_returns_on_time() {
    let (server, addr) = start_server();
    let client = reconnecting_client(addr, Duration::from_secs(30));
    let tasks = client.queue::<u32>("tasks").unwrap();
    drop(server);
    let start = Instant::now();
    let err = loop {
        match tasks.get_timeout(ms(300)) {
            Err(GetError::Failed(Error::Reconnecting)) => break start.elapsed(),
            // The first call may still see the server's goodbye.
            Err(GetError::Failed(Error::Closed)) | Err(GetError::Empty) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(err < SECS_5, "took {err:?}");
}

#[test]
fn a_client_gives_up_after_the_give_up_time_naming_the_cause() {
    let (server, addr) = start_server();
    let client = reconnecting_client(addr, ms(400));
    let tasks = client.queue::<u32>("tasks").unwrap();
    drop(server);
    let start = Instant::now();
    let err = tasks.get().unwrap_err();
    assert!(start.elapsed() < SECS_5, "took {:?}", start.elapsed());
    match err {
        GetError::Failed(e @ Error::GaveUp { .. }) => {
            assert!(e.to_string().contains("refused"), "{e}")
        }
        other => panic!("expected GaveUp, got {other}"),
    }
}

#[test]
fn without_reconnect_a_broken_client_says_so() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    drop(server);
    assert!(tasks.get_timeout(ms(100)).is_err());
    let err = tasks.get_timeout(ms(100)).unwrap_err();
    assert!(err.to_string().contains("connect a new client"), "{err}");
}

#[test]
fn a_give_up_time_too_far_to_represent_means_never() {
    let (server, addr) = start_server();
    let client = reconnecting_client(addr, Duration::MAX);
    let tasks = client.queue::<u32>("tasks").unwrap();
    drop(server);
    for _ in 0..3 {
        match tasks.get_timeout(ms(100)) {
            Err(GetError::Failed(Error::Reconnecting | Error::Closed)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
