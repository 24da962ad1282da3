//! `distq get`: take items, write each as one JSON line, acknowledge it once written.

use std::io::{self, Write};
use std::time::Duration;

use distq::{Client, GetError, Reconnect};

use crate::args::GetArgs;
use crate::common::{authkey_for, connect_addr, is_redis};
use crate::item::{classify, input_json, to_json, Item, Kind};
use crate::{seconds, Exit, Outcome};

/// How long `get --follow` on Redis waits for Redis to come back.
const FOLLOW_GIVE_UP: Duration = Duration::from_secs(300);

/// Items taken per request when no `--max` is smaller.
const BATCH: usize = 256;

pub fn run(args: GetArgs) -> Outcome {
    let addr = connect_addr(&args.connect)?;
    let key = authkey_for(&addr, &args.key)?;
    let timeout = seconds("timeout", args.timeout)?;
    // Queues on Redis outlive a restart of Redis: a follower waits for it (native queues die
    // with their server, so there the first break ends the run).
    let client = match args.follow && is_redis(&addr) {
        true => Client::builder()
            .reconnect(Reconnect::default().give_up(FOLLOW_GIVE_UP))
            .connect(addr.as_str(), &key)?,
        false => Client::connect(addr.as_str(), &key)?,
    };
    let queue = client.queue::<Item>(&args.queue)?;
    let mut out = io::stdout().lock();
    let mut printed = 0u64;
    loop {
        let want = match args.max {
            Some(max) => (max - printed).min(BATCH as u64) as usize,
            None => BATCH,
        };
        if want == 0 {
            break;
        }
        // After the first item, take what is ready without waiting the whole timeout again.
        let wait = if args.follow {
            Duration::from_secs(3600)
        } else {
            timeout
        };
        let batch = match queue.reserve_many(want, wait) {
            Ok(batch) => batch,
            Err(GetError::Empty) if args.follow => continue,
            Err(GetError::Failed(distq::Error::Reconnecting)) if args.follow => continue,
            Err(GetError::Empty) => break,
            Err(GetError::Failed(e)) => return Err(e.into()),
        };
        let mut text = String::new();
        for delivery in &batch {
            let json = match classify(delivery.item()) {
                Kind::Task(task) if !args.records => input_json(&task.input),
                _ => to_json(delivery.item()),
            };
            text.push_str(&json.to_string());
            text.push('\n');
        }
        // A failed write (a closed pipe) drops the deliveries unacknowledged: they go back.
        out.write_all(text.as_bytes())?;
        out.flush()?;
        printed += batch.len() as u64;
        queue.ack_many(batch)?;
    }
    if printed == 0 {
        return Err(Exit::new(
            124,
            format!(
                "nothing arrived on {} within {} s",
                args.queue,
                timeout.as_secs_f64()
            ),
        )
        .into());
    }
    Ok(())
}
