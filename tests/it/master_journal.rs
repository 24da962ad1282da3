//! `distq master --journal`: a master SIGKILLed mid-job and started again on its journal
//! finishes the job with the right answer, its workers carrying on across the restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use distq::{Client, JournalConfig, QueueStats, Server};
use serde::{Deserialize, Serialize};

use crate::support::{assert_success, distq, init_test_log, wait_until, ChildGuard, Finished, KEY};

const SECS_60: Duration = Duration::from_secs(60);
const SECS_120: Duration = Duration::from_secs(120);

/// A scratch directory for one test's journal, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "distq-master-journal-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }

    fn journal(&self) -> PathBuf {
        self.0.join("journal")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn master(bind: &str, journal: &Path, job: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "master",
        distq()
            .args([
                "master",
                "--bind",
                bind,
                "--authkey",
                KEY,
                "--timeout",
                "120",
            ])
            .arg("--journal")
            .arg(journal)
            .args(job),
    )
}

/// A one-thread worker taking one task at a time, each after `delay` seconds, so the job
/// lasts long enough to kill its master in the middle.
fn worker(addr: SocketAddr, delay: &str) -> ChildGuard {
    ChildGuard::spawn(
        "worker",
        distq().args([
            "worker",
            "--connect",
            &addr.to_string(),
            "--authkey",
            KEY,
            "--batch",
            "1",
            "--delay",
            delay,
            "--give-up",
            "60",
            "--idle-exit",
            "5",
        ]),
    )
}

/// A result in the built-in jobs' format; only the run and id matter here.
#[derive(Serialize, Deserialize)]
struct Answer {
    r: u64,
    i: u64,
}

fn queue_stats(addr: SocketAddr, name: &str) -> Option<QueueStats> {
    let stats = Client::connect(addr, KEY).ok()?.stats().ok()?;
    stats.queues.into_iter().find(|q| q.name == name)
}

fn last_line(out: &Finished) -> &str {
    out.stdout.lines().last().unwrap_or_default()
}

/// The master's "resuming" log line: how many results it found in.
fn results_found(stderr: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .find(|l| l.contains("resuming the unfinished job"))?;
    let after = line.split(": ").last()?;
    after.split_whitespace().next()?.parse().ok()
}

/// The proof on the worker side: N-Queens n=10 (72 tasks) with two workers, the
/// master SIGKILLed once results have arrived, started again on the same journal and port;
/// the workers reconnect and the count is right: nothing lost, nothing counted twice.
#[test]
fn a_master_killed_mid_job_resumes_from_its_journal_with_the_right_count() {
    let scratch = Scratch::new("kill");
    let job = ["--job", "nqueens", "--n", "10"];
    let first = master("127.0.0.1:0", &scratch.journal(), &job);
    let addr = first.listening_addr();
    let workers = [worker(addr, "0.1"), worker(addr, "0.1")];
    // A worker acknowledges a task once its result is stored.
    let arrived = wait_until(SECS_60, || {
        queue_stats(addr, "tasks").is_some_and(|q| q.acked >= 10)
    });
    assert!(arrived, "no results arrived:\n{}", first.stderr_so_far());
    first.signal("KILL");
    let killed = first.wait_output(SECS_60);
    assert!(
        !killed.status.success() && !killed.stdout.contains("solutions:"),
        "the first master finished before it was killed: {killed:?}"
    );

    let second = master(&addr.to_string(), &scratch.journal(), &job);
    assert_eq!(second.listening_addr(), addr, "the port is bound again");
    let out = second.wait_output(SECS_120);
    assert_success("resumed master", &out);
    assert_eq!(last_line(&out), "solutions: 724", "{out:?}");
    assert!(
        out.stdout
            .contains("of 72 tasks (the others were in the journal)"),
        "{}",
        out.stdout
    );
    let found = results_found(&out.stderr);
    assert!(
        found.is_some_and(|n| (10..72).contains(&n)),
        "the master did not say it resumed with the results in: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
    // The same two workers did the rest of the job, and leave idle once it is done.
    for w in workers {
        let done = w.wait_output(SECS_60);
        assert!(done.status.success(), "{done:?}");
    }
}

/// A job whose answer is out is over: the next master on the journal starts afresh, also
/// with another job (an unfinished one would be refused, below).
#[test]
fn a_master_started_on_the_journal_of_a_finished_job_starts_afresh() {
    let scratch = Scratch::new("finished");
    for (n, solutions) in [("6", "solutions: 4"), ("8", "solutions: 92")] {
        let m = master(
            "127.0.0.1:0",
            &scratch.journal(),
            &["--job", "nqueens", "--n", n],
        );
        let addr = m.listening_addr();
        let w = worker(addr, "0");
        let out = m.wait_output(SECS_120);
        assert_success("master", &out);
        assert_eq!(last_line(&out), solutions, "{out:?}");
        assert!(!out.stderr.contains("resuming"), "{}", out.stderr);
        assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
        w.wait_output(SECS_60);
    }
}

/// A journal holding an unfinished job resumes that job only: another is refused with a
/// message naming the one held, and the held one then still finishes.
#[test]
fn a_master_refuses_another_job_than_the_unfinished_one_its_journal_holds() {
    let scratch = Scratch::new("other");
    let first = master(
        "127.0.0.1:0",
        &scratch.journal(),
        &["--job", "nqueens", "--n", "9"],
    );
    let addr = first.listening_addr();
    let put = wait_until(SECS_60, || {
        queue_stats(addr, "tasks").is_some_and(|q| q.len > 0)
    });
    assert!(put, "no tasks put:\n{}", first.stderr_so_far());
    first.signal("KILL");
    first.wait_output(SECS_60);

    let other = master(
        "127.0.0.1:0",
        &scratch.journal(),
        &["--job", "nqueens", "--n", "8"],
    );
    let out = other.wait_output(SECS_60);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("holds an unfinished job, `nqueens --n 9 --split-depth 2`"),
        "{}",
        out.stderr
    );

    let again = master(
        "127.0.0.1:0",
        &scratch.journal(),
        &["--job", "nqueens", "--n", "9"],
    );
    let w = worker(again.listening_addr(), "0");
    let out = again.wait_output(SECS_120);
    assert_success("resumed master", &out);
    assert_eq!(last_line(&out), "solutions: 352", "{out:?}");
    assert_eq!(results_found(&out.stderr), Some(0), "{}", out.stderr);
    w.wait_output(SECS_60);
}

/// A master stopped by a signal before the end gives the results it holds back as they
/// were: stopping a job does not count against its results, however often it happens.
#[test]
fn an_interrupted_master_leaves_its_results_uncounted_in_the_journal() {
    let scratch = Scratch::new("interrupted");
    let m = master(
        "127.0.0.1:0",
        &scratch.journal(),
        &["--job", "nqueens", "--n", "9"],
    );
    let addr = m.listening_addr();
    let w = worker(addr, "0.1");
    let arrived = wait_until(SECS_60, || {
        queue_stats(addr, "tasks").is_some_and(|q| q.acked >= 3)
    });
    assert!(arrived, "no results arrived:\n{}", m.stderr_so_far());
    m.signal("TERM");
    let out = m.wait_output(SECS_60);
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    drop(w);

    // The journal, opened by a server of the test's own: the results are there, none of
    // them counted as a failed delivery.
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .queue("results")
        .queue("master.job")
        .journal(JournalConfig::new(scratch.journal()))
        .bind("127.0.0.1:0")
        .expect("open the master's journal");
    let results = server.queue::<Answer>("results").unwrap();
    let held = results.len().unwrap();
    assert!(held >= 3, "{held} result(s) in the journal");
    for _ in 0..held {
        let result = results.try_reserve().unwrap();
        assert_eq!(result.redeliveries(), 0);
        result.give_back().unwrap();
    }
    server.shutdown();
}
