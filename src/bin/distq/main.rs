//! `distq`: serve queues, run the master of a built-in job, or run workers.
//!
//! The binary stays thin: parse the arguments, install a logger, call the library.

mod args;
mod dead;
mod exec;
mod get;
mod input;
mod item;
mod jobs;
mod master;
mod put;
mod serve;
mod stats;
mod worker;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use args::{Cli, Command, KeyArgs, LeaseArgs, ServerArgs};
use distq::{QueueConfig, ServerConfig};

/// What a subcommand returns: any failure becomes a message and exit status 1.
pub type Outcome = Result<(), Box<dyn Error + Send + Sync>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Master(args) => master::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Put(args) => put::run(args),
        Command::Get(args) => get::run(args),
        Command::Dead(args) => dead::run(args),
        Command::Watchdog => exec::watchdog::serve(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(exit) => {
                eprintln!("distq: {}", exit.message);
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
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Exit {}

/// The authkey from `--authkey` or `DISTQ_AUTHKEY`; there is deliberately no default.
pub fn authkey(key: &KeyArgs) -> Result<String, Box<dyn Error + Send + Sync>> {
    match &key.authkey {
        Some(k) if !k.is_empty() => Ok(k.clone()),
        _ => Err(
            "no authkey: pass --authkey KEY or set DISTQ_AUTHKEY (there is no default key)".into(),
        ),
    }
}

/// Seconds from the command line as a `Duration`, refusing negative and non-finite values.
pub fn seconds(flag: &str, secs: f64) -> Result<Duration, Box<dyn Error + Send + Sync>> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("--{flag} takes a non-negative number of seconds, not {secs}").into())
}

/// The queue settings the lease flags ask for.
pub fn queue_config(leases: &LeaseArgs) -> Result<QueueConfig, Box<dyn Error + Send + Sync>> {
    let timeout = seconds("lease-timeout", leases.lease_timeout)?;
    if timeout.is_zero() {
        return Err("--lease-timeout must be longer than zero".into());
    }
    Ok(QueueConfig::default()
        .lease_timeout(timeout)
        .max_redeliveries(leases.max_redeliveries))
}

/// The server settings the server flags ask for; the rest stay at their defaults.
pub fn server_config(args: &ServerArgs) -> ServerConfig {
    let config = ServerConfig::default();
    match args.max_memory {
        Some(bytes) => config.max_memory(bytes),
        None => config,
    }
}
