//! `distq worker --exec PROG [ARG...]` / `--sh 'SCRIPT'`: one command per task.
//!
//! Each slot is a thread with its own connection that takes one task at a time, runs its
//! command (process.rs), classifies the outcome (outcome.rs) and reports: the result goes
//! to the task's `reply_to` (or `--results-queue`) with the next take, in one request that
//! also acknowledges the task once the result is stored. A retry is re-put to the queue with
//! a delay; a permanent failure goes to `QUEUE.dead` with the full task record. The
//! watchdog (watchdog.rs) kills the commands' process groups if the worker itself dies.

pub mod outcome;
pub mod process;
pub mod watchdog;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use distq::exec::{AttemptRecord, Reason, ResultRecord, Status, TaskRecord};
use distq::{Client, ClientConfig, Error, GetError, PutError, Queue, Reconnect};
use serde_value::Value;
use sha2::{Digest, Sha256};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::WorkerArgs;
use crate::common::{authkey_for, connect_addr, signal_name};
use crate::item::{classify as kind_of, to_json, Kind};
use crate::{seconds, Exit, Outcome};
use outcome::{Backoff, Class, ExitSet};
use process::{Finished, SpawnError, Spec};
use watchdog::Watchdog;

/// How long one take waits before the slot looks at its flags again.
const POLL: Duration = Duration::from_secs(1);
/// The most retries a task's own `retries` may ask for.
const MAX_RETRIES: u32 = 25;
/// How much of stdout a result keeps when the command wrote past `--max-stdout`.
const OVERFLOW_SAMPLE: usize = 64 << 10;
/// The stderr end kept in each attempt of a task's history.
const STDERR_TAIL: usize = 2 << 10;
/// The most stdout and stderr a result may carry together, so it always fits in one item
/// (8 MiB less room for the rest of the record).
const MAX_OUTPUT: u64 = 7 << 20;
/// Results queues a slot remembers (submitters' temporary queues come and go).
const MAX_RESULT_QUEUES: usize = 64;

/// The `--exec`/`--sh` options of `distq worker`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run this program once per task: the rest of the command line is PROG [ARG...] (`--`
    /// may precede it). The task's input is its stdin; `{}` in an ARG is replaced by the
    /// input as one argument, never shell-parsed.
    #[arg(long, value_name = "PROG", num_args = 1.., allow_hyphen_values = true,
          trailing_var_arg = true, conflicts_with = "sh")]
    pub exec: Option<Vec<OsString>>,
    /// Run `/bin/sh -c SCRIPT` once per task (the task's args are "$1".."$n"); the input is
    /// its stdin.
    #[arg(long, value_name = "SCRIPT")]
    pub sh: Option<String>,
    /// The queue to take tasks from (--exec/--sh).
    #[arg(long, default_value = "tasks", value_name = "NAME")]
    pub queue: String,
    /// Seconds a command may run before its process group gets SIGTERM (0 = no limit); a
    /// task's own timeout overrides it, up to --max-timeout.
    #[arg(long, default_value_t = 3600.0, value_name = "SECS")]
    pub timeout: f64,
    /// The longest timeout a task may ask for, in seconds.
    #[arg(long, default_value_t = 86400.0, value_name = "SECS")]
    pub max_timeout: f64,
    /// Seconds between the timeout's SIGTERM and the SIGKILL to the whole group.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub kill_after: f64,
    /// How many times a failing task runs again before it is dead-lettered; a task's own
    /// retries override it, up to 25.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=25))]
    pub retries: u32,
    /// Exit statuses that fail a task for good at once (no retry), e.g. 64-68,77,78,100;
    /// '' for none.
    #[arg(long, default_value = "64-68,77,78,100", value_name = "LIST")]
    pub fail_exit: ExitSet,
    /// The wait before a retry, MIN..MAX: doubling from MIN up to MAX, each wait between half
    /// and all of it (e.g. 10s..1h, 500ms..30s, 0.1..0.2).
    #[arg(long, default_value = "10s..1h", value_name = "MIN..MAX")]
    pub backoff: Backoff,
    /// The most stdout kept; a command writing more fails for good (output_limit).
    #[arg(long, default_value = "1MiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_stdout: u64,
    /// The most stderr kept: its first 8 KiB and its end.
    #[arg(long, default_value = "64KiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_stderr: u64,
    /// Put every result on this queue instead of the task's reply_to.
    #[arg(long, value_name = "NAME")]
    pub results_queue: Option<String>,
    /// How many times a task may be lost with its worker (killed mid-command) before it is
    /// dead-lettered as lost instead of run again.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub max_lost: u32,
}

impl ExecArgs {
    /// Whether the worker runs commands rather than the built-in jobs.
    pub fn is_set(&self) -> bool {
        self.exec.is_some() || self.sh.is_some()
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| {
        format!("{s:?} is not a size ({e}): write e.g. 64KiB, 1MiB or a number of bytes")
    })
}

/// The command each task runs.
pub enum Program {
    Exec(Vec<OsString>),
    Sh(String),
}

/// The command `--exec PROG [ARG...]` or `--sh SCRIPT` names.
pub fn program(exec: Option<Vec<OsString>>, sh: Option<String>) -> Result<Program, &'static str> {
    match (exec, sh) {
        (Some(mut argv), None) => {
            // `--exec -- PROG ...`: the `--` only marks where the command starts.
            if argv.first().is_some_and(|a| a == "--") {
                argv.remove(0);
            }
            if argv.is_empty() {
                return Err("--exec needs a program: --exec PROG [ARG...]");
            }
            Ok(Program::Exec(argv))
        }
        (None, Some(script)) => Ok(Program::Sh(script)),
        _ => Err("give one of --exec PROG [ARG...] or --sh 'SCRIPT'"),
    }
}

/// What every slot needs to know.
struct Settings {
    queue: String,
    program: Program,
    timeout: Option<Duration>,
    max_timeout: Duration,
    kill_after: Duration,
    retries: u32,
    fail_exit: ExitSet,
    backoff: Backoff,
    max_stdout: usize,
    max_stderr: usize,
    results_queue: Option<String>,
    max_lost: u32,
    idle_exit: Option<Duration>,
    /// `host/pid`, each slot adds `/slot`.
    worker: String,
}

/// Flags the signal thread and the slots share.
#[derive(Default)]
struct Flags {
    /// First SIGINT/SIGTERM (or a slot's fatal error): take no more tasks.
    stop: AtomicBool,
    /// Second signal: the groups are killed; give the tasks back and leave.
    abort: AtomicBool,
    /// A slot's reason to end the worker with a status of its own.
    fatal: Mutex<Option<Exit>>,
}

pub fn run(args: WorkerArgs) -> Outcome {
    let addr = connect_addr(args.connect.as_deref().unwrap_or_default())?;
    let key = authkey_for(&addr, &args.key)?;
    let exec = args.exec;
    let program = program(exec.exec, exec.sh)?;
    if exec.max_stdout.saturating_add(exec.max_stderr) > MAX_OUTPUT {
        return Err(format!(
            "--max-stdout plus --max-stderr is {} bytes, more than a result may hold ({MAX_OUTPUT} \
             bytes, 7MiB): lower them, or have the command write large output to a file and \
             print its path",
            exec.max_stdout.saturating_add(exec.max_stderr)
        )
        .into());
    }
    let secs_opt = |flag: &str, s: f64| -> Result<Option<Duration>, _> {
        seconds(flag, s).map(|d| (!d.is_zero()).then_some(d))
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let settings = Arc::new(Settings {
        queue: exec.queue,
        program,
        timeout: secs_opt("timeout", exec.timeout)?,
        max_timeout: secs_opt("max-timeout", exec.max_timeout)?.unwrap_or(Duration::MAX),
        kill_after: seconds("kill-after", exec.kill_after)?,
        retries: exec.retries.min(MAX_RETRIES),
        fail_exit: exec.fail_exit,
        backoff: exec.backoff,
        max_stdout: usize::try_from(exec.max_stdout).unwrap_or(usize::MAX),
        max_stderr: usize::try_from(exec.max_stderr).unwrap_or(usize::MAX),
        results_queue: exec.results_queue,
        max_lost: exec.max_lost,
        idle_exit: args
            .idle_exit
            .map(|s| seconds("idle-exit", s))
            .transpose()?,
        worker: format!("{host}/{}", std::process::id()),
    });
    let reconnect = Reconnect::default().give_up(seconds("give-up", args.give_up)?);
    let config = ClientConfig::default()
        .connect_timeout(Some(seconds("connect-timeout", args.connect_timeout)?))
        .reconnect(Some(reconnect.clone()));
    let watchdog = Arc::new(
        Watchdog::start()
            .map_err(|e| format!("cannot start the watchdog process (distq __watchdog): {e}"))?,
    );
    let flags = Arc::new(Flags::default());
    let signals = watch_signals(Arc::clone(&flags), Arc::clone(&watchdog))?;
    log::info!("connecting to {}...", crate::worker::shown(&addr));
    // Every slot connects first (waiting for the server up to --give-up, as the built-in
    // worker does), so a bad address or key fails before any command runs.
    let mut clients = Vec::with_capacity(args.concurrency as usize);
    for _ in 0..args.concurrency {
        match crate::worker::connect(
            &addr,
            &key,
            &config,
            &reconnect,
            &flags.stop,
            &[settings.queue.as_str()],
        )? {
            Some(client) => clients.push(client),
            None => {
                signals.close();
                watchdog.stop();
                log::info!("worker exit: stopped before connecting");
                return Ok(());
            }
        }
    }
    log::info!(
        "{} slot(s) connected to {}, running tasks from {}",
        clients.len(),
        crate::worker::shown(&addr),
        settings.queue
    );
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(slot, client)| {
            let (settings, flags, watchdog) = (
                Arc::clone(&settings),
                Arc::clone(&flags),
                Arc::clone(&watchdog),
            );
            thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn(move || {
                    let mut s = Slot::new(slot, &client, &settings, &flags, &watchdog)?;
                    s.work()
                })
        })
        .collect::<Result<_, _>>()?;
    let mut done = 0;
    let mut failure: Option<Box<dyn std::error::Error + Send + Sync>> = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(n)) => done += n,
            Ok(Err(e)) => {
                flags.stop.store(true, Ordering::SeqCst);
                failure = Some(e.into());
            }
            Err(_) => {
                failure = Some("a worker slot panicked (a bug in distq: please report it)".into())
            }
        }
    }
    signals.close();
    watchdog.stop();
    log::info!("worker exit: {done} task(s) run");
    if flags.abort.load(Ordering::SeqCst) {
        return Err(Exit::new(
            130,
            "stopped by a second signal: running commands were killed and their tasks given back",
        )
        .into());
    }
    if let Some(exit) = lock(&flags.fatal).take() {
        return Err(exit.into());
    }
    failure.map_or(Ok(()), Err)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A second signal this soon after the first is the same request delivered twice.
const DUPLICATE_SIGNAL: Duration = Duration::from_millis(250);

/// First SIGINT/SIGTERM: no more tasks, running commands finish. Second: kill every group.
fn watch_signals(
    flags: Arc<Flags>,
    watchdog: Arc<Watchdog>,
) -> std::io::Result<signal_hook::iterator::Handle> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first: Option<std::time::Instant> = None;
            for signal in signals.forever() {
                let name = signal_name(signal);
                // `timeout(1)` and a shell's kill of the process group deliver the same
                // signal twice within a moment: that is one request to stop, not two.
                if first.is_some_and(|t| t.elapsed() < DUPLICATE_SIGNAL) {
                    continue;
                }
                if flags.stop.swap(true, Ordering::SeqCst) {
                    log::info!("{name} again: killing the running commands, giving their tasks back");
                    flags.abort.store(true, Ordering::SeqCst);
                    watchdog.kill_all();
                } else {
                    first = Some(std::time::Instant::now());
                    log::info!(
                        "{name}: taking no more tasks, letting running commands finish (send it again to kill them)"
                    );
                }
            }
        })?;
    Ok(handle)
}

/// A result waiting to go with the next take.
struct Outbox {
    queue: Queue<ResultRecord>,
    result: ResultRecord,
}

/// What became of one task, for the loop.
enum Next {
    /// Carry on, with this result to store (and then the task acknowledged).
    Carry(Option<Box<Outbox>>),
    /// The worker cannot run commands: the task is given back; end the worker.
    Fatal(Exit),
    /// A second signal killed the command: give the task back and leave.
    Abort,
    /// The command could not start for a passing reason (out of processes, descriptors or
    /// memory): give the task back uncounted, pause, go on.
    Again,
}

/// The pause before a result that found no room is offered again.
const RESULTS_FULL_PAUSE: Duration = Duration::from_millis(100);

/// The pause after a command could not start for a passing reason.
const SPAWN_PAUSE: Duration = Duration::from_secs(1);

struct Slot<'a> {
    slot: usize,
    client: &'a Client,
    settings: &'a Settings,
    flags: &'a Flags,
    watchdog: &'a Watchdog,
    tasks: Queue<Value>,
    retry: Queue<TaskRecord>,
    dead: Queue<TaskRecord>,
    dead_raw: Queue<Value>,
    /// Results queues by name; `None` for a name the server does not host.
    results: HashMap<String, Option<Queue<ResultRecord>>>,
    worker: String,
}

impl<'a> Slot<'a> {
    fn new(
        slot: usize,
        client: &'a Client,
        settings: &'a Settings,
        flags: &'a Flags,
        watchdog: &'a Watchdog,
    ) -> Result<Self, Error> {
        let dead_name = format!("{}.dead", settings.queue);
        Ok(Slot {
            slot,
            client,
            settings,
            flags,
            watchdog,
            tasks: client.queue(&settings.queue)?,
            retry: client.queue(&settings.queue)?,
            dead: client.queue(&dead_name)?,
            dead_raw: client.queue(&dead_name)?,
            results: HashMap::new(),
            worker: format!("{}/{slot}", settings.worker),
        })
    }

    /// Takes and runs tasks until told to stop; returns how many commands ran.
    fn work(&mut self) -> Result<u64, Error> {
        let mut outbox: Option<Box<Outbox>> = None;
        let mut ran = 0;
        let mut idle_since = Instant::now();
        loop {
            if self.flags.abort.load(Ordering::SeqCst) {
                // Nothing in hand but a result: store it, the task ran.
                break;
            }
            if self.flags.stop.load(Ordering::SeqCst) {
                break;
            }
            let taken = match &outbox {
                Some(o) => self
                    .tasks
                    .get_many_after_put(&o.queue, [&o.result], 1, POLL),
                None => self.tasks.get_many(1, POLL),
            };
            let mut taken = match taken {
                Ok(taken) => taken,
                Err(GetError::Empty) => {
                    outbox = None; // stored, and the task acknowledged
                    if self
                        .settings
                        .idle_exit
                        .is_some_and(|limit| idle_since.elapsed() >= limit)
                    {
                        log::info!(
                            "no task for {:.1} s: exiting",
                            idle_since.elapsed().as_secs_f64()
                        );
                        break;
                    }
                    continue;
                }
                Err(GetError::Failed(Error::Closed)) if outbox.is_some() => {
                    outbox = None;
                    continue;
                }
                // Offered again once connected: the library drops it if the server restarted.
                Err(GetError::Failed(Error::Reconnecting)) => continue,
                Err(GetError::Failed(Error::UnknownQueue(_))) if outbox.is_some() => {
                    // Named by the box, not the error: the server names the request's queue.
                    if let Some(o) = outbox.take() {
                        log::info!(
                            "result of task {} dropped: its results queue {} is gone",
                            o.result.id,
                            o.queue.name()
                        );
                        self.results.remove(o.queue.name());
                    }
                    continue;
                }
                // The results queue is full or the memory budget used: the task stays leased
                // (its command ran, it is never given back); offer the result again.
                Err(GetError::Failed(Error::ResultsFull { .. } | Error::OverBudget { .. })) => {
                    // A moment for room to free up, rather than resending at once.
                    thread::sleep(RESULTS_FULL_PAUSE);
                    continue;
                }
                // The result went with the take and is stored; the item goes back (to the
                // dead letters after enough returns).
                Err(GetError::Failed(Error::Payload(e))) => {
                    log::warn!("gave back an item that is not CBOR: {e}");
                    outbox = None;
                    continue;
                }
                Err(GetError::Failed(e)) => return Err(e),
            };
            outbox = None;
            let Some(item) = taken.pop() else { continue };
            // Told to stop while this take waited: the task is not started, and goes back
            // as it came (the results the take carried are stored).
            if self.flags.stop.load(Ordering::SeqCst) {
                self.give_back()?;
                break;
            }
            let redeliveries = self.tasks.redeliveries().first().copied().unwrap_or(0);
            ran += 1;
            match self.handle(item, redeliveries)? {
                Next::Carry(next) => outbox = next,
                Next::Fatal(exit) => {
                    // The whole worker stops even if the give-back fails (the lease then
                    // returns with the connection).
                    self.flags.stop.store(true, Ordering::SeqCst);
                    *lock(&self.flags.fatal) = Some(exit);
                    self.give_back()?;
                    return Ok(ran);
                }
                Next::Abort => {
                    let _ = self.give_back();
                    return Ok(ran);
                }
                Next::Again => {
                    self.give_back()?;
                    ran -= 1;
                    thread::sleep(SPAWN_PAUSE);
                }
            }
            idle_since = Instant::now();
        }
        self.finish(outbox)?;
        Ok(ran)
    }

    /// Gives the task in hand back without counting it against the task (the worker's
    /// fault or shutdown, not the task's); counted on a server too old for that.
    fn give_back(&self) -> Result<(), Error> {
        match self.tasks.give_back_uncounted() {
            Err(Error::Unsupported { .. }) => self.tasks.give_back(),
            other => other,
        }
    }

    /// Stores the last result, then acknowledges its task before the connection closes.
    fn finish(&mut self, outbox: Option<Box<Outbox>>) -> Result<(), Error> {
        if let Some(o) = outbox {
            loop {
                match self.tasks.put_results_timeout(&o.queue, [&o.result], POLL) {
                    Ok(()) => break,
                    Err(PutError::Full { .. } | PutError::OverBudget { .. })
                        if !self.flags.abort.load(Ordering::SeqCst) =>
                    {
                        continue
                    }
                    Err(PutError::Failed(Error::UnknownQueue(name))) => {
                        log::info!(
                            "result of task {} dropped: its results queue {name} is gone",
                            o.result.id
                        );
                        break;
                    }
                    Err(e) => {
                        log::warn!(
                            "result of task {} not stored: {e}; the task will run again",
                            o.result.id
                        );
                        let _ = self.tasks.give_back();
                        return Ok(());
                    }
                }
            }
        }
        // Acknowledge (deferred by the handle's drop) and push it out with one last request
        // on the same connection; if that fails the connection is gone, and its leases too.
        let tasks = self.tasks.clone();
        drop(std::mem::replace(&mut self.tasks, tasks));
        let _ = self.retry.len();
        Ok(())
    }

    /// Runs one task and reports it, except the result, which goes with the next take.
    fn handle(&mut self, item: Value, redeliveries: u32) -> Result<Next, Error> {
        let mut task = match task_of(item) {
            Ok(task) => task,
            Err(bad) => {
                let (item, task) = *bad;
                let why = task
                    .check()
                    .err()
                    .map_or_else(String::new, |e| e.to_string());
                log::warn!("task {} dead-lettered: {why}", task.id);
                self.dead_letter_raw(item)?;
                let mut result = ResultRecord::for_task(&task, Status::Failed);
                result.reason = Some(Reason::BadTask);
                result.stderr = why.into_bytes();
                return Ok(Next::Carry(self.outbox(&task, result)));
            }
        };
        if task.expire_ms.is_some_and(|at| at <= now_ms()) {
            let mut result = ResultRecord::for_task(&task, Status::Expired);
            result.reason = Some(Reason::Expired);
            result.redeliveries = redeliveries;
            return Ok(Next::Carry(self.outbox(&task, result)));
        }
        if redeliveries > self.settings.max_lost {
            log::warn!(
                "task {} dead-lettered as lost: {redeliveries} workers were lost running it (--max-lost {})",
                task.id,
                self.settings.max_lost
            );
            let mut attempt = AttemptRecord::new(task.attempt, Reason::Lost);
            attempt.worker = self.worker.clone();
            attempt.ended_ms = now_ms();
            let mut result = ResultRecord::for_task(&task, Status::Lost);
            result.reason = Some(Reason::Lost);
            result.redeliveries = redeliveries;
            task.push_history(attempt);
            self.dead_letter(&task)?;
            return Ok(Next::Carry(self.outbox(&task, result)));
        }
        let started_ms = now_ms();
        let spec = self.spec(&task, redeliveries);
        let finished = match process::run(spec, self.watchdog) {
            Ok(finished) => finished,
            Err(SpawnError::BadArgs(e)) => {
                let mut result = ResultRecord::for_task(&task, Status::Failed);
                result.reason = Some(Reason::SpawnError);
                result.stderr =
                    format!("cannot start the command with this task: {e}").into_bytes();
                result.redeliveries = redeliveries;
                let mut attempt = AttemptRecord::new(task.attempt, Reason::SpawnError);
                attempt.worker = self.worker.clone();
                attempt.ended_ms = now_ms();
                attempt.stderr_tail = e.to_string();
                task.push_history(attempt);
                self.dead_letter(&task)?;
                return Ok(Next::Carry(self.outbox(&task, result)));
            }
            Err(SpawnError::NotFound(e)) => return Ok(Next::Fatal(self.misconfigured(127, &e))),
            Err(SpawnError::Denied(e)) => return Ok(Next::Fatal(self.misconfigured(126, &e))),
            Err(SpawnError::Other(e)) => {
                log::warn!(
                    "cannot start a command ({e}): gave task {} back, trying again in {} s",
                    task.id,
                    SPAWN_PAUSE.as_secs()
                );
                return Ok(Next::Again);
            }
        };
        if self.flags.abort.load(Ordering::SeqCst) {
            return Ok(Next::Abort);
        }
        let shell = matches!(self.settings.program, Program::Sh(_));
        let class = outcome::classify(
            &finished,
            self.settings.max_stdout,
            &self.settings.fail_exit,
            shell,
        );
        let mut result = self.result(&task, &finished, started_ms, redeliveries);
        let attempt = self.attempt(&task, &finished, class);
        match class {
            Class::Ok => {}
            Class::Permanent(reason) => {
                result.status = Status::Failed;
                result.reason = Some(reason);
                log::info!(
                    "task {} failed for good ({})",
                    task.id,
                    describe(&finished, reason)
                );
                task.push_history(attempt);
                self.dead_letter(&task)?;
            }
            Class::Temporary(reason) => {
                result.reason = Some(reason);
                let allowed = task
                    .retries
                    .map_or(self.settings.retries, |r| r.min(MAX_RETRIES));
                if task.attempt <= allowed {
                    let delay = self.settings.backoff.delay(task.attempt);
                    result.status = Status::Retrying;
                    result.next_retry_ms = Some(now_ms().saturating_add(delay.as_millis() as u64));
                    log::info!(
                        "task {} attempt {} failed ({}): retry in {:.1} s",
                        task.id,
                        task.attempt,
                        describe(&finished, reason),
                        delay.as_secs_f64()
                    );
                    match self.retry.put_delayed(task.retry(attempt), delay) {
                        Ok(()) => {}
                        Err(PutError::Failed(Error::Reconnecting)) => return Ok(Next::Carry(None)),
                        Err(e) => return Err(put_error(e)),
                    }
                } else {
                    result.status = Status::Failed;
                    log::info!(
                        "task {} failed after {} attempt(s) ({}): dead-lettered",
                        task.id,
                        task.attempt,
                        describe(&finished, reason)
                    );
                    task.push_history(attempt);
                    self.dead_letter(&task)?;
                }
            }
        }
        Ok(Next::Carry(self.outbox(&task, result)))
    }

    fn misconfigured(&self, code: u8, e: &std::io::Error) -> Exit {
        let program = match &self.settings.program {
            Program::Exec(argv) => argv[0].to_string_lossy().into_owned(),
            Program::Sh(_) => "/bin/sh".into(),
        };
        Exit::new(
            code,
            format!("cannot run {program}: {e}; gave the task back: fix --exec and start the worker again"),
        )
    }

    fn spec(&self, task: &TaskRecord, redeliveries: u32) -> Spec {
        let argv = match &self.settings.program {
            Program::Exec(argv) => {
                let mut out = vec![argv[0].clone()];
                out.extend(argv[1..].iter().map(|a| substitute(a, task)));
                out
            }
            Program::Sh(script) => {
                let mut out: Vec<OsString> =
                    vec!["/bin/sh".into(), "-c".into(), script.into(), "distq".into()];
                out.extend(task.args.iter().map(OsString::from));
                out
            }
        };
        let env = vec![
            ("DISTQ_TASK_ID".into(), task.id.clone()),
            ("DISTQ_ATTEMPT".into(), task.attempt.to_string()),
            ("DISTQ_REDELIVERIES".into(), redeliveries.to_string()),
            ("DISTQ_BATCH".into(), task.batch.clone()),
            ("DISTQ_SEQ".into(), task.seq.to_string()),
            ("DISTQ_QUEUE".into(), self.settings.queue.clone()),
            ("DISTQ_SLOT".into(), self.slot.to_string()),
            ("DISTQ_WORKER".into(), self.worker.clone()),
        ];
        let timeout = match task.timeout_ms {
            Some(0) => Some(self.settings.max_timeout),
            Some(ms) => Some(Duration::from_millis(ms).min(self.settings.max_timeout)),
            None => self.settings.timeout,
        };
        Spec {
            argv,
            env,
            input: stdin_bytes(&task.input),
            timeout: timeout.filter(|t| *t != Duration::MAX),
            kill_after: self.settings.kill_after,
            max_stdout: self.settings.max_stdout,
            max_stderr: self.settings.max_stderr,
        }
    }

    fn result(
        &self,
        task: &TaskRecord,
        done: &Finished,
        started_ms: u64,
        redeliveries: u32,
    ) -> ResultRecord {
        let mut r = ResultRecord::for_task(task, Status::Ok);
        r.exit_code = done.status.code();
        r.signal = process::signal_of(&done.status);
        r.timed_out = done.timed_out;
        r.killed_by = done.killed_by.map(str::to_owned);
        r.redeliveries = redeliveries;
        r.worker = self.worker.clone();
        r.started_ms = started_ms;
        r.duration_ms = done.took.as_millis() as u64;
        r.stdout = done.stdout.bytes();
        r.stdout_bytes = done.stdout.total;
        r.stdout_truncated = done.stdout.truncated();
        if done.stdout.total > self.settings.max_stdout as u64 {
            r.stdout.truncate(OVERFLOW_SAMPLE);
            r.stdout_truncated = true;
        }
        r.stderr = done.stderr.bytes();
        r.stderr_bytes = done.stderr.total;
        r.stderr_truncated = done.stderr.truncated();
        if r.stderr_truncated {
            // Marks the cut between the kept head and tail, so no line seems to run on.
            let cut = done.stderr.head.len().min(r.stderr.len());
            let omitted = done.stderr.total - r.stderr.len() as u64;
            let marker = format!("\n[distq: {omitted} bytes of stderr omitted]\n");
            r.stderr.splice(cut..cut, marker.into_bytes());
        }
        r
    }

    fn attempt(&self, task: &TaskRecord, done: &Finished, class: Class) -> AttemptRecord {
        let reason = match class {
            Class::Permanent(r) | Class::Temporary(r) => r,
            Class::Ok => Reason::Exit,
        };
        let mut a = AttemptRecord::new(task.attempt, reason);
        a.worker = self.worker.clone();
        a.exit_code = done.status.code();
        a.signal = process::signal_of(&done.status);
        a.ended_ms = now_ms();
        let stderr = done.stderr.bytes();
        a.stderr_tail = tail_text(&stderr, STDERR_TAIL);
        a
    }

    /// The result's queue, or `None` when no result is wanted or its queue is gone.
    fn outbox(&mut self, task: &TaskRecord, result: ResultRecord) -> Option<Box<Outbox>> {
        let name = self
            .settings
            .results_queue
            .clone()
            .or_else(|| task.reply_to.clone())?;
        if !self.results.contains_key(&name) {
            if self.results.len() >= MAX_RESULT_QUEUES {
                self.results.clear();
            }
            let queue = match self.client.queue::<ResultRecord>(&name) {
                Ok(q) => Some(q),
                Err(Error::UnknownQueue(_)) => None,
                Err(e) => {
                    log::info!("result of task {} dropped: {e}", task.id);
                    return None;
                }
            };
            self.results.insert(name.clone(), queue);
        }
        match self.results.get(&name) {
            Some(Some(queue)) => Some(Box::new(Outbox {
                queue: queue.clone(),
                result,
            })),
            _ => {
                log::info!(
                    "result of task {} dropped: the server hosts no queue {name}",
                    task.id
                );
                self.results.remove(&name);
                None
            }
        }
    }

    /// Puts the full task record on `QUEUE.dead` before its task is acknowledged.
    fn dead_letter(&self, task: &TaskRecord) -> Result<(), Error> {
        match self.dead.put(task) {
            Ok(()) => Ok(()),
            // The lease went with the connection: the server redelivers the task.
            Err(PutError::Failed(Error::Reconnecting)) => Ok(()),
            Err(e) => Err(put_error(e)),
        }
    }

    fn dead_letter_raw(&self, item: Value) -> Result<(), Error> {
        match self.dead_raw.put(item) {
            Ok(()) | Err(PutError::Failed(Error::Reconnecting)) => Ok(()),
            Err(e) => Err(put_error(e)),
        }
    }
}

fn put_error(e: PutError) -> Error {
    match e {
        PutError::Failed(e) | PutError::Partial { error: e, .. } => e,
        other => Error::Config(other.to_string()),
    }
}

/// The task an item is: a task record as it is, bare input as a task of its own (a byte
/// string given raw, any other value as one line of JSON), with an id hashed from its bytes.
/// `Err` for a task record this worker cannot run (an unknown version), with the item.
fn task_of(item: Value) -> Result<TaskRecord, Box<(Value, TaskRecord)>> {
    let input = match (&item, kind_of(&item)) {
        (_, Kind::Task(task)) => {
            return match task.check() {
                Ok(()) => Ok(*task),
                Err(_) => Err(Box::new((item, *task))),
            }
        }
        (Value::Bytes(bytes), _) => bytes.clone(),
        (other, _) => {
            let mut text = to_json(other).to_string().into_bytes();
            text.push(b'\n');
            text
        }
    };
    let digest = Sha256::digest(&input);
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(TaskRecord::new(format!("x{id}"), input))
}

/// `{}` in an argument becomes the input, as bytes; the argument stays one argument.
/// What the command reads on stdin: the input, with a final newline added to text that has
/// none, so a line put with `--lines` reads as a line (`read`, `wc -l`, `while read` all need
/// the newline, as GNU parallel's `--pipe` blocks carry theirs). Bytes that are not UTF-8
/// pass unchanged; `{}` always gets the input as it is.
fn stdin_bytes(input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    if !bytes.is_empty() && bytes.last() != Some(&b'\n') && std::str::from_utf8(input).is_ok() {
        bytes.push(b'\n');
    }
    bytes
}

/// An ARG of `--exec` with its placeholders filled in: `{}` the input, `{1}`..`{n}` the
/// task's `args` (empty past the last), `{id}` and `{attempt}`. Anything else in braces is
/// kept as written. Never shell-parsed; one pass, linear in the argument's length.
fn substitute(arg: &OsString, task: &TaskRecord) -> OsString {
    let bytes = arg.as_encoded_bytes();
    if !bytes.contains(&b'{') {
        return arg.clone();
    }
    let mut out = Vec::with_capacity(bytes.len() + task.input.len());
    let mut rest = bytes;
    while let Some(open) = rest.iter().position(|&b| b == b'{') {
        out.extend_from_slice(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.iter().position(|&b| b == b'}') else {
            rest = &rest[open..];
            break;
        };
        let name = &after[..close];
        let value: Option<Vec<u8>> = match name {
            b"" => Some(task.input.clone()),
            b"id" => Some(task.id.clone().into_bytes()),
            b"attempt" => Some(task.attempt.to_string().into_bytes()),
            n if !n.is_empty() && n.iter().all(u8::is_ascii_digit) => {
                let i: usize = std::str::from_utf8(n)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                Some(
                    i.checked_sub(1)
                        .and_then(|i| task.args.get(i))
                        .map(|a| a.clone().into_bytes())
                        .unwrap_or_default(),
                )
            }
            _ => None,
        };
        match value {
            Some(v) => {
                out.extend_from_slice(&v);
                rest = &after[close + 1..];
            }
            None => {
                out.push(b'{');
                rest = after;
            }
        }
    }
    out.extend_from_slice(rest);
    OsString::from_vec(out)
}

/// The last `max` bytes as text (lossy), cut at a character boundary.
fn tail_text(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]);
    text.trim_start_matches('\u{fffd}').to_owned()
}

fn describe(done: &Finished, reason: Reason) -> String {
    match (reason, done.status.code(), process::signal_of(&done.status)) {
        (Reason::Timeout, _, _) => format!(
            "timed out, stopped with SIG{}",
            done.killed_by.unwrap_or("TERM")
        ),
        (Reason::OutputLimit, _, _) => format!(
            "wrote {} bytes of stdout, past --max-stdout",
            done.stdout.total
        ),
        (_, Some(code), _) => format!("exit status {code}"),
        (_, None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".into(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod test {
    use super::*;

    fn exec_args(argv: &[&str]) -> ExecArgs {
        use clap::Parser;
        let cli = crate::args::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            crate::args::Command::Worker(w) => w.exec,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_takes_the_rest_of_the_command_line() {
        let e = exec_args(&[
            "distq",
            "worker",
            "--connect",
            "a:1",
            "--timeout",
            "5",
            "--exec",
            "sh",
            "-c",
            "x",
            "--timeout",
            "9",
        ]);
        assert_eq!(e.exec.unwrap(), ["sh", "-c", "x", "--timeout", "9"]);
        assert_eq!(e.timeout, 5.0);
        let e = exec_args(&[
            "distq",
            "worker",
            "--connect",
            "a:1",
            "--exec",
            "--",
            "ls",
            "-l",
        ]);
        let argv = e.exec.unwrap();
        assert_eq!(argv.last().unwrap(), "-l");
        assert!(argv.len() <= 3);
        let e = exec_args(&["distq", "worker", "--connect", "a:1", "--sh", "echo hi"]);
        assert_eq!(e.sh.as_deref(), Some("echo hi"));
        assert!(exec_args(&["distq", "worker", "--connect", "a:1"])
            .exec
            .is_none());
    }

    #[test]
    fn braces_become_the_input_as_one_argument() {
        let mut task = TaskRecord::new("t-7", "a b;c");
        task.args = vec!["one".into(), "two".into()];
        let sub = |a: &str| substitute(&OsString::from(a), &task);
        assert_eq!(sub("--name={}.txt"), OsString::from("--name=a b;c.txt"));
        assert_eq!(sub("plain"), OsString::from("plain"));
        assert_eq!(sub("{}{}"), OsString::from("a b;ca b;c"));
        assert_eq!(sub("{2}-{1}-{3}"), OsString::from("two-one-"));
        assert_eq!(sub("{id}/{attempt}"), OsString::from("t-7/1"));
        assert_eq!(sub("{x} {0} {"), OsString::from("{x}  {"));
        assert_eq!(sub("a{b{}"), OsString::from("a{ba b;c"));
    }

    #[test]
    fn bare_items_become_tasks_with_hashed_ids() {
        let raw = task_of(Value::Bytes(b"hello".to_vec())).ok().unwrap();
        assert_eq!(raw.input, b"hello");
        assert_eq!(
            raw.id,
            task_of(Value::Bytes(b"hello".to_vec())).ok().unwrap().id
        );
        let json = task_of(Value::U32(7)).ok().unwrap();
        assert_eq!(json.input, b"7\n");
        let mut bad = TaskRecord::new("t", "x");
        bad.v = 9;
        let bad = serde_value::to_value(&bad).unwrap();
        assert!(task_of(bad).is_err(), "an unknown version is not run");
    }
}
