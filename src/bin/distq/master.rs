//! `distq master`: host `tasks` and `results`, hand out a built-in job, collect its results.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use distq::{Error, GetError, Queue, Server};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize, Serializer};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::{JobKind, MasterArgs};
use crate::common::{authkey, bind_addr, log_listening, signal_name, Interrupted};
use crate::jobs::{nqueens, Job, Output, Task, TaskResult};
use crate::{journal_config, queue_config, seconds, server_config, Outcome};

/// How long one wait for a result lasts before the master looks at `tasks.dead` again.
const SLICE: Duration = Duration::from_millis(200);

/// The most dead-lettered tasks the error message names one by one.
const NAMED: usize = 10;

/// How long a master waits without any worker connected before it says how to start one.
const HINT_AFTER: Duration = Duration::from_secs(3);

pub fn run(args: MasterArgs) -> Outcome {
    let key = authkey(&args.key)?;
    let bind = bind_addr(&args.bind)?;
    let timeout = seconds("timeout", args.timeout)?;
    let config = queue_config(&args.leases)?;
    let (max_redeliveries, lease_timeout) = (config.max_redeliveries, config.lease_timeout);
    let mut builder = Server::builder()
        .authkey(key)
        .config(server_config(&args.server))
        .queue_with("tasks", config.clone())
        .queue_with("results", config);
    if let Some(journal) = journal_config(&args.server) {
        builder = builder.journal(journal);
    }
    let server = builder.bind(&bind)?;
    log_listening(&server);
    // SIGINT or SIGTERM ends the collection with how far it got; registered before any
    // work, so an early Ctrl-C is never the default kill.
    let interrupted = Arc::new(AtomicI32::new(0));
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let signal_control = signals.handle();
    {
        let interrupted = Arc::clone(&interrupted);
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    interrupted.store(signal, Ordering::SeqCst);
                }
            })?;
    }
    let master = Master {
        server: &server,
        started: Instant::now(),
        interrupted,
        tasks: server.queue("tasks")?,
        results: server.queue("results")?,
        dead_tasks: server.queue("tasks.dead")?,
        run: rand::random(),
        timeout,
        max_redeliveries,
        lease_timeout,
    };
    let outcome = match args.job {
        JobKind::Squares => master.squares(args.count),
        JobKind::Nqueens => master.nqueens(args.n, args.split_depth),
    };
    signal_control.close();
    server.shutdown();
    outcome
}

struct Master<'s> {
    /// For the count of connected workers (the master's own queue handles are in-process,
    /// not connections).
    server: &'s Server,
    started: Instant,
    /// The signal that asked the master to stop, 0 while none has.
    interrupted: Arc<AtomicI32>,
    tasks: Queue<Task>,
    /// Taken as anything well-formed, so a stray result is dropped rather than failing the run.
    results: Queue<Incoming<TaskResult>>,
    /// `tasks.dead`, watched while collecting: a task there will never be answered.
    dead_tasks: Queue<Incoming<Task>>,
    /// Tags this run's tasks, so results from any other run are ignored.
    run: u64,
    timeout: Duration,
    max_redeliveries: u32,
    lease_timeout: Duration,
}

/// An item as it came off a queue: one of ours, or any other well-formed value. A stray item
/// then is taken, logged and dropped: were it a decode failure, an in-process take would give
/// it back, and the next take would meet it again.
#[derive(Deserialize)]
#[serde(untagged)]
enum Incoming<T> {
    Ours(T),
    Stray(IgnoredAny),
}

/// Queues need both directions; the master only ever takes these.
impl<T: Serialize> Serialize for Incoming<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Incoming::Ours(item) => item.serialize(s),
            Incoming::Stray(_) => s.serialize_unit(),
        }
    }
}

/// Why a job ended without every result.
#[derive(Debug)]
enum JobFailed {
    /// The results did not all arrive within `--timeout`.
    TimedOut {
        arrived: usize,
        expected: u64,
        timeout: Duration,
    },
    /// Tasks moved to `tasks.dead` before they were answered: they will never be.
    DeadLettered {
        lost: BTreeMap<u64, Job>,
        max_redeliveries: u32,
        lease_timeout: Duration,
    },
}

impl fmt::Display for JobFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobFailed::TimedOut {
                arrived,
                expected,
                timeout,
            } => write!(
                f,
                "timed out: {arrived} of {expected} results arrived within {timeout:?} (are workers running?)"
            ),
            JobFailed::DeadLettered {
                lost,
                max_redeliveries,
                lease_timeout,
            } => {
                write!(
                    f,
                    "{} task(s) moved to tasks.dead after coming back more than {max_redeliveries} \
                     time(s) (--max-redeliveries {max_redeliveries}), so this job cannot complete:",
                    lost.len()
                )?;
                for (id, job) in lost.iter().take(NAMED) {
                    write!(f, " task {id} ({job:?});")?;
                }
                if lost.len() > NAMED {
                    write!(f, " and {} more;", lost.len() - NAMED)?;
                }
                write!(
                    f,
                    " a task comes back when a worker nacks it, when its lease runs out \
                     (--lease-timeout {:.0} s) or when the connection of the worker running it \
                     breaks (a worker killed, or crashed by that task): the workers' logs say \
                     which. If the tasks are sound and workers were only restarted, run again \
                     with a higher --max-redeliveries. (A `distq serve` server keeps its dead \
                     letters: `distq stats --connect ADDR` counts them per queue, and any \
                     client can read NAME.dead.)",
                    lease_timeout.as_secs_f64()
                )
            }
        }
    }
}

impl std::error::Error for JobFailed {}

/// The address a worker on this machine would dial: an all-interfaces bind is reached at
/// the loopback address.
fn hint_addr(local: SocketAddr) -> SocketAddr {
    match local.ip().is_unspecified() {
        true => SocketAddr::from(([127, 0, 0, 1], local.port())),
        false => local,
    }
}

impl Master<'_> {
    /// The seed's master: random integers out, their squares back, printed as they come.
    fn squares(&self, count: u64) -> Outcome {
        let mut rng = rand::rng();
        for id in 0..count {
            let n = rng.random_range(0..=10_000);
            println!("Put task {n}...");
            self.tasks.put(self.task(id, Job::Square { n }))?;
        }
        println!("Try get results...");
        let progress = self.progress(count, "results")?;
        let outcome = self.collect(count, &progress, |_, output| match output {
            Output::Text(line) => {
                progress.suspend(|| println!("Result: {line}"));
                progress.inc(1);
                true
            }
            Output::Count(_) => false,
        });
        progress.finish_and_clear();
        outcome
    }

    /// N-Queens split by the placement of the first rows; prints `solutions: <count>` last.
    fn nqueens(&self, n: u8, depth: u8) -> Outcome {
        let prefixes = nqueens::prefixes(n, depth);
        let total = prefixes.len() as u64;
        let tasks = prefixes
            .into_iter()
            .zip(0..)
            .map(|(prefix, id)| self.task(id, Job::Nqueens { n, prefix }));
        self.tasks.put_many(tasks.collect::<Vec<_>>())?;
        println!("Put {total} tasks: N-Queens n={n}, first {depth} row(s) placed by the master");
        let progress = self.progress(total, "tasks")?;
        let mut solutions = 0;
        let outcome = self.collect(total, &progress, |_, output| match output {
            Output::Count(c) => {
                solutions += c;
                progress.inc(1);
                true
            }
            Output::Text(_) => false,
        });
        progress.finish_and_clear();
        outcome?;
        println!("solutions: {solutions}");
        Ok(())
    }

    /// The progress bar, drawn from the start (on a terminal only) with the number of
    /// workers connected.
    fn progress(
        &self,
        total: u64,
        what: &str,
    ) -> Result<ProgressBar, indicatif::style::TemplateError> {
        let template = format!(
            "{{bar:40}} {{pos}}/{{len}} {what}, {{msg}}, {{elapsed}} elapsed, ~{{eta}} left"
        );
        let progress = ProgressBar::new(total).with_style(ProgressStyle::with_template(&template)?);
        progress.set_message("0 workers connected");
        progress.enable_steady_tick(Duration::from_millis(500));
        Ok(progress)
    }

    /// Updates the workers count on the bar, and once, a few seconds into a run without any,
    /// says how to start one.
    fn show_workers(&self, progress: &ProgressBar, hinted: &mut bool) {
        let connected = self.server.stats().connections;
        progress.set_message(format!("{connected} worker connection(s)"));
        if connected == 0 && !*hinted && self.started.elapsed() >= HINT_AFTER {
            *hinted = true;
            let addr = hint_addr(self.server.local_addr());
            progress.suspend(|| {
                log::info!("no worker connected yet: start one with: distq worker --connect {addr}")
            });
        }
    }

    fn task(&self, id: u64, job: Job) -> Task {
        Task {
            run: self.run,
            id,
            job,
        }
    }

    /// Takes results until every task id `0..expected` has answered once. `accept` sees each
    /// first answer and says whether it has the right shape. Fails at `--timeout`, or at once
    /// when an unanswered task reaches `tasks.dead`: it would never be answered.
    fn collect(
        &self,
        expected: u64,
        progress: &ProgressBar,
        mut accept: impl FnMut(u64, Output) -> bool,
    ) -> Outcome {
        let deadline = Instant::now().checked_add(self.timeout);
        let mut seen = HashSet::new();
        let mut lost = BTreeMap::new();
        let mut hinted = false;
        while (seen.len() as u64) < expected {
            self.show_workers(progress, &mut hinted);
            let signal = self.interrupted.load(Ordering::SeqCst);
            if signal != 0 {
                return Err(Interrupted(format!(
                    "interrupted by {}: {} of {expected} results were in",
                    signal_name(signal),
                    seen.len()
                ))
                .into());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(JobFailed::TimedOut {
                    arrived: seen.len(),
                    expected,
                    timeout: self.timeout,
                }
                .into());
            }
            let slice = now + SLICE;
            let until = deadline.map_or(slice, |d| d.min(slice));
            if let Some(result) = self.next_result(self.results.get_deadline(until))? {
                self.record(result, expected, &mut seen, &mut accept);
            }
            self.read_dead_tasks(expected, &mut lost)?;
            lost.retain(|id, _| !seen.contains(id));
            if !lost.is_empty() {
                // A dead task's result may be in already (its acknowledgement was lost):
                // take every result waiting before giving up.
                loop {
                    match self.results.try_get() {
                        Err(GetError::Empty) => break,
                        got => {
                            if let Some(result) = self.next_result(got)? {
                                self.record(result, expected, &mut seen, &mut accept);
                            }
                        }
                    }
                }
                lost.retain(|id, _| !seen.contains(id));
                if !lost.is_empty() {
                    return Err(JobFailed::DeadLettered {
                        lost,
                        max_redeliveries: self.max_redeliveries,
                        lease_timeout: self.lease_timeout,
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    /// A result from a get, `None` if there was none to use.
    fn next_result(
        &self,
        got: Result<Incoming<TaskResult>, GetError>,
    ) -> Result<Option<TaskResult>, GetError> {
        match got {
            Ok(Incoming::Ours(result)) => Ok(Some(result)),
            Ok(Incoming::Stray(_)) => {
                log::warn!("ignoring an item on results that is not a distq task result");
                Ok(None)
            }
            Err(GetError::Empty) => Ok(None),
            // Not CBOR at all: the take gave it back, counting a return, so it reaches
            // results.dead after --max-redeliveries takes (the server warns then).
            Err(GetError::Failed(Error::Payload(e))) => {
                log::debug!("an item on results is not CBOR ({e}); given back");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn record(
        &self,
        result: TaskResult,
        expected: u64,
        seen: &mut HashSet<u64>,
        accept: &mut impl FnMut(u64, Output) -> bool,
    ) {
        if result.run != self.run || result.id >= expected {
            log::warn!("ignoring a result for another run or an unknown task");
        } else if seen.contains(&result.id) {
            log::debug!("task {}: duplicate result ignored", result.id);
        } else if accept(result.id, result.output) {
            seen.insert(result.id);
        } else {
            log::warn!("task {}: result of the wrong kind ignored", result.id);
        }
    }

    /// Moves this run's tasks waiting in `tasks.dead` into `lost`. Each waiting item is looked
    /// at once: one that is not CBOR goes back to the end of the dead letters.
    fn read_dead_tasks(&self, expected: u64, lost: &mut BTreeMap<u64, Job>) -> Outcome {
        for _ in 0..self.dead_tasks.len()? {
            match self.dead_tasks.try_get() {
                Ok(Incoming::Ours(task)) if task.run == self.run && task.id < expected => {
                    lost.insert(task.id, task.job);
                }
                Ok(_) => {
                    log::warn!("ignoring an item on tasks.dead that is not a task of this run")
                }
                Err(GetError::Empty) => break,
                Err(GetError::Failed(Error::Payload(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
