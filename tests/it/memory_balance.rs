//! The memory budget balances: a deterministic mix of every way an item comes and goes (puts,
//! takes for good, give-backs, leases, acks, nacks, expiry, closed connections, dead letters,
//! fused gets), over TCP and in-process, charges exactly what is stored at every quiet point,
//! and nothing once everything is drained.

use std::time::Duration;

use distq::{Client, Delivery, GetError, PutError, QueueConfig, Server, ServerConfig, Stats};

use crate::support::raw::{Cbor, Raw};
use crate::support::{init_test_log, ms, wait_until, KEY};

const SECS_5: Duration = Duration::from_secs(5);

/// One item: 100 bytes, so every payload is stored shared and costs the same.
fn item(n: u8) -> Vec<u8> {
    vec![n % 20; 100]
}

/// A small deterministic generator (xorshift64), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Items stored (waiting or leased, dead letters included) and leases out, from `stats`
/// (the test settles dead-letter leases at once, so none are out when it looks).
fn stored_and_leased(stats: &Stats) -> (u64, u64) {
    let leased: u64 = stats.queues.iter().map(|q| q.leased).sum();
    let waiting: u64 = stats.queues.iter().map(|q| q.len + q.dead).sum();
    (waiting + leased, leased)
}

/// Takes up to `max` items of `queue` on a raw connection (which never touches its leases).
fn raw_get(raw: &mut Raw, queue: &str, max: u64) -> Vec<u64> {
    raw.send(&Cbor::variant(
        "get",
        vec![
            ("queue", Cbor::Text(queue.into())),
            ("max", Cbor::Uint(max)),
            ("timeout_ms", Cbor::Uint(10)),
        ],
    ));
    let reply = raw.recv().expect("a reply");
    match reply.get("items").and_then(|i| i.get("items")) {
        Some(Cbor::Array(items)) => items
            .iter()
            .map(|d| match d {
                Cbor::Array(parts) => match parts.first() {
                    Some(Cbor::Uint(id)) => *id,
                    other => panic!("no lease id: {other:?}"),
                },
                other => panic!("not a delivery: {other:?}"),
            })
            .collect(),
        _ => {
            assert_eq!(reply.tag(), Some("empty"), "{reply:?}");
            Vec::new()
        }
    }
}

fn raw_leases(raw: &mut Raw, verb: &str, queue: &str, ids: &[u64]) {
    raw.send(&Cbor::variant(
        verb,
        vec![
            ("queue", Cbor::Text(queue.into())),
            (
                "leases",
                Cbor::Array(ids.iter().copied().map(Cbor::Uint).collect()),
            ),
        ],
    ));
    let reply = raw.recv().expect("a reply");
    assert_eq!(reply.tag(), Some("leases"), "{reply:?}");
}

#[test]
fn the_memory_budget_balances_across_a_mix_of_every_operation_then_drains_to_zero() {
    init_test_log();
    let long = QueueConfig::default()
        .lease_timeout(Duration::from_secs(60))
        .max_redeliveries(2);
    let short = QueueConfig::default()
        .lease_timeout(ms(100))
        .max_redeliveries(1);
    // Room for about 60 stored items: some puts run into the budget.
    let budget = 60 * (64 + 32 + 102);
    let server = Server::builder()
        .authkey(KEY)
        .queue_with("tasks", long.clone())
        .queue_with("results", long)
        .queue_with("short", short)
        .config(ServerConfig::default().max_memory(budget))
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = server.local_addr();
    let local = server.queue::<Vec<u8>>("tasks").unwrap();
    let local_results = server.queue::<Vec<u8>>("results").unwrap();
    let local_undecodable = server.queue::<String>("tasks").unwrap();

    // What one stored item and one lease cost, measured.
    local.put(item(0)).unwrap();
    let per_item = server.stats().memory_used;
    let d = local.reserve().unwrap();
    let per_lease = server.stats().memory_used - per_item;
    d.ack().unwrap();
    assert_eq!(server.stats().memory_used, 0);
    assert!(per_item > 100 && per_lease > 0, "{per_item} {per_lease}");

    let producer = Client::connect(addr, KEY).unwrap();
    let tasks = producer.queue::<Vec<u8>>("tasks").unwrap();
    let short_q = producer.queue::<Vec<u8>>("short").unwrap();
    let dead_q = producer.queue::<Vec<u8>>("tasks.dead").unwrap();
    let mut worker = Some(Client::connect(addr, KEY).unwrap());
    let mut worker_tasks = Some(worker.as_ref().unwrap().queue::<Vec<u8>>("tasks").unwrap());
    let mut worker_results = Some(
        worker
            .as_ref()
            .unwrap()
            .queue::<Vec<u8>>("results")
            .unwrap(),
    );
    let mut last_batch = 0usize;
    let mut over_budget = 0usize;
    let mut held: Vec<Delivery<Vec<u8>>> = Vec::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let check = |step: usize, what: &str, connections: u64| {
        let mut last = None;
        let balanced = wait_until(SECS_5, || {
            let stats = server.stats();
            let (stored, leased) = stored_and_leased(&stats);
            let expected = stored * per_item + leased * per_lease;
            let quiet = stats.connections == connections;
            let ok = quiet && stats.memory_used == expected;
            last = Some((stats, expected));
            ok
        });
        let (stats, expected) = last.unwrap();
        assert!(
            balanced,
            "step {step} ({what}): memory_used {} but the stored items cost {expected}: {stats:?}",
            stats.memory_used
        );
        assert!(stats.memory_used <= budget + 200 * per_lease, "{stats:?}");
    };

    for step in 0..400 {
        let connections = 1 + u64::from(worker.is_some());
        let what = match rng.below(17) {
            0 => {
                let n = 1 + rng.below(5) as u8;
                if let Err(e) = tasks.put_many_timeout((0..n).map(item), ms(20)) {
                    over_budget += usize::from(matches!(e, PutError::OverBudget { .. }));
                }
                "remote put"
            }
            1 => {
                let _ = local.put_timeout(item(step as u8), ms(20));
                "local put"
            }
            2 => {
                let _ = local.get_timeout(ms(5));
                "local take for good"
            }
            3 => {
                let e = local_undecodable.get_many(3, ms(5));
                assert!(e.is_err(), "bytes decoded as a string");
                "local take given back"
            }
            4 => {
                if let Ok(d) = tasks.reserve_timeout(ms(5)) {
                    held.push(d);
                }
                "remote reserve"
            }
            5 => {
                if let Ok(d) = local.reserve_timeout(ms(5)) {
                    held.push(d);
                }
                "local reserve"
            }
            6 if !held.is_empty() => {
                let i = rng.below(held.len() as u64) as usize;
                let _ = held.swap_remove(i).ack();
                "ack"
            }
            7 if !held.is_empty() => {
                let i = rng.below(held.len() as u64) as usize;
                let _ = held.swap_remove(i).nack();
                "nack"
            }
            8 if !held.is_empty() => {
                let i = rng.below(held.len() as u64) as usize;
                drop(held.swap_remove(i));
                "dropped delivery"
            }
            9 if worker_tasks.is_some() => {
                let got = worker_tasks
                    .as_ref()
                    .unwrap()
                    .get_many(1 + rng.below(4) as usize, ms(5));
                last_batch = got.map_or(0, |g| g.len());
                "worker get_many"
            }
            10 if worker_tasks.is_some() => {
                let answers: Vec<Vec<u8>> = (0..last_batch).map(|i| item(i as u8)).collect();
                let got = worker_tasks.as_ref().unwrap().get_many_after_put(
                    worker_results.as_ref().unwrap(),
                    &answers,
                    1 + rng.below(4) as usize,
                    ms(20),
                );
                match got {
                    Ok(g) => last_batch = g.len(),
                    Err(GetError::Empty) => last_batch = 0,
                    Err(_) => {}
                }
                "fused get"
            }
            11 => {
                // A worker killed holding leases: the oldest counts as a failed delivery.
                let mut raw = Raw::authenticated(addr, KEY);
                raw_get(&mut raw, "tasks", 1 + rng.below(4));
                drop(raw);
                "connection closed holding leases"
            }
            12 => {
                // Leases left to expire, then a late ack refused.
                let _ = short_q.put_many_timeout([item(1), item(2)], ms(20));
                let mut raw = Raw::authenticated(addr, KEY);
                let ids = raw_get(&mut raw, "short", 2);
                let expired = wait_until(SECS_5, || server.stats().queues[2].leased == 0);
                assert!(expired, "{:?}", server.stats());
                raw_leases(&mut raw, "ack", "short", &ids);
                drop(raw);
                "expiry"
            }
            13 => {
                // Dead letters taken and acknowledged (or given back) over TCP.
                if let Ok(d) = dead_q.reserve_timeout(ms(5)) {
                    let _ = if rng.below(2) == 0 { d.ack() } else { d.nack() };
                }
                "dead letter settled"
            }
            14 => {
                let _ = local_results.get_many(1 + rng.below(5) as usize, ms(5));
                "local results taken"
            }
            15 => {
                let _ = local.get_many_after_put(&local_results, [item(9)], 2, ms(20));
                "in-process fused get"
            }
            16 if worker.is_some() => {
                // The worker leaves: its handle's pending leases are acknowledged on the way.
                worker_tasks = None;
                worker_results = None;
                worker = None;
                last_batch = 0;
                "worker left"
            }
            16 => {
                let client = Client::connect(addr, KEY).unwrap();
                worker_tasks = Some(client.queue("tasks").unwrap());
                worker_results = Some(client.queue("results").unwrap());
                worker = Some(client);
                "worker joined"
            }
            _ => "nothing",
        };
        let connections = match what {
            "worker left" => connections - 1,
            "worker joined" => connections + 1,
            _ => connections,
        };
        check(step, what, connections);
    }

    // The mix reached the paths it is about.
    let t = server.stats();
    let (tasks_t, short_t) = (&t.queues[0], &t.queues[2]);
    assert!(
        tasks_t.dead_lettered > 0 && tasks_t.redelivered > 0,
        "{t:?}"
    );
    assert!(short_t.redelivered > 0 && t.queues[1].put > 0, "{t:?}");
    assert!(over_budget > 0, "no put ran into the budget");

    // Drain: settle every lease, empty every queue, and nothing may stay charged.
    for d in held.drain(..) {
        let _ = d.nack();
    }
    drop((worker_tasks, worker_results, worker));
    check(400, "all leases settled", 1);
    while let Ok(d) = dead_q.reserve_timeout(ms(5)) {
        d.ack().unwrap();
    }
    for name in ["tasks", "results", "short", "results.dead", "short.dead"] {
        let q = server.queue::<Vec<u8>>(name).unwrap();
        while q.get_many(100, ms(5)).is_ok() {}
    }
    let stats = server.stats();
    assert!(
        stats.queues.iter().all(|q| q.len + q.leased + q.dead == 0),
        "{stats:?}"
    );
    assert_eq!(stats.memory_used, 0, "{stats:?}");
}
