//! `distq dead`: list, requeue and drop a queue's dead letters (`Q.dead`).

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distq::exec::{Reason, TaskRecord};
use distq::{Client, Delivery, GetError, Queue};

use crate::args::{DeadAction, DeadArgs};
use crate::common::{authkey_for, connect_addr};
use crate::item::{classify, to_json, Item, Kind};
use crate::Outcome;

/// Items moved per request.
const BATCH: usize = 256;

/// How long to wait for the next dead letter before deciding there are no more: they are
/// all in the queue already, so only a round trip's time.
const SETTLE: Duration = Duration::from_millis(200);

pub fn run(args: DeadArgs) -> Outcome {
    let connect = args
        .connect
        .as_deref()
        .ok_or("distq dead needs --connect ADDR (the server's HOST:PORT, or a redis:// URL)")?;
    let addr = connect_addr(connect)?;
    let key = authkey_for(&addr, &args.key)?;
    let client = Client::connect(addr.as_str(), &key)?;
    let dead_name = format!("{}.dead", args.queue);
    let dead = client.queue::<Item>(&dead_name)?;
    match args.action {
        DeadAction::Ls { json, max } => ls(&dead, json, max),
        DeadAction::Kick { count } => {
            let target = client.queue::<Item>(&args.queue)?;
            let moved = drain(&dead, count, |batch| {
                let items: Vec<Item> = batch.iter().map(|d| kicked(d.item())).collect();
                target.put_many(items)?;
                Ok(())
            })?;
            eprintln!(
                "moved {moved} dead letter(s) from {dead_name} back to {}",
                args.queue
            );
            Ok(())
        }
        DeadAction::Purge => {
            let dropped = drain(&dead, None, |_| Ok(()))?;
            eprintln!("dropped {dropped} dead letter(s) from {dead_name}");
            Ok(())
        }
    }
}

/// Takes up to `limit` items in batches, hands each batch to `with`, then acknowledges it
/// (so a failure in `with` leaves the batch where it was).
fn drain(
    dead: &Queue<Item>,
    limit: Option<u64>,
    mut with: impl FnMut(&[Delivery<Item>]) -> Outcome,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut done = 0u64;
    loop {
        let want = limit.map_or(BATCH as u64, |l| (l - done).min(BATCH as u64)) as usize;
        if want == 0 {
            return Ok(done);
        }
        let batch = match dead.reserve_many(want, SETTLE) {
            Ok(batch) => batch,
            Err(GetError::Empty) => return Ok(done),
            Err(GetError::Failed(e)) => return Err(e.into()),
        };
        with(&batch)?;
        done += batch.len() as u64;
        dead.ack_many(batch)?;
    }
}

/// The item to put back: a task record starts again at attempt 1 (its history kept, so
/// the next failure still shows the earlier ones); anything else goes back as it was.
fn kicked(item: &Item) -> Item {
    match classify(item) {
        Kind::Task(mut task) => {
            task.attempt = 1;
            serde_value::to_value(&*task).unwrap_or_else(|_| item.clone())
        }
        _ => item.clone(),
    }
}

/// Lists dead letters. Without a peek request the items are taken and given back (without
/// counting as failed deliveries), all held at once so none is listed twice; `max` bounds
/// how many.
fn ls(dead: &Queue<Item>, json: bool, max: u64) -> Outcome {
    let mut held = Vec::new();
    while (held.len() as u64) < max {
        let want = (max - held.len() as u64).min(BATCH as u64) as usize;
        match dead.reserve_many(want, SETTLE) {
            Ok(batch) => held.extend(batch),
            Err(GetError::Empty) => break,
            Err(GetError::Failed(e)) => return Err(e.into()),
        }
    }
    let more = dead.len()?;
    let mut out = io::stdout().lock();
    if held.is_empty() {
        writeln!(out, "no dead letters in {}", dead.name())?;
    } else if json {
        for d in &held {
            writeln!(out, "{}", to_json(d.item()))?;
        }
    } else {
        write!(out, "{}", table(&held))?;
        if more > 0 {
            writeln!(out, "... and {more} more (raise --max to see them)")?;
        }
    }
    out.flush()?;
    // Back where they were, their redelivery counts unchanged: listing is not a failure.
    for d in held {
        d.give_back()?;
    }
    Ok(())
}

fn table(held: &[Delivery<Item>]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut rows = vec![[
        "ID".to_owned(),
        "ATTEMPTS".into(),
        "REASON".into(),
        "EXIT".into(),
        "DIED".into(),
        "LAST STDERR".into(),
    ]];
    for d in held {
        rows.push(match classify(d.item()) {
            Kind::Task(task) => task_row(&task, now),
            _ => {
                let mut text = to_json(d.item()).to_string();
                truncate(&mut text, 40);
                [
                    text,
                    "-".into(),
                    "redelivered too often".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]
            }
        });
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        for (c, width) in widths.iter().enumerate() {
            out.push_str(&format!("{:<width$}  ", row[c]));
        }
        out.push_str(&row[5]);
        out.push('\n');
    }
    out
}

fn task_row(task: &TaskRecord, now: u64) -> [String; 6] {
    let Some(last) = task.history.last() else {
        // Moved by the server: its deliveries failed (workers lost or nacking) too often.
        return [
            task.id.clone(),
            task.attempt.to_string(),
            "redelivered too often".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ];
    };
    let exit = match (last.exit_code, last.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "-".into(),
    };
    let mut stderr = last
        .stderr_tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned();
    truncate(&mut stderr, 60);
    [
        task.id.clone(),
        last.attempt.to_string(),
        reason(last.reason).into(),
        exit,
        format!("{} ago", ago(now.saturating_sub(last.ended_ms))),
        stderr,
    ]
}

fn reason(r: Reason) -> &'static str {
    match r {
        Reason::Exit => "exit status",
        Reason::Signal => "signal",
        Reason::Timeout => "timeout",
        Reason::OutputLimit => "output limit",
        Reason::SpawnError => "could not start",
        Reason::InputTooLarge => "input too large",
        Reason::Lost => "workers lost",
        Reason::Expired => "expired",
        Reason::BadTask => "not a task",
        Reason::Interrupted => "interrupted",
        _ => "other",
    }
}

fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.chars().count() > max {
        *s = s.chars().take(max - 1).collect::<String>() + "…";
    }
}
