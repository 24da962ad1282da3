//! Temporary queues: declared by a client on a plain server, private to it, removed once it
//! is gone and they are empty (or idle past their TTL), adopted by a client that declares
//! them again.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use distq::{Client, Error, QueueStats, Reconnect, Server, ServerConfig};

use crate::support::raw::{Cbor, Raw};
use crate::support::{init_test_log, ms, server_with, start_server, wait_until, KEY};

const HOUR: Duration = Duration::from_secs(3600);
/// Past the server's 5 s grace for an empty queue whose creator left, with room for a loaded
/// machine.
const REMOVAL: Duration = Duration::from_secs(30);

fn temporary_stats(server: &Server, name: &str) -> Option<QueueStats> {
    server
        .stats()
        .queues
        .into_iter()
        .find(|q| q.name == name && q.temporary)
}

#[test]
fn smoke() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let mine = client.temporary_queue::<u32>("mine", HOUR).unwrap();
    mine.put_many([1, 2, 3]).unwrap();
    assert_eq!(mine.get_many(10, ms(500)).unwrap(), vec![1, 2, 3]);
    let stats = temporary_stats(&server, "mine").expect("listed in stats as temporary");
    assert_eq!((stats.put, stats.len, stats.dead), (3, 0, 0));
    assert!(
        !server.stats().queues[0].temporary,
        "tasks is not temporary"
    );
    // The same client declaring it again is harmless and keeps its items.
    mine.put(4).unwrap();
    let again = client.temporary_queue::<u32>("mine", HOUR).unwrap();
    assert_eq!(again.len().unwrap(), 1);
}

#[test]
fn two_clients_temporary_queues_are_separate() {
    let (_server, addr) = start_server();
    let a = Client::connect(addr, KEY).unwrap();
    let b = Client::connect(addr, KEY).unwrap();
    let qa = a.temporary_queue::<String>("results-a", HOUR).unwrap();
    let qb = b.temporary_queue::<String>("results-b", HOUR).unwrap();
    qa.put("for a".to_string()).unwrap();
    qb.put("for b".to_string()).unwrap();
    assert_eq!(qa.get_many(10, ms(200)).unwrap(), vec!["for a"]);
    assert_eq!(qb.get_many(10, ms(200)).unwrap(), vec!["for b"]);
    // While a is connected, b cannot take a's queue over.
    match b.temporary_queue::<String>("results-a", HOUR) {
        Err(e @ Error::QueueInUse(_)) => assert!(e.to_string().contains("another"), "{e}"),
        other => panic!("expected QueueInUse, got {other:?}"),
    }
}

#[test]
fn an_empty_temporary_queue_is_removed_once_its_creator_is_gone() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let mine = client.temporary_queue::<u32>("gone-soon", HOUR).unwrap();
    mine.put(1).unwrap();
    mine.get().unwrap();
    drop((mine, client));
    assert!(
        wait_until(REMOVAL, || temporary_stats(&server, "gone-soon").is_none()),
        "still there: {:?}",
        server.stats()
    );
    let other = Client::connect(addr, KEY).unwrap();
    assert!(matches!(
        other.queue::<u32>("gone-soon"),
        Err(Error::UnknownQueue(_))
    ));
}

#[test]
fn a_non_empty_temporary_queue_outlives_its_creator_and_is_adopted_with_its_items() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let mine = client.temporary_queue::<u32>("kept", HOUR).unwrap();
    mine.put_many([7, 8]).unwrap();
    drop((mine, client));
    assert!(wait_until(REMOVAL, || server.stats().connections == 0));
    // A negative: nothing to wait for but time, past the 5 s grace an empty queue gets.
    thread::sleep(Duration::from_secs(6));
    assert_eq!(temporary_stats(&server, "kept").map(|s| s.len), Some(2));
    let resumed = Client::connect(addr, KEY).unwrap();
    let adopted = resumed.temporary_queue::<u32>("kept", HOUR).unwrap();
    assert_eq!(adopted.get_many(10, ms(500)).unwrap(), vec![7, 8]);
    // The adopter is the creator now: nobody else may take it while it is connected.
    let third = Client::connect(addr, KEY).unwrap();
    assert!(matches!(
        third.temporary_queue::<u32>("kept", HOUR),
        Err(Error::QueueInUse(_))
    ));
}

#[test]
fn an_idle_temporary_queue_is_removed_after_its_ttl_with_its_items_and_their_memory() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let mine = client.temporary_queue::<Vec<u8>>("idle", ms(300)).unwrap();
    mine.put_many([vec![0u8; 1000], vec![1u8; 1000]]).unwrap();
    assert!(server.stats().memory_used >= 2000);
    // Idle but its creator is connected: kept.
    thread::sleep(ms(600));
    assert!(temporary_stats(&server, "idle").is_some());
    drop((mine, client));
    assert!(
        wait_until(REMOVAL, || temporary_stats(&server, "idle").is_none()),
        "{:?}",
        server.stats()
    );
    assert_eq!(server.stats().memory_used, 0, "removal released the items");
}

#[test]
fn a_server_refuses_temporary_queues_past_its_cap() {
    let server = server_with(ServerConfig::default().max_temporary_queues(2));
    let addr = server.local_addr();
    let client = Client::connect(addr, KEY).unwrap();
    client.temporary_queue::<u8>("one", HOUR).unwrap();
    client.temporary_queue::<u8>("two", HOUR).unwrap();
    match client.temporary_queue::<u8>("three", HOUR) {
        Err(e @ Error::TemporaryLimit(_)) => {
            assert!(e.to_string().contains("--max-temporary-queues"), "{e}")
        }
        other => panic!("expected TemporaryLimit, got {other:?}"),
    }
    // Declaring one it holds already is no new queue.
    client.temporary_queue::<u8>("one", HOUR).unwrap();
}

#[test]
fn abandoned_temporary_queues_make_room_at_the_cap_the_longest_idle_first() {
    let server = server_with(ServerConfig::default().max_temporary_queues(2));
    let addr = server.local_addr();
    // Two clients fill the cap with results nobody came back for, under a week's TTL.
    for name in ["first-left", "second-left"] {
        let client = Client::connect(addr, KEY).unwrap();
        let q = client
            .temporary_queue::<Vec<u8>>(name, Duration::from_secs(7 * 24 * 3600))
            .unwrap();
        q.put(vec![0u8; 1000]).unwrap();
        drop((q, client));
        assert!(wait_until(REMOVAL, || server.stats().connections == 0));
    }
    let before = server.stats().memory_used;
    // A newcomer is not locked out for a week: past the grace, the queue abandoned the
    // longest gives way.
    let newcomer = Client::connect(addr, KEY).unwrap();
    assert!(
        wait_until(REMOVAL, || newcomer
            .temporary_queue::<u8>("newcomer", HOUR)
            .is_ok()),
        "{:?}",
        server.stats()
    );
    assert!(temporary_stats(&server, "first-left").is_none());
    assert_eq!(
        temporary_stats(&server, "second-left").map(|s| s.len),
        Some(1)
    );
    assert!(
        wait_until(REMOVAL, || server.stats().memory_used < before),
        "its item's memory is released"
    );
    // Queues whose clients are still connected never give way.
    let holder = Client::connect(addr, KEY).unwrap();
    let adopted = holder
        .temporary_queue::<Vec<u8>>("second-left", HOUR)
        .unwrap();
    match newcomer.temporary_queue::<u8>("third", HOUR) {
        Err(e @ Error::TemporaryLimit(_)) => assert!(!e.to_string().contains("  "), "{e}"),
        other => panic!("expected TemporaryLimit, got {other:?}"),
    }
    assert_eq!(adopted.len().unwrap(), 1);
}

#[test]
fn one_connection_creates_at_most_64_temporary_queues() {
    let (_server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    for i in 0..64 {
        client
            .temporary_queue::<u8>(&format!("t{i}"), HOUR)
            .unwrap();
    }
    match client.temporary_queue::<u8>("t64", HOUR) {
        Err(e @ Error::TemporaryLimit(_)) => assert!(e.to_string().contains("64"), "{e}"),
        other => panic!("expected TemporaryLimit, got {other:?}"),
    }
    let other = Client::connect(addr, KEY).unwrap();
    other.temporary_queue::<u8>("t64", HOUR).unwrap();
}

#[test]
fn temporary_names_may_not_clash_with_the_servers_queues() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    for name in ["tasks", "tasks.dead", "mine.dead", ""] {
        match client.temporary_queue::<u8>(name, HOUR) {
            Err(e @ Error::NameConflict(_)) => {
                assert!(e.to_string().contains(&format!("{name:?}: ")), "{e}");
                assert!(!e.to_string().contains("  "), "{e}");
            }
            other => panic!("{name:?}: expected NameConflict, got {other:?}"),
        }
    }
    assert!(temporary_stats(&server, "mine.dead").is_none());
    // The server serves on.
    client.queue::<u8>("tasks").unwrap().put(1).unwrap();
}

#[test]
fn a_raw_peer_declares_and_the_welcome_says_the_server_can() {
    let (server, addr) = start_server();
    let (mut raw, welcome) = Raw::welcomed(addr, KEY);
    assert!(Raw::offers(&welcome, "temporary_queues"), "{welcome:?}");
    let declare = |capacity: u64| {
        Cbor::variant(
            "declare",
            vec![
                ("queue", Cbor::Text("raw".into())),
                ("capacity", Cbor::Uint(capacity)),
            ],
        )
    };
    // A bound past the largest is refused; the session goes on.
    raw.send(&declare(u64::MAX));
    let refused = raw.recv().unwrap();
    let kind = refused.get("error").and_then(|e| e.get("kind"));
    assert_eq!(
        kind,
        Some(&Cbor::Text("temporary_limit".into())),
        "{refused:?}"
    );
    raw.send(&declare(2));
    assert_eq!(raw.recv(), Some(Cbor::Text("done".into())));
    let stats = temporary_stats(&server, "raw").unwrap();
    assert_eq!(stats.capacity, Some(2));
    assert!(server.stats().memory_used > 0, "its slots are charged");
}

/// A TCP relay whose connections can all be cut at once, as a broken network would.
struct Relay {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn to(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&streams);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = TcpStream::connect(server) else {
                    return;
                };
                let mut list = held.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pipe(upstream, client);
            }
        });
        Relay { addr, streams }
    }

    fn cut(&self) {
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

#[test]
fn a_reconnecting_client_declares_its_temporary_queues_again() {
    init_test_log();
    let (server, addr) = start_server();
    let relay = Relay::to(addr);
    let policy = Reconnect::default()
        .initial_backoff(ms(20))
        .max_backoff(ms(200))
        .give_up(Duration::from_secs(30));
    let client = Client::builder()
        .reconnect(policy)
        .connect(relay.addr, KEY)
        .unwrap();
    let mine = client.temporary_queue::<u32>("resumed", HOUR).unwrap();
    mine.put(1).unwrap();
    relay.cut();
    // The next call reconnects, declaring the queue again before anything else.
    let len = loop {
        match mine.len() {
            Ok(n) => break n,
            Err(Error::Closed | Error::Reconnecting) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(len, 1);
    // Only the new connection is left: it is the creator again, so the queue is not
    // someone else's to adopt.
    assert!(wait_until(REMOVAL, || server.stats().connections == 1));
    let other = Client::connect(addr, KEY).unwrap();
    assert!(
        matches!(
            other.temporary_queue::<u32>("resumed", HOUR),
            Err(Error::QueueInUse(_))
        ),
        "the reconnected client is not the creator"
    );
}

#[test]
fn a_closed_connection_returns_its_leases_on_a_temporary_queue() {
    let (server, addr) = start_server();
    let owner = Client::connect(addr, KEY).unwrap();
    let mine = owner.temporary_queue::<u32>("leased", HOUR).unwrap();
    mine.put(5).unwrap();
    // A raw peer takes it and leaves without a nack: the connection's end must return it.
    let (mut reader, _) = Raw::welcomed(addr, KEY);
    reader.send(&Cbor::variant(
        "get",
        vec![
            ("queue", Cbor::Text("leased".into())),
            ("max", Cbor::Uint(1)),
            ("timeout_ms", Cbor::Uint(5000)),
        ],
    ));
    let got = reader.recv().unwrap();
    assert!(got.get("items").is_some(), "{got:?}");
    assert_eq!(temporary_stats(&server, "leased").unwrap().leased, 1);
    drop(reader);
    assert!(wait_until(REMOVAL, || {
        temporary_stats(&server, "leased").is_some_and(|s| (s.len, s.leased) == (1, 0))
    }));
    assert_eq!(mine.get_timeout(ms(500)).unwrap(), 5);
}
