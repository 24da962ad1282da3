//! `distq worker --python-connect ADDR`: worker threads that join a Python `BaseManager`
//! master (the seed's `taskmanager.py`, unchanged) and run its loop: `get(timeout=1)`,
//! compute, `put` the result. The built-in job squares plain integers (`"n * n = m"`); with
//! `--exec`/`--sh` each task goes to a command as JSON on its stdin, and the command's
//! stdout is the result, a string.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use distq::python::{ManagedQueue, Manager};
use distq::{Error, GetError, PutError};
use serde_json::Value as Json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::WorkerArgs;
use crate::common::{authkey, python_connect_addr, signal_name};
use crate::exec::outcome::{classify, Backoff, Class, ExitSet};
use crate::exec::process::{self, Spec};
use crate::exec::watchdog::Watchdog;
use crate::exec::Program;
use crate::{seconds, Exit, Outcome};

/// How long one get waits, as the seed's `task.get(timeout=1)`.
const POLL: Duration = Duration::from_secs(1);

/// The first wait before connecting again to a master that is not listening yet.
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// What runs each task.
enum Job {
    /// The seed's job: square a plain integer.
    Squares,
    /// A command per task.
    Command(Box<CommandJob>),
}

struct CommandJob {
    program: Program,
    timeout: Option<Duration>,
    kill_after: Duration,
    retries: u32,
    fail_exit: ExitSet,
    backoff: Backoff,
    max_stdout: usize,
    max_stderr: usize,
    watchdog: Watchdog,
}

struct Settings {
    addr: String,
    tasks: String,
    results: String,
    idle_exit: Option<Duration>,
    delay: Option<Duration>,
    job: Job,
    stop: AtomicBool,
    /// Tasks whose command failed for good (no result was put for them).
    failed: AtomicU64,
    /// Whether a thread has said the master is gone.
    said_gone: AtomicBool,
}

pub fn run(args: WorkerArgs) -> Outcome {
    let key = authkey(&args.key)?;
    let addr = python_connect_addr(args.python_connect.as_deref().unwrap_or_default())?;
    let give_up = seconds("give-up", args.give_up)?;
    let job = match (args.exec.exec, args.exec.sh) {
        (None, None) => Job::Squares,
        (exec, sh) => {
            let program = crate::exec::program(exec, sh)?;
            let timeout = seconds("timeout", args.exec.timeout)?;
            Job::Command(Box::new(CommandJob {
                program,
                timeout: (!timeout.is_zero()).then_some(timeout),
                kill_after: seconds("kill-after", args.exec.kill_after)?,
                retries: args.exec.retries,
                fail_exit: args.exec.fail_exit,
                backoff: args.exec.backoff,
                max_stdout: usize::try_from(args.exec.max_stdout).unwrap_or(usize::MAX),
                max_stderr: usize::try_from(args.exec.max_stderr).unwrap_or(usize::MAX),
                watchdog: Watchdog::start().map_err(|e| {
                    format!("cannot start the watchdog process (distq __watchdog): {e}")
                })?,
            }))
        }
    };
    let settings = Arc::new(Settings {
        addr: addr.clone(),
        tasks: args.python_tasks,
        results: args.python_results,
        idle_exit: args
            .idle_exit
            .map(|s| seconds("idle-exit", s))
            .transpose()?,
        delay: args.delay.map(|s| seconds("delay", s)).transpose()?,
        job,
        stop: AtomicBool::new(false),
        failed: AtomicU64::new(0),
        said_gone: AtomicBool::new(false),
    });
    let signals = watch_signals(Arc::clone(&settings))?;
    log::info!("connecting to the Python master at {addr}...");
    let mut managers = Vec::with_capacity(args.concurrency as usize);
    for _ in 0..args.concurrency {
        match connect(&addr, &key, give_up, &settings.stop)? {
            Some(m) => managers.push(m),
            None => {
                signals.close();
                log::info!("worker exit: stopped before connecting");
                return Ok(());
            }
        }
    }
    log::info!(
        "{} worker thread(s) joined the Python master at {addr}",
        managers.len()
    );
    let threads: Vec<_> = managers
        .into_iter()
        .enumerate()
        .map(|(i, manager)| {
            let settings = Arc::clone(&settings);
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || work(&manager, &settings))
        })
        .collect::<Result<_, _>>()?;
    let mut done = 0;
    let mut failure: Option<BoxError> = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(n)) => done += n,
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a worker thread panicked (a bug in distq)".into()),
        }
    }
    signals.close();
    if let Job::Command(job) = &settings.job {
        job.watchdog.stop();
    }
    log::info!("worker exit: {done} task(s) done");
    if let Some(e) = failure {
        return Err(e);
    }
    match settings.failed.load(Ordering::SeqCst) {
        0 => Ok(()),
        n => Err(Exit::new(
            1,
            format!("{n} task(s) failed for good: no result was put for them (see above)"),
        )
        .into()),
    }
}

/// Connects, waiting for a master that is not listening yet up to `give_up`; `None` if a
/// signal came first. A wrong key or anything else fails at once.
fn connect(
    addr: &str,
    key: &str,
    give_up: Duration,
    stop: &AtomicBool,
) -> Result<Option<Manager>, Error> {
    let since = Instant::now();
    let mut wait = FIRST_WAIT;
    let mut said = false;
    loop {
        match Manager::connect(addr, key) {
            Ok(m) => return Ok(Some(m)),
            Err(Error::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused
                    && since.elapsed() < give_up =>
            {
                if !said {
                    log::info!(
                        "waiting for the Python master at {addr} (up to --give-up {:.0} s)",
                        give_up.as_secs_f64()
                    );
                    said = true;
                }
            }
            Err(e) => return Err(e),
        }
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

fn watch_signals(settings: Arc<Settings>) -> std::io::Result<signal_hook::iterator::Handle> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                log::info!(
                    "{}: finishing the task in hand, then leaving",
                    signal_name(signal)
                );
                settings.stop.store(true, Ordering::SeqCst);
            }
        })?;
    Ok(handle)
}

/// Whether `e` says the master is gone (it shut down after its job, or died): a Python
/// master cannot be reconnected to (its queues and proxies went with it).
fn master_gone(e: &Error) -> bool {
    matches!(e, Error::Io(_) | Error::Closed | Error::Connect { .. })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One thread's loop; returns how many tasks it ran.
fn work(manager: &Manager, settings: &Settings) -> Result<u64, BoxError> {
    let tasks: ManagedQueue<Json> = manager.queue(&settings.tasks)?;
    let results: ManagedQueue<String> = manager.queue(&settings.results)?;
    let mut done = 0;
    let mut idle_since = Instant::now();
    while !settings.stop.load(Ordering::SeqCst) {
        let task = match tasks.get_timeout(POLL) {
            Ok(task) => task,
            Err(GetError::Empty) => {
                if settings
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
            Err(GetError::Failed(e)) if master_gone(&e) => {
                // Every thread meets it: said once.
                if !settings.said_gone.swap(true, Ordering::SeqCst) {
                    log::info!(
                        "the Python master at {} has gone (its job is done, or it stopped)",
                        settings.addr
                    );
                }
                break;
            }
            Err(GetError::Failed(e)) => return Err(e.into()),
        };
        if let Some(delay) = settings.delay {
            thread::sleep(delay);
        }
        let answer = match &settings.job {
            Job::Squares => square(&task),
            Job::Command(job) => job.run(&task, settings),
        };
        done += 1;
        idle_since = Instant::now();
        let Some(answer) = answer else { continue };
        match results.put(answer) {
            Ok(()) => {}
            Err(PutError::Failed(e)) if master_gone(&e) => {
                log::warn!(
                    "the Python master at {} went before a result could be put: {e}",
                    settings.addr
                );
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// The seed's job: `"n * n = m"` for a plain integer; `None` (logged) for anything else.
fn square(task: &Json) -> Option<String> {
    match task.as_i64() {
        Some(n) => {
            log::info!("run task {n} * {n}...");
            Some(crate::jobs::squares::square(n))
        }
        None => {
            log::warn!(
                "skipping a task that is not an integer ({task}): the built-in job squares \
                 integers; run the worker with --exec to hand other tasks to a command"
            );
            None
        }
    }
}

impl CommandJob {
    /// Runs the command for `task`, again while it fails in a way that may pass (up to
    /// `--retries`, after the backoff); its stdout, trailing newlines cut as `$(...)` does,
    /// or `None` (logged, counted) if it failed for good.
    fn run(&self, task: &Json, settings: &Settings) -> Option<String> {
        let text = match task {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let argv = match &self.program {
                Program::Exec(argv) => argv
                    .iter()
                    .map(|a| match a.to_str() {
                        Some(s) if s.contains("{}") => OsString::from(s.replace("{}", &text)),
                        _ => a.clone(),
                    })
                    .collect(),
                Program::Sh(script) => vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    script.into(),
                    "distq".into(),
                    text.clone().into(),
                ],
            };
            let spec = Spec {
                argv,
                env: Vec::new(),
                input: format!("{task}\n").into_bytes(),
                timeout: self.timeout,
                kill_after: self.kill_after,
                max_stdout: self.max_stdout,
                max_stderr: self.max_stderr,
            };
            let why = match process::run(spec, &self.watchdog) {
                Ok(finished) => {
                    let shell = matches!(self.program, Program::Sh(_));
                    match classify(&finished, self.max_stdout, &self.fail_exit, shell) {
                        Class::Ok => {
                            let out =
                                String::from_utf8_lossy(&finished.stdout.bytes()).into_owned();
                            return Some(out.trim_end_matches(['\n', '\r']).to_owned());
                        }
                        class => {
                            let stderr = String::from_utf8_lossy(&finished.stderr.bytes())
                                .trim()
                                .to_owned();
                            let permanent = matches!(class, Class::Permanent(_));
                            (
                                format!("{class:?}, {}: {stderr}", finished.status),
                                permanent,
                            )
                        }
                    }
                }
                Err(e) => (format!("{e:?}"), true),
            };
            let (why, permanent) = why;
            if permanent || attempt > self.retries || settings.stop.load(Ordering::SeqCst) {
                log::warn!("task {text} failed for good after {attempt} attempt(s): {why}");
                settings.failed.fetch_add(1, Ordering::SeqCst);
                return None;
            }
            let wait = self.backoff.delay(attempt);
            log::warn!(
                "task {text} failed ({why}); trying again in {:.1} s",
                wait.as_secs_f64()
            );
            thread::sleep(wait);
        }
    }
}
