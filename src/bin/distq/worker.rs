//! `distq worker`: threads that each reserve tasks with a timeout, run them, put the results
//! and only then acknowledge the tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, ClientConfig, Error, GetError, PutError, Reconnect};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::args::WorkerArgs;
use crate::jobs::{Job, Task, TaskResult};
use crate::{authkey, seconds, Outcome};

/// How long one get waits before the worker reports an empty queue and polls again.
const POLL: Duration = Duration::from_secs(1);

/// What every worker thread needs to know.
struct Settings {
    idle_exit: Option<Duration>,
    delay: Option<Duration>,
    /// Set by the first SIGINT/SIGTERM: finish the task in hand, then leave.
    stop: Arc<AtomicBool>,
}

pub fn run(args: WorkerArgs) -> Outcome {
    let key = authkey(&args.key)?;
    let settings = Arc::new(Settings {
        idle_exit: args
            .idle_exit
            .map(|s| seconds("idle-exit", s))
            .transpose()?,
        delay: args.delay.map(|s| seconds("delay", s)).transpose()?,
        stop: Arc::new(AtomicBool::new(false)),
    });
    let reconnect = Reconnect::default().give_up(seconds("give-up", args.give_up)?);
    let config = ClientConfig::default()
        .connect_timeout(Some(seconds("connect-timeout", args.connect_timeout)?))
        .reconnect(Some(reconnect));
    let signals = watch_signals(Arc::clone(&settings.stop))?;
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
            let settings = Arc::clone(&settings);
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || work(&client, &settings))
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
    signals.close();
    log::info!("worker exit: {done} task(s) done");
    failure.map_or(Ok(()), |e| Err(e.into()))
}

/// The first SIGINT or SIGTERM asks the threads to finish the task in hand; a second one
/// exits at once (the server then returns the leases of the dropped connections).
fn watch_signals(stop: Arc<AtomicBool>) -> std::io::Result<Handle> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if stop.swap(true, Ordering::SeqCst) {
                    log::warn!("signal {signal} again: stopping at once");
                    std::process::exit(130);
                }
                log::info!(
                    "signal {signal}: finishing the task in hand (send it again to stop at once)"
                );
            }
        })?;
    Ok(handle)
}

/// The seed's worker loop, with leases; returns how many tasks it ran.
fn work(client: &Client, settings: &Settings) -> Result<u64, Error> {
    let tasks = client.queue::<Task>("tasks")?;
    let results = client.queue::<TaskResult>("results")?;
    let mut done = 0;
    let mut idle = Idle::new(settings.idle_exit);
    while !settings.stop.load(Ordering::SeqCst) {
        let task = match tasks.reserve_timeout(POLL) {
            Ok(task) => task,
            Err(GetError::Empty) => {
                idle.empty();
                if idle.expired() {
                    return Ok(done);
                }
                continue;
            }
            Err(GetError::Failed(Error::Reconnecting)) => {
                idle.disconnected();
                if idle.expired() {
                    return Ok(done);
                }
                continue;
            }
            Err(GetError::Failed(Error::Payload(e))) => {
                log::warn!("gave back an item that is not a distq task: {e}");
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
        if let Some(delay) = settings.delay {
            thread::sleep(delay);
        }
        match results.put(task.run()) {
            Ok(()) => {}
            Err(PutError::Failed(e)) => return Err(e),
            // A blocking put waits for room; it is never `Full`.
            Err(full @ PutError::Full { .. }) => return Err(Error::Server(full.to_string())),
        }
        // Acknowledge only once the result is safely on the results queue.
        match task.ack() {
            Ok(()) => {}
            Err(Error::LeaseExpired) => {
                log::warn!("a task's lease ended before its result was in; it may run twice")
            }
            Err(e) => return Err(e),
        }
        done += 1;
        idle.busy();
    }
    Ok(done)
}

/// Tracks time without a task, for `--idle-exit` and the "queue is empty" message.
struct Idle {
    limit: Option<Duration>,
    since: Instant,
    said: bool,
}

impl Idle {
    fn new(limit: Option<Duration>) -> Self {
        Idle {
            limit,
            since: Instant::now(),
            said: false,
        }
    }

    fn empty(&mut self) {
        if !self.said {
            log::info!("task queue is empty.");
            self.said = true;
        }
    }

    fn disconnected(&mut self) {
        self.said = false;
    }

    fn busy(&mut self) {
        self.since = Instant::now();
        self.said = false;
    }

    fn expired(&self) -> bool {
        let expired = self
            .limit
            .is_some_and(|limit| self.since.elapsed() >= limit);
        if expired {
            log::info!(
                "no task for {:.1} s: exiting",
                self.since.elapsed().as_secs_f64()
            );
        }
        expired
    }
}
