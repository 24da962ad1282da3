//! The seed article's second use case: producers put e-mails on a queue, senders anywhere
//! take them one at a time and hand them to an SMTP server.
//!
//! ```sh
//! distq serve --bind 127.0.0.1:5000 --queue mail          # DISTQ_AUTHKEY set for all three
//! cargo run --example email -- produce --connect 127.0.0.1:5000 --count 100
//! cargo run --example email -- send --connect 127.0.0.1:5000 --smtp 127.0.0.1:2525
//! ```
//!
//! Each mail is a [`TaskRecord`] whose `input` is the mail as JSON
//! (`{"from","to","subject","body"}`), so the same queue also feeds
//! `distq worker --exec python3 examples/sendmail.py`. The task id becomes the Message-ID
//! `<ID@distq>`: a mail sent twice (a sender died after the SMTP server accepted it and
//! before its ack) carries the same Message-ID both times, so the duplicate can be recognised.
//!
//! A sender acknowledges a mail only once the SMTP server accepted it. A permanent refusal
//! (5xx) or a mail that cannot be built goes to `QUEUE.dead` with the reason, then is
//! acknowledged; a temporary one (4xx, connection error, time-out) is given back with a delay
//! (`--retry-delay`), which counts as one failed delivery: after the server's
//! `--max-redeliveries` the server dead-letters it.

use std::env;
use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use distq::exec::{AttemptRecord, Reason, TaskRecord};
use distq::{Client, GetError, Reconnect};
use lettre::message::header::ContentType;
use lettre::transport::smtp::SmtpTransport;
use lettre::{Message, Transport};
use serde::{Deserialize, Serialize};

/// The mail a task carries, as JSON in its `input`.
#[derive(Debug, Serialize, Deserialize)]
struct Mail {
    from: String,
    to: String,
    subject: String,
    body: String,
}

const USAGE: &str = "\
usage:
  email produce --connect HOST:PORT [--queue mail] [--count N] [--to ADDR] [--from ADDR]
  email send    --connect HOST:PORT --smtp HOST:PORT [--queue mail] [--retry-delay SECS]
                [--idle-exit SECS] [--smtp-timeout SECS] [--rate PER_SEC]
The authkey is read from DISTQ_AUTHKEY.";

/// What stops the example, each with what to do about it.
#[derive(Debug)]
enum EmailError {
    /// The command line is wrong.
    Usage(String),
    /// DISTQ_AUTHKEY is not set.
    NoAuthkey,
    /// Talking to the distq server failed.
    Queue(distq::Error),
    /// A put to `queue` failed.
    Put {
        queue: String,
        error: distq::PutError,
    },
}

impl fmt::Display for EmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmailError::Usage(why) => write!(f, "{why}\n{USAGE}"),
            EmailError::NoAuthkey => write!(f, "set DISTQ_AUTHKEY to the server's authkey"),
            EmailError::Queue(e) => write!(f, "distq server: {e}"),
            EmailError::Put { queue, error } => write!(f, "putting to {queue}: {error}"),
        }
    }
}

impl std::error::Error for EmailError {}

impl From<distq::Error> for EmailError {
    fn from(e: distq::Error) -> Self {
        EmailError::Queue(e)
    }
}

/// The options both modes take, parsed by hand to keep the example's dependencies small.
struct Options {
    connect: Option<String>,
    queue: String,
    count: u64,
    to: String,
    from: String,
    smtp: Option<String>,
    retry_delay: Duration,
    idle_exit: Option<Duration>,
    smtp_timeout: Duration,
    rate: Option<f64>,
}

fn parse(args: &[String]) -> Result<Options, EmailError> {
    let mut o = Options {
        connect: None,
        queue: "mail".into(),
        count: 1,
        to: "user{n}@example.test".into(),
        from: "noreply@example.test".into(),
        smtp: None,
        retry_delay: Duration::from_secs(60),
        idle_exit: None,
        smtp_timeout: Duration::from_secs(30),
        rate: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| EmailError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--connect" => o.connect = Some(value()?),
            "--queue" => o.queue = value()?,
            "--count" => o.count = number(flag, &value()?)?,
            "--to" => o.to = value()?,
            "--from" => o.from = value()?,
            "--smtp" => o.smtp = Some(value()?),
            "--retry-delay" => o.retry_delay = seconds(flag, &value()?)?,
            "--idle-exit" => o.idle_exit = Some(seconds(flag, &value()?)?),
            "--smtp-timeout" => o.smtp_timeout = seconds(flag, &value()?)?,
            "--rate" => {
                let v = value()?;
                let rate = v.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0);
                o.rate = Some(rate.ok_or_else(|| {
                    EmailError::Usage(format!("--rate expects mails per second, got {v:?}"))
                })?);
            }
            other => return Err(EmailError::Usage(format!("unknown option {other}"))),
        }
    }
    Ok(o)
}

fn number(flag: &str, v: &str) -> Result<u64, EmailError> {
    v.parse()
        .map_err(|_| EmailError::Usage(format!("{flag} expects a whole number, got {v:?}")))
}

fn seconds(flag: &str, v: &str) -> Result<Duration, EmailError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| EmailError::Usage(format!("{flag} expects <SECS>, got {v:?}")))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("produce") => parse(&args[1..]).and_then(|o| produce(&o)),
        Some("send") => parse(&args[1..]).and_then(|o| send(&o)),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(EmailError::Usage("give a mode: produce or send".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("email: {e}");
            ExitCode::from(if matches!(e, EmailError::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}

fn connect(o: &Options) -> Result<Client, EmailError> {
    let addr = o
        .connect
        .as_deref()
        .ok_or_else(|| EmailError::Usage("--connect HOST:PORT is required".into()))?;
    let key = env::var("DISTQ_AUTHKEY").map_err(|_| EmailError::NoAuthkey)?;
    // A sender keeps going through a server restart or a network blip.
    Ok(Client::builder()
        .reconnect(Reconnect::default())
        .connect(addr, key)?)
}

/// Puts `--count` mails and prints each id (its Message-ID's local part) once stored.
fn produce(o: &Options) -> Result<(), EmailError> {
    let client = connect(o)?;
    let queue = client.queue::<TaskRecord>(&o.queue)?;
    let run = run_id();
    let mut chunk = Vec::new();
    for n in 1..=o.count {
        let mail = Mail {
            from: o.from.clone(),
            to: o.to.replace("{n}", &n.to_string()),
            subject: format!("Welcome, #{n}"),
            body: format!("Hello user {n},\n\nthanks for signing up.\n"),
        };
        // The JSON text and a newline, as `distq put --jsonl` stores a mail line.
        let mut input = serde_json::to_vec(&mail).expect("a Mail always serialises");
        input.push(b'\n');
        let mut task = TaskRecord::new(format!("{run}-{n}"), input);
        task.batch = run.clone();
        task.seq = n;
        chunk.push(task);
        if chunk.len() == 256 || n == o.count {
            queue.put_many(&chunk).map_err(|error| EmailError::Put {
                queue: o.queue.clone(),
                error,
            })?;
            for t in chunk.drain(..) {
                println!("{}", t.id);
            }
        }
    }
    Ok(())
}

/// 12 hex digits, so the ids of two producer runs never collide in practice.
fn run_id() -> String {
    let r = getrandom::u64().unwrap_or_else(|_| {
        // No entropy source: the clock and pid still separate runs.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id()) << 40
    });
    format!("{:012x}", r >> 16)
}

/// What became of one mail.
enum Verdict {
    /// The SMTP server accepted it.
    Sent,
    /// It will never go through as it is (5xx, bad address, not a mail): dead-letter it.
    Permanent(Reason, String),
    /// It may go through later (4xx, connection error, time-out): retry after a delay.
    Temporary(String),
}

/// Takes mails one at a time until killed (or idle for `--idle-exit`), sends each, and
/// settles it by what the SMTP server said.
fn send(o: &Options) -> Result<(), EmailError> {
    let smtp: SocketAddr = o
        .smtp
        .as_deref()
        .ok_or_else(|| EmailError::Usage("--smtp HOST:PORT is required".into()))?
        .parse()
        .map_err(|_| EmailError::Usage("--smtp expects HOST:PORT, such as 127.0.0.1:25".into()))?;
    // Plain SMTP, as to a local relay; see the README for the TLS features.
    let mailer = SmtpTransport::builder_dangerous(smtp.ip().to_string())
        .port(smtp.port())
        .timeout(Some(o.smtp_timeout))
        .build();
    let client = connect(o)?;
    let queue = client.queue::<TaskRecord>(&o.queue)?;
    let dead = client.queue::<TaskRecord>(&format!("{}.dead", o.queue))?;
    log::info!(
        "sending mail from {} to SMTP server {smtp}",
        client.peer_addr()
    );
    let poll = Duration::from_secs(1);
    // Providers cap how fast one account may send: --rate keeps under that cap.
    let interval = o.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut last_send: Option<Instant> = None;
    let mut idle_since = Instant::now();
    let (mut sent, mut dead_lettered, mut deferred) = (0u64, 0u64, 0u64);
    loop {
        let delivery = match queue.reserve_timeout(poll) {
            Ok(d) => d,
            Err(GetError::Empty) => {
                if o.idle_exit
                    .is_some_and(|limit| idle_since.elapsed() >= limit)
                {
                    log::info!(
                        "no mail for {:?}: leaving ({sent} sent, {dead_lettered} dead-lettered, \
                         {deferred} deferred)",
                        idle_since.elapsed()
                    );
                    return Ok(());
                }
                continue;
            }
            Err(GetError::Failed(e)) => return Err(e.into()),
        };
        if let (Some(every), Some(last)) = (interval, last_send) {
            std::thread::sleep(every.saturating_sub(last.elapsed()));
        }
        last_send = Some(Instant::now());
        let task = delivery.item();
        match deliver(&mailer, task) {
            Verdict::Sent => {
                log::debug!("{}: sent", task.id);
                delivery.ack()?;
                sent += 1;
            }
            Verdict::Permanent(reason, why) => {
                log::warn!("{}: not deliverable, to {}: {why}", task.id, dead.name());
                let mut record = task.clone();
                let mut attempt = AttemptRecord::new(task.attempt, reason);
                attempt.worker = format!("email/{}", std::process::id());
                attempt.stderr_tail = why;
                record.push_history(attempt);
                // Dead letter first, ack second: a crash between them leaves a duplicate dead
                // letter, never a lost mail.
                dead.put(&record).map_err(|error| EmailError::Put {
                    queue: dead.name().to_owned(),
                    error,
                })?;
                delivery.ack()?;
                dead_lettered += 1;
            }
            Verdict::Temporary(why) => {
                log::warn!("{}: deferred for {:?}: {why}", task.id, o.retry_delay);
                delivery.nack_delayed(o.retry_delay)?;
                deferred += 1;
            }
        }
        idle_since = Instant::now();
    }
}

/// Builds the mail of `task` and hands it to the SMTP server.
fn deliver(mailer: &SmtpTransport, task: &TaskRecord) -> Verdict {
    if let Err(e) = task.check() {
        return Verdict::Permanent(Reason::BadTask, e.to_string());
    }
    let mail: Mail = match serde_json::from_slice(&task.input) {
        Ok(m) => m,
        Err(e) => {
            return Verdict::Permanent(
                Reason::BadTask,
                format!("input is not a mail {{\"from\",\"to\",\"subject\",\"body\"}}: {e}"),
            )
        }
    };
    // A Message-ID's left part is a dot-atom: an id with other characters cannot be one.
    if !task
        .id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
    {
        return Verdict::Permanent(
            Reason::BadTask,
            format!(
                "task id {:?} cannot be a Message-ID: use letters, digits and -._",
                task.id
            ),
        );
    }
    let message = match build(&mail, &task.id) {
        Ok(m) => m,
        Err(why) => return Verdict::Permanent(Reason::BadTask, why),
    };
    match mailer.send(&message) {
        Ok(_) => Verdict::Sent,
        // lettre says permanent only for a 5xx reply; everything else may pass later.
        Err(e) if e.is_permanent() => Verdict::Permanent(Reason::Exit, smtp_error(&e)),
        Err(e) => Verdict::Temporary(smtp_error(&e)),
    }
}

fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    match e.status() {
        Some(code) => format!("SMTP {code}: {e}"),
        None => e.to_string(),
    }
}

/// The message, with the task id as its Message-ID so a second copy is recognisable.
fn build(mail: &Mail, id: &str) -> Result<Message, String> {
    let from = mail
        .from
        .parse()
        .map_err(|e| format!("bad from address {:?}: {e}", mail.from))?;
    let to = mail
        .to
        .parse()
        .map_err(|e| format!("bad to address {:?}: {e}", mail.to))?;
    Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject.as_str())
        .message_id(Some(format!("<{id}@distq>")))
        .header(ContentType::TEXT_PLAIN)
        .body(mail.body.clone())
        .map_err(|e| format!("cannot build the message: {e}"))
}
