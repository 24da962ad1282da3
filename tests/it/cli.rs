//! The `distq` binary as an operator runs it: master and workers as separate processes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, Error, GetError};

use crate::support::raw::{Cbor, Raw};
use crate::support::{assert_success, distq, ChildGuard};

const SECS_30: Duration = Duration::from_secs(30);

fn master(args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "master",
        distq()
            .args(["master", "--bind", "127.0.0.1:0", "--authkey", "abc"])
            .args(args),
    )
}

fn worker(addr: &str, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "worker",
        distq()
            .args(["worker", "--connect", addr, "--idle-exit", "2"])
            .env("DISTQ_AUTHKEY", "abc")
            .args(args),
    )
}

fn nqueens(n: u32, workers: usize) -> String {
    let master = master(&["--job", "nqueens", "--n", &n.to_string(), "--timeout", "60"]);
    let addr = master.listening_addr().to_string();
    let workers: Vec<_> = (0..workers)
        .map(|_| worker(&addr, &["--concurrency", "2", "--give-up", "5"]))
        .collect();
    let out = master.wait_output(SECS_30);
    assert_success("master", &out);
    for w in workers {
        // Workers leave on their own, idle after the master has gone. One that started after
        // the job was done waits for a master until --give-up: that is not under test here.
        w.wait_output(SECS_30);
    }
    out.stdout.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn smoke() {
    let out = ChildGuard::spawn("help", distq().arg("--help")).wait_output(SECS_30);
    assert_success("--help", &out);
    assert!(out.stdout.contains("master") && out.stdout.contains("worker"));
}

#[test]
fn nqueens_8_is_92() {
    assert_eq!(nqueens(8, 2), "solutions: 92");
}

#[test]
fn nqueens_10_is_724() {
    assert_eq!(nqueens(10, 2), "solutions: 724");
}

#[test]
fn squares_master_prints_every_square() {
    let master = master(&["--job", "squares", "--count", "10"]);
    let addr = master.listening_addr().to_string();
    let w = worker(&addr, &[]);
    let out = master.wait_output(SECS_30);
    assert_success("master", &out);
    let puts: Vec<i64> = out
        .stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Put task ")?
                .strip_suffix("...")?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(puts.len(), 10, "{}", out.stdout);
    let mut results: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Result: "))
        .map(String::from)
        .collect();
    let mut want: Vec<String> = puts
        .iter()
        .map(|n| format!("{n} * {n} = {}", n * n))
        .collect();
    results.sort();
    want.sort();
    assert_eq!(results, want);
    assert_success("worker", &w.wait_output(SECS_30));
}

/// `make demo`'s shape: the master finishes, shuts its server down and the workers, idle,
/// leave on `--idle-exit` with exit 0 ("connected or not", says the README), even the threads
/// that had nothing in hand when the server went away.
#[test]
fn workers_idle_after_the_master_finished_exit_0() {
    let master = master(&["--job", "squares", "--count", "2"]);
    let addr = master.listening_addr().to_string();
    // More threads than tasks: some never hold a result when the master goes.
    let w = worker(&addr, &["--concurrency", "4"]);
    assert_success("master", &master.wait_output(SECS_30));
    let out = w.wait_output(SECS_30);
    assert_success("worker", &out);
    assert!(!out.stderr.contains("distq: error"), "{}", out.stderr);
}

/// Logs are for people: a run that succeeds prints no warning, also when the master shuts
/// its server down under workers that hold results (their last fused get was answered
/// `closed` after storing them) or wait in a get.
#[test]
fn a_successful_run_prints_no_warning() {
    let master = master(&["--job", "nqueens", "--n", "12", "--timeout", "60"]);
    let addr = master.listening_addr().to_string();
    let workers: Vec<_> = (0..2)
        .map(|_| worker(&addr, &["--concurrency", "2"]))
        .collect();
    let out = master.wait_output(SECS_30);
    assert_success("master", &out);
    assert_eq!(out.stdout.lines().last(), Some("solutions: 14200"));
    assert!(!out.stderr.contains("WARN"), "a warning:\n{}", out.stderr);
    for w in workers {
        let log = w.wait_output(SECS_30).stderr;
        assert!(
            !log.contains("WARN"),
            "a warning in a successful run:\n{log}"
        );
        assert!(!log.contains("may not have been stored"), "{log}");
        // One line per process for the master leaving, not one per thread or connection.
        assert_eq!(log.matches("has gone").count(), 1, "{log}");
        assert!(!log.contains("closed the connection"), "{log}");
        assert_eq!(log.matches("no task for").count(), 1, "{log}");
    }
}

/// A free loopback port for a child to take later, below Linux's ephemeral range (32768 and
/// up): other tests binding port 0 meanwhile cannot be given it.
fn free_port() -> u16 {
    // A different start per run and process, so parallel runs do not all try the same one.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    (0..2000)
        .map(|i| 20_000 + ((start + i) % 12_000) as u16)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port between 20000 and 32000")
}

/// Workers are often started first (a service manager, a cluster job): one waits, quietly,
/// for its master, then does the job; its `--idle-exit` counts from the connection only.
#[test]
fn a_worker_started_before_its_master_waits_for_it_and_does_the_job() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let w = worker(&addr, &["--concurrency", "2", "--give-up", "120"]);
    w.wait_for_stderr("waiting for the master at", SECS_30);
    // Longer than --idle-exit (2 s): idle time before the master came does not count.
    thread::sleep(Duration::from_secs(3));
    let mut w = w;
    assert!(
        w.running(),
        "left before its master came:\n{}",
        w.stderr_so_far()
    );
    let master = master_at(&format!(":{port}"), &["--job", "nqueens", "--n", "8"]);
    let out = master.wait_output(SECS_30);
    assert_success("master", &out);
    assert_eq!(out.stdout.lines().last(), Some("solutions: 92"));
    let out = w.wait_output(SECS_30);
    assert_success("worker", &out);
    assert_eq!(
        out.stderr.matches("waiting for the master").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("worker exit: 0 task(s)"),
        "{}",
        out.stderr
    );
}

fn master_at(bind: &str, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "master",
        distq()
            .args(["master", "--bind", bind, "--authkey", "abc"])
            .args(args),
    )
}

/// A master with no worker says how to start one, and Ctrl-C tells how far it got.
#[test]
fn a_master_without_workers_hints_and_says_how_far_it_got_on_ctrl_c() {
    let master = master(&["--job", "nqueens", "--n", "8", "--timeout", "600"]);
    let addr = master.listening_addr();
    let hint = master.wait_for_stderr("start one with", SECS_30);
    assert!(
        hint.contains(&format!("start one with: distq worker --connect {addr}")),
        "{hint}"
    );
    master.signal("INT");
    let out = master.wait_output(SECS_30);
    assert_eq!(out.status.code(), Some(130), "{}", out.stderr);
    assert!(out.stderr.contains("SIGINT"), "{}", out.stderr);
    assert!(out.stderr.contains("0 of 42 results"), "{}", out.stderr);
}

#[test]
fn addresses_without_a_port_say_expected_host_port() {
    for args in [
        &["serve", "--bind", "5000"][..],
        &["master", "--bind", "5000", "--job", "squares"],
        &["worker", "--connect", "127.0.0.1"],
        &["stats", "--connect", "127.0.0.1"],
    ] {
        let out = ChildGuard::spawn("distq", distq().args(args).args(["--authkey", "k"]))
            .wait_output(SECS_30);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            out.stderr.contains("expected HOST:PORT"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// `:PORT` is all interfaces for `--bind` and this machine for `--connect`.
#[test]
fn a_bare_colon_port_binds_all_interfaces_and_connects_locally() {
    let serve = ChildGuard::spawn(
        "serve",
        distq().args(["serve", "--bind", ":0", "--authkey", "k"]),
    );
    let addr = serve.listening_addr();
    assert!(addr.ip().is_unspecified(), "{addr}");
    let out = ChildGuard::spawn(
        "stats",
        distq().args([
            "stats",
            "--connect",
            &format!(":{}", addr.port()),
            "--authkey",
            "k",
        ]),
    )
    .wait_output(SECS_30);
    assert_success("stats", &out);
    assert!(out.stderr.contains("using 127.0.0.1:"), "{}", out.stderr);
}

/// A key file in a fresh directory of its own, with `mode`.
fn key_file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("distq-it-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn an_authkey_file_is_read_without_its_newline_and_must_be_private() {
    let private = key_file("private", "s3cret\n", 0o600);
    let serve = ChildGuard::spawn(
        "serve",
        distq()
            .args(["serve", "--bind", "127.0.0.1:0", "--authkey-file"])
            .arg(&private),
    );
    let addr = serve.listening_addr();
    Client::connect(addr, "s3cret").expect("the key without its newline");
    let stats = ChildGuard::spawn(
        "stats",
        distq()
            .args(["stats", "--connect", &addr.to_string(), "--authkey-file"])
            .arg(&private),
    )
    .wait_output(SECS_30);
    assert_success("stats", &stats);
    let open = key_file("open", "s3cret\n", 0o644);
    let out = ChildGuard::spawn(
        "serve",
        distq()
            .args(["serve", "--bind", "127.0.0.1:0", "--authkey-file"])
            .arg(&open),
    )
    .wait_output(SECS_30);
    assert!(!out.status.success());
    let want = format!(
        "permissions 0644 for {0} are too open; chmod 600 {0}",
        open.display()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    let both = ChildGuard::spawn(
        "stats",
        distq()
            .args([
                "stats",
                "--connect",
                &addr.to_string(),
                "--authkey",
                "s3cret",
            ])
            .arg("--authkey-file")
            .arg(&private),
    )
    .wait_output(SECS_30);
    assert!(!both.status.success());
    assert!(
        both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
    for path in [private, open] {
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

/// A tiny HTTP server: it answers anything with a 400, as web servers do to bytes that are
/// not HTTP.
fn http_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    addr
}

#[test]
fn a_peer_that_is_not_a_distq_server_is_named_as_such() {
    let addr = http_server();
    let Err(err) = Client::connect(addr, "k") else {
        panic!("an HTTP server taken for a distq server");
    };
    assert!(matches!(err, Error::NotDistq { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("{addr} is not a distq server")),
        "{text}"
    );
    assert!(text.contains("\"HTTP\""), "{text}");
    let out = ChildGuard::spawn(
        "worker",
        distq().args(["worker", "--connect", &addr.to_string(), "--authkey", "k"]),
    )
    .wait_output(SECS_30);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("is not a distq server"),
        "{}",
        out.stderr
    );
}

/// A keepalive past the kernel's limits is refused up front, naming them, rather than
/// starting a server whose every connection fails.
#[test]
fn serve_refuses_keepalive_past_the_kernel_limits() {
    let out = ChildGuard::spawn(
        "serve",
        distq().args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--authkey",
            "abc",
            "--keepalive",
            "99999999,1,1",
        ]),
    )
    .wait_output(SECS_30);
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("32767"), "{}", out.stderr);
}

#[test]
fn master_without_workers_times_out_non_zero() {
    let out =
        master(&["--job", "squares", "--count", "3", "--timeout", "0.5"]).wait_output(SECS_30);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("timed out: 0 of 3 results"),
        "{}",
        out.stderr
    );
}

#[test]
fn worker_where_nothing_listens_exits_non_zero_saying_refused() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // It waits for a master first (quietly, one line), up to --give-up.
    let out = worker(&free.to_string(), &["--give-up", "1"]).wait_output(SECS_30);
    assert!(!out.status.success());
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
    assert!(
        out.stderr.contains("waiting for the master"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
}

#[test]
fn worker_with_the_wrong_key_exits_non_zero_saying_authentication_failed() {
    let master = master(&["--job", "squares", "--timeout", "20"]);
    let addr = master.listening_addr().to_string();
    let out = ChildGuard::spawn(
        "worker",
        distq().args(["worker", "--connect", &addr, "--authkey", "not-abc"]),
    )
    .wait_output(SECS_30);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("authentication failed"),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_authkey_is_a_clear_error() {
    let out = ChildGuard::spawn("serve", distq().args(["serve", "--bind", "127.0.0.1:0"]))
        .wait_output(SECS_30);
    assert!(!out.status.success());
    assert!(out.stderr.contains("no authkey"), "{}", out.stderr);
}

#[test]
fn serve_hosts_named_queues_and_stops_cleanly_on_sigterm() {
    let serve = ChildGuard::spawn(
        "serve",
        distq()
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--queue",
                "jobs",
                "--queue",
                "done:2",
            ])
            .env("DISTQ_AUTHKEY", "k"),
    );
    let client = Client::connect(serve.listening_addr(), "k").unwrap();
    let done = client.queue::<u8>("done").unwrap();
    assert_eq!(done.capacity().unwrap(), Some(2));
    client
        .queue::<String>("jobs")
        .unwrap()
        .put("x".to_string())
        .unwrap();
    assert!(
        client.queue::<u8>("tasks").is_err(),
        "only the named queues are hosted"
    );
    serve.signal("TERM");
    let out = serve.wait_output(SECS_30);
    assert_success("serve", &out);
    assert!(out.stderr.contains("shutting down"), "{}", out.stderr);
}

#[test]
fn stats_prints_a_table_and_json() {
    let serve = ChildGuard::spawn(
        "serve",
        distq()
            .args(["serve", "--bind", "127.0.0.1:0", "--queue", "jobs:5"])
            .env("DISTQ_AUTHKEY", "k"),
    );
    let addr = serve.listening_addr().to_string();
    let client = Client::connect(&addr, "k").unwrap();
    client
        .queue::<u8>("jobs")
        .unwrap()
        .put_many([1, 2])
        .unwrap();
    let stats = |json: &[&str]| {
        let out = ChildGuard::spawn(
            "stats",
            distq()
                .args(["stats", "--connect", &addr, "--authkey", "k"])
                .args(json),
        )
        .wait_output(SECS_30);
        assert_success("stats", &out);
        out.stdout
    };
    let table = stats(&[]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..6], ["jobs", "2", "0", "0", "5", "0"], "{table}");
    assert!(table.contains("connections: 2"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&stats(&["--json"])).unwrap();
    assert_eq!(json["queues"][0]["name"], "jobs");
    assert_eq!(json["queues"][0]["len"], 2);
    assert_eq!(json["queues"][0]["capacity"], 5);
}

/// What a client outside the built-in jobs sees of a task: its run and id (serde skips `j`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TaskId {
    r: u64,
    i: u64,
}

#[test]
fn a_master_whose_tasks_are_dead_lettered_stops_at_once_saying_why() {
    let started = Instant::now();
    let master = master(&[
        "--job",
        "nqueens",
        "--n",
        "8",
        "--split-depth",
        "1",
        "--max-redeliveries",
        "1",
        "--timeout",
        "600",
    ]);
    let addr = master.listening_addr();
    // A worker that takes tasks and hands every one back (nack) until the master is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let refuser = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let client = Client::connect(addr, "abc").unwrap();
            let tasks = client.queue::<TaskId>("tasks").unwrap();
            while !stop.load(Ordering::SeqCst) {
                match tasks.reserve_timeout(Duration::from_millis(200)) {
                    Ok(task) => {
                        if task.nack().is_err() {
                            break;
                        }
                    }
                    Err(GetError::Empty) => {}
                    Err(GetError::Failed(_)) => break, // the master has gone
                }
            }
        })
    };
    let out = master.wait_output(Duration::from_secs(60));
    stop.store(true, Ordering::SeqCst);
    refuser.join().unwrap();
    let took = started.elapsed();
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        took < Duration::from_secs(120),
        "the master waited {took:?}, towards its --timeout"
    );
    let error = out
        .stderr
        .lines()
        .find(|l| l.starts_with("distq: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", out.stderr));
    let count: usize = error
        .split_once("distq: error: ")
        .and_then(|(_, rest)| rest.split_once(" task(s) moved to tasks.dead"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of dead-lettered tasks: {error}"));
    assert!((1..=8).contains(&count), "{error}");
    for needle in [
        "more than 1 time(s) (--max-redeliveries 1)",
        "cannot complete",
        "task ",
        "Nqueens",
        "distq stats --connect",
        "NAME.dead",
    ] {
        assert!(error.contains(needle), "no {needle:?} in: {error}");
    }
}

#[test]
fn a_malformed_result_is_logged_and_ignored_and_the_run_goes_on() {
    let master = master(&["--job", "nqueens", "--n", "8", "--timeout", "60"]);
    let addr = master.listening_addr();
    // In one put, so all three are in before the master meets the first: a plain string, a
    // map with the wrong fields, and bytes that are not CBOR at all.
    let wrong = Cbor::Map(vec![
        (Cbor::Text("x".into()), Cbor::Uint(1)),
        (Cbor::Text("y".into()), Cbor::Text("wrong fields".into())),
    ]);
    let mut raw = Raw::authenticated(addr, "abc");
    raw.send(&Cbor::variant(
        "put",
        vec![
            ("queue", Cbor::Text("results".into())),
            (
                "items",
                Cbor::Array(vec![
                    Cbor::Bytes(Cbor::Text("not a result".into()).encode()),
                    Cbor::Bytes(wrong.encode()),
                    Cbor::Bytes(vec![0x1C]),
                ]),
            ),
        ],
    ));
    let reply = raw.recv().expect("a reply to the put");
    assert_eq!(reply.tag(), Some("done"), "{reply:?}");
    let w = worker(&addr.to_string(), &["--concurrency", "2"]);
    let out = master.wait_output(SECS_30);
    assert_success("master", &out);
    assert_eq!(
        out.stdout.lines().last(),
        Some("solutions: 92"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stderr.matches("not a distq task result").count(),
        2,
        "one warning per stray result:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("moved to results.dead"),
        "the one that is not CBOR ends in the dead letters:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("wrong fields"),
        "no payload in the log"
    );
    w.wait_output(SECS_30);
}
