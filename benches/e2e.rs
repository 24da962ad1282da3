//! End-to-end benchmarks for `make bench`: the loopback floor, distq round trips, the seed
//! workload against Python's `BaseManager`, shell commands as tasks beside GNU parallel and
//! `xargs -P`, distq on Redis beside plain Redis lists, and the master's memory. Every figure is printed
//! with its ratio to a baseline measured in the same run (these machines are shared and
//! noisy), and the results table in BENCHMARKS.md is rewritten.
//!
//! `cargo bench --bench e2e` runs it all; add `-- --quick` for the one-minute version.
//! Under `cargo test` (no `--bench` argument) it does nothing.

use std::fmt::Write as _;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, ClientConfig, Server};

// The built-in jobs, shared with the binary; the bench uses only the squares job.
#[allow(dead_code, unused_imports)]
#[path = "../src/bin/distq/jobs/mod.rs"]
mod jobs;

use jobs::{Job, Task, TaskResult};

// Durable puts beside beanstalkd and Redis, recovery, compaction.
#[path = "e2e/journal.rs"]
mod journal;

// distq on Redis Streams beside the native master and plain Redis lists.
#[path = "e2e/redis.rs"]
mod redis;

// The Redis peers' client.
#[path = "e2e/resp.rs"]
mod resp;

const KEY: &str = "bench";

/// The sizes of one run.
struct Plan {
    quick: bool,
    ping_pongs: usize,
    stream_frames: usize,
    seed_tasks: usize,
    queued_tasks: usize,
    idle_connections: usize,
    /// Trivial commands (`true`) run through submit + worker --exec, parallel and xargs.
    exec_tasks: usize,
    /// Rounds of each comparison, interleaved; the report gives medians.
    rounds: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        match quick {
            false => Plan {
                quick,
                ping_pongs: 20_000,
                stream_frames: 2_000_000,
                seed_tasks: 20_000,
                queued_tasks: 1_000_000,
                idle_connections: 1_000,
                exec_tasks: 5_000,
                rounds: 5,
            },
            true => Plan {
                quick,
                ping_pongs: 5_000,
                stream_frames: 500_000,
                seed_tasks: 5_000,
                queued_tasks: 200_000,
                idle_connections: 300,
                exec_tasks: 1_000,
                rounds: 1,
            },
        }
    }
}

/// One line of the report.
struct Row {
    what: String,
    value: String,
    ratio: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>, ratio: impl Into<String>) {
        let row = Row {
            what: what.into(),
            value: value.into(),
            ratio: ratio.into(),
        };
        println!("{:<58} {:>22}   {}", row.what, row.value, row.ratio);
        self.rows.push(row);
    }

    fn markdown(&self) -> String {
        let mut out = String::from(
            "| figure | value | ratio to its baseline (same run) |\n| --- | ---: | --- |\n",
        );
        for r in &self.rows {
            let _ = writeln!(out, "| {} | {} | {} |", r.what, r.value, r.ratio);
        }
        out
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("e2e: benchmarks run with `cargo bench --bench e2e` (make bench)");
        return;
    }
    let plan = Plan::new(args.iter().any(|a| a == "--quick"));
    // `--only floor|seed|exec|redis|memory` runs one section (for profiling); the report is not
    // written. `--only journal` does rewrite its own table (below its markers).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let started = Instant::now();
    let mut report = Report::default();

    // (a) The floor: what loopback TCP allows here, now, and (b) distq one request per round
    // trip, interleaved round by round, since the machine's speed drifts.
    let mut floors = Vec::new();
    let mut unbatched = Vec::new();
    for _ in 0..plan.rounds * usize::from(run("floor")) {
        floors.push(ping_pong(plan.ping_pongs));
        unbatched.push(round_trips(plan.ping_pongs));
    }
    if run("floor") {
        floor_report(&mut report, &plan, &floors, &unbatched);
    }

    // (c) + (d) The seed workload end to end, against Python's BaseManager, interleaved.
    if run("seed") {
        seed_report(&mut report, &plan);
    }

    // (e) Shell commands as tasks: submit + worker --exec beside GNU parallel and xargs -P.
    if run("exec") {
        exec_report(&mut report, &plan);
    }

    // (f) Past one machine: distq on Redis, beside the native master and plain lists.
    if run("redis") {
        redis::redis_report(&mut report, &plan);
    }

    // (g) Memory.
    if run("memory") {
        memory_report(&mut report, &plan);
    }

    // (h) Durability: the journal beside beanstalkd and Redis; its own table.
    if run("journal") {
        let began = Instant::now();
        let mut durable = Report::default();
        journal::journal_report(&mut durable, &plan);
        write_section(
            ("<!-- journal:begin -->", "<!-- journal:end -->"),
            &plan,
            match (&only, plan.quick) {
                (Some(_), _) => "--only journal",
                (None, false) => "make bench",
                (None, true) => "make bench-quick",
            },
            &durable,
            began.elapsed(),
            plan.rounds.min(journal::ROUNDS),
        );
    }

    let elapsed = started.elapsed();
    println!("\ne2e benchmarks took {:.0} s", elapsed.as_secs_f64());
    if only.is_none() {
        write_report(&plan, &report, elapsed);
    }
}

fn floor_report(report: &mut Report, plan: &Plan, floors: &[Rate], unbatched: &[Rate]) {
    let floor = median(floors.iter().map(|r| r.rate));
    let floor_p50 = median(floors.iter().map(|r| r.p50_us));
    report.add(
        "raw TCP ping-pong, 16-byte frames, 2 threads",
        format!("{floor:.0} round trips/s"),
        format!("baseline (p50 {floor_p50:.0} µs)"),
    );
    let stream = frame_stream(plan.stream_frames);
    report.add(
        "raw TCP one-way stream, 64-byte frames",
        format!("{stream:.0} frames/s"),
        format!("{:.0}× the ping-pong rate", stream / floor),
    );
    let ratio = median(floors.iter().zip(unbatched).map(|(f, u)| u.rate / f.rate));
    report.add(
        "distq put→get, one connection, unbatched",
        format!(
            "{:.0} round trips/s",
            median(unbatched.iter().map(|r| r.rate))
        ),
        format!(
            "{ratio:.2}× raw ping-pong (target ≥ 0.8; p50 {:.0} µs)",
            median(unbatched.iter().map(|r| r.p50_us))
        ),
    );
}

fn seed_report(report: &mut Report, plan: &Plan) {
    let python = python_available();
    // The same Python scripts on distq's Python listener, interleaved with CPython's server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let listener = format!("127.0.0.1:{port}");
    let (_served, _, _) = journal::serve_logged(&["--python-bind", &listener]);
    for workers in [1, 2, 4] {
        let (mut peer, mut one, mut adaptive) = (Vec::new(), Vec::new(), Vec::new());
        let mut on_distq = Vec::new();
        for _ in 0..plan.rounds {
            if python {
                peer.extend(python_seed(plan.seed_tasks, workers, None));
                on_distq.extend(python_seed(plan.seed_tasks, workers, Some(&listener)));
            }
            one.push(seed(plan.seed_tasks, workers, Some(1)));
            adaptive.push(seed(plan.seed_tasks, workers, None));
        }
        let peer = (!peer.is_empty()).then(|| median(peer.into_iter()));
        let (one, adaptive) = (median(one.into_iter()), median(adaptive.into_iter()));
        let versus = |rate: f64| match peer {
            Some(p) => format!("{:.1}× Python BaseManager", rate / p),
            None => "no python3: no peer figure".into(),
        };
        if let Some(p) = peer {
            report.add(
                format!("seed workload, Python BaseManager, W={workers}"),
                format!("{p:.0} tasks/s"),
                "baseline",
            );
            if !on_distq.is_empty() {
                let rate = median(on_distq.into_iter());
                report.add(
                    format!("seed workload, Python workers on distq's listener, W={workers}"),
                    format!("{rate:.0} tasks/s"),
                    format!("{} (target ≥ 1 at W=1, ≥ 2 at W=4)", versus(rate)),
                );
            }
        }
        report.add(
            format!("seed workload, distq unbatched, W={workers}"),
            format!("{one:.0} tasks/s"),
            versus(one),
        );
        report.add(
            format!("seed workload, distq adaptive batches, W={workers}"),
            format!("{adaptive:.0} tasks/s"),
            versus(adaptive),
        );
    }
}

/// `n` trivial commands (`true`) with 2 slots: `xargs -P2` (the fork/exec floor), GNU
/// `parallel -j2`, and `distq submit` to one `distq worker --exec true --concurrency 2`,
/// interleaved round by round; the clock runs from the first input to the last exit.
fn exec_report(report: &mut Report, plan: &Plan) {
    let n = plan.exec_tasks;
    let has_parallel = Command::new("parallel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let (mut xargs, mut parallel, mut distq) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        xargs.push(shell_rate(n, "xargs", &["-P2", "-n1", "true"]));
        if has_parallel {
            parallel.push(shell_rate(n, "parallel", &["-j2", "true"]));
        }
        distq.push(exec_rate(n));
    }
    let xargs = median(xargs.into_iter());
    let distq = median(distq.into_iter());
    report.add(
        format!("{n} x `true`, xargs -P2 (fork/exec floor)"),
        format!("{xargs:.0} tasks/s"),
        "baseline",
    );
    if has_parallel {
        let parallel = median(parallel.into_iter());
        report.add(
            format!("{n} x `true`, GNU parallel -j2"),
            format!("{parallel:.0} tasks/s"),
            format!("{:.2}× xargs -P2", parallel / xargs),
        );
        report.add(
            format!("{n} x `true`, distq submit + worker --exec, 2 slots"),
            format!("{distq:.0} tasks/s"),
            format!(
                "{:.2}× xargs -P2, {:.2}× GNU parallel",
                distq / xargs,
                distq / parallel
            ),
        );
    } else {
        report.add(
            format!("{n} x `true`, distq submit + worker --exec, 2 slots"),
            format!("{distq:.0} tasks/s"),
            format!(
                "{:.2}× xargs -P2 (GNU parallel not installed: apt-get install parallel)",
                distq / xargs
            ),
        );
    }
    // Each slot runs one command at a time: a task's wall time is slots / rate.
    let overhead_ms = (2.0 / distq - 2.0 / xargs) * 1000.0;
    report.add(
        "distq per-task overhead over the command itself (2 slots)",
        format!("{overhead_ms:.2} ms"),
        format!("{:.2} ms per task under xargs", 2000.0 / xargs),
    );
}

/// Runs `PROG ARGS` with `n` lines on stdin; tasks per second.
fn shell_rate(n: usize, prog: &str, args: &[&str]) -> f64 {
    let input: String = (1..=n).map(|i| format!("{i}\n")).collect();
    let start = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let status = child.wait().expect("wait");
    let _ = writer.join();
    assert!(status.success(), "{prog} failed: {status}");
    n as f64 / start.elapsed().as_secs_f64()
}

/// `n` inputs through `distq submit` to an `--exec true` worker with 2 slots, connected
/// before the clock starts; tasks per second.
fn exec_rate(n: usize) -> f64 {
    let (_server, addr) = serve();
    let addr = addr.to_string();
    let _worker = Reaped(
        distq_command()
            .args([
                "worker",
                "--connect",
                &addr,
                "--concurrency",
                "2",
                "--exec",
                "true",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker"),
    );
    let client = Client::connect(&addr, KEY).expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.stats().expect("stats").connections < 3 {
        assert!(Instant::now() < deadline, "the worker did not connect");
        thread::sleep(Duration::from_millis(5));
    }
    let input: String = (1..=n).map(|i| format!("{i}\n")).collect();
    let start = Instant::now();
    let mut submit = distq_command()
        .args(["submit", "--connect", &addr, "--output", "none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn submit");
    let mut stdin = submit.stdin.take().expect("stdin");
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let status = submit.wait().expect("wait for submit");
    let _ = writer.join();
    assert!(status.success(), "distq submit failed: {status}");
    n as f64 / start.elapsed().as_secs_f64()
}

fn memory_report(report: &mut Report, plan: &Plan) {
    let (per_task, payload) = queued_memory(plan.queued_tasks);
    report.add(
        format!(
            "master RSS per queued 16-byte task ({} tasks)",
            plan.queued_tasks
        ),
        format!("{per_task:.1} bytes"),
        format!(
            "{:.1} bytes beyond the {payload}-byte payload (target ≤ 64)",
            per_task - payload as f64
        ),
    );
    let idle = idle_connections(plan.idle_connections, plan.ping_pongs / 2);
    report.add(
        format!(
            "master RSS for {} idle authenticated connections",
            plan.idle_connections
        ),
        format!("{:.1} MiB", idle.rss_mib),
        format!(
            "{:.0} KiB each (target ≤ 64 MiB for 1,000)",
            idle.rss_mib * 1024.0 / plan.idle_connections as f64
        ),
    );
    report.add(
        "busy client beside them, unbatched",
        format!("{:.0} round trips/s", idle.busy_after),
        format!(
            "{:.2}× the same client alone (target ≥ 0.9)",
            idle.busy_after / idle.busy_before
        ),
    );
}

/// Rewrites the results section of BENCHMARKS.md, between its markers.
fn write_report(plan: &Plan, report: &Report, took: Duration) {
    let command = if plan.quick {
        "make bench-quick"
    } else {
        "make bench"
    };
    write_section(
        ("<!-- e2e:begin -->", "<!-- e2e:end -->"),
        plan,
        command,
        report,
        took,
        plan.rounds,
    );
}

/// Rewrites one table of BENCHMARKS.md, between its markers `begin` and `end`.
fn write_section(
    (begin, end): (&str, &str),
    plan: &Plan,
    command: &str,
    report: &Report,
    took: Duration,
    rounds: usize,
) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
        return;
    };
    let command = match command.strip_prefix("--") {
        Some(_) if plan.quick => format!("cargo bench --bench e2e -- --quick {command}"),
        Some(_) => format!("cargo bench --bench e2e -- {command}"),
        None => command.to_string(),
    };
    let section = format!(
        "{begin}\nLast run: `{command}`, {} cores, {:.0} s; medians of {} interleaved round(s).\n\n{}{end}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        took.as_secs_f64(),
        rounds,
        report.markdown()
    );
    let updated = format!("{}{}{}", &text[..a], section, &text[b + end.len()..]);
    if let Err(e) = std::fs::write(path, updated) {
        eprintln!("could not update BENCHMARKS.md: {e}");
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Rate {
    rate: f64,
    p50_us: f64,
}

fn rate_of(samples: &mut [Duration], total: Duration) -> Rate {
    samples.sort_unstable();
    Rate {
        rate: samples.len() as f64 / total.as_secs_f64(),
        p50_us: samples[samples.len() / 2].as_secs_f64() * 1e6,
    }
}

/// A std-only ping-pong of length-prefixed 16-byte frames between two threads.
fn ping_pong(n: usize) -> Rate {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let echo = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut frame = [0u8; 20];
        while s.read_exact(&mut frame).is_ok() {
            s.write_all(&frame).expect("echo");
        }
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut frame = [0u8; 20];
    frame[..4].copy_from_slice(&16u32.to_be_bytes());
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&frame).expect("send");
        s.read_exact(&mut frame).expect("receive");
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    drop(s);
    echo.join().expect("echo thread");
    rate_of(&mut samples, total)
}

/// 64-byte length-prefixed frames streamed one way, through buffered reader and writer.
fn frame_stream(n: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut r = BufReader::with_capacity(1 << 16, s);
        let mut frame = [0u8; 68];
        let mut count = 0usize;
        while r.read_exact(&mut frame).is_ok() {
            count += 1;
        }
        count
    });
    let s = TcpStream::connect(addr).expect("connect");
    let mut w = BufWriter::with_capacity(1 << 16, s);
    let mut frame = [7u8; 68];
    frame[..4].copy_from_slice(&64u32.to_be_bytes());
    let start = Instant::now();
    for _ in 0..n {
        w.write_all(&frame).expect("send");
    }
    drop(w);
    let got = reader.join().expect("reader");
    assert_eq!(got, n);
    n as f64 / start.elapsed().as_secs_f64()
}

/// Unbatched put-then-get over one connection; each call is one round trip.
fn round_trips(n: usize) -> Rate {
    let server = Server::builder()
        .authkey(KEY)
        .queue("q")
        .bind("127.0.0.1:0")
        .expect("bind");
    let client = Client::connect(server.local_addr(), KEY).expect("connect");
    let q = client.queue::<u64>("q").expect("queue");
    round_trips_on(&q, n / 2)
}

fn round_trips_on(q: &distq::Queue<u64>, pairs: usize) -> Rate {
    let mut samples = Vec::with_capacity(pairs * 2);
    let start = Instant::now();
    for i in 0..pairs as u64 {
        let t = Instant::now();
        q.put(i).expect("put");
        samples.push(t.elapsed());
        let t = Instant::now();
        q.try_get().expect("get");
        samples.push(t.elapsed());
    }
    rate_of(&mut samples, start.elapsed())
}

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn distq_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distq"));
    cmd.env("RUST_LOG", "warn")
        .env("DISTQ_AUTHKEY", KEY)
        .stdin(Stdio::null());
    cmd
}

/// The seed workload: the master (this process) puts `tasks` integers, `workers` worker
/// processes square them, the master collects every answer. Workers connect first; the clock
/// runs from the first put to the last result. `batch`: `Some(1)` is the seed's one task per
/// request, `None` the worker's adaptive prefetch.
fn seed(tasks: usize, workers: usize, batch: Option<usize>) -> f64 {
    let server = Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .queue("results")
        .bind("127.0.0.1:0")
        .expect("bind");
    let addr = server.local_addr().to_string();
    let _workers = spawn_workers(&addr, workers, batch);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.stats().connections < workers as u64 {
        assert!(Instant::now() < deadline, "workers did not connect");
        thread::sleep(Duration::from_millis(5));
    }
    let to_do = server.queue("tasks").expect("tasks");
    let done = server.queue("results").expect("results");
    seed_clock(&to_do, &done, tasks, batch)
}

/// `workers` `distq worker --connect addr` processes (with `--batch` if given), killed on drop.
fn spawn_workers(addr: &str, workers: usize, batch: Option<usize>) -> Vec<Reaped> {
    (0..workers)
        .map(|_| {
            let mut cmd = distq_command();
            cmd.args(["worker", "--connect", addr, "--idle-exit", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(b) = batch {
                cmd.args(["--batch", &b.to_string()]);
            }
            Reaped(cmd.spawn().expect("spawn worker"))
        })
        .collect()
}

/// The master's side of the seed workload on `to_do` and `done`, workers in place: puts
/// `tasks` integers (one request each with `batch` `Some(1)`, else in batches), takes every
/// answer; the rate from the first put to the last result.
fn seed_clock(
    to_do: &distq::Queue<Task>,
    done: &distq::Queue<TaskResult>,
    tasks: usize,
    batch: Option<usize>,
) -> f64 {
    let all: Vec<Task> = (0..tasks as u64)
        .map(|id| Task {
            run: 1,
            id,
            job: Job::Square {
                n: (id % 10_001) as i64,
            },
            plain: false,
        })
        .collect();
    let start = Instant::now();
    match batch {
        Some(1) => all.iter().for_each(|t| to_do.put(t).expect("put")),
        _ => to_do.put_many(&all).expect("put_many"),
    }
    let mut got = 0;
    while got < tasks {
        got += done
            .get_many(4096, Duration::from_secs(30))
            .expect("results")
            .len();
    }
    tasks as f64 / start.elapsed().as_secs_f64()
}

fn python_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The same workload on Python's BaseManager (benches/python_peer.py), in tasks/s: on its
/// own server, or with `address` on the manager there (distq's Python listener).
fn python_seed(tasks: usize, workers: usize, address: Option<&str>) -> Option<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python_peer.py");
    let out = Command::new("python3")
        .args([
            script,
            "--tasks",
            &tasks.to_string(),
            "--workers",
            &workers.to_string(),
        ])
        .args(address.map(|a| ["--address", a]).into_iter().flatten())
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    value["tasks_per_s"].as_f64()
}

/// A `distq serve` process and its address.
fn serve() -> (Reaped, SocketAddr) {
    let (child, addr, _) = journal::serve_logged(&[]);
    (child, addr)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The server's resident memory per queued task, and the encoded payload size.
fn queued_memory(n: usize) -> (f64, usize) {
    let (server, addr) = serve();
    let client = Client::connect(addr, KEY).expect("connect");
    let q = client
        .queue::<serde_bytes::ByteBuf>("tasks")
        .expect("queue");
    let task = serde_bytes::ByteBuf::from(vec![0x5Au8; 16]);
    let payload = 17; // CBOR: a one-byte header, then the 16 bytes
    let before = rss_kib(server.0.id());
    let chunk = vec![task; 10_000];
    for _ in 0..n / chunk.len() {
        q.put_many(&chunk).expect("put_many");
    }
    assert_eq!(q.len().expect("len"), n / chunk.len() * chunk.len());
    let after = rss_kib(server.0.id());
    (
        (after.saturating_sub(before) * 1024) as f64 / n as f64,
        payload,
    )
}

struct Idle {
    rss_mib: f64,
    busy_before: f64,
    busy_after: f64,
}

/// The server's memory for `n` idle authenticated connections, and a busy client's rate
/// before and beside them.
fn idle_connections(n: usize, pairs: usize) -> Idle {
    let (server, addr) = serve();
    let busy = Client::connect(addr, KEY).expect("connect");
    let q = busy.queue::<u64>("tasks").expect("queue");
    round_trips_on(&q, pairs / 4); // warm up
    let busy_before = round_trips_on(&q, pairs).rate;
    let before = rss_kib(server.0.id());
    let quiet = ClientConfig::default().auto_touch(false);
    let idle: Vec<Client> = (0..n)
        .map(|_| {
            Client::builder()
                .config(quiet.clone())
                .connect(addr, KEY)
                .expect("idle connect")
        })
        .collect();
    let after = rss_kib(server.0.id());
    let busy_after = round_trips_on(&q, pairs).rate;
    drop(idle);
    Idle {
        rss_mib: after.saturating_sub(before) as f64 / 1024.0,
        busy_before,
        busy_after,
    }
}
