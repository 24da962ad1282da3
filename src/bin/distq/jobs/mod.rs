//! The built-in jobs: what a task carries, how a worker runs it, what comes back.
//!
//! A task names its job, so one worker runs whichever job the master hands out.

pub mod nqueens;
pub mod squares;

use serde::{Deserialize, Serialize};

/// One unit of work on the `tasks` queue.
///
/// Fields travel under one-letter names: a task and its answer then stay under the 46 bytes a
/// server keeps inline, with no allocation per item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The master run this task belongs to; results from other runs are ignored.
    #[serde(rename = "r")]
    pub run: u64,
    /// The task's number within its run.
    #[serde(rename = "i")]
    pub id: u64,
    /// What to compute.
    #[serde(rename = "j")]
    pub job: Job,
}

/// The built-in computations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// The seed's job: square `n` and report `"n * n = n²"`.
    Square { n: i64 },
    /// Count the N-Queens solutions whose first rows hold queens in the columns of `prefix`.
    Nqueens { n: u8, prefix: Vec<u8> },
}

/// One answer on the `results` queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The run of the task answered.
    #[serde(rename = "r")]
    pub run: u64,
    /// The id of the task answered.
    #[serde(rename = "i")]
    pub id: u64,
    /// What the job produced.
    #[serde(rename = "o")]
    pub output: Output,
}

/// What a job produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// A line such as `"3 * 3 = 9"`.
    Text(String),
    /// A count of solutions.
    Count(u64),
}

impl Task {
    /// Runs the task's job and wraps the answer for the results queue.
    pub fn run(&self) -> TaskResult {
        let output = match &self.job {
            Job::Square { n } => Output::Text(squares::square(*n)),
            Job::Nqueens { n, prefix } => Output::Count(nqueens::count_from(*n, prefix)),
        };
        TaskResult {
            run: self.run,
            id: self.id,
            output,
        }
    }
}
