//! `distq worker`: threads that each take tasks with a timeout, run them and put the results.

use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, ClientConfig, Error, GetError, PutError};

use crate::args::WorkerArgs;
use crate::jobs::{Job, Task, TaskResult};
use crate::{authkey, seconds, Outcome};

/// How long one get waits before the worker reports an empty queue and polls again.
const POLL: Duration = Duration::from_secs(1);

pub fn run(args: WorkerArgs) -> Outcome {
    let key = authkey(&args.key)?;
    let idle_exit = args
        .idle_exit
        .map(|s| seconds("idle-exit", s))
        .transpose()?;
    let config = ClientConfig::default()
        .connect_timeout(Some(seconds("connect-timeout", args.connect_timeout)?));
    log::info!("connecting to {}...", args.connect);
    // Connect every thread first, so a bad address or key fails before any work starts.
    let clients = (0..args.concurrency)
        .map(|_| {
            Client::builder()
                .config(config.clone())
                .connect(&args.connect, &key)
        })
        .collect::<Result<Vec<_>, _>>()?;
    log::info!(
        "{} worker thread(s) connected to {}",
        clients.len(),
        args.connect
    );
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || work(&client, idle_exit))
        })
        .collect::<Result<_, _>>()?;
    let mut done = 0;
    let mut failure = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(n)) => done += n,
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(Error::Server("a worker thread panicked".into())),
        }
    }
    log::info!("worker exit: {done} task(s) done");
    failure.map_or(Ok(()), |e| Err(e.into()))
}

/// The seed's worker loop; returns how many tasks it ran.
fn work(client: &Client, idle_exit: Option<Duration>) -> Result<u64, Error> {
    let tasks = client.queue::<Task>("tasks")?;
    let results = client.queue::<TaskResult>("results")?;
    let mut done = 0;
    let mut idle_since = Instant::now();
    let mut said_empty = false;
    loop {
        let task = match tasks.get_timeout(POLL) {
            Ok(task) => task,
            Err(GetError::Empty) => {
                if !said_empty {
                    log::info!("task queue is empty.");
                    said_empty = true;
                }
                if idle_exit.is_some_and(|limit| idle_since.elapsed() >= limit) {
                    log::info!("no task for {:?}: exiting", idle_since.elapsed());
                    return Ok(done);
                }
                continue;
            }
            Err(GetError::Failed(Error::Closed)) => return master_gone(done),
            Err(GetError::Failed(Error::Payload(e))) => {
                log::warn!("skipped an item that is not a distq task: {e}");
                continue;
            }
            Err(GetError::Failed(e)) => return Err(e),
        };
        match &task.job {
            Job::Square { n } => log::info!("run task {n} * {n}..."),
            Job::Nqueens { n, prefix } => {
                log::debug!("run task {}: n={n} prefix={prefix:?}", task.id)
            }
        }
        match results.put(task.run()) {
            Ok(()) => done += 1,
            Err(PutError::Failed(Error::Closed)) => return master_gone(done),
            Err(PutError::Failed(e)) => return Err(e),
            // A blocking put waits for room; it is never `Full`.
            Err(full @ PutError::Full { .. }) => return Err(Error::Server(full.to_string())),
        }
        idle_since = Instant::now();
        said_empty = false;
    }
}

fn master_gone(done: u64) -> Result<u64, Error> {
    log::info!("the master closed the connection: exiting");
    Ok(done)
}
