//! `distq`: serve queues, run the master of a built-in job, or run workers.
//!
//! The binary stays thin: parse the arguments, install a logger, call the library.

#![forbid(unsafe_code)]

mod args;
mod common;
mod dead;
mod declare;
mod exec;
mod get;
mod input;
mod item;
mod jobs;
mod master;
mod put;
mod python_worker;
mod serve;
mod stats;
mod submit;
mod worker;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use args::{Cli, Command, LeaseArgs, ServerArgs};
use distq::{QueueConfig, ServerConfig};

/// What a subcommand returns: any failure becomes a message and exit status 1.
pub type Outcome = Result<(), Box<dyn Error + Send + Sync>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logger().init();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Master(args) => master::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Put(args) => put::run(args),
        Command::Get(args) => get::run(args),
        Command::Dead(args) => dead::run(args),
        Command::Declare(args) => declare::run(args),
        Command::Watchdog => exec::watchdog::serve(),
        Command::Submit(args) => submit::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<common::Interrupted>() => {
            eprintln!("distq: {e}");
            ExitCode::from(130)
        }
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(exit) => {
                if !exit.message.is_empty() {
                    eprintln!("distq: {}", exit.message);
                }
                ExitCode::from(exit.code)
            }
            None => {
                eprintln!("distq: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A failure with its own exit status (124 for a timeout, say) instead of 1.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Exit {
            code,
            message: message.into(),
        }
    }

    /// An exit status with nothing to say.
    pub fn quiet(code: u8) -> Self {
        Exit::new(code, "")
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Exit {}

/// Info by default, and `RUST_LOG` as usual. Each connection of the library logs its own
/// orderly closes and reconnections at info; a worker process holds several connections and
/// says those once itself, so they stay at warn unless `RUST_LOG` names `distq::connection`.
/// (Connections to Redis say a loss and a return once per process themselves.)
fn logger() -> env_logger::Builder {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(log::LevelFilter::Info)
        .filter_module("distq::connection", log::LevelFilter::Warn);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    builder
}

/// Seconds from the command line as a `Duration`, refusing negative and non-finite values.
pub fn seconds(flag: &str, secs: f64) -> Result<Duration, Box<dyn Error + Send + Sync>> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("--{flag} takes a non-negative number of seconds, not {secs}").into())
}

/// The lease timeout of queues on Redis unless `--lease-timeout` says otherwise: a dead
/// worker's tasks come back only at its end there (a closed connection frees nothing), and
/// a live worker extends its leases every third of it.
const REDIS_LEASE: f64 = 15.0;

/// The queue settings the lease flags ask for, for queues on Redis or not.
pub fn queue_config(
    leases: &LeaseArgs,
    redis: bool,
) -> Result<QueueConfig, Box<dyn Error + Send + Sync>> {
    let default = match redis {
        true => REDIS_LEASE,
        false => QueueConfig::default().lease_timeout.as_secs_f64(),
    };
    let timeout = seconds("lease-timeout", leases.lease_timeout.unwrap_or(default))?;
    if timeout.is_zero() {
        return Err("--lease-timeout must be longer than zero".into());
    }
    Ok(QueueConfig::default()
        .lease_timeout(timeout)
        .max_redeliveries(leases.max_redeliveries))
}

/// The journal the server flags ask for, if any.
pub fn journal_config(args: &ServerArgs) -> Option<distq::JournalConfig> {
    let dir = args.journal.as_ref()?;
    Some(
        distq::JournalConfig::new(dir)
            .fsync(args.fsync)
            .segment_size(args.journal_segment_size)
            .compact_min(args.journal_compact_min),
    )
}

/// The Python listener the server flags ask for, if any.
pub fn python_listener(
    mut builder: distq::ServerBuilder,
    args: &ServerArgs,
) -> Result<distq::ServerBuilder, common::AddrError> {
    if let Some(addr) = &args.python_bind {
        builder = builder.python_bind(common::python_bind_addr(addr)?);
        for (name, queue) in &args.python_queue {
            builder = builder.python_queue(name, queue);
        }
    }
    Ok(builder)
}

/// The server settings the server flags ask for; the rest stay at their defaults.
pub fn server_config(args: &ServerArgs) -> ServerConfig {
    let config = ServerConfig::default().max_temporary_queues(args.max_temporary_queues);
    match args.max_memory {
        Some(bytes) => config.max_memory(bytes),
        None => config,
    }
}
