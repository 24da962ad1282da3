//! At-least-once delivery: leases, acknowledgement (implicit and explicit), expiry, touch,
//! redelivery on a broken connection, and poison items moving to the dead-letter queue.

use std::time::Duration;

use distq::{Client, ClientConfig, Error, GetError, QueueConfig, QueueStats, Server};

use crate::support::raw::{Cbor, Raw};
use crate::support::{init_test_log, ms, start_server, wait_until, KEY};

const SECS_5: Duration = Duration::from_secs(5);

fn server(lease: Duration, max_redeliveries: u32) -> Server {
    init_test_log();
    let config = QueueConfig::default()
        .lease_timeout(lease)
        .max_redeliveries(max_redeliveries);
    Server::builder()
        .authkey(KEY)
        .queue_with("tasks", config)
        .bind("127.0.0.1:0")
        .unwrap()
}

fn tasks_stats(server: &Server) -> QueueStats {
    server
        .stats()
        .queues
        .into_iter()
        .find(|q| q.name == "tasks")
        .unwrap()
}

fn manual_client(server: &Server) -> Client {
    let config = ClientConfig::default().auto_touch(false);
    Client::builder()
        .config(config)
        .connect(server.local_addr(), KEY)
        .unwrap()
}

#[test]
fn smoke() {
    let server = server(Duration::from_secs(60), 5);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<u32>("tasks").unwrap();
    q.put(1).unwrap();
    let d = q.reserve_timeout(SECS_5).unwrap();
    assert_eq!((*d, d.redeliveries()), (1, 0));
    assert_eq!(tasks_stats(&server).leased, 1);
    d.ack().unwrap();
    let s = tasks_stats(&server);
    assert_eq!((s.leased, s.acked, s.len), (0, 1, 0));
}

#[test]
fn get_acknowledges_the_previous_item_on_the_next_get_and_on_drop() {
    let server = server(Duration::from_secs(60), 5);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<u32>("tasks").unwrap();
    q.put_many([1, 2]).unwrap();
    assert_eq!(q.get_timeout(SECS_5).unwrap(), 1);
    assert_eq!(
        (tasks_stats(&server).leased, tasks_stats(&server).acked),
        (1, 0)
    );
    assert_eq!(q.get_timeout(SECS_5).unwrap(), 2);
    assert_eq!(
        (tasks_stats(&server).leased, tasks_stats(&server).acked),
        (1, 1)
    );
    drop(q);
    assert!(
        wait_until(SECS_5, || tasks_stats(&server).acked == 2),
        "{:?}",
        tasks_stats(&server)
    );
    assert_eq!(tasks_stats(&server).leased, 0);
}

#[test]
fn a_broken_connection_returns_its_items_at_once_and_first_in_line() {
    let server = server(Duration::from_secs(60), 5);
    let local = server.queue::<u32>("tasks").unwrap();
    local.put_many([1, 2]).unwrap();
    let mut raw = Raw::authenticated(server.local_addr(), KEY);
    raw.send(&Cbor::variant(
        "get",
        vec![
            ("queue", Cbor::Text("tasks".into())),
            ("max", Cbor::Uint(1)),
            ("timeout_ms", Cbor::Uint(1000)),
        ],
    ));
    let reply = raw.recv().unwrap();
    assert_eq!(reply.tag(), Some("items"), "{reply:?}");
    assert_eq!(local.len().unwrap(), 1);
    drop(raw); // no acknowledgement, no goodbye
    assert!(
        wait_until(SECS_5, || local.len().unwrap() == 2),
        "the lease never came back"
    );
    let again = local.reserve_timeout(SECS_5).unwrap();
    assert_eq!(
        (*again, again.redeliveries()),
        (1, 1),
        "the returned item is served first"
    );
    assert_eq!(tasks_stats(&server).redelivered, 1);
}

#[test]
fn an_expired_lease_is_redelivered_and_its_late_ack_refused() {
    let server = server(ms(300), 5);
    let slow = manual_client(&server).queue::<u32>("tasks").unwrap();
    let other = Client::connect(server.local_addr(), KEY)
        .unwrap()
        .queue::<u32>("tasks")
        .unwrap();
    slow.put(9).unwrap();
    let held = slow.reserve_timeout(SECS_5).unwrap();
    assert!(
        other.try_get().unwrap_err().is_empty(),
        "leased items are not handed out twice"
    );
    let again = other.reserve_timeout(SECS_5).unwrap();
    assert_eq!((*again, again.redeliveries()), (9, 1));
    assert!(matches!(held.ack(), Err(Error::LeaseExpired)));
    again.ack().unwrap();
}

#[test]
fn touch_keeps_a_long_task_leased() {
    let server = server(ms(400), 5);
    let worker = manual_client(&server).queue::<u32>("tasks").unwrap();
    let other = Client::connect(server.local_addr(), KEY)
        .unwrap()
        .queue::<u32>("tasks")
        .unwrap();
    worker.put(5).unwrap();
    let held = worker.reserve_timeout(SECS_5).unwrap();
    for _ in 0..6 {
        std::thread::sleep(ms(150));
        held.touch().unwrap();
        assert!(
            other.try_get().unwrap_err().is_empty(),
            "redelivered while touched"
        );
    }
    held.ack().unwrap();
    assert_eq!(tasks_stats(&server).redelivered, 0);
}

#[test]
fn auto_touch_keeps_leases_of_a_slow_get_alive() {
    let server = server(ms(300), 5);
    let worker = Client::connect(server.local_addr(), KEY)
        .unwrap()
        .queue::<u32>("tasks")
        .unwrap();
    let other = Client::connect(server.local_addr(), KEY)
        .unwrap()
        .queue::<u32>("tasks")
        .unwrap();
    worker.put(5).unwrap();
    assert_eq!(worker.get_timeout(SECS_5).unwrap(), 5);
    // Three lease timeouts pass while the task "runs"; the heartbeat extends the lease.
    for _ in 0..9 {
        std::thread::sleep(ms(100));
        assert!(
            other.try_get().unwrap_err().is_empty(),
            "redelivered despite auto-touch"
        );
    }
    assert_eq!(tasks_stats(&server).redelivered, 0);
}

#[test]
fn dropping_a_delivery_or_nacking_gives_the_item_back() {
    let server = server(Duration::from_secs(60), 5);
    let q = Client::connect(server.local_addr(), KEY)
        .unwrap()
        .queue::<u32>("tasks")
        .unwrap();
    q.put_many([1, 2]).unwrap();
    let d = q.reserve_timeout(SECS_5).unwrap();
    d.nack().unwrap();
    let again = q.reserve_timeout(SECS_5).unwrap();
    assert_eq!(
        (*again, again.redeliveries()),
        (1, 1),
        "a nacked item is next in line"
    );
    drop(again);
    assert!(
        wait_until(SECS_5, || tasks_stats(&server).len == 2),
        "{:?}",
        tasks_stats(&server)
    );
    assert_eq!(tasks_stats(&server).leased, 0);
}

#[test]
fn poison_items_move_to_the_dead_letter_queue() {
    let server = server(Duration::from_secs(60), 2);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<String>("tasks").unwrap();
    q.put("poison".to_string()).unwrap();
    q.put("fine".to_string()).unwrap();
    for round in 0..3 {
        let d = q.reserve_timeout(SECS_5).unwrap();
        assert_eq!((d.as_str(), d.redeliveries()), ("poison", round));
        d.nack().unwrap();
    }
    assert_eq!(q.reserve_timeout(SECS_5).unwrap().as_str(), "fine");
    let s = tasks_stats(&server);
    assert_eq!((s.dead, s.dead_lettered), (1, 1), "{s:?}");
    let dead = client.queue::<String>("tasks.dead").unwrap();
    assert_eq!(dead.get_timeout(SECS_5).unwrap(), "poison");
}

#[test]
fn an_item_that_does_not_decode_is_given_back_not_lost() {
    let server = server(Duration::from_secs(60), 1);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    client
        .queue::<String>("tasks")
        .unwrap()
        .put("text".to_string())
        .unwrap();
    let numbers = client.queue::<u64>("tasks").unwrap();
    for _ in 0..2 {
        let err = numbers.get_timeout(SECS_5).unwrap_err();
        assert!(matches!(err, GetError::Failed(Error::Payload(_))), "{err}");
    }
    // Given back twice: past max_redeliveries = 1, so it waits in the dead-letter queue.
    assert!(
        wait_until(SECS_5, || tasks_stats(&server).dead == 1),
        "{:?}",
        tasks_stats(&server)
    );
    assert_eq!(
        client
            .queue::<String>("tasks.dead")
            .unwrap()
            .try_get()
            .unwrap(),
        "text"
    );
}

#[test]
fn stats_report_every_queue_and_the_connections() {
    let server = server(Duration::from_secs(60), 5);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<u32>("tasks").unwrap();
    q.put_many([1, 2, 3]).unwrap();
    let _held = q.reserve_timeout(SECS_5).unwrap();
    let stats = client.stats().unwrap();
    assert_eq!(stats.connections, 1);
    let tasks = &stats.queues[0];
    assert_eq!(
        (
            tasks.name.as_str(),
            tasks.len,
            tasks.leased,
            tasks.put,
            tasks.capacity
        ),
        ("tasks", 2, 1, 3, None)
    );
    assert_eq!(stats, server.stats());
}

#[test]
fn a_worker_cycle_stores_results_then_acknowledges_then_takes_in_one_call() {
    let (server, addr) = start_server();
    let client = Client::connect(addr, KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    let results = client.queue::<String>("results").unwrap();
    tasks.put_many([1, 2]).unwrap();
    assert_eq!(tasks.get_many(1, SECS_5).unwrap(), vec![1]);
    let next = tasks
        .get_many_after_put(&results, ["one".to_string()], 1, SECS_5)
        .unwrap();
    assert_eq!(next, vec![2]);
    assert_eq!(results.len().unwrap(), 1);
    let s = tasks_stats(&server);
    assert_eq!(
        (s.acked, s.leased),
        (1, 1),
        "task 1 acknowledged with its result stored"
    );
    // Nothing left: the result is stored and the last task acknowledged, even so.
    let err = tasks
        .get_many_after_put(&results, ["two".to_string()], 1, ms(50))
        .unwrap_err();
    assert!(err.is_empty());
    assert_eq!((results.len().unwrap(), tasks_stats(&server).acked), (2, 2));
    // Queues of different clients cannot share a round trip.
    let other = Client::connect(server.local_addr(), KEY)
        .unwrap()
        .queue::<String>("results")
        .unwrap();
    let err = tasks
        .get_many_after_put(&other, ["x".to_string()], 1, ms(10))
        .unwrap_err();
    assert!(matches!(err, GetError::Failed(Error::Config(_))), "{err}");
}

#[test]
fn a_client_gone_while_it_waits_is_handed_nothing() {
    let server = server(Duration::from_secs(60), 5);
    let mut raw = Raw::authenticated(server.local_addr(), KEY);
    raw.send(&Cbor::variant(
        "get",
        vec![
            ("queue", Cbor::Text("tasks".into())),
            ("max", Cbor::Uint(1)),
        ],
    ));
    assert!(wait_until(SECS_5, || server.stats().connections == 1));
    drop(raw); // gone while blocked in a get with no timeout
    assert!(
        wait_until(SECS_5, || server.stats().connections == 0),
        "the session outlived its client"
    );
    let local = server.queue::<u32>("tasks").unwrap();
    local.put(7).unwrap();
    let d = local.reserve_timeout(SECS_5).unwrap();
    assert_eq!(
        (*d, d.redeliveries()),
        (7, 0),
        "the new item went nowhere first"
    );
    assert_eq!(tasks_stats(&server).redelivered, 0);
}

#[test]
fn a_huge_lease_timeout_is_refused_when_the_server_is_built() {
    init_test_log();
    let config = QueueConfig::default().lease_timeout(Duration::MAX);
    let err = Server::builder()
        .authkey(KEY)
        .queue_with("tasks", config)
        .bind("127.0.0.1:0")
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[test]
fn the_heartbeat_keeps_touching_while_other_handles_come_and_go() {
    let server = server(ms(600), 5);
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<u32>("tasks").unwrap();
    q.put_many(0..100).unwrap();
    let held = q.reserve_timeout(SECS_5).unwrap();
    // Another handle keeps dropping deliveries, waking the heartbeat every 50 ms.
    let churn = {
        let q = q.clone();
        std::thread::spawn(move || {
            for _ in 0..40 {
                drop(q.reserve_timeout(SECS_5).unwrap());
                std::thread::sleep(ms(50));
            }
        })
    };
    churn.join().unwrap();
    held.ack()
        .expect("the held lease was kept alive through the churn");
}

#[test]
fn a_worker_cycle_shares_one_deadline_between_its_put_and_its_take() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .bounded_queue("results", 1)
        .bind("127.0.0.1:0")
        .unwrap();
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let tasks = client.queue::<u32>("tasks").unwrap();
    let results = client.queue::<u32>("results").unwrap();
    results.put(0).unwrap(); // full
    let drain = {
        let local = server.queue::<u32>("results").unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(ms(500));
            local.get().unwrap()
        })
    };
    let start = std::time::Instant::now();
    let err = tasks
        .get_many_after_put(&results, [1], 1, ms(1000))
        .unwrap_err();
    let took = start.elapsed();
    assert!(err.is_empty(), "{err}");
    assert!(
        took < ms(1400),
        "the take waited a second timeout: {took:?}"
    );
    drain.join().unwrap();
    assert_eq!(results.len().unwrap(), 1);
}

#[test]
fn ack_many_settles_deliveries_of_two_clients_each_on_its_own_connection() {
    let server = server(Duration::from_secs(60), 5);
    server
        .queue::<u32>("tasks")
        .unwrap()
        .put_many([1, 2])
        .unwrap();
    let (a, b) = (manual_client(&server), manual_client(&server));
    let qa = a.queue::<u32>("tasks").unwrap();
    let qb = b.queue::<u32>("tasks").unwrap();
    // Each connection numbers its leases from 1 and starts at generation 0: the same
    // lease id on both.
    let da = qa.reserve_timeout(SECS_5).unwrap();
    let db = qb.reserve_timeout(SECS_5).unwrap();
    qa.ack_many([da, db]).unwrap();
    let s = tasks_stats(&server);
    assert_eq!((s.acked, s.leased, s.len), (2, 0, 0));
}

#[test]
fn a_fused_get_refused_by_a_full_results_queue_keeps_its_tasks_to_give_back() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .bounded_queue("results", 1)
        .bind("127.0.0.1:0")
        .unwrap();
    server
        .queue::<u32>("tasks")
        .unwrap()
        .put_many([1, 2])
        .unwrap();
    let client = manual_client(&server);
    let tasks = client.queue::<u32>("tasks").unwrap();
    let results = client.queue::<u32>("results").unwrap();
    results.put(0).unwrap(); // now full
    assert_eq!(tasks.get_many(2, SECS_5).unwrap(), vec![1, 2]);
    let err = tasks
        .get_many_after_put(&results, [10, 20], 1, ms(50))
        .unwrap_err();
    assert!(
        matches!(&err, GetError::Failed(Error::ResultsFull { queue, accepted: 0 }) if queue == "results"),
        "{err}"
    );
    assert_eq!(tasks_stats(&server).leased, 2, "nothing was acknowledged");
    tasks.give_back().unwrap();
    let s = tasks_stats(&server);
    assert_eq!(
        (s.leased, s.len),
        (0, 2),
        "both tasks are back in the queue"
    );
}

#[test]
fn ack_many_settles_every_connection_it_can_even_when_one_fails() {
    let alive = server(Duration::from_secs(60), 5);
    alive.queue::<u32>("tasks").unwrap().put(1).unwrap();
    let client = manual_client(&alive);
    let tasks = client.queue::<u32>("tasks").unwrap();
    let mut deliveries = vec![tasks.reserve_timeout(SECS_5).unwrap()];
    // Deliveries from servers that then stop: settling them fails. Several, so that
    // whatever order the call settles in, a failure comes before the good one.
    let mut gone = Vec::new();
    for _ in 0..4 {
        let dying = server(Duration::from_secs(60), 5);
        dying.queue::<u32>("tasks").unwrap().put(2).unwrap();
        let c = manual_client(&dying);
        deliveries.push(
            c.queue::<u32>("tasks")
                .unwrap()
                .reserve_timeout(SECS_5)
                .unwrap(),
        );
        gone.push((dying, c));
    }
    for (dying, _) in &gone {
        dying.shutdown();
    }
    assert!(tasks.ack_many(deliveries).is_err());
    assert_eq!(
        tasks_stats(&alive).acked,
        1,
        "the delivery of the server still up was acknowledged"
    );
}
