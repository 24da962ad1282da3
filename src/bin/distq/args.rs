//! The command line, declared with clap.

use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Named queues served over TCP: a master hands out tasks, workers anywhere compute them.
#[derive(Debug, Parser)]
// Help on the line after each flag, in every subcommand: one layout, whatever the width.
#[command(name = "distq", version, about, long_about = None, next_line_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Host queues until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Host `tasks` and `results`, hand out a built-in job, collect and print its results.
    Master(MasterArgs),
    /// Run tasks: the built-in jobs a master hands out, or with --exec/--sh your own command
    /// once per task.
    Worker(WorkerArgs),
    /// Show a server's queues: length, leased, capacity, dead letters and totals.
    Stats(StatsArgs),
    /// Put one task per input record on a queue; print the id of each task stored.
    Put(PutArgs),
    /// Take items from a queue and print each as a JSON line, acknowledging it once written.
    Get(GetArgs),
    /// List, requeue or drop a queue's dead letters (QUEUE.dead), with why each died.
    Dead(DeadArgs),
    /// Create queues on Redis, or change their bound and lease settings (a distq server's
    /// queues are the ones it was started with).
    Declare(DeclareArgs),
    /// Internal: kills the process groups of a `worker --exec` that died (fed by it).
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
    /// Run one task per input record on `worker --exec` workers and print each task's output,
    /// like GNU parallel; the exit status is the number of failed tasks.
    Submit(SubmitArgs),
}

/// What `submit` prints of each finished task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputMode {
    /// The task's stdout on stdout, its stderr on stderr, unchanged (binary-safe).
    Raw,
    /// One JSON result record per task.
    Jsonl,
    /// Nothing (see --joblog).
    None,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The server's address as HOST:PORT, e.g. 127.0.0.1:5000; :5000 means this machine.
    #[arg(long, value_name = "ADDR")]
    pub connect: String,
    /// The queue the workers take tasks from.
    #[arg(long, short, default_value = "tasks", value_name = "NAME")]
    pub queue: String,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Read the input records from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    pub file: Option<std::path::PathBuf>,
    /// Print the outputs in input order (else as tasks finish).
    #[arg(short = 'k', long)]
    pub keep_order: bool,
    /// Each task's time limit in seconds, instead of the worker's (which caps it).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Retries after a failed run, per task, instead of the worker's (at most 25).
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Append one line per finished task to FILE, in GNU parallel's joblog columns plus Id,
    /// Attempts, Status and Worker (FILE.state keeps what --resume needs).
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<std::path::PathBuf>,
    /// Continue the run --joblog recorded: skip the tasks it finished, collect or put again
    /// the rest (give the same input).
    #[arg(long)]
    pub resume: bool,
    /// Show a progress bar on stderr even when it is not a terminal.
    #[arg(long)]
    pub bar: bool,
    /// Take results from this existing queue instead of a temporary one of the run's own
    /// (it must then serve one submitter at a time).
    #[arg(long, value_name = "NAME")]
    pub results_queue: Option<String>,
    /// Tasks put and not finished at any one time; more input waits.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = parse_in_flight)]
    pub max_in_flight: usize,
    /// What to print of each finished task: raw (its stdout and stderr as they are), jsonl
    /// (one result record per line) or none.
    #[arg(long, value_enum, default_value_t = OutputMode::Raw, value_name = "MODE", hide_possible_values = true)]
    pub output: OutputMode,
    #[command(flatten)]
    pub key: KeyArgs,
}

fn parse_in_flight(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number of tasks from 1 to 1000000")),
    }
}

/// How standard input is cut into records, one task each.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct FormatArgs {
    /// One task per line, its newline dropped (the default); an --exec command reads it on
    /// stdin as a line again, newline and all, and `{}` gets the bare line.
    #[arg(long)]
    pub lines: bool,
    /// One task per NUL-terminated record (`find -print0`).
    #[arg(short = '0', long)]
    pub null: bool,
    /// One task per JSON line: an object with `input` (or `input_b64`) and optionally `id`,
    /// `args`, `env`, `timeout`, `retries` is a task; any other value becomes the input as
    /// JSON text.
    #[arg(long)]
    pub jsonl: bool,
}

impl FormatArgs {
    pub fn format(&self) -> crate::input::Format {
        use crate::input::Format;
        match (self.null, self.jsonl) {
            (true, _) => Format::Null,
            (_, true) => Format::Jsonl,
            _ => Format::Lines,
        }
    }
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The server's address as HOST:PORT, e.g. 127.0.0.1:5000; :5000 means this machine.
    #[arg(long, value_name = "ADDR")]
    pub connect: String,
    /// The queue to put the tasks on.
    #[arg(long, short, default_value = "tasks", value_name = "NAME")]
    pub queue: String,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Hold the tasks this long before a worker can take them.
    #[arg(long, value_name = "SECS")]
    pub delay: Option<f64>,
    /// The queue workers put each task's result on [default: no result]
    #[arg(long, value_name = "NAME")]
    pub reply_to: Option<String>,
    /// Seconds to wait for room in a full (bounded) queue; past it, exit 124 having printed
    /// the ids stored [default: wait as long as it takes]
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The server's address as HOST:PORT, e.g. 127.0.0.1:5000; :5000 means this machine.
    #[arg(long, value_name = "ADDR")]
    pub connect: String,
    /// The queue to take items from.
    #[arg(long, short, value_name = "NAME")]
    pub queue: String,
    /// Stop after this many items.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
    /// Seconds to wait for an item; the command ends when none came in this time (exit 124
    /// if none came at all).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
    /// Keep waiting for items until interrupted.
    #[arg(long, conflicts_with = "timeout")]
    pub follow: bool,
    /// Print task records whole instead of only their input.
    #[arg(long)]
    pub records: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct DeadArgs {
    /// The server's address as HOST:PORT, e.g. 127.0.0.1:5000; :5000 means this machine
    /// (required; before or after the action).
    #[arg(long, value_name = "ADDR", global = true)]
    pub connect: Option<String>,
    /// The queue whose dead letters (QUEUE.dead) to work on.
    #[arg(
        long,
        short,
        default_value = "tasks",
        value_name = "NAME",
        global = true
    )]
    pub queue: String,
    #[command(subcommand)]
    pub action: DeadAction,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// List dead letters: id, attempts, why and when each died, the end of its stderr.
    Ls {
        /// Print each dead letter whole, as a JSON line.
        #[arg(long)]
        json: bool,
        /// List at most this many.
        #[arg(long, default_value_t = 1000, value_name = "N")]
        max: u64,
    },
    /// Move dead letters back to their queue (task records start again at attempt 1).
    Kick {
        /// How many to move [default: all]
        #[arg(value_name = "N")]
        count: Option<u64>,
    },
    /// Drop every dead letter.
    Purge,
}

#[derive(Debug, Args)]
pub struct DeclareArgs {
    /// The Redis URL: redis://[USER:PASSWORD@]HOST:PORT (rediss:// for TLS).
    #[arg(long, value_name = "URL")]
    pub connect: String,
    /// A queue to declare, as NAME or NAME:MAXSIZE (a bound on the tasks waiting); repeat for
    /// several. NAME.dead comes with it [default: tasks, results]
    #[arg(long = "queue", value_name = "NAME[:MAXSIZE]")]
    pub queues: Vec<QueueSpec>,
    #[command(flatten)]
    pub leases: LeaseArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Lease settings for the queues a server hosts.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Seconds an item taken by a worker stays leased before it goes back to the queue,
    /// unless acknowledged or extended (workers extend theirs while a task runs). On Redis a
    /// dead worker's tasks come back only then, hence the shorter default there
    /// [default: 60, or 15 on Redis]
    #[arg(long, value_name = "SECS")]
    pub lease_timeout: Option<f64>,
    /// How many failed deliveries an item may have; one more moves it to the dead-letter
    /// queue NAME.dead. A delivery fails when the worker nacks it, its lease runs out, or the
    /// connection of the worker running it breaks (of the tasks a broken connection held only
    /// the oldest counts: prefetched ones go back unharmed). `master` stops with an error as
    /// soon as one of its tasks is moved there.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_redeliveries: u32,
}

/// Settings of the server a subcommand hosts.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The memory budget for stored items (payloads and bookkeeping), e.g. 512MiB, 2GiB or
    /// plain bytes; puts past it wait for room, then fail [default: half of physical memory]
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub max_memory: Option<u64>,
    /// The most temporary queues clients may declare at once (each client's private
    /// results queue, say); past it the one abandoned the longest makes room, and a declare
    /// fails only while every one's client is connected
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_temporary_queues: usize,
    /// Keep every queue in a journal in DIR (created if missing), so a server killed or
    /// restarted on the same DIR still has every item whose put was confirmed and whose
    /// acknowledgement was not
    #[arg(long, value_name = "DIR")]
    pub journal: Option<std::path::PathBuf>,
    /// With --journal: when records are synced to disk. always: a confirmed put is on disk;
    /// a duration such as 50ms or 1s (a bare number is milliseconds; 0 is always): on disk within it, a
    /// power cut may lose that much; never: left to the OS. A killed server process loses no
    /// confirmed put in any mode
    #[arg(long, value_name = "POLICY", default_value = "always", value_parser = parse_fsync, requires = "journal")]
    pub fsync: distq::Fsync,
    /// With --journal: the size of each journal file, e.g. 64MiB
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_segment, requires = "journal")]
    pub journal_segment_size: u64,
    /// With --journal: the journal is compacted once its files take more than twice the live
    /// items and more than SIZE
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_compact_min, requires = "journal")]
    pub journal_compact_min: u64,
    /// Also listen on ADDR (HOST:PORT) for Python's multiprocessing.managers protocol, so
    /// unchanged BaseManager clients (manager.connect() with the same authkey) use these
    /// queues: get_task_queue is tasks, get_result_queue results
    #[arg(long, value_name = "ADDR")]
    pub python_bind: Option<String>,
    /// With --python-bind: make the name Python clients register (QueueManager.register('NAME'))
    /// stand for QUEUE; repeat for several (replaces the get_task_queue/get_result_queue
    /// defaults; every queue is also registered under its own name)
    #[arg(long, value_name = "NAME=QUEUE", value_parser = parse_python_queue, requires = "python_bind")]
    pub python_queue: Vec<(String, String)>,
}

/// `NAME=QUEUE` of `--python-queue`.
fn parse_python_queue(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, queue)) if !name.is_empty() && !queue.is_empty() => {
            Ok((name.to_owned(), queue.to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not NAME=QUEUE: write e.g. get_task_queue=tasks"
        )),
    }
}

/// The journal size below which it is never compacted, e.g. `64MiB` (0 is allowed).
fn parse_compact_min(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s).map_err(|e| format!("{s:?} is not a size ({e}): write e.g. 64MiB"))
}

/// `always`, `never`, or a duration such as `50ms` or `1s` (a bare number is milliseconds,
/// as with beanstalkd's `-f`; 0 is `always`).
fn parse_fsync(s: &str) -> Result<distq::Fsync, String> {
    let bad = || {
        format!(
            "{s:?} is not an fsync policy: write always, never, or a duration such as 50ms or 1s"
        )
    };
    match s.trim() {
        "always" => return Ok(distq::Fsync::Always),
        "never" => return Ok(distq::Fsync::Never),
        _ => {}
    }
    let text = s.trim();
    let duration = match text.parse::<u64>() {
        Ok(ms) => std::time::Duration::from_millis(ms),
        Err(_) => crate::common::duration(text).ok_or_else(bad)?,
    };
    if duration.is_zero() {
        return Ok(distq::Fsync::Always);
    }
    if duration > std::time::Duration::from_secs(3600) {
        return Err(format!("--fsync {s}: at most an hour between syncs"));
    }
    Ok(distq::Fsync::Every(duration))
}

/// A journal segment size: at least 64 KiB.
fn parse_segment(s: &str) -> Result<u64, String> {
    match parse_size::parse_size(s) {
        Ok(bytes) if bytes >= 64 << 10 => Ok(bytes),
        Ok(_) => Err("a journal segment takes at least 64KiB".into()),
        Err(e) => Err(format!("{s:?} is not a size ({e}): write e.g. 64MiB")),
    }
}

/// A size such as `512MiB`, `2GiB`, `1.5GB` or `1048576`.
fn parse_memory(s: &str) -> Result<u64, String> {
    match parse_size::parse_size(s) {
        Ok(0) => Err("the memory budget must be more than 0 bytes".into()),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(format!(
            "{s:?} is not a size ({e}): write e.g. 512MiB, 2GiB or a number of bytes"
        )),
    }
}

/// The shared secret, from the flag or the environment; there is no default key.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The shared secret clients and server must both hold [env: DISTQ_AUTHKEY]
    // DISTQ_AUTHKEY is read by `common::authkey`, not by clap: clap would count it as the
    // flag given, and refuse it beside --authkey-file.
    #[arg(long, value_name = "KEY")]
    pub authkey: Option<String>,
    /// A file holding the shared secret (one trailing newline is ignored); like ssh, it must
    /// be readable by its owner only (chmod 600). Keeps the key out of argv and the
    /// environment, which other local users can read through /proc.
    #[arg(long, value_name = "PATH", conflicts_with = "authkey")]
    pub authkey_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on as HOST:PORT, e.g. 0.0.0.0:5000; :5000 means all interfaces.
    #[arg(long, value_name = "ADDR")]
    pub bind: String,
    /// A queue to host, as NAME or NAME:MAXSIZE; repeat for several [default: tasks, results]
    #[arg(long = "queue", value_name = "NAME[:MAXSIZE]")]
    pub queues: Vec<QueueSpec>,
    /// TCP keepalive in whole seconds: quiet time before the first probe, time between
    /// probes, and unanswered probes after which a client is dead and its connection closed
    /// (at most 32767, 32767 and 127: the kernel's limits).
    #[arg(long, value_name = "IDLE,INTERVAL,PROBES", default_value = "30,5,3")]
    pub keepalive: KeepaliveSpec,
    #[command(flatten)]
    pub leases: LeaseArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// Address to listen on as HOST:PORT, e.g. 0.0.0.0:5000; :5000 means all interfaces.
    #[arg(long, value_name = "ADDR", required_unless_present = "connect")]
    pub bind: Option<String>,
    /// Keep the queues in Redis instead of hosting them: a redis:// (or rediss://) URL, with
    /// credentials as redis://USER:PASSWORD@HOST:PORT. Nothing is bound; workers connect to
    /// the same URL.
    #[arg(long, value_name = "URL", conflicts_with = "bind")]
    pub connect: Option<String>,
    /// Which built-in job to hand out: squares (the seed article's job: square random
    /// integers) or nqueens (count the solutions of the N-Queens puzzle).
    #[arg(long, value_enum, value_name = "JOB")]
    pub job: JobKind,
    /// squares: how many random numbers to square.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub count: u64,
    /// nqueens: the board size.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=20))]
    pub n: u8,
    /// nqueens: rows placed by the master; each valid placement becomes one task.
    #[arg(long, default_value_t = 2, value_name = "ROWS", value_parser = clap::value_parser!(u8).range(0..=6))]
    pub split_depth: u8,
    /// Seconds to wait for all results before giving up with a non-zero exit.
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub timeout: f64,
    #[command(flatten)]
    pub leases: LeaseArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobKind {
    // Described in `--job`'s help: help on the values here would switch `master --help`
    // alone to clap's long layout.
    Squares,
    Nqueens,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The master's address as HOST:PORT, e.g. 127.0.0.1:5000; :5000 means this machine.
    #[arg(long, value_name = "ADDR", required_unless_present = "python_connect")]
    pub connect: Option<String>,
    /// Join a Python BaseManager master instead (the seed's taskmanager.py, unchanged): its
    /// address as HOST:PORT. Tasks come from its get_task_queue, results go to its
    /// get_result_queue.
    #[arg(long, value_name = "ADDR", conflicts_with = "connect")]
    pub python_connect: Option<String>,
    /// With --python-connect: the registered names of the task and result queues.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "get_task_queue",
        requires = "python_connect"
    )]
    pub python_tasks: String,
    #[arg(
        long,
        value_name = "NAME",
        default_value = "get_result_queue",
        requires = "python_connect"
    )]
    pub python_results: String,
    /// Worker threads, each with its own connection.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Exit (successfully) after this many seconds without a task, counted once the worker
    /// has connected (connected or not after that).
    #[arg(long, value_name = "SECS")]
    pub idle_exit: Option<f64>,
    /// Seconds to wait for the TCP connection to open.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub connect_timeout: f64,
    /// Seconds to wait for the master, at start (a worker may start first) and after the
    /// connection to it breaks, before exiting with an error.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub give_up: f64,
    /// Pause this long before each task, like the seed worker's time.sleep(1): to watch work
    /// spread over workers, or to rehearse failures mid-task.
    #[arg(long, value_name = "SECS")]
    pub delay: Option<f64>,
    /// Take exactly this many tasks per request instead of adapting the batch to the tasks'
    /// length (1 takes them one at a time, like the seed).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: Option<u32>,
    #[command(flatten)]
    pub exec: crate::exec::ExecArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The server's address as HOST:PORT, e.g. 127.0.0.1:5000; :5000 means this machine.
    #[arg(long, value_name = "ADDR")]
    pub connect: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// `NAME` or `NAME:MAXSIZE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub maxsize: Option<usize>,
}

impl FromStr for QueueSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, maxsize) = match s.rsplit_once(':') {
            Some((name, max)) => {
                let max: usize = max
                    .parse()
                    .map_err(|_| format!("{max:?} is not a queue size (NAME:MAXSIZE)"))?;
                if max == 0 {
                    return Err("MAXSIZE must be at least 1".into());
                }
                (name, Some(max))
            }
            None => (s, None),
        };
        if name.is_empty() {
            return Err("the queue name is empty".into());
        }
        Ok(QueueSpec {
            name: name.to_owned(),
            maxsize,
        })
    }
}

/// `IDLE,INTERVAL,PROBES`, in whole seconds and a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveSpec(pub distq::Keepalive);

impl FromStr for KeepaliveSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<u64> = s
            .split(',')
            .map(|p| p.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{s:?} is not IDLE,INTERVAL,PROBES (three whole numbers)"))?;
        let [idle, interval, probes] = parts[..] else {
            return Err(format!("{s:?} is not IDLE,INTERVAL,PROBES (three numbers)"));
        };
        if idle == 0 || interval == 0 || probes == 0 {
            return Err("each keepalive figure must be at least 1".into());
        }
        // Linux's limits (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT): said here, so
        // an operator is not left with a server the kernel would silently clamp.
        if idle > 32_767 || interval > 32_767 || probes > 127 {
            return Err(format!(
                "{s:?} is past the kernel's keepalive limits: IDLE and INTERVAL at most 32767 \
                 seconds, PROBES at most 127"
            ));
        }
        let probes = probes as u32; // at most 127: checked above
        Ok(KeepaliveSpec(
            distq::Keepalive::default()
                .idle(Duration::from_secs(idle))
                .interval(Duration::from_secs(interval))
                .retries(probes),
        ))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn keepalive_specs_parse() {
        let spec: KeepaliveSpec = "2,1,3".parse().unwrap();
        assert_eq!(spec.0.timeout(), Duration::from_secs(5));
        assert!("2,1".parse::<KeepaliveSpec>().is_err());
        assert!("2,0,3".parse::<KeepaliveSpec>().is_err());
        assert!("a,1,3".parse::<KeepaliveSpec>().is_err());
    }

    #[test]
    fn queue_specs_parse() {
        assert_eq!(
            "tasks".parse(),
            Ok(QueueSpec {
                name: "tasks".into(),
                maxsize: None
            })
        );
        assert_eq!(
            "r:10".parse(),
            Ok(QueueSpec {
                name: "r".into(),
                maxsize: Some(10)
            })
        );
        assert!("r:0".parse::<QueueSpec>().is_err());
        assert!("r:x".parse::<QueueSpec>().is_err());
        assert!(":5".parse::<QueueSpec>().is_err());
    }

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory("1048576"), Ok(1 << 20));
        assert!(parse_memory("lots").unwrap_err().contains("512MiB"));
        assert!(parse_memory("0").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
