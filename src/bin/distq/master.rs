//! `distq master`: host `tasks` and `results`, hand out a built-in job, collect its results.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use distq::{GetError, Queue, Server};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

use crate::args::{JobKind, MasterArgs};
use crate::jobs::{nqueens, Job, Output, Task, TaskResult};
use crate::{authkey, queue_config, seconds, server_config, Outcome};

pub fn run(args: MasterArgs) -> Outcome {
    let key = authkey(&args.key)?;
    let timeout = seconds("timeout", args.timeout)?;
    let config = queue_config(&args.leases)?;
    let server = Server::builder()
        .authkey(key)
        .config(server_config(&args.server))
        .queue_with("tasks", config.clone())
        .queue_with("results", config)
        .bind(&args.bind)?;
    log::info!("listening on {}", server.local_addr());
    let master = Master {
        tasks: server.queue("tasks")?,
        results: server.queue("results")?,
        run: rand::random(),
        timeout,
    };
    let outcome = match args.job {
        JobKind::Squares => master.squares(args.count),
        JobKind::Nqueens => master.nqueens(args.n, args.split_depth),
    };
    server.shutdown();
    outcome
}

struct Master {
    tasks: Queue<Task>,
    results: Queue<TaskResult>,
    /// Tags this run's tasks, so results from any other run are ignored.
    run: u64,
    timeout: Duration,
}

impl Master {
    /// The seed's master: random integers out, their squares back, printed as they come.
    fn squares(&self, count: u64) -> Outcome {
        let mut rng = rand::rng();
        for id in 0..count {
            let n = rng.random_range(0..=10_000);
            println!("Put task {n}...");
            self.tasks.put(self.task(id, Job::Square { n }))?;
        }
        println!("Try get results...");
        self.collect(count, |_, output| match output {
            Output::Text(line) => {
                println!("Result: {line}");
                true
            }
            Output::Count(_) => false,
        })
    }

    /// N-Queens split by the placement of the first rows; prints `solutions: <count>` last.
    fn nqueens(&self, n: u8, depth: u8) -> Outcome {
        let prefixes = nqueens::prefixes(n, depth);
        let total = prefixes.len() as u64;
        let tasks = prefixes
            .into_iter()
            .zip(0..)
            .map(|(prefix, id)| self.task(id, Job::Nqueens { n, prefix }));
        self.tasks.put_many(tasks.collect::<Vec<_>>())?;
        println!("Put {total} tasks: N-Queens n={n}, first {depth} row(s) placed by the master");
        let progress = ProgressBar::new(total).with_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tasks, {elapsed} elapsed, ~{eta} left",
        )?);
        let mut solutions = 0;
        let outcome = self.collect(total, |_, output| match output {
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

    fn task(&self, id: u64, job: Job) -> Task {
        Task {
            run: self.run,
            id,
            job,
        }
    }

    /// Takes results until every task id `0..expected` has answered once, or the timeout
    /// passes. `accept` sees each first answer and says whether it has the right shape.
    fn collect(&self, expected: u64, mut accept: impl FnMut(u64, Output) -> bool) -> Outcome {
        let deadline = Instant::now().checked_add(self.timeout);
        let mut seen = HashSet::new();
        while (seen.len() as u64) < expected {
            let got = match deadline {
                Some(d) => self.results.get_deadline(d),
                None => self.results.get(),
            };
            let result = match got {
                Ok(r) => r,
                Err(GetError::Empty) => {
                    return Err(format!(
                        "timed out: {} of {expected} results arrived within {:?} (are workers running?)",
                        seen.len(),
                        self.timeout
                    )
                    .into())
                }
                Err(e) => return Err(e.into()),
            };
            if result.run != self.run || result.id >= expected {
                log::warn!("ignoring a result for another run or an unknown task");
            } else if seen.contains(&result.id) {
                log::debug!("task {}: duplicate result ignored", result.id);
            } else if accept(result.id, result.output) {
                seen.insert(result.id);
            } else {
                log::warn!("task {}: result of the wrong kind ignored", result.id);
            }
        }
        Ok(())
    }
}
