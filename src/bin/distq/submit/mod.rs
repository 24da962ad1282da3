//! `distq submit`: GNU parallel's front end on a pull queue. One task per input record, each
//! with an id; results come back on a queue only this run reads; each task's output is
//! printed (in input order with `-k`), a joblog kept, and the exit status counts failures.

mod joblog;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, IsTerminal, Write};
use std::thread;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use distq::exec::{ResultRecord, Status, TaskRecord};
use distq::{Client, Delivery, GetError, PutError, Queue};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::args::{OutputMode, SubmitArgs};
use crate::common::{authkey_for, connect_addr, signal_name, Interrupted};
use crate::input::{default_id, Input, InputError, Records};
use crate::item::to_json;
use crate::put::{new_batch_id, MAX_INPUT};
use crate::{seconds, Exit, Outcome};
use joblog::{finished_ids, state_path, Joblog, State};

/// How long one put waits for room in a full queue before the run looks at its results and
/// signals again.
const PUT_WAIT: Duration = Duration::from_millis(200);

/// Tasks per put request.
const CHUNK: usize = 256;

/// How often an idle run checks that its tasks are still on the server.
const VANISH_CHECK: Duration = Duration::from_secs(2);

/// How long a run waits for a first task to be taken before it says how to start a worker.
const HINT_AFTER: Duration = Duration::from_secs(3);

/// How long an abandoned results queue (its submitter killed) keeps its results for a
/// `--resume`.
const RESULTS_TTL: Duration = Duration::from_secs(24 * 3600);

/// Runs the batch; the exit status is the number of failed tasks (at most 101), 255 when
/// distq itself failed.
pub fn run(args: SubmitArgs) -> Outcome {
    match Submit::start(&args).and_then(|s| s.run()) {
        Ok(0) => Ok(()),
        Ok(failed) => {
            Err(Exit::new(failed.min(101) as u8, format!("{failed} task(s) failed")).into())
        }
        Err(e) if e.is::<Exit>() || e.is::<Interrupted>() => Err(e),
        // Whoever read the output stopped (`| head`): end quietly, as a pipeline expects.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Err(Exit::quiet(141).into())
        }
        Err(e) => Err(Exit::new(255, format!("error: {e}")).into()),
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// An outcome waiting for its turn under `-k`, with the task's input for the joblog.
struct Held {
    delivery: Delivery<ResultRecord>,
    input: Vec<u8>,
}

/// A task put and not finished yet.
struct Pending {
    seq: u64,
    input: Vec<u8>,
}

struct Submit<'a> {
    args: &'a SubmitArgs,
    client: Client,
    started: std::time::Instant,
    /// Whether the run said already that no worker takes its tasks.
    hinted: bool,
    /// When the server was last asked whether the run's tasks are still there.
    last_check: std::time::Instant,
    /// Whether that check found them gone (a second one in a row ends them as lost).
    suspect: bool,
    tasks: Queue<TaskRecord>,
    results: Queue<ResultRecord>,
    batch: String,
    /// Inputs read by the reader thread; `None` once stdin is exhausted.
    inputs: Option<Receiver<Result<Input, InputError>>>,
    seq: u64,
    pending: HashMap<String, Pending>,
    /// Ids with an outcome, from this run or (with `--resume`) the joblog.
    finished: HashSet<String>,
    /// On `--resume` with the results queue still there: inputs up to this seq are queued
    /// already and are not put again.
    queued_upto: u64,
    retrying: HashSet<String>,
    /// Ids this run has put or is putting, to refuse an input that repeats one.
    seen: HashSet<String>,
    failed: u64,
    /// `-k`: outcomes waiting for their turn, by seq; `None` for one finished before. They
    /// stay unacknowledged (and out of the joblog) until printed, so an interrupted run
    /// leaves them for `--resume`.
    order: BTreeMap<u64, Option<Held>>,
    /// How many outcomes `order` holds: they count against `--max-in-flight`.
    held: usize,
    next_seq: u64,
    joblog: Option<Joblog>,
    state: Option<(std::path::PathBuf, State)>,
    bar: ProgressBar,
    /// The signal (SIGINT, SIGTERM) that asked the run to stop, 0 for none.
    stop: Arc<AtomicUsize>,
}

impl<'a> Submit<'a> {
    fn start(args: &'a SubmitArgs) -> Result<Self, Failure> {
        let addr = connect_addr(&args.connect)?;
        let key = authkey_for(&addr, &args.key)?;
        if args.resume && args.joblog.is_none() {
            return Err(
                "--resume continues the run a --joblog FILE recorded: give the joblog".into(),
            );
        }
        if let Some(t) = args.timeout {
            seconds("timeout", t)?;
        }
        let client = Client::connect(addr.as_str(), &key)?;
        let tasks = client.queue::<TaskRecord>(&args.queue)?;
        let mut finished = HashSet::new();
        let mut queued_upto = 0;
        let mut batch = None;
        if let (true, Some(path)) = (args.resume, &args.joblog) {
            finished = finished_ids(path)?;
            if let Some(state) = State::read(&state_path(path))? {
                batch = Some(state.batch);
                queued_upto = state.stored;
            }
        }
        let batch = batch.unwrap_or_else(new_batch_id);
        let results = match &args.results_queue {
            Some(name) => client.queue::<ResultRecord>(name)?,
            None => {
                let name = format!("r.{batch}");
                // Still there: the tasks the killed run stored are queued or their results
                // wait. Gone (removed, or the server restarted): they are put again.
                if queued_upto > 0 && client.queue::<ResultRecord>(&name).is_err() {
                    queued_upto = 0;
                }
                declare(&client, &name)?
            }
        };
        log::info!(
            "batch {batch}: tasks on {}, results on {}",
            args.queue,
            results.name()
        );
        let stop = Arc::new(AtomicUsize::new(0));
        for signal in [SIGINT, SIGTERM] {
            signal_hook::flag::register_usize(signal, Arc::clone(&stop), signal as usize)?;
        }
        let joblog = args.joblog.as_deref().map(Joblog::open).transpose()?;
        let state = args.joblog.as_deref().map(|p| {
            (
                state_path(p),
                State {
                    batch: batch.clone(),
                    stored: queued_upto,
                },
            )
        });
        let bar = if io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else if args.bar {
            // A plain stderr target hides itself off a terminal; --bar asks for it anyway.
            ProgressBar::with_draw_target(
                Some(0),
                ProgressDrawTarget::term_like(Box::new(console::Term::stderr())),
            )
        } else {
            ProgressBar::hidden()
        };
        // Elapsed time and the ETA move even while no result comes.
        bar.enable_steady_tick(Duration::from_millis(500));
        bar.set_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tasks, {msg}{elapsed} elapsed, ~{eta} left",
        )?);
        Ok(Submit {
            args,
            client,
            started: std::time::Instant::now(),
            hinted: false,
            last_check: std::time::Instant::now(),
            suspect: false,
            tasks,
            results,
            batch,
            inputs: Some(reader(args)),
            seq: 0,
            pending: HashMap::new(),
            finished,
            queued_upto,
            retrying: HashSet::new(),
            seen: HashSet::new(),
            failed: 0,
            order: BTreeMap::new(),
            held: 0,
            next_seq: 1,
            joblog,
            state,
            bar,
            stop,
        })
    }

    fn run(mut self) -> Result<u64, Failure> {
        if let Some((path, state)) = &self.state {
            state.write(path)?;
        }
        loop {
            self.check_stop()?;
            self.top_up()?;
            if self.inputs.is_none() && self.pending.is_empty() {
                break;
            }
            // Short waits while input remains, so reading and collecting interleave.
            let wait = if self.inputs.is_some() && self.in_flight() < self.args.max_in_flight {
                Duration::from_millis(20)
            } else {
                Duration::from_secs(1)
            };
            self.collect(wait)?;
        }
        self.bar.finish_and_clear();
        Ok(self.failed)
    }

    /// Ends the run when a signal asked for it, saying how far it got and what is left.
    fn check_stop(&self) -> Result<(), Failure> {
        let signal = self.stop.load(Ordering::Relaxed);
        if signal == 0 {
            return Ok(());
        }
        self.bar.finish_and_clear();
        let done = self.finished.len() - self.held;
        let out = self.pending.len() + self.held;
        let resume = match &self.args.joblog {
            Some(log) => format!(
                "; continue with: distq submit --connect {} --joblog {} --resume{} (and the same \
                 input and options)",
                self.args.connect,
                log.display(),
                if self.args.keep_order { " -k" } else { "" }
            ),
            None => "; they still run, and a run with --joblog could be resumed".into(),
        };
        Err(Interrupted(format!(
            "interrupted by {}: {done} task(s) done, {out} put and not done or not printed yet \
             (their results wait on {}){resume}",
            signal_name(signal as i32),
            self.results.name()
        ))
        .into())
    }

    /// Reads inputs and puts them while fewer than `--max-in-flight` tasks are out.
    fn top_up(&mut self) -> Result<(), Failure> {
        let mut chunk = Vec::new();
        while self.in_flight() + chunk.len() < self.args.max_in_flight && chunk.len() < CHUNK {
            let Some(inputs) = &self.inputs else { break };
            // With nothing out there is nothing else to do: wait for the input.
            let next = if self.pending.is_empty() && chunk.is_empty() {
                match inputs.recv_timeout(Duration::from_millis(200)) {
                    Ok(input) => Ok(input),
                    Err(RecvTimeoutError::Timeout) if self.stop.load(Ordering::Relaxed) == 0 => {
                        continue
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => Err(TryRecvError::Disconnected),
                }
            } else {
                inputs.try_recv()
            };
            let input = match next {
                Ok(input) => input?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.inputs = None;
                    break;
                }
            };
            self.seq += 1;
            if let Some(task) = self.task(input)? {
                chunk.push(task);
            }
        }
        if chunk.is_empty() {
            self.emit()?;
            return Ok(());
        }
        // Known before they are put, so a result that comes back at once is recognised.
        self.bar.inc_length(chunk.len() as u64);
        for t in &chunk {
            self.pending.insert(
                t.id.clone(),
                Pending {
                    seq: t.seq,
                    input: t.input.clone(),
                },
            );
        }
        let mut rest: Vec<&TaskRecord> =
            chunk.iter().filter(|t| t.seq > self.queued_upto).collect();
        // A full (bounded) queue: keep collecting results and heeding signals while waiting.
        while !rest.is_empty() {
            match self.tasks.put_many_timeout(rest.iter().copied(), PUT_WAIT) {
                Ok(()) => break,
                Err(PutError::Full { accepted } | PutError::OverBudget { accepted, .. }) => {
                    if let (Some(last), Some((path, state))) = (
                        accepted.checked_sub(1).map(|i| rest[i].seq),
                        &mut self.state,
                    ) {
                        // What is stored is a prefix in input order: a resume puts the rest.
                        state.stored = state.stored.max(last);
                        state.write(path)?;
                    }
                    rest.drain(..accepted);
                    if self.stop.load(Ordering::Relaxed) != 0 {
                        // Not stored, so not out: the message counts what is.
                        for t in &rest {
                            self.pending.remove(&t.id);
                        }
                        self.check_stop()?;
                    }
                    self.collect(Duration::ZERO)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some((path, state)) = &mut self.state {
            state.stored = state.stored.max(self.seq);
            state.write(path)?;
        }
        Ok(())
    }

    /// The task for input number `self.seq`, or `None` when an earlier run finished it.
    fn task(&mut self, mut input: Input) -> Result<Option<TaskRecord>, Failure> {
        let seq = self.seq;
        let id = input
            .id
            .get_or_insert_with(|| default_id(&self.batch, seq))
            .clone();
        if self.seen.contains(&id) {
            return Err(
                format!("input record {seq} repeats the id {id:?}: ids must be unique").into(),
            );
        }
        if self.finished.contains(&id) {
            self.order.insert(seq, None);
            return Ok(None);
        }
        self.seen.insert(id);
        // The run's --timeout and --retries, where the input does not say.
        input.timeout = input.timeout.or(self.args.timeout);
        input.retries = input.retries.or(self.args.retries);
        let reply_to = Some(self.results.name().to_owned());
        Ok(Some(input.into_task(&self.batch, seq, reply_to)?))
    }

    /// Tasks out and outcomes not printed yet: what `--max-in-flight` bounds.
    fn in_flight(&self) -> usize {
        self.pending.len() + self.held
    }

    /// Takes the results that arrive within `wait`, records and prints them, then
    /// acknowledges them (only once their output is written).
    fn collect(&mut self, wait: Duration) -> Result<(), Failure> {
        let batch = match self.results.reserve_many(CHUNK, wait) {
            Ok(batch) => batch,
            Err(GetError::Empty) => {
                self.hint()?;
                return self.vanished();
            }
            Err(GetError::Failed(e)) => return Err(e.into()),
        };
        let mut done = Vec::with_capacity(batch.len());
        for delivery in batch {
            done.extend(self.take(delivery)?);
        }
        self.results.ack_many(done)?;
        self.emit()?;
        self.bar
            .set_message(if self.failed + self.retrying.len() as u64 == 0 {
                String::new()
            } else {
                format!("{} failed, {} retrying, ", self.failed, self.retrying.len())
            });
        Ok(())
    }

    /// Tasks put and not finished that are nowhere on the server any more — not queued, not
    /// delayed, not leased by a worker, no result waiting — were dead-lettered by the server
    /// itself (deliveries failed past its `--max-redeliveries`) and will never report: they
    /// end as `lost` instead of the run waiting for ever. Seen twice, 2 s apart, to be sure;
    /// a worker stores a task's result or its retry before it acknowledges the task, so a
    /// task between the two is always visible in one of them.
    fn vanished(&mut self) -> Result<(), Failure> {
        if self.pending.is_empty() || self.last_check.elapsed() < VANISH_CHECK {
            return Ok(());
        }
        self.last_check = std::time::Instant::now();
        let stats = self.client.stats()?;
        let find = |name: &str| stats.queues.iter().find(|q| q.name == name);
        let tasks_gone =
            find(&self.args.queue).is_some_and(|q| q.len == 0 && q.leased == 0 && q.delayed == 0);
        let no_results = find(self.results.name()).is_some_and(|q| q.len == 0 && q.delayed == 0);
        if !(tasks_gone && no_results) {
            self.suspect = false;
            return Ok(());
        }
        if !std::mem::replace(&mut self.suspect, true) {
            return Ok(());
        }
        let lost: Vec<(String, Pending)> = self.pending.drain().collect();
        self.bar.suspend(|| {
            log::warn!(
                "{} task(s) of this run are no longer on the server (dead-lettered by it after \
                 too many failed deliveries): see distq dead --connect {} --queue {} ls",
                lost.len(),
                self.args.connect,
                self.args.queue
            )
        });
        for (id, pending) in lost {
            let mut task = TaskRecord::new(id.clone(), Vec::new());
            task.batch = self.batch.clone();
            task.seq = pending.seq;
            let mut result = ResultRecord::for_task(&task, Status::Lost);
            result.reason = Some(distq::exec::Reason::Lost);
            self.retrying.remove(&id);
            self.finished.insert(id);
            self.failed += 1;
            self.bar.inc(1);
            if let Some(log) = &mut self.joblog {
                log.write(&result, &pending.input, false)?;
            }
            if self.args.keep_order {
                self.order.insert(pending.seq, None);
            }
        }
        self.emit()
    }

    /// A few seconds in with nothing finished and no task taken: says how to start a worker.
    fn hint(&mut self) -> Result<(), Failure> {
        if self.hinted
            || self.pending.is_empty()
            || self.bar.position() > 0
            || self.started.elapsed() < HINT_AFTER
        {
            return Ok(());
        }
        self.hinted = true;
        let stats = self.client.stats()?;
        let taken = stats
            .queues
            .iter()
            .find(|q| q.name == self.args.queue)
            .is_some_and(|q| q.leased > 0);
        if !taken {
            self.bar.suspend(|| {
                log::info!(
                    "no worker is taking tasks from {} yet: start one with: distq worker \
                     --connect {} --queue {} --exec COMMAND",
                    self.args.queue,
                    self.args.connect,
                    self.args.queue
                )
            });
        }
        Ok(())
    }

    /// Records one result; hands the delivery back when it can be acknowledged now (its
    /// output written, or nothing to write), keeps it under `-k` until its turn.
    fn take(
        &mut self,
        delivery: Delivery<ResultRecord>,
    ) -> Result<Option<Delivery<ResultRecord>>, Failure> {
        let result = delivery.item();
        if !result.is_terminal() {
            if self.pending.contains_key(&result.id) {
                self.retrying.insert(result.id.clone());
            }
            return Ok(Some(delivery));
        }
        let Some(pending) = self.pending.remove(&result.id) else {
            if self.finished.contains(&result.id) {
                // A second run of a finished task (at least once): logged, never printed.
                if let Some(log) = &mut self.joblog {
                    log.write(result, b"", true)?;
                }
            } else {
                log::info!(
                    "a result for task {:?}, which this run did not submit: ignored",
                    result.id
                );
            }
            return Ok(Some(delivery));
        };
        self.retrying.remove(&result.id);
        self.finished.insert(result.id.clone());
        self.bar.inc(1);
        if result.status != Status::Ok {
            self.failed += 1;
            let line = format!(
                "task {} (input {}) {}: {}",
                result.id,
                pending.seq,
                joblog::status(result.status),
                describe(result)
            );
            self.bar.suspend(|| log::warn!("{line}"));
        }
        if self.args.keep_order {
            self.order.insert(
                pending.seq,
                Some(Held {
                    delivery,
                    input: pending.input,
                }),
            );
            self.held += 1;
            return Ok(None);
        }
        self.print(result)?;
        if let Some(log) = &mut self.joblog {
            log.write(result, &pending.input, false)?;
        }
        Ok(Some(delivery))
    }

    /// With `-k`, prints the outcomes whose turn has come, then writes their joblog lines
    /// and acknowledges them.
    fn emit(&mut self) -> Result<(), Failure> {
        let mut printed = Vec::new();
        while let Some(entry) = self.order.remove(&self.next_seq) {
            self.next_seq += 1;
            let Some(held) = entry else { continue };
            self.held -= 1;
            self.print(held.delivery.item())?;
            if let Some(log) = &mut self.joblog {
                log.write(held.delivery.item(), &held.input, false)?;
            }
            printed.push(held.delivery);
        }
        io::stdout().flush()?;
        if !printed.is_empty() {
            self.results.ack_many(printed)?;
        }
        Ok(())
    }

    fn print(&self, result: &ResultRecord) -> io::Result<()> {
        match self.args.output {
            // The bar steps aside while output is written, so no line mixes the two.
            OutputMode::Raw => self.bar.suspend(|| {
                let mut out = io::stdout().lock();
                out.write_all(&result.stdout)?;
                out.flush()?;
                if !result.stderr.is_empty() {
                    io::stderr().lock().write_all(&result.stderr)?;
                }
                Ok::<_, io::Error>(())
            })?,
            OutputMode::Jsonl => {
                let value = serde_value::to_value(result).map_err(io::Error::other)?;
                self.bar
                    .suspend(|| writeln!(io::stdout().lock(), "{}", to_json(&value)))?;
            }
            OutputMode::None => {}
        }
        Ok(())
    }
}

/// Declares the run's results queue. On `--resume` right after the run was killed, the
/// server may not have seen the old connection close yet: wait a little for it.
fn declare(client: &Client, name: &str) -> Result<Queue<ResultRecord>, Failure> {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.temporary_queue::<ResultRecord>(name, RESULTS_TTL) {
            Err(distq::Error::QueueInUse(_)) if std::time::Instant::now() < end => {
                thread::sleep(Duration::from_millis(100))
            }
            other => return Ok(other?),
        }
    }
}

/// Why a task failed, in a few words.
fn describe(r: &ResultRecord) -> String {
    let how = match (r.timed_out, r.exit_code, r.signal) {
        _ if r.reason == Some(distq::exec::Reason::OutputLimit) => format!(
            "wrote {} bytes of stdout, more than the worker keeps (--max-stdout)",
            r.stdout_bytes
        ),
        (true, _, _) => "timed out".to_owned(),
        (_, Some(code), _) => format!("exit status {code}"),
        (_, None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{:?}", r.reason.unwrap_or_default()).to_lowercase(),
    };
    format!("{how} after {} attempt(s) on {}", r.attempt, r.worker)
}

/// Reads stdin's records on a thread of their own, so a slow producer never holds up
/// collecting results; the bounded channel keeps memory bounded.
fn reader(args: &SubmitArgs) -> Receiver<Result<Input, InputError>> {
    let (tx, rx) = crossbeam_channel::bounded(CHUNK);
    let format = args.format.format();
    let file = args.file.clone();
    thread::spawn(move || {
        let send_all = |reader: &mut dyn io::BufRead| {
            let mut records = Records::new(reader, format, MAX_INPUT);
            loop {
                match records.next_record() {
                    Ok(Some(input)) => {
                        if tx.send(Ok(input)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        };
        match file {
            Some(path) => match std::fs::File::open(&path) {
                Ok(f) => send_all(&mut io::BufReader::new(f)),
                Err(e) => {
                    let _ = tx.send(Err(InputError::Io(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", path.display()),
                    ))));
                }
            },
            None => send_all(&mut io::stdin().lock()),
        }
    });
    rx
}
