//! `distq submit` as an operator runs it: inputs in, each task's output out, a joblog, the
//! exit status counting failures, `--resume` after the submitter was killed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use distq::exec::{ResultRecord, Status, TaskRecord};
use distq::{Client, GetError, Server};

use crate::support::{distq, init_test_log, wait_until, ChildGuard, Finished, KEY};

const LIMIT: Duration = Duration::from_secs(60);

fn server() -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .bind("127.0.0.1:0")
        .expect("bind a loopback port")
}

fn submit(server: &Server, args: &[&str], input: Vec<u8>) -> ChildGuard {
    let addr = server.local_addr().to_string();
    let mut cmd = distq();
    cmd.args(["submit", "--connect", &addr])
        .args(args)
        .env("DISTQ_AUTHKEY", KEY);
    ChildGuard::spawn_with_stdin("submit", &mut cmd, input)
}

fn lines(n: usize) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A worker written with the library, so submit is tested on its own: it answers each task
/// with `f(task)`, taking tasks until `stop`.
fn library_worker(
    server: &Server,
    stop: &Arc<AtomicBool>,
    f: impl Fn(&TaskRecord) -> ResultRecord + Send + 'static,
) -> thread::JoinHandle<()> {
    let addr = server.local_addr();
    let stop = Arc::clone(stop);
    thread::spawn(move || {
        let client = Client::connect(addr, KEY).unwrap();
        let tasks = client.queue::<TaskRecord>("tasks").unwrap();
        let mut replies = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let d = match tasks.reserve_timeout(Duration::from_millis(50)) {
                Ok(d) => d,
                Err(GetError::Empty) => continue,
                Err(e) => panic!("worker: {e}"),
            };
            let to = d.item().reply_to.clone().expect("submit asks for results");
            let q = replies
                .entry(to.clone())
                .or_insert_with(|| client.queue::<ResultRecord>(&to).unwrap());
            q.put(f(d.item())).unwrap();
            d.ack().unwrap();
        }
    })
}

fn echo(task: &TaskRecord) -> ResultRecord {
    let mut r = ResultRecord::for_task(task, Status::Ok);
    r.exit_code = Some(0);
    r.stdout = [&task.input[..], b"\n"].concat();
    r.stdout_bytes = r.stdout.len() as u64;
    r.worker = "test/1/0".into();
    r
}

fn finished(child: ChildGuard) -> Finished {
    child.wait_output(LIMIT)
}

#[test]
fn keep_order_prints_outputs_in_input_order() {
    let server = server();
    let stop = Arc::new(AtomicBool::new(false));
    // Two workers, one slow on even inputs, so results come back out of order.
    let workers: Vec<_> = (0..2)
        .map(|_| {
            library_worker(&server, &stop, |t| {
                if t.seq % 7 == 0 {
                    thread::sleep(Duration::from_millis(2));
                }
                echo(t)
            })
        })
        .collect();
    let out = finished(submit(&server, &["-k"], lines(1000)));
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.as_bytes(), &lines(1000)[..]);
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
}

#[test]
fn two_submitters_at_once_each_get_only_their_own_results() {
    let server = server();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = library_worker(&server, &stop, echo);
    let a = submit(
        &server,
        &[],
        (1..=300)
            .map(|i| format!("a{i}\n"))
            .collect::<String>()
            .into_bytes(),
    );
    let b = submit(
        &server,
        &[],
        (1..=300)
            .map(|i| format!("b{i}\n"))
            .collect::<String>()
            .into_bytes(),
    );
    let (a, b) = (finished(a), finished(b));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    for (out, prefix) in [(&a, 'a'), (&b, 'b')] {
        assert!(out.status.success(), "{}", out.stderr);
        let mut got: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(got.len(), 300, "{prefix}: {}", out.stdout);
        assert!(
            got.iter().all(|l| l.starts_with(prefix)),
            "{prefix} saw another's results"
        );
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 300, "each output once");
    }
    // Their results queues went with them.
    assert!(wait_until(Duration::from_secs(20), || server
        .stats()
        .queues
        .iter()
        .all(|q| !q.temporary)));
}

#[test]
fn the_exit_status_counts_failed_tasks_and_the_joblog_has_a_line_each() {
    let server = server();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = library_worker(&server, &stop, |t| {
        let mut r = echo(t);
        if t.input.starts_with(b"bad") {
            r.status = Status::Failed;
            r.exit_code = Some(65);
            r.stderr = b"no such user\n".to_vec();
        }
        r
    });
    let dir = std::env::temp_dir().join(format!("distq-submit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let joblog = dir.join("jobs.log");
    let out = finished(submit(
        &server,
        &["--joblog", joblog.to_str().unwrap()],
        b"ok1\nbad1\nok2\nbad2\nbad3\n".to_vec(),
    ));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("no such user"),
        "the task's stderr is shown: {}",
        out.stderr
    );
    assert!(out.stderr.contains("exit status 65"), "{}", out.stderr);
    let log = std::fs::read_to_string(&joblog).unwrap();
    let rows: Vec<Vec<&str>> = log
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 5, "{log}");
    assert_eq!(
        rows.iter().filter(|r| r[11] == "failed").count(),
        3,
        "{log}"
    );
    assert!(
        rows.iter()
            .any(|r| r[8] == "bad2" && r[6] == "65" && r[1] == "test"),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn per_task_timeout_and_retries_travel_in_the_task() {
    let server = server();
    let tasks = server.queue::<TaskRecord>("tasks").unwrap();
    let child = submit(
        &server,
        &["--timeout", "2.5", "--retries", "4"],
        b"x\n".to_vec(),
    );
    let mut task = None;
    assert!(wait_until(LIMIT, || {
        task = tasks.try_get().ok();
        task.is_some()
    }));
    let task = task.unwrap();
    assert_eq!((task.timeout_ms, task.retries), (Some(2500), Some(4)));
    let reply_to = task.reply_to.clone().unwrap();
    assert!(reply_to.starts_with("r."), "{reply_to}");
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    client
        .queue::<ResultRecord>(&reply_to)
        .unwrap()
        .put(echo(&task))
        .unwrap();
    let out = finished(child);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "x\n");
}

#[test]
fn resume_after_the_submitter_was_killed_finishes_the_batch() {
    let server = server();
    let stop = Arc::new(AtomicBool::new(false));
    let dir = std::env::temp_dir().join(format!("distq-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let joblog = dir.join("jobs.log");
    let log_arg = joblog.to_str().unwrap().to_owned();
    let worker = library_worker(&server, &stop, |t| {
        thread::sleep(Duration::from_millis(5));
        echo(t)
    });
    let first = submit(&server, &["--joblog", &log_arg, "-k"], lines(400));
    let count = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert!(wait_until(LIMIT, || count(&joblog) > 50));
    first.signal("KILL");
    let killed = finished(first);
    assert!(!killed.status.success());
    let done_before = count(&joblog) - 1;
    assert!(done_before < 400, "killed before the end");

    let out = finished(submit(
        &server,
        &["--joblog", &log_arg, "--resume", "-k"],
        lines(400),
    ));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    // The resumed run prints the outputs the first did not get to, in order: between them,
    // every output was printed.
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert!(
        printed.len() <= 400 - done_before + 1,
        "{} printed",
        printed.len()
    );
    let mut all: Vec<u32> = killed
        .stdout
        .lines()
        .chain(out.stdout.lines())
        .filter_map(|l| l.parse().ok())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all, (1..=400).collect::<Vec<u32>>(), "no output lost");
    assert!(
        printed.len() <= 400 - done_before + 1,
        "{} printed",
        printed.len()
    );
    let log = std::fs::read_to_string(&joblog).unwrap();
    let mut ok_ids: Vec<&str> = log
        .lines()
        .skip(1)
        .filter(|l| l.split('\t').nth(11) == Some("ok"))
        .filter_map(|l| l.split('\t').nth(9))
        .collect();
    ok_ids.sort();
    ok_ids.dedup();
    assert_eq!(
        ok_ids.len(),
        400,
        "every task finished once between the two runs"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keep_order_holds_later_outputs_unacknowledged_until_printed() {
    let server = server();
    let stop = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    // Two workers; whichever takes the first input holds it until the test lets it go.
    let gated = |gate: Arc<AtomicBool>| {
        move |t: &TaskRecord| {
            while t.seq == 1 && !gate.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(5));
            }
            echo(t)
        }
    };
    let worker = library_worker(&server, &stop, gated(Arc::clone(&release)));
    let others = library_worker(&server, &stop, gated(Arc::clone(&release)));
    let dir = std::env::temp_dir().join(format!("distq-held-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let joblog = dir.join("jobs.log");
    let log_arg = joblog.to_str().unwrap().to_owned();
    let first = submit(
        &server,
        &["-k", "--max-in-flight", "10", "--joblog", &log_arg],
        lines(50),
    );
    // At most 10 out, the first among them, so the others' results wait unacknowledged.
    let tasks = server.queue::<TaskRecord>("tasks").unwrap();
    assert!(wait_until(LIMIT, || server
        .stats()
        .queues
        .iter()
        .any(|q| q.temporary && q.leased == 9)));
    assert_eq!(tasks.len().unwrap(), 0, "no more than --max-in-flight put");
    let logged = std::fs::read_to_string(&joblog).unwrap();
    assert_eq!(logged.lines().count(), 1, "only the header: {logged}");
    first.signal("INT");
    let killed = finished(first);
    assert_eq!(killed.status.code(), Some(130), "{}", killed.stderr);
    assert_eq!(killed.stdout, "");
    release.store(true, Ordering::Relaxed);
    let out = finished(submit(
        &server,
        &["-k", "--joblog", &log_arg, "--resume"],
        lines(50),
    ));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    others.join().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout.as_bytes(),
        &lines(50)[..],
        "every output, in order"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigint_stops_a_run_saying_how_far_it_got_and_how_to_resume() {
    let server = server();
    let dir = std::env::temp_dir().join(format!("distq-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let joblog = dir.join("jobs.log");
    // No worker: the tasks stay out, the run waits for them.
    let child = submit(&server, &["--joblog", joblog.to_str().unwrap()], lines(5));
    let tasks = server.queue::<TaskRecord>("tasks").unwrap();
    assert!(wait_until(LIMIT, || tasks.len().unwrap() == 5));
    child.wait_for_stderr("no worker is taking tasks from tasks yet", LIMIT);
    child.signal("INT");
    let out = finished(child);
    assert_eq!(out.status.code(), Some(130), "{}", out.stderr);
    assert!(
        out.stderr.contains("interrupted by SIGINT"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("0 task(s) done, 5 put"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--resume"), "{}", out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reader_that_goes_away_ends_the_run_quietly() {
    let server = server();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = library_worker(&server, &stop, |t| {
        let mut r = echo(t);
        r.stdout = vec![b'x'; 64 << 10];
        r
    });
    // stdout into a pipe nobody reads past the first bytes, as `| head -c 1` does.
    let addr = server.local_addr().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distq"))
        .args(["submit", "--connect", &addr])
        .env("DISTQ_AUTHKEY", KEY)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::{Read, Write};
        child.stdin.take().unwrap().write_all(&lines(200)).unwrap();
        let mut first = [0u8; 1];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The pipe's read end closes here.
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn a_full_bounded_queue_does_not_make_the_run_deaf_to_signals() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .bounded_queue("tasks", 5)
        .bind("127.0.0.1:0")
        .expect("bind a loopback port");
    let child = submit(&server, &[], lines(100));
    let tasks = server.queue::<TaskRecord>("tasks").unwrap();
    assert!(wait_until(LIMIT, || tasks.len().unwrap() == 5));
    child.signal("TERM");
    let out = finished(child);
    assert_eq!(out.status.code(), Some(130), "{}", out.stderr);
    assert!(
        out.stderr.contains("interrupted by SIGTERM"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_input_that_repeats_an_id_is_refused() {
    let server = server();
    let out = finished(submit(
        &server,
        &["--jsonl"],
        b"{\"id\":\"a\",\"input\":\"1\"}\n{\"id\":\"a\",\"input\":\"2\"}\n".to_vec(),
    ));
    assert_eq!(out.status.code(), Some(255), "{}", out.stderr);
    assert!(out.stderr.contains("repeats the id"), "{}", out.stderr);
}

/// A real `distq worker --exec` process on `server`.
fn exec_worker(server: &Server, args: &[&str]) -> ChildGuard {
    let addr = server.local_addr().to_string();
    ChildGuard::spawn(
        "worker",
        distq()
            .args(["worker", "--connect", &addr, "--backoff", "0.1..0.2"])
            .args(args)
            .env("DISTQ_AUTHKEY", KEY),
    )
}

#[test]
fn keep_order_over_two_real_exec_workers() {
    let server = server();
    let _a = exec_worker(&server, &["--concurrency", "2", "--exec", "cat"]);
    let _b = exec_worker(
        &server,
        &[
            "--concurrency",
            "2",
            "--sh",
            "read n; case $n in *[05]) sleep 0.01;; esac; echo $n",
        ],
    );
    let out = finished(submit(&server, &["-k"], lines(1000)));
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.as_bytes(), &lines(1000)[..]);
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
}

#[test]
fn a_worker_killed_mid_command_still_leaves_the_run_complete() {
    let server = server();
    let dir = std::env::temp_dir().join(format!("distq-killed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The first attempt at input 3 announces itself, then hangs until its worker is killed.
    let flag = dir.join("started");
    let script = format!(
        "read n; if [ \"$n\" = 3 ] && [ \"$DISTQ_REDELIVERIES\" = 0 ]; then touch {}; sleep 60; fi; echo \"out $n\"",
        flag.display()
    );
    let doomed = exec_worker(&server, &["--sh", &script]);
    let child = submit(&server, &["-k"], lines(5));
    assert!(wait_until(LIMIT, || flag.exists()), "input 3 started");
    doomed.signal("KILL");
    drop(doomed);
    let _rescuer = exec_worker(&server, &["--sh", &script]);
    let out = finished(child);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "out 1\nout 2\nout 3\nout 4\nout 5\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_task_the_server_dead_lettered_ends_the_run_as_lost_instead_of_a_hang() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .queue_with("tasks", distq::QueueConfig::default().max_redeliveries(0))
        .bind("127.0.0.1:0")
        .expect("bind a loopback port");
    let child = submit(&server, &["-k"], b"doomed\n".to_vec());
    // A worker takes the task and fails it: with no redeliveries allowed, the server moves
    // it to tasks.dead, and no result will ever come.
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let tasks = client.queue::<TaskRecord>("tasks").unwrap();
    tasks.reserve_timeout(LIMIT).unwrap().nack().unwrap();
    let dead = server.queue::<TaskRecord>("tasks.dead").unwrap();
    assert!(wait_until(LIMIT, || dead.len().unwrap() == 1));
    let out = finished(child);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one task failed: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("no longer on the server"),
        "{}",
        out.stderr
    );
}
