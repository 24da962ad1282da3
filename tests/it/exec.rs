//! `distq worker --exec` / `--sh` as an operator runs it: a real worker process runs real
//! commands for task records put with the library; results and dead letters are read back
//! from the server the test hosts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use distq::exec::{Reason, ResultRecord, Status, TaskRecord};
use distq::{Client, Server};

use crate::support::{distq, init_test_log, wait_until, ChildGuard, KEY};

const LIMIT: Duration = Duration::from_secs(30);

fn server() -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .queue("results")
        .bind("127.0.0.1:0")
        .expect("bind a loopback port")
}

/// A `distq worker` against `server` with `args` (the exec options last).
fn worker(server: &Server, args: &[&str]) -> ChildGuard {
    let addr = server.local_addr().to_string();
    let mut cmd = distq();
    cmd.args(["worker", "--connect", &addr])
        .args(args)
        .env("DISTQ_AUTHKEY", KEY);
    ChildGuard::spawn("worker", &mut cmd)
}

fn put(server: &Server, id: &str, input: &[u8]) -> TaskRecord {
    let mut task = TaskRecord::new(id, input);
    task.reply_to = Some("results".into());
    server
        .queue::<TaskRecord>("tasks")
        .unwrap()
        .put(&task)
        .unwrap();
    task
}

fn next_result(server: &Server) -> ResultRecord {
    server
        .queue::<ResultRecord>("results")
        .unwrap()
        .get_timeout(LIMIT)
        .expect("a result within the limit")
}

fn dead(server: &Server) -> Vec<TaskRecord> {
    let q = server.queue::<TaskRecord>("tasks.dead").unwrap();
    let mut out = Vec::new();
    while let Ok(t) = q.try_get() {
        out.push(t);
    }
    out
}

/// A number no other process on the machine has in its command line: `sleep` takes it as
/// seconds, and /proc shows whether any such process is left.
fn marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}.{}{}",
        7000 + N.fetch_add(1, Ordering::SeqCst),
        std::process::id(),
        N.load(Ordering::SeqCst)
    )
}

/// Like [`marker`], for a `sleep` of about a second.
fn short_marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "1.{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn tasks_len(server: &Server) -> usize {
    server.queue::<TaskRecord>("tasks").unwrap().len().unwrap()
}

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            String::from_utf8_lossy(cmdline)
                .split('\0')
                .any(|arg| arg == needle)
        })
        .count()
}

#[test]
fn exec_runs_a_command_with_the_input_on_stdin_and_in_braces() {
    let server = server();
    let task = put(&server, "job-1", b"a b;c");
    let _w = worker(
        &server,
        &[
            "--exec",
            "sh",
            "-c",
            r#"printf '%s|' "$1"; cat; printf '|%s|%s|%s|%s' "$DISTQ_TASK_ID" "$DISTQ_ATTEMPT" "${DISTQ_AUTHKEY-unset}" "$DISTQ_QUEUE""#,
            "sh",
            "{}",
        ],
    );
    let r = next_result(&server);
    assert_eq!(
        (r.id.as_str(), r.status, r.attempt),
        ("job-1", Status::Ok, 1)
    );
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "a b;c|a b;c\n|job-1|1|unset|tasks",
        "the input as one argument and on stdin (a line, so with its newline); the key is not passed on"
    );
    assert_eq!((r.exit_code, r.signal, r.redeliveries), (Some(0), None, 0));
    assert!(!r.stdout_truncated && r.worker.ends_with("/0"), "{r:?}");
    assert_eq!(r.seq, task.seq);
    assert!(
        !_w.stderr_so_far().contains("WARN"),
        "{}",
        _w.stderr_so_far()
    );
    let tasks = Client::connect(server.local_addr(), KEY).unwrap();
    assert!(
        wait_until(LIMIT, || {
            let s = tasks.stats().unwrap();
            let q = s.queues.iter().find(|q| q.name == "tasks").unwrap();
            q.len == 0 && q.leased == 0
        }),
        "the task is acknowledged once its result is stored"
    );
}

#[test]
fn a_failed_first_attempt_is_retried_after_a_backoff_and_then_succeeds() {
    let server = server();
    put(&server, "flaky", b"");
    let _w = worker(
        &server,
        &[
            "--backoff",
            "0.1..0.2",
            "--sh",
            r#"if [ "$DISTQ_ATTEMPT" = 1 ]; then echo not yet >&2; exit 3; fi; echo "ok $DISTQ_ATTEMPT""#,
        ],
    );
    let first = next_result(&server);
    assert_eq!(
        (first.status, first.reason, first.exit_code, first.attempt),
        (Status::Retrying, Some(Reason::Exit), Some(3), 1)
    );
    assert!(first.next_retry_ms.is_some() && !first.is_terminal());
    assert_eq!(String::from_utf8_lossy(&first.stderr), "not yet\n");
    let second = next_result(&server);
    assert_eq!((second.status, second.attempt), (Status::Ok, 2));
    assert_eq!(second.stdout, b"ok 2\n");
    assert!(dead(&server).is_empty());
}

#[test]
fn a_permanent_exit_status_goes_straight_to_the_dead_letters() {
    let server = server();
    put(&server, "bad", b"");
    let _w = worker(&server, &["--sh", "echo bad input >&2; exit 65"]);
    let r = next_result(&server);
    assert_eq!(
        (r.status, r.reason, r.exit_code, r.attempt),
        (Status::Failed, Some(Reason::Exit), Some(65), 1)
    );
    let mut dead_letters = Vec::new();
    assert!(wait_until(LIMIT, || {
        dead_letters.extend(dead(&server));
        !dead_letters.is_empty()
    }));
    let d = &dead_letters[0];
    assert_eq!((d.id.as_str(), d.attempt, d.history.len()), ("bad", 1, 1));
    let last = &d.history[0];
    assert_eq!((last.exit_code, last.reason), (Some(65), Reason::Exit));
    assert_eq!(last.stderr_tail, "bad input\n");
    assert_eq!(
        server.queue::<TaskRecord>("tasks").unwrap().len().unwrap(),
        0
    );
}

#[test]
fn a_task_out_of_retries_is_dead_lettered_with_its_history() {
    let server = server();
    put(&server, "doomed", b"");
    let _w = worker(
        &server,
        &[
            "--retries",
            "2",
            "--backoff",
            "0.05..0.1",
            "--sh",
            "echo try $DISTQ_ATTEMPT >&2; exit 75",
        ],
    );
    let statuses: Vec<(Status, u32)> = (0..3)
        .map(|_| next_result(&server))
        .map(|r| (r.status, r.attempt))
        .collect();
    assert_eq!(
        statuses,
        [
            (Status::Retrying, 1),
            (Status::Retrying, 2),
            (Status::Failed, 3)
        ]
    );
    let mut dead_letters = Vec::new();
    assert!(wait_until(LIMIT, || {
        dead_letters.extend(dead(&server));
        !dead_letters.is_empty()
    }));
    let d = &dead_letters[0];
    assert_eq!((d.attempt, d.history.len()), (3, 3));
    assert_eq!(d.history[2].exit_code, Some(75));
    assert_eq!(d.history[2].stderr_tail, "try 3\n");
}

#[test]
fn a_timeout_kills_the_whole_group_even_when_it_ignores_sigterm() {
    let server = server();
    let mark = marker();
    put(&server, "slow", b"");
    let script = format!("trap '' TERM; sleep {mark} & sleep {mark}; wait");
    let _w = worker(
        &server,
        &[
            "--timeout",
            "1",
            "--kill-after",
            "0.5",
            "--retries",
            "0",
            "--sh",
            &script,
        ],
    );
    assert!(
        wait_until(LIMIT, || processes_with(&mark) > 0),
        "the command started"
    );
    let r = next_result(&server);
    assert_eq!(
        (
            r.status,
            r.reason,
            r.timed_out,
            r.killed_by.as_deref(),
            r.signal
        ),
        (
            Status::Failed,
            Some(Reason::Timeout),
            true,
            Some("KILL"),
            Some(9)
        )
    );
    assert!(
        wait_until(LIMIT, || processes_with(&mark) == 0),
        "no process of the group is left"
    );
}

#[test]
fn a_worker_killed_mid_command_takes_its_commands_with_it_and_the_task_runs_again() {
    let server = server();
    let mark = marker();
    put(&server, "survivor", b"");
    // The first run never ends on its own; its grandchild is what must not outlive the worker.
    let script = format!(
        r#"if [ "$DISTQ_REDELIVERIES" = 0 ]; then sleep {mark} & wait; fi; echo "done $DISTQ_REDELIVERIES""#
    );
    let first = worker(&server, &["--sh", &script]);
    assert!(
        wait_until(LIMIT, || processes_with(&mark) > 0),
        "the command started"
    );
    first.signal("KILL");
    assert!(
        wait_until(Duration::from_secs(10), || processes_with(&mark) == 0),
        "the killed worker's command group is gone within a few seconds"
    );
    drop(first);
    let _second = worker(&server, &["--sh", &script]);
    let r = next_result(&server);
    assert_eq!(
        (r.id.as_str(), r.status, r.redeliveries),
        ("survivor", Status::Ok, 1)
    );
    assert_eq!(r.stdout, b"done 1\n");
}

#[test]
fn huge_output_is_capped_while_read_and_fails_the_task_for_good() {
    let server = server();
    put(&server, "chatty", b"");
    let _w = worker(
        &server,
        &[
            "--sh",
            "head -c 3000000 /dev/zero >&2; echo the end >&2; head -c 20000000 /dev/zero",
        ],
    );
    let r = next_result(&server);
    assert_eq!(
        (r.status, r.reason, r.exit_code),
        (Status::Failed, Some(Reason::OutputLimit), Some(0)),
        "the command ran to its end: never blocked on a full pipe"
    );
    assert_eq!(r.stdout_bytes, 20_000_000);
    assert!(r.stdout_truncated && r.stdout.len() <= 64 << 10);
    assert_eq!(r.stderr_bytes, 3_000_008);
    // 64 KiB kept, and the line marking where the rest was cut.
    let kept = r.stderr.len() as u64 - marker_len(&String::from_utf8_lossy(&r.stderr));
    assert_eq!(kept, 64 << 10);
    assert!(r.stderr_truncated && r.stderr.ends_with(b"the end\n"));
    assert_eq!(dead(&server).len(), 1);
}

#[test]
fn binary_output_comes_back_byte_for_byte() {
    let server = server();
    let input: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    put(&server, "bytes", &input);
    let _w = worker(&server, &["--exec", "cat"]);
    let r = next_result(&server);
    assert_eq!(r.status, Status::Ok);
    assert!(r.stdout == input, "stdout differs from the input");
    assert_eq!(r.stdout_bytes, input.len() as u64);
}

#[test]
fn a_missing_program_gives_the_task_back_and_stops_the_worker_with_127() {
    let server = server();
    put(&server, "waiting", b"");
    let out = worker(&server, &["--exec", "/nonexistent/distq-test-program"]).wait_output(LIMIT);
    assert_eq!(out.status.code(), Some(127), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot run /nonexistent/distq-test-program"),
        "{}",
        out.stderr
    );
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let task = client
        .queue::<TaskRecord>("tasks")
        .unwrap()
        .reserve_timeout(LIMIT)
        .expect("the task is still queued");
    assert_eq!(task.redeliveries(), 0, "not counted against the task");
    task.give_back().unwrap();
    assert!(dead(&server).is_empty());
}

#[test]
fn bare_items_run_as_input_and_an_unknown_record_version_is_dead_lettered() {
    let server = server();
    let raw = server.queue::<serde_bytes::ByteBuf>("tasks").unwrap();
    raw.put(serde_bytes::ByteBuf::from(b"raw bytes".to_vec()))
        .unwrap();
    server.queue::<u32>("tasks").unwrap().put(7).unwrap();
    let mut future = TaskRecord::new("from-the-future", "x");
    future.v = 9;
    server
        .queue::<TaskRecord>("tasks")
        .unwrap()
        .put(&future)
        .unwrap();
    let _w = worker(&server, &["--results-queue", "results", "--exec", "cat"]);
    let bytes = next_result(&server);
    assert_eq!(
        (bytes.status, &bytes.stdout[..]),
        (Status::Ok, &b"raw bytes\n"[..])
    );
    assert!(!bytes.id.is_empty(), "an id is made up for bare input");
    let json = next_result(&server);
    assert_eq!((json.status, &json.stdout[..]), (Status::Ok, &b"7\n"[..]));
    let bad = next_result(&server);
    assert_eq!(
        (bad.id.as_str(), bad.status, bad.reason),
        ("from-the-future", Status::Failed, Some(Reason::BadTask))
    );
    let mut dead_count = 0;
    assert!(wait_until(LIMIT, || {
        dead_count += server
            .queue::<TaskRecord>("tasks.dead")
            .unwrap()
            .try_get()
            .is_ok() as usize;
        dead_count == 1
    }));
}

#[test]
fn expired_and_often_lost_tasks_are_reported_without_running() {
    let server = server();
    let mut expired = TaskRecord::new("stale", "");
    expired.reply_to = Some("results".into());
    expired.expire_ms = Some(1);
    let tasks = server.queue::<TaskRecord>("tasks").unwrap();
    tasks.put(&expired).unwrap();
    put(&server, "cursed", b"");
    // Three workers lost it (three failed deliveries), past --max-lost 2.
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let remote = client.queue::<TaskRecord>("tasks").unwrap();
    let stale = remote.reserve_timeout(LIMIT).unwrap();
    for _ in 0..3 {
        remote.reserve_timeout(LIMIT).unwrap().nack().unwrap();
    }
    stale.nack().unwrap(); // back in front; its one redelivery is within --max-lost
    drop(remote);
    let _w = worker(&server, &["--max-lost", "2", "--sh", "echo ran"]);
    let mut results: Vec<ResultRecord> = (0..2).map(|_| next_result(&server)).collect();
    results.sort_by(|a, b| a.id.cmp(&b.id));
    let (cursed, stale) = (&results[0], &results[1]);
    assert_eq!((cursed.status, cursed.redeliveries), (Status::Lost, 3));
    assert_eq!(
        (stale.status, stale.reason),
        (Status::Expired, Some(Reason::Expired))
    );
    assert!(
        cursed.stdout.is_empty() && stale.stdout.is_empty(),
        "neither ran"
    );
    let mut dead_letters = Vec::new();
    assert!(wait_until(LIMIT, || {
        dead_letters.extend(dead(&server));
        !dead_letters.is_empty()
    }));
    assert_eq!(dead_letters[0].id, "cursed");
    assert_eq!(dead_letters[0].history[0].reason, Reason::Lost);
}

#[test]
fn a_result_for_a_queue_that_is_gone_is_dropped_and_the_worker_goes_on() {
    let server = server();
    let mut orphan = TaskRecord::new("orphan", "");
    orphan.reply_to = Some("r.gone".into());
    server
        .queue::<TaskRecord>("tasks")
        .unwrap()
        .put(&orphan)
        .unwrap();
    put(&server, "next", b"");
    let w = worker(&server, &["--exec", "true"]);
    let r = next_result(&server);
    assert_eq!((r.id.as_str(), r.status), ("next", Status::Ok));
    w.wait_for_stderr("result of task orphan dropped", LIMIT);
    assert!(!w.stderr_so_far().contains("WARN"), "{}", w.stderr_so_far());
    assert_eq!(tasks_len(&server), 0);
}

#[test]
fn the_first_signal_lets_the_running_command_finish_and_takes_no_more() {
    let server = server();
    let mark = short_marker();
    put(&server, "one", b"");
    put(&server, "two", b"");
    let w = worker(&server, &["--sh", &format!("sleep {mark}; echo finished")]);
    assert!(
        wait_until(LIMIT, || processes_with(&mark) > 0),
        "the command started"
    );
    w.signal("TERM");
    let out = w.wait_output(LIMIT);
    assert!(out.status.success(), "{:?}\n{}", out.status, out.stderr);
    let r = next_result(&server);
    assert_eq!(
        (r.id.as_str(), r.status, &r.stdout[..]),
        ("one", Status::Ok, &b"finished\n"[..])
    );
    assert_eq!(tasks_len(&server), 1, "the second task was not taken");
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
}

#[test]
fn the_same_signal_twice_at_once_is_one_request_to_stop() {
    let server = server();
    let mark = marker();
    put(&server, "short", b"");
    let w = worker(
        &server,
        &[
            "--sh",
            &format!("sleep 1; echo {mark} >/dev/null; echo done"),
        ],
    );
    assert!(
        wait_until(LIMIT, || tasks_len(&server) == 0),
        "the task was taken"
    );
    // As `timeout 5 distq worker ...` does: TERM to the worker, then to its group.
    w.signal("TERM");
    w.signal("TERM");
    let out = w.wait_output(LIMIT);
    assert!(out.status.success(), "{:?}\n{}", out.status, out.stderr);
    let r = next_result(&server);
    assert_eq!((r.status, &r.stdout[..]), (Status::Ok, &b"done\n"[..]));
}

#[test]
fn a_second_signal_kills_the_commands_gives_the_task_back_and_exits_130() {
    let server = server();
    let mark = marker();
    put(&server, "long", b"");
    let w = worker(&server, &["--sh", &format!("sleep {mark} & wait")]);
    assert!(
        wait_until(LIMIT, || processes_with(&mark) > 0),
        "the command started"
    );
    w.signal("TERM");
    w.wait_for_stderr("taking no more tasks", LIMIT);
    // A signal within 250 ms of the first is the same one delivered twice (timeout(1) sends
    // it to the process and to its group): a person's second Ctrl-C comes later.
    thread::sleep(Duration::from_millis(400));
    w.signal("TERM");
    let out = w.wait_output(LIMIT);
    assert_eq!(out.status.code(), Some(130), "{}", out.stderr);
    assert!(
        wait_until(LIMIT, || processes_with(&mark) == 0),
        "the group is gone"
    );
    assert!(
        wait_until(LIMIT, || tasks_len(&server) == 1),
        "the task is back in the queue"
    );
}

#[test]
fn a_script_whose_command_is_missing_fails_its_task_for_good_and_the_worker_goes_on() {
    // The script ran up to the missing command (its side effects happened): the task is
    // neither given back nor retried, and one bad task does not stop the fleet.
    let server = server();
    put(&server, "typo", b"");
    put(&server, "fine", b"");
    let _w = worker(
        &server,
        &[
            "--sh",
            r#"echo ran; if [ "$DISTQ_TASK_ID" = typo ]; then distq-no-such-command; fi"#,
        ],
    );
    let first = next_result(&server);
    let second = next_result(&server);
    assert_eq!(
        (first.id.as_str(), first.status, first.exit_code),
        ("typo", Status::Failed, Some(127))
    );
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("not found"),
        "{first:?}"
    );
    assert_eq!((second.id.as_str(), second.status), ("fine", Status::Ok));
    let dead = dead(&server);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].history.last().and_then(|a| a.exit_code), Some(127));
    assert_eq!(tasks_len(&server), 0);
}

#[test]
fn output_caps_a_result_cannot_hold_are_refused_at_start() {
    let server = server();
    let out = worker(&server, &["--max-stdout", "8MiB", "--exec", "true"]).wait_output(LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("--max-stdout plus --max-stderr"),
        "{}",
        out.stderr
    );
}

#[test]
fn each_command_leads_a_session_and_a_process_group_of_its_own() {
    let server = server();
    put(&server, "leader", b"");
    // /proc/self/stat of the shell itself (`read` is a builtin): field 5 is the group, 6 the
    // session. The command name field is `(sh)`, without spaces.
    let _w = worker(
        &server,
        &[
            "--exec",
            "sh",
            "-c",
            r#"read -r pid comm state ppid pgrp sid rest < /proc/self/stat; echo "$$ $pid $pgrp $sid""#,
        ],
    );
    let r = next_result(&server);
    assert_eq!(r.status, Status::Ok, "{r:?}");
    let out = String::from_utf8_lossy(&r.stdout);
    let ids: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(ids.len(), 4, "{out:?}");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "the command's pid, group and session are one number: {out:?}"
    );
}

#[test]
fn commands_start_with_default_signal_dispositions_and_nothing_blocked() {
    let server = server();
    put(&server, "pipe", b"");
    // Rust ignores SIGPIPE in the worker; a command that inherited that would make `yes`
    // meet EPIPE instead of dying. grep shows the mask and ignored set the shell passed on.
    let _w = worker(
        &server,
        &[
            "--sh",
            r#"yes | head -n 1; grep -E '^Sig(Blk|Ign):' /proc/self/status"#,
        ],
    );
    let r = next_result(&server);
    assert_eq!((r.status, r.exit_code), (Status::Ok, Some(0)), "{r:?}");
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(out.lines().next(), Some("y"), "{out:?}");
    let set = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).expect(name);
        u64::from_str_radix(line[name.len()..].trim(), 16).expect("a hex signal set")
    };
    assert_eq!(set("SigBlk:"), 0, "no signal blocked: {out:?}");
    // Bit n-1 stands for signal n. (glibc's posix_spawn leaves its own internal signals 32
    // and 33 ignored, std's too; no signal set a program can build names them.)
    assert_eq!(
        set("SigIgn:") & (1 << 12),
        0,
        "SIGPIPE (13) not ignored: {out:?}"
    );
}

#[test]
fn an_input_with_a_nul_byte_in_braces_is_dead_lettered_and_the_worker_goes_on() {
    let server = server();
    put(&server, "nul", b"a\0b");
    put(&server, "fine", b"ab");
    let _w = worker(&server, &["--exec", "echo", "{}"]);
    let mut results = [next_result(&server), next_result(&server)];
    results.sort_by(|a, b| a.id.cmp(&b.id));
    let [fine, nul] = results;
    assert_eq!((fine.id.as_str(), fine.status), ("fine", Status::Ok));
    assert_eq!(String::from_utf8_lossy(&fine.stdout), "ab\n");
    assert_eq!(
        (nul.id.as_str(), nul.status, nul.reason),
        ("nul", Status::Failed, Some(Reason::SpawnError))
    );
    assert!(
        String::from_utf8_lossy(&nul.stderr).contains("NUL"),
        "{:?}",
        String::from_utf8_lossy(&nul.stderr)
    );
    assert!(
        wait_until(LIMIT, || dead(&server).iter().any(|t| t.id == "nul")),
        "the task is dead-lettered"
    );
}

#[test]
fn a_long_stderr_keeps_its_head_and_end_and_marks_the_cut() {
    let server = server();
    put(&server, "chatty", b"");
    let _w = worker(&server, &["--sh", "seq 1 100000 >&2"]);
    let r = next_result(&server);
    assert!(r.stderr_truncated, "{r:?}");
    let text = String::from_utf8_lossy(&r.stderr);
    assert!(text.starts_with("1\n2\n3\n"), "the head is kept");
    assert!(text.ends_with("99999\n100000\n"), "the end is kept");
    let omitted = r.stderr_bytes - (r.stderr.len() as u64 - marker_len(&text));
    assert!(
        text.contains(&format!("\n[distq: {omitted} bytes of stderr omitted]\n")),
        "the cut is marked: {}",
        &text[8100..8300.min(text.len())]
    );
}

/// The length of the cut marker in `text`.
fn marker_len(text: &str) -> u64 {
    let start = text.find("\n[distq: ").expect("a marker");
    let end = text[start + 1..].find('\n').expect("its end") + start + 2;
    (end - start) as u64
}

#[test]
fn a_task_that_arrives_while_a_stopping_worker_waits_is_not_started() {
    let server = server();
    put(&server, "first", b"");
    let w = worker(&server, &["--sh", "echo ran $DISTQ_TASK_ID"]);
    let r = next_result(&server);
    assert_eq!(r.id, "first");
    // The worker is now waiting for its next task.
    w.signal("TERM");
    w.wait_for_stderr("taking no more tasks", LIMIT);
    put(&server, "late", b"");
    let out = w.wait_output(LIMIT);
    assert!(out.status.success(), "{:?}\n{}", out.status, out.stderr);
    assert_eq!(tasks_len(&server), 1, "the late task is still queued");
    let late = server
        .queue::<TaskRecord>("tasks")
        .unwrap()
        .try_get()
        .unwrap();
    assert_eq!((late.id.as_str(), late.attempt), ("late", 1));
}
