//! A server restarted on the same address is a new instance: clients and workers must not
//! hand it results (or acknowledgements) of tasks it never had.

use std::net::SocketAddr;
use std::time::Duration;

use distq::{Client, QueueStats, Reconnect, Server};
use serde::{Deserialize, Serialize};

use crate::support::{distq, init_test_log, ms, wait_until, ChildGuard, KEY};

const SECS_30: Duration = Duration::from_secs(30);

/// A task in the built-in jobs' format (PROTOCOL.md, "Built-in jobs").
#[derive(Serialize, Deserialize)]
struct Task {
    r: u64,
    i: u64,
    j: Job,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Job {
    Square { n: i64 },
}

/// A result in the built-in jobs' format; only the run and id matter here.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    r: u64,
    i: u64,
}

fn serve(bind: &str, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "serve",
        distq()
            .args(["serve", "--bind", bind, "--authkey", KEY])
            .args(extra),
    )
}

fn put_tasks(addr: SocketAddr, run: u64, count: u64) {
    let tasks = Client::connect(addr, KEY)
        .unwrap()
        .queue::<Task>("tasks")
        .unwrap();
    tasks
        .put_many((0..count).map(|i| Task {
            r: run,
            i,
            j: Job::Square { n: i as i64 },
        }))
        .unwrap();
}

fn queue_stats(addr: SocketAddr, name: &str) -> QueueStats {
    let stats = Client::connect(addr, KEY).unwrap().stats().unwrap();
    stats.queues.into_iter().find(|q| q.name == name).unwrap()
}

/// Kills a server while a worker holds tasks (and their answers), starts a new one on the
/// same port, and checks the new server sees only results of its own tasks.
fn restart_under_a_worker(queues: &[&str]) {
    let first = serve("127.0.0.1:0", queues);
    let addr = first.listening_addr();
    put_tasks(addr, 1, 40);
    // Four threads, each holding one slow task: answers in hand when the server dies.
    let mut worker = ChildGuard::spawn(
        "worker",
        distq().args([
            "worker",
            "--connect",
            &addr.to_string(),
            "--authkey",
            KEY,
            "--concurrency",
            "4",
            "--batch",
            "1",
            "--delay",
            "0.5",
            "--give-up",
            "60",
        ]),
    );
    let holding = wait_until(SECS_30, || queue_stats(addr, "tasks").leased == 4);
    assert!(holding, "the worker never held 4 tasks");
    first.signal("KILL");
    first.wait_output(SECS_30);

    let second = serve(&addr.to_string(), queues);
    assert_eq!(second.listening_addr(), addr);
    put_tasks(addr, 2, 8);
    // The worker goes on, for the new server's tasks.
    let worked = wait_until(SECS_30, || queue_stats(addr, "tasks").acked == 8);
    assert!(
        worked,
        "the worker did not work for the new server: {:?}\n{}",
        queue_stats(addr, "tasks"),
        worker.stderr_so_far()
    );
    let results = queue_stats(addr, "results");
    assert_eq!(
        results.put, 8,
        "the new server got results of tasks it never had: {results:?}"
    );
    let client = Client::connect(addr, KEY).unwrap();
    let answers = client
        .queue::<Answer>("results")
        .unwrap()
        .get_many(100, Duration::from_secs(5))
        .unwrap();
    assert!(answers.iter().all(|a| a.r == 2), "{answers:?}");
    let log = worker.stderr_so_far();
    assert!(worker.running(), "the worker exited\n{log}");
    assert!(log.contains("a new server instance"), "{log}");
}

#[test]
fn a_restarted_server_gets_no_results_of_tasks_it_never_had() {
    restart_under_a_worker(&[]);
}

#[test]
fn a_restarted_server_gets_no_results_through_a_bounded_results_queue() {
    // A bounded results queue makes the worker put its results on their own.
    restart_under_a_worker(&["--queue", "tasks", "--queue", "results:1000"]);
}

fn server_at(addr: &str) -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .queue("results")
        .bind(addr)
        .unwrap()
}

#[test]
fn a_fused_get_drops_results_meant_for_an_earlier_server_instance() {
    let first = server_at("127.0.0.1:0");
    let addr = first.local_addr();
    let policy = Reconnect::default()
        .initial_backoff(ms(20))
        .max_backoff(ms(200))
        .give_up(SECS_30);
    let client = Client::builder()
        .reconnect(policy)
        .connect(addr, KEY)
        .unwrap();
    let old_instance = client.server_instance();
    let tasks = client.queue::<u32>("tasks").unwrap();
    let results = client.queue::<u32>("results").unwrap();
    first.queue::<u32>("tasks").unwrap().put(1).unwrap();
    assert_eq!(tasks.get_many(1, SECS_30).unwrap(), vec![1]);
    first.shutdown();
    drop(first);

    let second = server_at(&addr.to_string());
    second.queue::<u32>("tasks").unwrap().put(2).unwrap();
    let next = tasks
        .get_many_after_put(&results, [10], 1, SECS_30)
        .unwrap();
    assert_eq!(next, vec![2]);
    assert_ne!(client.server_instance(), old_instance);
    let stats = second.stats();
    assert_eq!(stats.queues[1].put, 0, "{stats:?}");
    // The new server's own task: its result is stored.
    let more = tasks.get_many_after_put(&results, [20], 1, ms(50));
    assert!(more.unwrap_err().is_empty());
    assert_eq!(
        second.queue::<u32>("results").unwrap().try_get().unwrap(),
        20
    );
}
