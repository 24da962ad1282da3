//! The e-mail queue for real: `examples/email.rs` producing to a `distq serve` process and
//! sending to a real SMTP server (Python's aiosmtpd, support/smtp_sink.py) on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use distq::exec::{Reason, TaskRecord};
use distq::{Client, Server};

use crate::support::{
    assert_success, init_test_log, serve_process, wait_until, ChildGuard, Finished, KEY,
};

const LONG: Duration = Duration::from_secs(120);

/// The example binary, built once per test run. `cargo test --all-targets` has built it
/// already (then this is a quick no-op); `cargo test --test it` alone has not.
fn email_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/it-<hash>
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--quiet", "--example", "email", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(profile.parent().expect("target dir"));
        if profile.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build --example email");
        assert!(status.success(), "cargo build --example email failed");
        profile.join("examples").join("email")
    })
}

fn email() -> Command {
    let mut cmd = Command::new(email_bin());
    cmd.env("DISTQ_AUTHKEY", KEY).env("RUST_LOG", "info");
    cmd
}

/// A real SMTP server on a free loopback port, killed by its PID when dropped; it appends
/// the Message-ID of each mail it accepts to `ids`.
struct SmtpSink {
    _child: ChildGuard,
    addr: SocketAddr,
    dir: PathBuf,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "distq-email-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("make a temp dir");
        let ids = dir.join("ids.txt");
        std::fs::write(&ids, "").expect("create the ids file");
        let child = ChildGuard::spawn(
            "smtp_sink",
            Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/it/support/smtp_sink.py"
                ))
                .arg(&ids)
                .arg("600"),
        );
        // No aiosmtpd means a broken setup (.ci/run installs it): fail, and say so.
        let addr = match wait_until(Duration::from_secs(30), || {
            child.stderr_so_far().contains("listening on ")
        }) {
            true => child.listening_addr(),
            false => panic!(
                "the SMTP sink did not start (python3 -m pip install aiosmtpd):\n{}",
                child.stderr_so_far()
            ),
        };
        SmtpSink {
            _child: child,
            addr,
            dir,
        }
    }

    /// Every Message-ID received so far, in arrival order.
    fn ids(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("ids.txt")).unwrap_or_default();
        // Only whole lines: the sink may be half way through writing one.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_owned).collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn counts(ids: &[String]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.as_str()).or_insert(0) += 1;
    }
    m
}

fn no_warnings(what: &str, stderr: &str) {
    let warn: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert!(warn.is_empty(), "{what} warned:\n{}", warn.join("\n"));
}

/// 100 mails, sender A SIGKILLed half way, sender B finishes: none lost, and at most one
/// duplicate (A held one mail at a time), recognisable by its Message-ID.
#[test]
fn email_none_lost_when_a_sender_is_killed_half_way() {
    init_test_log();
    let (_serve, addr) = serve_process(&["--queue", "mail"]);
    let smtp = SmtpSink::start();
    let connect = addr.to_string();
    let smtp_addr = smtp.addr.to_string();

    let produced: Finished = ChildGuard::spawn(
        "email produce",
        email().args(["produce", "--connect", &connect, "--count", "100"]),
    )
    .wait_output(LONG);
    assert_success("email produce", &produced);
    let expected: BTreeSet<String> = produced
        .stdout
        .lines()
        .map(|id| format!("<{id}@distq>"))
        .collect();
    assert_eq!(expected.len(), 100, "produce printed:\n{}", produced.stdout);

    // A paced sender, so "half way" lasts long enough to be seen on a loaded machine.
    let send = |name: &str, extra: &[&str]| {
        ChildGuard::spawn(
            name,
            email()
                .args(["send", "--connect", &connect, "--smtp", &smtp_addr])
                .args(["--rate", "20"])
                .args(extra),
        )
    };
    let a = send("sender A", &[]);
    assert!(
        wait_until(LONG, || smtp.ids().len() >= 50),
        "sender A sent {} of 100 in {LONG:?}; its stderr:\n{}",
        smtp.ids().len(),
        a.stderr_so_far()
    );
    a.signal("KILL");
    let at_kill = smtp.ids().len();
    no_warnings("sender A", &a.stderr_so_far());
    drop(a);
    assert!(at_kill < 100, "sender A finished before it was killed");

    let b = send("sender B", &["--idle-exit", "3"]);
    let all_in = wait_until(LONG, || {
        let got: BTreeSet<String> = smtp.ids().into_iter().collect();
        got.is_superset(&expected)
    });
    let b_out = b.wait_output(LONG);
    assert!(
        all_in,
        "mails lost: {} distinct of 100 arrived; sender B:\n{}",
        smtp.ids().into_iter().collect::<BTreeSet<_>>().len(),
        b_out.stderr
    );
    assert_success("sender B", &b_out);
    no_warnings("sender B", &b_out.stderr);

    let ids = smtp.ids();
    let got: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(got, expected, "only the produced Message-IDs arrive");
    let dups: Vec<(&str, usize)> = counts(&ids).into_iter().filter(|(_, n)| *n > 1).collect();
    let extra: usize = dups.iter().map(|(_, n)| n - 1).sum();
    eprintln!(
        "email: killed sender A at {at_kill} mails; {} received, duplicates {dups:?}",
        ids.len()
    );
    assert!(
        extra <= 1,
        "one killed sender holding one mail makes at most one duplicate: {dups:?}"
    );

    let client = Client::connect(addr, KEY).expect("connect");
    let mail = client.queue::<TaskRecord>("mail").expect("mail queue");
    let dead = client.queue::<TaskRecord>("mail.dead").expect("dead queue");
    assert_eq!(mail.len().expect("len"), 0, "every mail acknowledged");
    assert_eq!(dead.len().expect("len"), 0, "no mail dead-lettered");
}

/// A 5xx refusal and a task that is not a mail go to `mail.dead` with why; a 4xx is retried
/// after the delay and then delivered once.
#[test]
fn email_permanent_refusals_dead_letter_and_temporary_ones_retry() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .queue("mail")
        .bind("127.0.0.1:0")
        .expect("bind");
    let addr = server.local_addr();
    let smtp = SmtpSink::start();
    let mail = server.queue::<TaskRecord>("mail").expect("mail queue");
    let task = |id: &str, to: &str| {
        let json = format!(r#"{{"from":"app@example.test","to":"{to}","subject":"s","body":"b"}}"#);
        TaskRecord::new(id, json.into_bytes())
    };
    mail.put_many([
        task("ok-1", "alice@example.test"),
        task("bounce-1", "nouser@example.test"),
        task("later-1", "later@example.test"),
        TaskRecord::new("junk-1", b"not a mail".to_vec()),
    ])
    .expect("put");

    let out = ChildGuard::spawn(
        "sender",
        email().args([
            "send",
            "--connect",
            &addr.to_string(),
            "--smtp",
            &smtp.addr.to_string(),
            "--retry-delay",
            "0.5",
            "--idle-exit",
            "3",
        ]),
    )
    .wait_output(LONG);
    assert_success("sender", &out);
    assert!(
        out.stderr.contains("later-1: deferred") && out.stderr.contains("451"),
        "the 451 is logged as a deferral:\n{}",
        out.stderr
    );

    let ids = smtp.ids();
    assert_eq!(
        counts(&ids),
        BTreeMap::from([("<later-1@distq>", 1), ("<ok-1@distq>", 1)]),
        "the accepted mails arrive once each, the refused never"
    );
    assert_eq!(mail.len().expect("len"), 0, "nothing left on mail");

    let dead = server.queue::<TaskRecord>("mail.dead").expect("dead queue");
    let mut died = BTreeMap::new();
    while let Ok(t) = dead.get_timeout(Duration::from_secs(1)) {
        let last = t.history.last().cloned().expect("the dead letter says why");
        died.insert(t.id.clone(), (last.reason, last.stderr_tail));
    }
    assert_eq!(died.len(), 2, "dead letters: {died:?}");
    let (reason, why) = &died["bounce-1"];
    assert_eq!(*reason, Reason::Exit);
    assert!(why.contains("550"), "{why}");
    let (reason, why) = &died["junk-1"];
    assert_eq!(*reason, Reason::BadTask);
    assert!(why.contains("not a mail"), "{why}");
    server.shutdown();
}

/// `examples/sendmail.py`, run as `distq worker --exec` runs it (mail on stdin, id in
/// DISTQ_TASK_ID), exits with the status the worker's outcome table reads.
#[test]
fn email_sendmail_script_exit_statuses() {
    let smtp = SmtpSink::start();
    let run = |id: &str, stdin: &str, port: u16| {
        let out = ChildGuard::spawn_with_stdin(
            "sendmail.py",
            Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sendmail.py"))
                .env("DISTQ_TASK_ID", id)
                .env("SMTP_HOST", "127.0.0.1")
                .env("SMTP_PORT", port.to_string()),
            stdin.as_bytes().to_vec(),
        )
        .wait_output(LONG);
        (out.status.code(), out.stderr)
    };
    let mail =
        |to: &str| format!(r#"{{"from":"a@example.test","to":"{to}","subject":"s","body":"b"}}"#);
    let port = smtp.addr.port();
    assert_eq!(run("s-ok", &mail("bob@example.test"), port).0, Some(0));
    let (code, why) = run("s-bounce", &mail("nouser@example.test"), port);
    assert_eq!(code, Some(67), "550 is EX_NOUSER: {why}");
    let (code, why) = run("s-later", &mail("later@example.test"), port);
    assert_eq!(code, Some(75), "451 is EX_TEMPFAIL: {why}");
    assert_eq!(run("s-later", &mail("later@example.test"), port).0, Some(0));
    let (code, why) = run("s-junk", "not a mail", port);
    assert_eq!(code, Some(65), "not JSON is EX_DATAERR: {why}");
    // A port nobody listens on (bound, then closed): a connection error is temporary.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (code, why) = run("s-down", &mail("bob@example.test"), closed);
    assert_eq!(code, Some(75), "connection refused is EX_TEMPFAIL: {why}");
    assert_eq!(
        counts(&smtp.ids()),
        BTreeMap::from([("<s-later@distq>", 1), ("<s-ok@distq>", 1)])
    );
}

/// The README's shell form: mails put with `distq put --jsonl`, sent by
/// `distq worker --exec python3 examples/sendmail.py`; a bounce dead-letters at once, a 451 is
/// retried after the backoff, each accepted mail arrives once under the id `put` printed.
#[test]
fn email_through_distq_put_and_worker_exec() {
    init_test_log();
    let (_serve, addr) = serve_process(&["--queue", "mail"]);
    let smtp = SmtpSink::start();
    let connect = addr.to_string();
    let mail =
        |to: &str| format!(r#"{{"from":"app@example.test","to":"{to}","subject":"s","body":"b"}}"#);
    let mut input = String::new();
    for n in 0..10 {
        input.push_str(&mail(&format!("user{n}@example.test")));
        input.push('\n');
    }
    input.push_str(&mail("nouser@example.test"));
    input.push('\n');
    input.push_str(&mail("later@example.test"));
    input.push('\n');
    let put = ChildGuard::spawn_with_stdin(
        "distq put",
        crate::support::distq()
            .args(["put", "--connect", &connect, "--queue", "mail", "--jsonl"])
            .env("DISTQ_AUTHKEY", KEY),
        input.into_bytes(),
    )
    .wait_output(LONG);
    assert_success("distq put", &put);
    let ids: Vec<String> = put.stdout.lines().map(String::from).collect();
    assert_eq!(ids.len(), 12, "{}", put.stdout);

    let worker = ChildGuard::spawn(
        "distq worker --exec",
        crate::support::distq()
            .args(["worker", "--connect", &connect, "--queue", "mail"])
            .args(["--backoff", "0.2..0.4", "--idle-exit", "3"])
            .args(["--exec", "python3"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sendmail.py"))
            .env("DISTQ_AUTHKEY", KEY)
            .env("SMTP_HOST", "127.0.0.1")
            .env("SMTP_PORT", smtp.addr.port().to_string()),
    );
    // Every mail but the bounce, the 451 one on its second attempt.
    let sent: BTreeSet<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 10)
        .map(|(_, id)| format!("<{id}@distq>"))
        .collect();
    let arrived = wait_until(LONG, || {
        smtp.ids().into_iter().collect::<BTreeSet<_>>() == sent
    });
    let out = worker.wait_output(LONG);
    assert!(arrived, "arrived {:?}; worker:\n{}", smtp.ids(), out.stderr);
    assert_success("distq worker --exec", &out);
    assert_eq!(smtp.ids().len(), 11, "each accepted mail once");

    let client = Client::connect(addr, KEY).expect("connect");
    let dead = client.queue::<TaskRecord>("mail.dead").expect("dead queue");
    let bounced = dead
        .get_timeout(Duration::from_secs(5))
        .expect("the bounce");
    assert_eq!(bounced.id, ids[10]);
    let last = bounced.history.last().expect("why it died");
    assert_eq!(last.exit_code, Some(67), "{last:?}");
    assert_eq!(
        client
            .queue::<TaskRecord>("mail")
            .expect("mail")
            .len()
            .expect("len"),
        0
    );
}
