//! `distq master`: host `tasks` and `results`, hand out a built-in job, collect its results.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use distq::{
    Client, Delivery, Error, GetError, Queue, QueueConfig, Reconnect, Server, MAX_LEASE_TIMEOUT,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize, Serializer};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::{JobKind, MasterArgs};
use crate::common::{
    authkey, authkey_for, bind_addr, is_redis, log_listening, redacted, signal_name, Interrupted,
};
use crate::jobs::{nqueens, Job, Output, Task, TaskResult};
use crate::{journal_config, python_listener, queue_config, seconds, server_config, Outcome};

/// How long one wait for a result lasts before the master looks at `tasks.dead` again.
const SLICE: Duration = Duration::from_millis(200);

/// The most dead-lettered tasks the error message names one by one.
const NAMED: usize = 10;

/// How long a master waits without any worker connected before it says how to start one.
const HINT_AFTER: Duration = Duration::from_secs(3);

/// With `--journal`: the queue holding the record of the job under way, from before its
/// first task is put until its answer is out. A master that finds one resumes that job.
const JOB_QUEUE: &str = "master.job";

pub fn run(args: MasterArgs) -> Outcome {
    if let Some(url) = &args.connect {
        return run_on_redis(&args, url);
    }
    let bind = bind_addr(args.bind.as_deref().unwrap_or_default())?;
    let key = authkey(&args.key)?;
    let timeout = seconds("timeout", args.timeout)?;
    let config = queue_config(&args.leases, false)?;
    let (max_redeliveries, lease_timeout) = (config.max_redeliveries, config.lease_timeout);
    let journal = journal_config(&args.server);
    // With a journal the master holds each result under an in-process lease until the
    // answer is out (a SIGKILL then loses none of them): such a lease must not run out.
    let results_config = match journal {
        Some(_) => config.clone().lease_timeout(MAX_LEASE_TIMEOUT),
        None => config.clone(),
    };
    if args.server.python_bind.is_some() && args.server.journal.is_some() {
        return Err(PlainJournal.into());
    }
    let mut builder = Server::builder()
        .authkey(key)
        .config(server_config(&args.server))
        .queue_with("tasks", config)
        .queue_with("results", results_config);
    if let Some(journal) = journal {
        builder = builder
            .queue_with(JOB_QUEUE, QueueConfig::default())
            .journal(journal);
    }
    let server = python_listener(builder, &args.server)?.bind(&bind)?;
    log_listening(&server);
    let (interrupted, signal_control) = watch_signals()?;
    let kept = match &args.server.journal {
        Some(dir) => Some(Kept {
            dir: dir.clone(),
            job: server.queue(JOB_QUEUE)?,
            results: RefCell::new(Vec::new()),
        }),
        None => None,
    };
    let master = Master {
        host: Host::Server(&server),
        started: Instant::now(),
        interrupted,
        tasks: server.queue("tasks")?,
        results: server.queue("results")?,
        dead_tasks: server.queue("tasks.dead")?,
        run: Cell::new(rand::random()),
        timeout,
        max_redeliveries,
        lease_timeout,
        kept,
        strays: Cell::new(0),
    };
    let outcome = match args.job {
        JobKind::Squares if server.python_addr().is_some() => master.squares_plain(args.count),
        JobKind::Squares => master.squares(args.count),
        JobKind::Nqueens => master.nqueens(args.n, args.split_depth),
    };
    let outcome = outcome.and_then(|()| master.finish());
    // Before the server stops: an unfinished job's results go back uncounted (`Kept`'s drop).
    drop(master);
    signal_control.close();
    server.shutdown();
    outcome
}

/// `distq master --connect redis://…`: nothing is bound; the master declares `tasks` and
/// `results` in Redis (or gives them its settings), puts the job and collects it there.
fn run_on_redis(args: &MasterArgs, url: &str) -> Outcome {
    if !is_redis(url) {
        return Err(format!(
            "--connect {url:?}: a master connects to Redis only (redis://HOST:PORT); to host \
             the queues itself, give --bind HOST:PORT"
        )
        .into());
    }
    if args.server.journal.is_some() || args.server.python_bind.is_some() {
        return Err(
            "--journal and --python-bind are for a master that hosts its queues \
                    (--bind); on Redis, persistence is Redis's own (appendonly yes)"
                .into(),
        );
    }
    let key = authkey_for(url, &args.key)?;
    let timeout = seconds("timeout", args.timeout)?;
    let config = queue_config(&args.leases, true)?;
    // Redis may restart under a job: reconnect until the job's own time runs out.
    let client = Client::builder()
        .reconnect(Reconnect::default().give_up(timeout))
        .connect(url, &key)?;
    // Results first: a worker waits for `tasks`, and then finds `results` there too.
    for name in ["results", "tasks"] {
        client.declare_queue(name, config.clone())?;
    }
    log::info!(
        "queues tasks and results declared on Redis at {}",
        redacted(url)
    );
    // The queues outlive their masters: what an interrupted run left is still there.
    let left = client.queue::<()>("tasks")?.len()?;
    if left > 0 {
        log::info!(
            "tasks holds {left} task(s) an earlier run left: workers run them too and their \
             results are ignored (drop them first with distq get --connect URL -q tasks --max {left})"
        );
    }
    let answers = client.queue::<()>("results")?.len()?;
    if answers > 0 {
        log::info!(
            "results holds {answers} result(s) an earlier run left: they are ignored (drop \
             them first with distq get --connect URL -q results --max {answers})"
        );
    }
    let taken_before = taken(&client);
    let (interrupted, signal_control) = watch_signals()?;
    let master = Master {
        host: Host::Redis {
            client: client.clone(),
            url: redacted(url),
            taken_before,
        },
        started: Instant::now(),
        interrupted,
        tasks: client.queue("tasks")?,
        results: client.queue("results")?,
        dead_tasks: client.queue("tasks.dead")?,
        run: Cell::new(rand::random()),
        timeout,
        max_redeliveries: config.max_redeliveries,
        lease_timeout: config.lease_timeout,
        kept: None,
        strays: Cell::new(0),
    };
    let outcome = match args.job {
        JobKind::Squares => master.squares(args.count),
        JobKind::Nqueens => master.nqueens(args.n, args.split_depth),
    };
    drop(master);
    signal_control.close();
    outcome
}

/// SIGINT or SIGTERM ends the collection with how far it got; registered before any work,
/// so an early Ctrl-C is never the default kill.
fn watch_signals() -> std::io::Result<(Arc<AtomicI32>, signal_hook::iterator::Handle)> {
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
    Ok((interrupted, signal_control))
}

/// Where the master's queues are.
enum Host<'s> {
    /// Its own server.
    Server(&'s Server),
    /// Redis, through this client; the URL without its password, for hints; how many tasks
    /// had been taken there before this master began.
    Redis {
        client: Client,
        url: String,
        taken_before: u64,
    },
}

/// How many tasks were ever taken from `tasks` on Redis (leased now or acknowledged).
fn taken(client: &Client) -> u64 {
    client.stats().map_or(0, |stats| {
        stats
            .queues
            .iter()
            .find(|q| q.name == "tasks")
            .map_or(0, |q| q.leased + q.acked)
    })
}

impl Host<'_> {
    fn queue<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Queue<T>, Error> {
        match self {
            Host::Server(server) => server.queue(name),
            Host::Redis { client, .. } => client.queue(name),
        }
    }
}

struct Master<'s> {
    /// For the count of connected workers (the master's own queue handles are in-process,
    /// not connections), and the queues the job needs beyond its own three.
    host: Host<'s>,
    started: Instant,
    /// The signal that asked the master to stop, 0 while none has.
    interrupted: Arc<AtomicI32>,
    tasks: Queue<Task>,
    /// Taken as anything well-formed, so a stray result is dropped rather than failing the run.
    results: Queue<Incoming<TaskResult>>,
    /// `tasks.dead`, watched while collecting: a task there will never be answered.
    dead_tasks: Queue<Incoming<Task>>,
    /// Tags this run's tasks, so results from any other run are ignored; a resumed job's
    /// is the one its journal recorded.
    run: Cell<u64>,
    timeout: Duration,
    max_redeliveries: u32,
    lease_timeout: Duration,
    /// With `--journal`: what keeps the job resumable.
    kept: Option<Kept>,
    /// Results ignored as another run's, so far.
    strays: Cell<u64>,
}

/// With `--journal`, results are not taken for good as they arrive: each task's first result
/// stays stored, leased to the master, and the job's record stays in [`JOB_QUEUE`], until the
/// answer is out. A master SIGKILLed meanwhile loses nothing: started again on the journal, it
/// finds the record and the results (back as ready: a lease ends with its process), and puts
/// only the tasks neither waiting nor answered. The journal holds every task's state, so the
/// master needs no state file of its own; the price is that results stay in memory (and in
/// the journal) until the end.
struct Kept {
    /// The journal's directory, for the log.
    dir: PathBuf,
    job: Queue<Incoming<JobRecord>>,
    /// The first result of each task answered, under an in-process lease.
    results: RefCell<Vec<Delivery<Incoming<TaskResult>>>>,
}

/// The job under way, as [`JOB_QUEUE`] holds it.
#[derive(Debug, Serialize, Deserialize)]
struct JobRecord {
    /// The run id its tasks carry.
    #[serde(rename = "r")]
    run: u64,
    /// The job as its flags name it (`nqueens --n 10 --split-depth 2`): a master resumes
    /// only the job it was asked for.
    #[serde(rename = "j")]
    job: String,
}

/// Why a master with `--journal` cannot run the job it was asked for.
#[derive(Debug)]
enum Resume {
    /// The journal holds another job, unfinished.
    OtherJob {
        dir: PathBuf,
        held: String,
        asked: String,
    },
    /// [`JOB_QUEUE`] holds an item no master wrote.
    NotAJob { dir: PathBuf },
}

impl fmt::Display for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resume::OtherJob { dir, held, asked } => write!(
                f,
                "the journal in {} holds an unfinished job, `{held}`: run the master with that \
                 job to finish it, or give `{asked}` a --journal directory of its own",
                dir.display()
            ),
            Resume::NotAJob { dir } => write!(
                f,
                "the journal in {} holds an item on {JOB_QUEUE} that no distq master wrote: \
                 give the master a --journal directory of its own",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for Resume {}

impl Drop for Kept {
    /// A job left unfinished (an error, a signal) gives its results back as they were, last
    /// first so their order stays: a dropped delivery would count a failed delivery, and a
    /// job stopped often enough would dead-letter them.
    fn drop(&mut self) {
        for result in self.results.take().into_iter().rev() {
            let _ = result.give_back();
        }
    }
}

/// A result taken with a journal, and its lease.
type Held = Delivery<Incoming<TaskResult>>;

/// Any failure of the master's own work.
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Takes every item waiting in `queue` for good; returns how many there were.
fn drain(queue: &Queue<Incoming<()>>) -> Result<u64, GetError> {
    let mut dropped = 0;
    for _ in 0..queue.len().map_err(GetError::Failed)? {
        match queue.try_get() {
            Ok(_) => dropped += 1,
            Err(GetError::Empty) => break,
            // Not CBOR: given back, counted, so it reaches the dead letters in time.
            Err(GetError::Failed(Error::Payload(_))) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(dropped)
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

/// `--python-bind` with `--journal`: a resumed job finds its tasks by their ids, which the
/// seed's plain data (what Python workers read) does not carry.
#[derive(Debug)]
struct PlainJournal;

impl fmt::Display for PlainJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "--python-bind cannot be used with --journal: Python workers get the seed's plain \
             data, which carries no task ids to resume a job by (run distq serve --journal \
             --python-bind to keep Python clients' queues in a journal)",
        )
    }
}

impl std::error::Error for PlainJournal {}

/// Whether `line` is `"n * n = m"` with the right square of a number still unanswered (it is
/// then answered).
fn answered(line: &str, unanswered: &mut BTreeMap<i64, u64>) -> bool {
    let Some(n) = line
        .split_once(" * ")
        .and_then(|(n, _)| n.trim().parse::<i64>().ok())
    else {
        return false;
    };
    if crate::jobs::squares::square(n) != line {
        return false;
    }
    match unanswered.get_mut(&n) {
        Some(left) if *left > 1 => *left -= 1,
        Some(_) => {
            unanswered.remove(&n);
        }
        None => return false,
    }
    true
}

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
        let present = self.start(&format!("squares --count {count}"), count)?;
        let mut rng = rand::rng();
        for id in (0..count).filter(|id| !present.contains(id)) {
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

    /// The seed's master with the seed's own data, for Python workers (`--python-bind`): a
    /// task is a plain integer, a result the plain string `"n * n = m"`. Each result is
    /// checked against the numbers still unanswered; any other is ignored with a warning.
    fn squares_plain(&self, count: u64) -> Outcome {
        let tasks = self.host.queue::<i64>("tasks")?;
        let results = self.host.queue::<Incoming<String>>("results")?;
        let dead = self.host.queue::<Incoming<i64>>("tasks.dead")?;
        let mut rng = rand::rng();
        // Each number put, by how many times it is still to be answered.
        let mut unanswered: BTreeMap<i64, u64> = BTreeMap::new();
        for _ in 0..count {
            let n = rng.random_range(0..=10_000);
            println!("Put task {n}...");
            tasks.put(n)?;
            *unanswered.entry(n).or_default() += 1;
        }
        println!("Try get results...");
        let progress = self.progress(count, "results")?;
        let deadline = Instant::now().checked_add(self.timeout);
        let (mut arrived, mut hinted) = (0u64, false);
        let outcome = loop {
            if arrived == count {
                break Ok(());
            }
            self.show_workers(&progress, &mut hinted);
            let signal = self.interrupted.load(Ordering::SeqCst);
            if signal != 0 {
                break Err(Interrupted(format!(
                    "interrupted by {}: {arrived} of {count} results were in",
                    signal_name(signal)
                ))
                .into());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break Err(JobFailed::TimedOut {
                    arrived: arrived as usize,
                    expected: count,
                    timeout: self.timeout,
                }
                .into());
            }
            let until = deadline.map_or(now + SLICE, |d| d.min(now + SLICE));
            match results.get_deadline(until) {
                Ok(Incoming::Ours(line)) => match answered(&line, &mut unanswered) {
                    true => {
                        progress.suspend(|| println!("Result: {line}"));
                        progress.inc(1);
                        arrived += 1;
                    }
                    false => log::warn!("ignoring a result that answers no task: {line:?}"),
                },
                Ok(Incoming::Stray(_)) => log::warn!("ignoring a result that is not a string"),
                Err(GetError::Empty) => {}
                Err(GetError::Failed(Error::Payload(e))) => {
                    log::debug!("an item on results is not CBOR ({e}); given back")
                }
                Err(e) => break Err(e.into()),
            }
            match dead.try_get() {
                Ok(Incoming::Ours(n)) if unanswered.contains_key(&n) => {
                    break Err(JobFailed::DeadLettered {
                        lost: BTreeMap::from([(0, Job::Square { n })]),
                        max_redeliveries: self.max_redeliveries,
                        lease_timeout: self.lease_timeout,
                    }
                    .into());
                }
                Ok(_) => {
                    log::warn!("ignoring an item on tasks.dead that is not a task of this run")
                }
                Err(GetError::Empty) | Err(GetError::Failed(Error::Payload(_))) => {}
                Err(e) => break Err(e.into()),
            }
        };
        progress.finish_and_clear();
        outcome
    }

    /// N-Queens split by the placement of the first rows; prints `solutions: <count>` last.
    fn nqueens(&self, n: u8, depth: u8) -> Outcome {
        let prefixes = nqueens::prefixes(n, depth);
        let total = prefixes.len() as u64;
        let present = self.start(&format!("nqueens --n {n} --split-depth {depth}"), total)?;
        let tasks: Vec<_> = prefixes
            .into_iter()
            .zip(0..)
            .filter(|(_, id)| !present.contains(id))
            .map(|(prefix, id)| self.task(id, Job::Nqueens { n, prefix }))
            .collect();
        let put = tasks.len();
        if put > 0 {
            self.tasks.put_many(tasks)?;
        }
        match present.is_empty() {
            true => println!(
                "Put {put} tasks: N-Queens n={n}, first {depth} row(s) placed by the master"
            ),
            // A resumed job: the rest are waiting or answered in the journal.
            false => println!(
                "Put {put} of {total} tasks (the others were in the journal): N-Queens n={n}, \
                 first {depth} row(s) placed by the master"
            ),
        }
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
        let (idle, shown, addr) = match &self.host {
            Host::Server(server) => {
                let connected = server.stats().connections;
                let addr = hint_addr(server.local_addr()).to_string();
                (
                    connected == 0,
                    format!("{connected} worker connection(s)"),
                    addr,
                )
            }
            // Redis counts every client, not workers: whether any task was ever taken
            // says whether a worker is there.
            Host::Redis {
                client,
                url,
                taken_before,
            } => {
                let Ok(stats) = client.stats() else {
                    return;
                };
                let taken = stats
                    .queues
                    .iter()
                    .find(|q| q.name == "tasks")
                    .map_or(0, |q| q.leased + q.acked);
                let shown = format!("{} Redis client(s) connected", stats.connections);
                (taken <= *taken_before, shown, url.clone())
            }
        };
        progress.set_message(shown);
        if idle && !*hinted && self.started.elapsed() >= HINT_AFTER {
            *hinted = true;
            progress.suspend(|| {
                log::info!("no worker connected yet: start one with: distq worker --connect {addr}")
            });
        }
    }

    fn task(&self, id: u64, job: Job) -> Task {
        Task {
            run: self.run.get(),
            id,
            job,
            plain: false,
        }
    }

    /// With a journal, before any task is put: the ids of the tasks of the job it holds
    /// unfinished (waiting in `tasks`, or answered in `results`), which need no new put; for
    /// a new job none, after recording it in [`JOB_QUEUE`]. Without a journal, none.
    fn start(&self, job: &str, total: u64) -> Result<HashSet<u64>, Failure> {
        let Some(kept) = &self.kept else {
            return Ok(HashSet::new());
        };
        let not_a_job = || Resume::NotAJob {
            dir: kept.dir.clone(),
        };
        let record = match kept.job.try_reserve() {
            Ok(record) => record,
            Err(GetError::Empty) => {
                self.begin(kept, job)?;
                return Ok(HashSet::new());
            }
            Err(GetError::Failed(Error::Payload(_))) => return Err(not_a_job().into()),
            Err(e) => return Err(e.into()),
        };
        let held = match record.item() {
            Incoming::Ours(held) => Some((held.run, held.job.clone())),
            Incoming::Stray(_) => None,
        };
        // The record stays until the answer is out.
        record.give_back()?;
        let (run, held) = held.ok_or_else(not_a_job)?;
        if held != job {
            return Err(Resume::OtherJob {
                dir: kept.dir.clone(),
                held,
                asked: job.to_owned(),
            }
            .into());
        }
        self.run.set(run);
        // Tasks first: one a worker holds now is not seen waiting, but its answer may be by
        // the time results are looked at. One missed still is put again: a second
        // computation, whose result the master ignores.
        let tasks = self.host.queue::<Incoming<Task>>("tasks")?;
        let waiting = self.scan(&tasks, total, |t| (t.run, t.id))?;
        let answered = self.scan(&self.results, total, |r| (r.run, r.id))?;
        let mut present = waiting.clone();
        present.extend(&answered);
        log::info!(
            "resuming the unfinished job in the journal {}: {} of {total} result(s) in, {} \
             task(s) waiting, {} task(s) to put again",
            kept.dir.display(),
            answered.len(),
            waiting.len(),
            total - present.len() as u64
        );
        Ok(present)
    }

    /// A new job on a journal: what a finished job left (a result that came twice, a task
    /// run twice) is dropped, then the job is recorded.
    fn begin(&self, kept: &Kept, job: &str) -> Outcome {
        let mut dropped = 0;
        for name in ["tasks", "results", "tasks.dead", "results.dead"] {
            dropped += drain(&self.host.queue(name)?)?;
        }
        if dropped > 0 {
            log::info!(
                "dropped {dropped} item(s) a finished job left in the journal {}",
                kept.dir.display()
            );
        }
        kept.job.put(Incoming::Ours(JobRecord {
            run: self.run.get(),
            job: job.to_owned(),
        }))?;
        Ok(())
    }

    /// The ids of this run's tasks with an item waiting in `queue` (`key` gives an item's run
    /// and task id). Each item is looked at once and given back in place; a second item of
    /// the same task, or an item of no task of this run, is dropped.
    fn scan<T: Serialize + DeserializeOwned>(
        &self,
        queue: &Queue<Incoming<T>>,
        total: u64,
        key: impl Fn(&T) -> (u64, u64),
    ) -> Result<HashSet<u64>, Failure> {
        let mut ids = HashSet::new();
        let mut held = Vec::new();
        for _ in 0..queue.len()? {
            match queue.try_reserve() {
                Ok(item) => {
                    let id = match item.item() {
                        Incoming::Ours(ours) => Some(key(ours)),
                        Incoming::Stray(_) => None,
                    };
                    match id {
                        Some((run, id))
                            if run == self.run.get() && id < total && ids.insert(id) =>
                        {
                            held.push(item)
                        }
                        _ => item.ack()?,
                    }
                }
                Err(GetError::Empty) => break,
                Err(GetError::Failed(Error::Payload(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Each back to the front, last first: the queue's order stays as it was.
        for item in held.into_iter().rev() {
            item.give_back()?;
        }
        Ok(ids)
    }

    /// With a journal, once the answer is out: the job's record goes, then its results (a
    /// master killed in between starts the next job afresh, dropping them).
    fn finish(&self) -> Outcome {
        let Some(kept) = &self.kept else {
            return Ok(());
        };
        for _ in 0..kept.job.len()? {
            match kept.job.try_get() {
                Ok(_) | Err(GetError::Failed(Error::Payload(_))) => {}
                Err(GetError::Empty) => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.results.ack_many(kept.results.take())?;
        Ok(())
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
            match self.take_result(Some(until)) {
                Ok(Some((result, lease))) => {
                    self.keep(result, lease, expected, &mut seen, &mut accept)?
                }
                // Redis is restarting: the client reconnects within --timeout.
                Ok(None) | Err(GetError::Empty) | Err(GetError::Failed(Error::Reconnecting)) => {}
                Err(e) => return Err(e.into()),
            }
            self.read_dead_tasks(expected, &mut lost)?;
            lost.retain(|id, _| !seen.contains(id));
            if !lost.is_empty() {
                // A dead task's result may be in already (its acknowledgement was lost):
                // take every result waiting before giving up.
                loop {
                    match self.take_result(None) {
                        Err(GetError::Empty) | Err(GetError::Failed(Error::Reconnecting)) => break,
                        Ok(Some((result, lease))) => {
                            self.keep(result, lease, expected, &mut seen, &mut accept)?
                        }
                        Ok(None) => {}
                        Err(e) => return Err(e.into()),
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

    /// The next result, by `until` (`None`: only one waiting now; [`GetError::Empty`] if
    /// none): taken for good without a journal, with one under a lease (see [`Kept`]).
    /// `None` for an item that is no result, dropped.
    fn take_result(
        &self,
        until: Option<Instant>,
    ) -> Result<Option<(TaskResult, Option<Held>)>, GetError> {
        if self.kept.is_none() {
            let got = match until {
                Some(until) => self.results.get_deadline(until),
                None => self.results.try_get(),
            };
            return Ok(self.next_result(got)?.map(|result| (result, None)));
        }
        let got = match until {
            Some(until) => self
                .results
                .reserve_timeout(until.saturating_duration_since(Instant::now())),
            None => self.results.try_reserve(),
        };
        match got {
            Ok(lease) => match lease.item() {
                Incoming::Ours(result) => Ok(Some((result.clone(), Some(lease)))),
                Incoming::Stray(_) => {
                    log::warn!("ignoring an item on results that is not a distq task result");
                    lease.ack().map_err(GetError::Failed)?;
                    Ok(None)
                }
            },
            Err(e) => self.next_result(Err(e)).map(|_| None),
        }
    }

    /// Records a result; with a journal, holds the lease of a task's first answer and drops
    /// any other.
    fn keep(
        &self,
        result: TaskResult,
        lease: Option<Held>,
        expected: u64,
        seen: &mut HashSet<u64>,
        accept: &mut impl FnMut(u64, Output) -> bool,
    ) -> Result<(), Error> {
        let first = self.record(result, expected, seen, accept);
        match (lease, &self.kept) {
            (Some(lease), Some(kept)) if first => kept.results.borrow_mut().push(lease),
            (Some(lease), _) => lease.ack()?,
            (None, _) => {}
        }
        Ok(())
    }

    /// A result from a get, `None` if there was none to use; [`GetError::Empty`] passes.
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
            // Not CBOR at all: the take gave it back, counting a return, so it reaches
            // results.dead after --max-redeliveries takes (the server warns then).
            Err(GetError::Failed(Error::Payload(e))) => {
                log::debug!("an item on results is not CBOR ({e}); given back");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `result` is the first answer of one of this run's tasks, as `accept` takes it.
    fn record(
        &self,
        result: TaskResult,
        expected: u64,
        seen: &mut HashSet<u64>,
        accept: &mut impl FnMut(u64, Output) -> bool,
    ) -> bool {
        if result.run != self.run.get() || result.id >= expected {
            match self.strays.replace(self.strays.get() + 1) {
                0 => log::warn!(
                    "ignoring a result for another run or an unknown task (said once; the \
                     others at debug)"
                ),
                _ => log::debug!("ignoring a result for another run or an unknown task"),
            }
        } else if seen.contains(&result.id) {
            log::debug!("task {}: duplicate result ignored", result.id);
        } else if accept(result.id, result.output) {
            seen.insert(result.id);
            return true;
        } else {
            log::warn!("task {}: result of the wrong kind ignored", result.id);
        }
        false
    }

    /// Moves this run's tasks waiting in `tasks.dead` into `lost`. Each waiting item is looked
    /// at once: one that is not CBOR goes back to the end of the dead letters.
    fn read_dead_tasks(&self, expected: u64, lost: &mut BTreeMap<u64, Job>) -> Outcome {
        for _ in 0..self.dead_tasks.len()? {
            match self.dead_tasks.try_get() {
                Ok(Incoming::Ours(task)) if task.run == self.run.get() && task.id < expected => {
                    lost.insert(task.id, task.job);
                }
                Ok(_) => {
                    log::warn!("ignoring an item on tasks.dead that is not a task of this run")
                }
                Err(GetError::Empty) | Err(GetError::Failed(Error::Reconnecting)) => break,
                Err(GetError::Failed(Error::Payload(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
