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
///
/// A plain integer is a task too: the seed's own (what a Python master, or `distq master
/// --python-bind`, puts). Its answer is the plain string `"n * n = m"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TaskForm")]
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
    /// Whether it came as a plain integer, so its answer goes back as a plain string.
    #[serde(skip_serializing)]
    pub plain: bool,
}

/// The two forms a task arrives in.
#[derive(Deserialize)]
#[serde(untagged)]
enum TaskForm {
    Full {
        #[serde(rename = "r")]
        run: u64,
        #[serde(rename = "i")]
        id: u64,
        #[serde(rename = "j")]
        job: Job,
    },
    Plain(i64),
}

impl From<TaskForm> for Task {
    fn from(form: TaskForm) -> Task {
        match form {
            TaskForm::Full { run, id, job } => Task {
                run,
                id,
                job,
                plain: false,
            },
            TaskForm::Plain(n) => Task {
                run: 0,
                id: 0,
                job: Job::Square { n },
                plain: true,
            },
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// The answer to a plain task: stored as its plain string.
    #[serde(skip)]
    pub plain: bool,
}

impl Serialize for TaskResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Full<'a> {
            r: u64,
            i: u64,
            o: &'a Output,
        }
        match (&self.output, self.plain) {
            (Output::Text(line), true) => s.serialize_str(line),
            (output, _) => Full {
                r: self.run,
                i: self.id,
                o: output,
            }
            .serialize(s),
        }
    }
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
            plain: self.plain,
        }
    }
}
