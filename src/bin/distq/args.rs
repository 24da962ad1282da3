//! The command line, declared with clap.

use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Named queues served over TCP: a master hands out tasks, workers anywhere compute them.
#[derive(Debug, Parser)]
#[command(name = "distq", version, about, long_about = None)]
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
    /// Connect to a master and run the tasks it hands out.
    Worker(WorkerArgs),
    /// Show a server's queues: length, leased, capacity, dead letters and totals.
    Stats(StatsArgs),
}

/// Lease settings for the queues a server hosts.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Seconds an item taken by a worker stays leased before it goes back to the queue,
    /// unless acknowledged or extended (workers extend theirs while a task runs).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub lease_timeout: f64,
    /// How many failed deliveries an item may have; one more moves it to the dead-letter
    /// queue NAME.dead. A delivery fails when the worker nacks it, its lease runs out, or the
    /// connection of the worker running it breaks (of the tasks a broken connection held only
    /// the oldest counts: prefetched ones go back unharmed). `master` stops with an error as
    /// soon as one of its tasks is moved there.
    #[arg(long, default_value_t = 5)]
    pub max_redeliveries: u32,
}

/// The shared secret, from the flag or the environment; there is no default key.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The shared secret clients and server must both hold [env: DISTQ_AUTHKEY]
    #[arg(long, env = "DISTQ_AUTHKEY", hide_env_values = true, hide_env = true)]
    pub authkey: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:5000.
    #[arg(long)]
    pub bind: String,
    /// A queue to host, as NAME or NAME:MAXSIZE; repeat for several [default: tasks, results]
    #[arg(long = "queue", value_name = "NAME[:MAXSIZE]")]
    pub queues: Vec<QueueSpec>,
    #[command(flatten)]
    pub leases: LeaseArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// Address to listen on, e.g. 0.0.0.0:5000.
    #[arg(long)]
    pub bind: String,
    /// Which built-in job to hand out.
    #[arg(long, value_enum)]
    pub job: JobKind,
    /// squares: how many random numbers to square.
    #[arg(long, default_value_t = 10)]
    pub count: u64,
    /// nqueens: the board size.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub n: u8,
    /// nqueens: rows placed by the master; each valid placement becomes one task.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=6))]
    pub split_depth: u8,
    /// Seconds to wait for all results before giving up with a non-zero exit.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub leases: LeaseArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobKind {
    /// The seed article's job: square random integers.
    Squares,
    /// Count the solutions of the N-Queens puzzle.
    Nqueens,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The master's address, e.g. 127.0.0.1:5000.
    #[arg(long)]
    pub connect: String,
    /// Worker threads, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Exit (successfully) after this many seconds without a task, connected or not.
    #[arg(long, value_name = "SECS")]
    pub idle_exit: Option<f64>,
    /// Seconds to wait for the TCP connection to open.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub connect_timeout: f64,
    /// Seconds to keep reconnecting after the connection to the master breaks before
    /// exiting with an error.
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
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The server's address, e.g. 127.0.0.1:5000.
    #[arg(long)]
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

#[cfg(test)]
mod test {
    use super::*;

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
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
