//! `distq worker`: threads that each take a batch of tasks with a timeout, run them, put the
//! results in one frame and only then acknowledge the tasks (with the next take, or on exit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, ClientConfig, Error, GetError, PutError, Queue, Reconnect, ServerInstance};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::args::WorkerArgs;
use crate::common::{authkey_for, connect_addr, is_redis, redacted, signal_name};
use crate::jobs::{Job, Task, TaskResult};
use crate::{seconds, Outcome};

/// How long one get waits before the worker reports an empty queue and polls again.
const POLL: Duration = Duration::from_secs(1);

/// What every worker thread needs to know.
struct Settings {
    /// The master's address, for the log.
    addr: String,
    /// What the process has said, so several threads meeting the same event log it once.
    said: Said,
    idle_exit: Option<Duration>,
    delay: Option<Duration>,
    /// A fixed batch size, or `None` to adapt it.
    batch: Option<usize>,
    /// Set by the first SIGINT/SIGTERM: finish the task in hand, then leave.
    stop: Arc<AtomicBool>,
}

pub fn run(args: WorkerArgs) -> Outcome {
    if args.python_connect.is_some() {
        return crate::python_worker::run(args);
    }
    if args.exec.is_set() {
        return crate::exec::run(args);
    }
    let addr = connect_addr(args.connect.as_deref().unwrap_or_default())?;
    let key = authkey_for(&addr, &args.key)?;
    let give_up = seconds("give-up", args.give_up)?;
    let settings = Arc::new(Settings {
        addr: shown(&addr),
        said: Said::default(),
        idle_exit: args
            .idle_exit
            .map(|s| seconds("idle-exit", s))
            .transpose()?,
        delay: args.delay.map(|s| seconds("delay", s)).transpose()?,
        batch: args.batch.map(|n| n as usize),
        stop: Arc::new(AtomicBool::new(false)),
    });
    let reconnect = Reconnect::default().give_up(give_up);
    let config = ClientConfig::default()
        .connect_timeout(Some(seconds("connect-timeout", args.connect_timeout)?))
        .reconnect(Some(reconnect.clone()));
    let signals = watch_signals(Arc::clone(&settings.stop))?;
    log::info!("connecting to {}...", shown(&addr));
    // Connect every thread first, so a bad address or key fails before any work starts.
    let mut clients = Vec::with_capacity(args.concurrency as usize);
    for _ in 0..args.concurrency {
        match connect(
            &addr,
            &key,
            &config,
            &reconnect,
            &settings.stop,
            &["tasks", "results"],
        )? {
            Some(client) => clients.push(client),
            None => {
                signals.close();
                log::info!("worker exit: stopped before connecting");
                return Ok(());
            }
        }
    }
    log::info!(
        "{} worker thread(s) connected to {}",
        clients.len(),
        shown(&addr)
    );
    if let Some(first) = clients.first() {
        settings.said.connected_to(first.server_instance());
    }
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
    let mut failure: Option<Box<dyn std::error::Error + Send + Sync>> = None;
    for (i, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(Ok(n)) => done += n,
            Ok(Err(e)) => failure = Some(e.into()),
            Err(_) => failure = Some(Box::new(Panicked(i))),
        }
    }
    signals.close();
    log::info!("worker exit: {done} task(s) done");
    failure.map_or(Ok(()), Err)
}

/// Connects one client, waiting for a master that is not listening yet (a worker may well
/// be started first) with the reconnection backoff, quietly, up to `--give-up`; on Redis,
/// for the queues `queues` to be declared (by a master, or `distq declare`). Any other failure
/// (a wrong key, not a distq server) is final at once. `None`: a signal came first.
pub(crate) fn connect(
    addr: &str,
    key: &str,
    config: &ClientConfig,
    policy: &Reconnect,
    stop: &AtomicBool,
    queues: &[&str],
) -> Result<Option<Client>, Error> {
    let since = Instant::now();
    let mut attempt = 0u32;
    let mut said = false;
    loop {
        match Client::builder().config(config.clone()).connect(addr, key) {
            Ok(client) if client.is_redis() => match declared(&client, queues) {
                Ok(()) => return Ok(Some(client)),
                Err(Error::UnknownQueue(queue)) if since.elapsed() < policy.give_up => {
                    if !said {
                        log::info!(
                            "waiting for queue {queue} to be declared on Redis (by distq master \
                             --connect, or distq declare; up to --give-up {:.0} s)",
                            policy.give_up.as_secs_f64()
                        );
                        said = true;
                    }
                }
                Err(e) => return Err(e),
            },
            Ok(client) => return Ok(Some(client)),
            Err(Error::Connect {
                addr: dialled,
                source,
            }) if source.kind() == std::io::ErrorKind::ConnectionRefused => {
                if since.elapsed() >= policy.give_up {
                    return Err(Error::GaveUp {
                        after: since.elapsed(),
                        last: Box::new(Error::Connect {
                            addr: dialled,
                            source,
                        }),
                    });
                }
                if !said {
                    log::info!(
                        "waiting for {} (up to --give-up {:.0} s)",
                        match is_redis(addr) {
                            true => shown(addr),
                            false => format!("the master at {addr}"),
                        },
                        policy.give_up.as_secs_f64()
                    );
                    said = true;
                }
            }
            Err(e) => return Err(e),
        }
        attempt += 1;
        let wait = backoff(policy, attempt).min(policy.give_up.saturating_sub(since.elapsed()));
        // In short steps, so a signal stops the wait promptly.
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
    }
}

/// `Ok` once every queue of `queues` exists; the first missing one is `UnknownQueue`.
fn declared(client: &Client, queues: &[&str]) -> Result<(), Error> {
    queues
        .iter()
        .try_for_each(|name| client.queue::<()>(name).map(drop))
}

/// The library's reconnection backoff: doubling from the first wait up to the cap, then
/// drawn between half and all of it, so workers started together do not knock in step.
fn backoff(policy: &Reconnect, attempt: u32) -> Duration {
    let doubled = policy
        .initial_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    doubled
        .min(policy.max_backoff)
        .mul_f64(rand::random_range(0.5..=1.0))
}

/// How the log names where tasks come from: `the master at ADDR`'s address, or `Redis at
/// URL` without its password.
pub(crate) fn shown(addr: &str) -> String {
    match is_redis(addr) {
        true => format!("Redis at {}", redacted(addr)),
        false => addr.to_owned(),
    }
}

/// Events every thread of the process meets (the master gone, the queue empty, idle time
/// up), logged once per process rather than once per thread.
#[derive(Default)]
struct Said {
    /// Whether the process has said the master is gone, and not yet that it is back.
    gone: AtomicBool,
    /// The server instance the process last said it works for.
    instance: Mutex<Option<ServerInstance>>,
    empty: AtomicBool,
    leaving: AtomicBool,
}

impl Said {
    /// This thread found the master gone: the first thread of the process to find so says so.
    fn away(&self, addr: &str, idle_exit: Option<Duration>) {
        if !self.gone.swap(true, Ordering::SeqCst) {
            // The next master's empty queue is news again.
            self.empty.store(false, Ordering::SeqCst);
            let then = match idle_exit {
                Some(limit) => format!(
                    "; leaving after {:.0} s without a task (--idle-exit)",
                    limit.as_secs_f64()
                ),
                None => String::new(),
            };
            match addr.starts_with("Redis at ") {
                true => log::info!("{addr} does not answer; waiting for it{then}"),
                false => log::info!("the master at {addr} has gone (its job is done, or it stopped); waiting for the next one{then}"),
            }
        }
    }

    /// This thread, away before, is connected again: the first of the process to reconnect
    /// says so (the others may still wait out their backoff).
    fn back(&self, addr: &str) {
        if self.gone.swap(false, Ordering::SeqCst) {
            match addr.starts_with("Redis at ") {
                true => log::info!("{addr} answers again"),
                false => log::info!("reconnected to the master at {addr}"),
            }
        }
    }

    fn connected_to(&self, instance: ServerInstance) {
        *self.instance.lock().unwrap_or_else(PoisonError::into_inner) = Some(instance);
    }

    /// A thread found itself connected to another server instance than before (the library
    /// reconnects within a call, so the break itself may go unseen): the first to find so
    /// says so.
    fn new_instance(&self, addr: &str, instance: ServerInstance) {
        let mut known = self.instance.lock().unwrap_or_else(PoisonError::into_inner);
        if *known != Some(instance) {
            *known = Some(instance);
            self.gone.store(false, Ordering::SeqCst);
            // Info, not a warning: nothing to do, the new server never had those tasks.
            log::info!(
                "reconnected to the master at {addr}: a new server instance (a new master), so \
                 results held for the old one are dropped"
            );
        }
    }

    fn empty(&self) {
        if !self.empty.swap(true, Ordering::SeqCst) {
            log::info!("task queue is empty.");
        }
    }

    fn busy(&self) {
        self.empty.store(false, Ordering::SeqCst);
    }

    fn leaving(&self, idle: Duration) {
        if !self.leaving.swap(true, Ordering::SeqCst) {
            log::info!("no task for {:.1} s: exiting", idle.as_secs_f64());
        }
    }
}

/// A worker thread panicked: a bug in this program, not anything the server said.
#[derive(Debug)]
struct Panicked(usize);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worker thread {} panicked (a bug in distq: please report it with the log above); \
             its tasks return to the queue when their leases end",
            self.0
        )
    }
}

impl std::error::Error for Panicked {}

/// The first SIGINT or SIGTERM asks the threads to finish the task in hand; a second one
/// exits at once (the server then returns the leases of the dropped connections).
fn watch_signals(stop: Arc<AtomicBool>) -> std::io::Result<Handle> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = signal_name(signal);
                if stop.swap(true, Ordering::SeqCst) {
                    log::warn!("{name} again: stopping at once");
                    std::process::exit(130);
                }
                log::info!("{name}: finishing the task in hand (send it again to stop at once)");
            }
        })?;
    Ok(handle)
}

/// The seed's worker loop, batched; returns how many tasks it ran.
///
/// Tasks come with implicit leases: the next take acknowledges them, only once their results
/// are stored. With an unbounded results queue, storing the results and taking the next
/// batch go in one round trip; dropping `tasks` acknowledges the last batch.
fn work(client: &Client, settings: &Settings) -> Result<u64, Error> {
    let tasks = client.queue::<Task>("tasks")?;
    let results = client.queue::<TaskResult>("results")?;
    match work_loop(client, &tasks, &results, settings) {
        Ok((done, true)) => {
            // Acknowledge the last batch (its results are stored) now, on this thread, so
            // the acknowledgement is out before the process exits.
            drop(tasks);
            match results.len() {
                // No connection (the master finished, or went away and `--idle-exit` ran
                // out): its leases ended with it, so there is nothing left to acknowledge,
                // and leaving idle is the exit 0 the README promises, "connected or not".
                Ok(_) | Err(Error::Reconnecting) => Ok(done),
                Err(e) => Err(e),
            }
        }
        Ok((done, false)) => {
            // The last batch's results were not stored: give its tasks back unacknowledged.
            let _ = tasks.give_back();
            Ok(done)
        }
        Err(e) => {
            let _ = tasks.give_back();
            Err(e)
        }
    }
}

/// The loop itself; returns how many tasks ran and whether every answer was stored.
fn work_loop(
    client: &Client,
    tasks: &Queue<Task>,
    results: &Queue<TaskResult>,
    settings: &Settings,
) -> Result<(u64, bool), Error> {
    // A bounded results queue may need waiting for room: then put on its own.
    let fused = matches!(results.capacity(), Ok(None));
    let mut answers: Vec<TaskResult> = Vec::new();
    let mut done = 0;
    let mut idle = Idle::new(settings, client);
    let mut batch = Batch::new(settings.batch);
    while !settings.stop.load(Ordering::SeqCst) {
        let taken = match answers.is_empty() {
            true => tasks.get_many(batch.size, POLL),
            false => tasks.get_many_after_put(results, &answers, batch.size, POLL),
        };
        let taken = match taken {
            Ok(taken) => taken,
            Err(GetError::Empty) => {
                answers.clear(); // stored before the queue was found empty
                idle.empty();
                if idle.expired() {
                    break;
                }
                continue;
            }
            // The server shut down after storing the answers and acknowledging their tasks
            // (a fused get answered `closed`): nothing is held any more.
            Err(GetError::Failed(Error::Closed)) if !answers.is_empty() => {
                answers.clear();
                idle.disconnected();
                if idle.expired() {
                    break;
                }
                continue;
            }
            Err(GetError::Failed(Error::Reconnecting)) => {
                idle.disconnected(); // the answers, if any, are offered again
                if idle.expired() {
                    break;
                }
                continue;
            }
            // The server's memory budget is used up: store the rest of the answers on their
            // own (waiting for room) before the tasks are acknowledged by the next get.
            Err(GetError::Failed(Error::OverBudget { accepted, .. })) => {
                answers.drain(..accepted.min(answers.len()));
                if !deliver(tasks, results, &answers, &mut idle)? {
                    return Ok((done, false));
                }
                answers.clear();
                continue;
            }
            Err(GetError::Failed(Error::Payload(e))) => {
                answers.clear();
                log::warn!("gave back a batch holding an item that is not a distq task: {e}");
                // One item at a time, so the bad one goes to the dead letters alone.
                batch.isolate();
                continue;
            }
            Err(GetError::Failed(e)) => return Err(e),
        };
        answers.clear();
        idle.took();
        let start = Instant::now();
        answers = taken
            .iter()
            .map(|task| perform(task, settings.delay))
            .collect();
        batch.observe(taken.len(), start.elapsed());
        done += taken.len() as u64;
        idle.busy();
        if !fused {
            if !deliver(tasks, results, &answers, &mut idle)? {
                return Ok((done, false));
            }
            answers.clear();
        }
    }
    // Leaving with answers in hand (a signal): store them before the tasks' acknowledgement.
    let stored = answers.is_empty() || deliver(tasks, results, &answers, &mut idle)?;
    Ok((done, stored))
}

/// Puts the answers, retrying while the connection is down; `false` if `--idle-exit` ran out
/// first. Bounded waits keep the idle clock and the stop flag in view. Answers to tasks of a
/// server instance that is gone (the server restarted) are dropped, never sent to the new
/// one (the library logs it).
fn deliver(
    tasks: &Queue<Task>,
    results: &Queue<TaskResult>,
    answers: &[TaskResult],
    idle: &mut Idle,
) -> Result<bool, Error> {
    let mut rest = answers;
    loop {
        match tasks.put_results_timeout(results, rest, POLL) {
            Ok(()) => return Ok(true),
            // A bounded results queue is full, or the server's memory budget used up: keep
            // what it took, offer the rest again.
            Err(e @ (PutError::Full { accepted } | PutError::OverBudget { accepted, .. })) => {
                rest = &rest[accepted.min(rest.len())..];
                if idle.expired() {
                    let why = match e {
                        PutError::Full { .. } => "the results queue stayed full".to_owned(),
                        other => other.to_string(),
                    };
                    log::warn!("{} result(s) not delivered: {why}", rest.len());
                    return Ok(false);
                }
            }
            // The connection went (after storing part, or none): offer the rest once back.
            Err(
                e @ (PutError::Partial {
                    error: Error::Reconnecting,
                    ..
                }
                | PutError::Failed(Error::Reconnecting)),
            ) => {
                if let PutError::Partial { accepted, .. } = e {
                    rest = &rest[accepted.min(rest.len())..];
                }
                idle.disconnected();
                if idle.expired() {
                    log::warn!(
                        "{} result(s) may not have been stored: the connection was lost and the master stayed away",
                        rest.len()
                    );
                    return Ok(false);
                }
            }
            Err(PutError::Failed(e) | PutError::Partial { error: e, .. }) => return Err(e),
        }
    }
}

fn perform(task: &Task, delay: Option<Duration>) -> TaskResult {
    match &task.job {
        Job::Square { n } => log::info!("run task {n} * {n}..."),
        Job::Nqueens { n, prefix } => log::debug!("run task {}: n={n} prefix={prefix:?}", task.id),
    }
    if let Some(delay) = delay {
        thread::sleep(delay);
    }
    task.run()
}

/// Adaptive prefetch: the batch grows towards what runs in `TARGET` while tasks are short,
/// and drops to one task when one task alone takes longer, so a slow task never holds others
/// hostage while idle workers wait.
struct Batch {
    fixed: bool,
    size: usize,
}

impl Batch {
    /// How long a batch should take: long enough to amortise a round trip, short enough to
    /// keep the tail of a run balanced.
    const TARGET: Duration = Duration::from_millis(2);
    const MAX: usize = 4096;
    /// The most the batch grows in one step, so one lucky measurement cannot overshoot.
    const GROWTH: usize = 16;

    fn new(fixed: Option<usize>) -> Self {
        Batch {
            fixed: fixed.is_some(),
            size: fixed.unwrap_or(1),
        }
    }

    fn observe(&mut self, taken: usize, took: Duration) {
        if self.fixed || taken == 0 {
            return;
        }
        let per_task = took / taken as u32;
        if per_task >= Self::TARGET {
            self.size = 1;
            return;
        }
        // How many such tasks fit in the target; a nanosecond floor keeps it finite.
        let fits = (Self::TARGET.as_nanos() / per_task.as_nanos().max(1)) as usize;
        let goal = fits.clamp(1, Self::MAX);
        if goal < self.size {
            self.size = goal;
        } else if taken == self.size {
            // Grow only when the queue filled the whole batch: otherwise there is no sign the
            // batch is what holds the worker back.
            self.size = goal.min(self.size * Self::GROWTH);
        }
    }

    fn isolate(&mut self) {
        if !self.fixed {
            self.size = 1;
        }
    }
}

/// Tracks time without a task, for `--idle-exit`, and this thread's part in what the
/// process logs once (the master gone or back, the queue empty).
struct Idle<'a> {
    settings: &'a Settings,
    client: &'a Client,
    /// The server instance last connected to: a new one is a restarted or new master.
    instance: ServerInstance,
    since: Instant,
    /// Whether this thread has lost the master and not found it again.
    away: bool,
}

impl<'a> Idle<'a> {
    fn new(settings: &'a Settings, client: &'a Client) -> Self {
        Idle {
            settings,
            client,
            instance: client.server_instance(),
            since: Instant::now(),
            away: false,
        }
    }

    fn empty(&mut self) {
        self.connected();
        self.settings.said.empty();
    }

    /// A call was answered: the master is there.
    fn connected(&mut self) {
        let instance = self.client.server_instance();
        if instance != self.instance {
            self.instance = instance;
            self.settings
                .said
                .new_instance(&self.settings.addr, instance);
        }
        if self.away {
            self.away = false;
            self.settings.said.back(&self.settings.addr);
        }
    }

    fn disconnected(&mut self) {
        if !self.away {
            self.away = true;
            self.settings
                .said
                .away(&self.settings.addr, self.settings.idle_exit);
        }
    }

    /// Tasks were taken: the queue is not empty (said at once, before they run, so a thread
    /// finding it empty meanwhile says so).
    fn took(&mut self) {
        self.connected();
        self.settings.said.busy();
    }

    fn busy(&mut self) {
        self.since = Instant::now();
    }

    fn expired(&self) -> bool {
        let expired = self
            .settings
            .idle_exit
            .is_some_and(|limit| self.since.elapsed() >= limit);
        if expired {
            self.settings.said.leaving(self.since.elapsed());
        }
        expired
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn short_tasks_grow_the_batch_and_long_ones_shrink_it_to_one() {
        let mut b = Batch::new(None);
        b.observe(1, MS / 1000); // 1 µs a task: 2,000 fit in the target
        assert_eq!(b.size, Batch::GROWTH, "growth is capped per step");
        b.observe(b.size, 16 * MS / 1000);
        assert_eq!(b.size, 256);
        b.observe(b.size, 256 * MS / 1000);
        assert_eq!(b.size, 2000, "then it settles on what fits in the target");
        b.observe(2000, 20 * MS);
        assert_eq!(b.size, 200, "tasks ten times slower: ten times fewer");
        b.observe(4, 20 * MS);
        assert_eq!(
            b.size, 1,
            "a task slower than the target alone drops to one"
        );
    }

    #[test]
    fn a_short_batch_does_not_grow_and_a_fixed_one_never_changes() {
        let mut b = Batch::new(None);
        b.size = 8;
        b.observe(3, MS / 10);
        assert_eq!(
            b.size, 8,
            "the queue ran short: no sign the batch is too small"
        );
        let mut fixed = Batch::new(Some(5));
        fixed.observe(5, 100 * MS);
        fixed.isolate();
        assert_eq!(fixed.size, 5);
    }
}
