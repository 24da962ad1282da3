//! Workers as real processes failing the ways real workers do: killed mid-task, asked to
//! stop, or outliving their master. The N-Queens answer must not change.

use std::net::SocketAddr;
use std::time::Duration;

use distq::{Client, QueueConfig, QueueStats, Server};

use crate::support::raw::{Cbor, Raw};
use crate::support::{distq, init_test_log, wait_until, ChildGuard, Finished};

const SECS_20: Duration = Duration::from_secs(20);
const SECS_60: Duration = Duration::from_secs(60);

/// A master counting N-Queens n=8 in 8 tasks (one per first-row column).
fn master(bind: &str) -> ChildGuard {
    ChildGuard::spawn(
        "master",
        distq().args([
            "master",
            "--bind",
            bind,
            "--authkey",
            "abc",
            "--job",
            "nqueens",
            "--n",
            "8",
            "--split-depth",
            "1",
            "--timeout",
            "60",
        ]),
    )
}

fn worker(addr: SocketAddr, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "worker",
        distq()
            .args(["worker", "--connect", &addr.to_string(), "--authkey", "abc"])
            .args(args),
    )
}

/// A task in the built-in jobs' format, put by hand into a plain server.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Task {
    r: u64,
    i: u64,
    j: Job,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Job {
    Square { n: i64 },
}

fn tasks_stats(addr: SocketAddr) -> QueueStats {
    let stats = Client::connect(addr, "abc").unwrap().stats().unwrap();
    stats
        .queues
        .into_iter()
        .find(|q| q.name == "tasks")
        .unwrap()
}

/// Waits until the master's tasks queue satisfies `cond`.
fn wait_tasks(addr: SocketAddr, what: &str, cond: impl Fn(&QueueStats) -> bool) {
    let ok = wait_until(SECS_20, || cond(&tasks_stats(addr)));
    assert!(ok, "{what}: {:?}", tasks_stats(addr));
}

fn assert_92(out: &Finished) {
    assert!(
        out.status.success(),
        "master failed\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.stdout.lines().last(),
        Some("solutions: 92"),
        "{}",
        out.stdout
    );
}

#[test]
fn smoke() {
    let master = master("127.0.0.1:0");
    let addr = master.listening_addr();
    let _w = worker(addr, &["--idle-exit", "2"]);
    assert_92(&master.wait_output(SECS_60));
}

#[test]
fn sigkill_mid_task_does_not_change_the_answer() {
    let master = master("127.0.0.1:0");
    let addr = master.listening_addr();
    let doomed = worker(addr, &["--delay", "30"]);
    wait_tasks(addr, "the worker never took a task", |t| t.leased == 1);
    doomed.signal("KILL");
    let killed = doomed.wait_output(SECS_20);
    assert!(!killed.status.success());
    // Its connection broke without a goodbye: the task is back in the queue at once.
    wait_tasks(addr, "the lease never came back", |t| {
        t.leased == 0 && t.len == 8
    });
    assert_eq!(tasks_stats(addr).redelivered, 1);
    let _rescuer = worker(addr, &["--idle-exit", "2"]);
    assert_92(&master.wait_output(SECS_60));
}

#[test]
fn the_first_signal_lets_a_worker_finish_the_task_in_hand() {
    let master = master("127.0.0.1:0");
    let addr = master.listening_addr();
    let leaving = worker(addr, &["--delay", "1"]);
    wait_tasks(addr, "the worker never took a task", |t| t.leased == 1);
    leaving.signal("TERM");
    let out = leaving.wait_output(SECS_20);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("finishing the task in hand"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("worker exit: 1 task(s) done"),
        "{}",
        out.stderr
    );
    let t = tasks_stats(addr);
    assert_eq!(
        (t.acked, t.leased, t.len),
        (1, 0, 7),
        "its one task was done and acknowledged"
    );
    let _rest = worker(addr, &["--idle-exit", "2"]);
    assert_92(&master.wait_output(SECS_60));
}

#[test]
fn a_second_signal_stops_a_worker_at_once_and_its_task_returns() {
    let master = master("127.0.0.1:0");
    let addr = master.listening_addr();
    let leaving = worker(addr, &["--delay", "30"]);
    wait_tasks(addr, "the worker never took a task", |t| t.leased == 1);
    leaving.signal("TERM");
    leaving.wait_for_stderr("finishing the task in hand", SECS_20);
    leaving.signal("TERM");
    let out = leaving.wait_output(Duration::from_secs(5));
    assert!(!out.status.success(), "a forced stop is not a success");
    wait_tasks(addr, "the lease never came back", |t| {
        t.leased == 0 && t.len == 8
    });
    let _rest = worker(addr, &["--idle-exit", "2"]);
    assert_92(&master.wait_output(SECS_60));
}

#[test]
fn a_worker_survives_a_master_restart() {
    let first = master("127.0.0.1:0");
    let addr = first.listening_addr();
    let mut survivor = worker(addr, &["--delay", "0.2", "--give-up", "30"]);
    wait_tasks(addr, "no progress", |t| t.acked >= 2);
    first.signal("KILL");
    first.wait_output(SECS_20);

    let second = master(&addr.to_string());
    assert_92(&second.wait_output(SECS_60));
    assert!(
        survivor.running(),
        "the worker exited instead of reconnecting"
    );
    assert!(
        survivor.stderr_so_far().contains("reconnected"),
        "{}",
        survivor.stderr_so_far()
    );
}

#[test]
fn a_worker_facing_a_full_results_queue_gives_its_task_back_and_leaves_when_idle() {
    let serve = ChildGuard::spawn(
        "serve",
        distq().args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--authkey",
            "abc",
            "--queue",
            "tasks",
            "--queue",
            "results:1",
        ]),
    );
    let addr = serve.listening_addr();
    let client = Client::connect(addr, "abc").unwrap();
    let tasks = client.queue::<Task>("tasks").unwrap();
    for (i, n) in [(0, 3), (1, 4), (2, 5)] {
        tasks
            .put(Task {
                r: 1,
                i,
                j: Job::Square { n },
            })
            .unwrap();
    }
    let worker = worker(addr, &["--idle-exit", "2", "--batch", "1"]);
    let out = worker.wait_output(SECS_20);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("the results queue stayed full"),
        "{}",
        out.stderr
    );
    let stats = client.stats().unwrap();
    let (t, r) = (&stats.queues[0], &stats.queues[1]);
    assert_eq!((r.len, t.acked, t.leased, t.len), (1, 1, 0, 2), "{stats:?}");
}

#[test]
fn killing_a_worker_counts_only_the_task_it_was_running_not_its_prefetched_ones() {
    let serve = ChildGuard::spawn(
        "serve",
        distq().args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--authkey",
            "abc",
            "--max-redeliveries",
            "1",
        ]),
    );
    let addr = serve.listening_addr();
    let client = Client::connect(addr, "abc").unwrap();
    let tasks = client.queue::<Task>("tasks").unwrap();
    let batch = (0..4).map(|i| Task {
        r: 1,
        i,
        j: Job::Square { n: i as i64 },
    });
    tasks.put_many(batch.collect::<Vec<_>>()).unwrap();
    for kill in 1..=2 {
        // It takes all four, runs the first for 30 s and holds the other three prefetched.
        let doomed = worker(addr, &["--batch", "4", "--delay", "30"]);
        wait_tasks(addr, "the worker never took its batch", |t| t.leased == 4);
        doomed.signal("KILL");
        doomed.wait_output(SECS_20);
        wait_tasks(addr, "the leases never came back", |t| t.leased == 0);
        assert_eq!(
            tasks_stats(addr).redelivered,
            4 * kill,
            "every return is counted"
        );
    }
    let t = tasks_stats(addr);
    assert_eq!(
        (t.dead_lettered, t.len),
        (1, 3),
        "two kills with --max-redeliveries 1 dead-letter only the task that ran both times: {t:?}"
    );
    let dead = client.queue::<Task>("tasks.dead").unwrap();
    let poison = dead.reserve_timeout(SECS_20).unwrap();
    assert_eq!(
        (poison.i, poison.redeliveries()),
        (0, 2),
        "the one running was the first of the batch"
    );
    poison.ack().unwrap();
    for i in 1..4 {
        let healthy = tasks.reserve_timeout(SECS_20).unwrap();
        assert_eq!(
            (healthy.i, healthy.redeliveries()),
            (i, 0),
            "prefetched and never started: no failure on its record"
        );
    }
}

#[test]
fn a_task_that_kills_its_worker_every_time_still_reaches_the_dead_letters() {
    init_test_log();
    let server = Server::builder()
        .authkey("abc")
        .queue_with("tasks", QueueConfig::default().max_redeliveries(2))
        .bind("127.0.0.1:0")
        .unwrap();
    let local = server.queue::<u32>("tasks").unwrap();
    local.put_many([666, 1, 2]).unwrap(); // the poison first: each worker runs it first
    let stats = || server.stats().queues[0].clone();
    for _crash in 0..3 {
        // A worker takes all three, starts on the poison and dies: no ack, no goodbye.
        let mut raw = Raw::authenticated(server.local_addr(), "abc");
        raw.send(&Cbor::variant(
            "get",
            vec![
                ("queue", Cbor::Text("tasks".into())),
                ("max", Cbor::Uint(3)),
                ("timeout_ms", Cbor::Uint(10_000)),
            ],
        ));
        let reply = raw.recv().expect("a reply");
        assert_eq!(reply.tag(), Some("items"), "{reply:?}");
        assert_eq!(stats().leased, 3, "{:?}", stats());
        drop(raw);
        // All three back (ready or dead): the leases go first, then the items one by one.
        assert!(
            wait_until(SECS_20, || {
                let s = stats();
                s.leased == 0 && s.len + s.dead == 3
            }),
            "the leases never came back: {:?}",
            stats()
        );
    }
    let t = stats();
    assert_eq!((t.dead_lettered, t.len, t.redelivered), (1, 2, 9), "{t:?}");
    let dead = server.queue::<u32>("tasks.dead").unwrap();
    let poison = dead.reserve_timeout(SECS_20).unwrap();
    assert_eq!((*poison, poison.redeliveries()), (666, 3));
    for healthy in [1, 2] {
        let d = local.reserve_timeout(SECS_20).unwrap();
        assert_eq!((*d, d.redeliveries()), (healthy, 0));
    }
}
