//! distq on Redis Streams (`--connect redis://…`) beside the native master and beside
//! RQ-style plain Redis lists: the seed workload, unbatched and with adaptive batches, at
//! W = 1 and 2, all on one `redis-server` this bench starts (no persistence), interleaved
//! round by round.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, QueueConfig};

use super::resp::{start_redis, Reply, Resp};
use super::{median, seed, seed_clock, spawn_workers, Plan, Report};

/// Seconds a bench waits for its workers before it gives up.
const START: Duration = Duration::from_secs(30);

pub(super) fn redis_report(report: &mut Report, plan: &Plan) {
    let has_redis = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_redis {
        report.add(
            "distq on Redis",
            "skipped",
            "no redis-server (apt-get install redis-server)",
        );
        return;
    }
    let (_redis, port) = start_redis(&["--appendonly", "no"]);
    let url = format!("redis://127.0.0.1:{port}");
    for workers in [1, 2] {
        let mut rows: [Vec<f64>; 5] = Default::default();
        for _ in 0..plan.rounds {
            rows[0].push(seed(plan.seed_tasks, workers, Some(1)));
            rows[1].push(lists_seed(port, plan.seed_tasks, workers));
            rows[2].push(redis_seed(&url, port, plan.seed_tasks, workers, Some(1)));
            rows[3].push(seed(plan.seed_tasks, workers, None));
            rows[4].push(redis_seed(&url, port, plan.seed_tasks, workers, None));
        }
        let [native_one, lists, one, native_adaptive, adaptive] =
            rows.map(|r| median(r.into_iter()));
        report.add(
            format!("seed workload, plain Redis lists (LPUSH/BRPOP), W={workers}"),
            format!("{lists:.0} tasks/s"),
            "baseline (RQ's pattern: no leases)",
        );
        report.add(
            format!("seed workload, distq on Redis unbatched, W={workers}"),
            format!("{one:.0} tasks/s"),
            format!(
                "{:.2}× plain lists (target ≥ 0.5), {:.2}× native distq unbatched ({native_one:.0}/s)",
                one / lists,
                one / native_one
            ),
        );
        report.add(
            format!("seed workload, distq on Redis adaptive batches, W={workers}"),
            format!("{adaptive:.0} tasks/s"),
            format!(
                "{:.1}× plain lists, {:.2}× native distq adaptive ({native_adaptive:.0}/s){}",
                adaptive / lists,
                adaptive / native_adaptive,
                if workers == 2 {
                    "; target ≥ 100000/s"
                } else {
                    ""
                }
            ),
        );
    }
}

fn flush(port: u16) {
    let mut c = Resp::new(TcpStream::connect(("127.0.0.1", port)).expect("connect to redis"));
    c.command(&[b"FLUSHALL"]).expect("FLUSHALL");
}

/// The seed workload on Redis: this process the master (declares the queues, puts, takes
/// every result), `workers` `distq worker --connect redis://…` processes; the clock runs
/// from the first put to the last result.
fn redis_seed(url: &str, port: u16, tasks: usize, workers: usize, batch: Option<usize>) -> f64 {
    flush(port);
    let client = Client::connect(url, "").expect("connect to redis");
    for name in ["tasks", "results"] {
        client
            .declare_queue(name, QueueConfig::default())
            .expect("declare");
    }
    let before = client.stats().expect("stats").connections;
    let _workers = spawn_workers(url, workers, batch);
    let deadline = Instant::now() + START;
    while client.stats().expect("stats").connections < before + workers as u64 {
        assert!(Instant::now() < deadline, "workers did not connect");
        thread::sleep(Duration::from_millis(5));
    }
    let to_do = client.queue("tasks").expect("tasks");
    let done = client.queue("results").expect("results");
    seed_clock(&to_do, &done, tasks, batch)
}

/// The same workload as RQ runs it on plain lists: the master LPUSHes each task, each
/// worker (a thread with its own connection, a lean client) BRPOPs one, squares it and
/// LPUSHes the answer; the master BRPOPs the answers. No leases: a worker that dies loses
/// its task.
fn lists_seed(port: u16, tasks: usize, workers: usize) -> f64 {
    flush(port);
    let connect = || Resp::new(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let mut c = connect();
            thread::spawn(move || loop {
                let Reply::Array(mut kv) = c.command(&[b"BRPOP", b"tasks", b"30"]).expect("BRPOP")
                else {
                    panic!("BRPOP timed out")
                };
                let Some(Reply::Bulk(task)) = kv.pop() else {
                    panic!("BRPOP: no value")
                };
                if task == b"stop" {
                    return;
                }
                let n: i64 = std::str::from_utf8(&task)
                    .expect("utf-8")
                    .parse()
                    .expect("n");
                let answer = format!("{n} * {n} = {}", n * n);
                c.command(&[b"LPUSH", b"results", answer.as_bytes()])
                    .expect("LPUSH");
            })
        })
        .collect();
    let mut master = connect();
    let start = Instant::now();
    for id in 0..tasks {
        let n = (id % 10_001).to_string();
        master
            .command(&[b"LPUSH", b"tasks", n.as_bytes()])
            .expect("LPUSH");
    }
    for _ in 0..tasks {
        let reply = master
            .command(&[b"BRPOP", b"results", b"30"])
            .expect("BRPOP");
        assert!(matches!(reply, Reply::Array(_)), "a result went missing");
    }
    let rate = tasks as f64 / start.elapsed().as_secs_f64();
    for _ in 0..workers {
        master
            .command(&[b"LPUSH", b"tasks", b"stop"])
            .expect("LPUSH");
    }
    threads
        .into_iter()
        .for_each(|t| t.join().expect("a list worker"));
    rate
}
