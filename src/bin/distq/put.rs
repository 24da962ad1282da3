//! `distq put`: one task record per input record, fire and forget; prints each id stored.

use std::io::{self, BufWriter, Write};
use std::time::Duration;

use distq::exec::TaskRecord;
use distq::{Client, PutError, Queue};

use crate::args::PutArgs;
use crate::common::{authkey_for, connect_addr};
use crate::input::Records;
use crate::{seconds, Exit, Outcome};

/// Items per put request, and the bytes of input that close a chunk early: ids are printed
/// as each chunk is confirmed, and memory stays bounded whatever the input's size.
const CHUNK_ITEMS: usize = 256;
const CHUNK_BYTES: usize = 1 << 20;

/// The largest input a task may carry: the default item limit less room for the record.
pub const MAX_INPUT: usize = distq::DEFAULT_MAX_FRAME_SIZE - 64 * 1024;

pub fn run(args: PutArgs) -> Outcome {
    let addr = connect_addr(&args.connect)?;
    let key = authkey_for(&addr, &args.key)?;
    let delay = args.delay.map(|s| seconds("delay", s)).transpose()?;
    let timeout = args.timeout.map(|s| seconds("timeout", s)).transpose()?;
    let client = Client::connect(addr.as_str(), &key)?;
    let queue = client.queue::<TaskRecord>(&args.queue)?;
    // A misspelt reply queue would drop every result: check it exists before storing any.
    if let Some(reply_to) = &args.reply_to {
        client
            .queue::<TaskRecord>(reply_to)
            .map_err(|e| format!("--reply-to {reply_to}: {e}"))?;
    }
    let batch = new_batch_id();
    let stdin = io::stdin().lock();
    let mut records = Records::new(stdin, args.format.format(), MAX_INPUT);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut chunk: Vec<TaskRecord> = Vec::with_capacity(CHUNK_ITEMS);
    let mut bytes = 0;
    let mut seq = 0u64;
    let mut stored = 0u64;
    loop {
        let next = records.next_record()?;
        let end = next.is_none();
        if let Some(input) = next {
            seq += 1;
            bytes += input.input.len();
            chunk.push(input.into_task(&batch, seq, args.reply_to.clone())?);
        }
        if chunk.len() >= CHUNK_ITEMS || bytes >= CHUNK_BYTES || (end && !chunk.is_empty()) {
            let sent = std::mem::take(&mut chunk);
            bytes = 0;
            match store(&queue, &sent, delay, timeout) {
                Ok(()) => {
                    print_ids(&mut out, &sent)?;
                    stored += sent.len() as u64;
                }
                Err((accepted, e)) => {
                    print_ids(&mut out, &sent[..accepted])?;
                    out.flush()?;
                    stored += accepted as u64;
                    let code = if e.is_full() { 124 } else { 1 };
                    return Err(Exit::new(
                        code,
                        format!("{e}; {stored} item(s) stored, their ids printed"),
                    )
                    .into());
                }
            }
        }
        if end {
            break;
        }
    }
    out.flush()?;
    log::debug!("stored {stored} item(s) on {}", args.queue);
    Ok(())
}

/// Stores one chunk; on failure, how many of its items (from the front) were stored.
fn store(
    queue: &Queue<TaskRecord>,
    items: &[TaskRecord],
    delay: Option<Duration>,
    timeout: Option<Duration>,
) -> Result<(), (usize, PutError)> {
    let result = match (delay, timeout) {
        (Some(d), _) => queue.put_many_delayed(items, d),
        (None, Some(t)) => queue.put_many_timeout(items, t),
        (None, None) => queue.put_many(items),
    };
    result.map_err(|e| {
        let accepted = match &e {
            PutError::Full { accepted }
            | PutError::OverBudget { accepted, .. }
            | PutError::Partial { accepted, .. } => *accepted,
            _ => 0,
        };
        (accepted, e)
    })
}

fn print_ids(out: &mut impl Write, items: &[TaskRecord]) -> io::Result<()> {
    for t in items {
        writeln!(out, "{}", t.id)?;
    }
    out.flush()
}

/// A fresh run id: 12 hex digits, so ids of different runs never collide in practice.
pub fn new_batch_id() -> String {
    format!("{:012x}", rand::random::<u64>() >> 16)
}
