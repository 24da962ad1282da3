//! The seed article's master and worker in one program: the master hosts `tasks` and
//! `results` and uses them in-process; two worker threads connect over TCP like remote
//! machines would, square the numbers and put the answers back.
//!
//! Run it with `cargo run --example squares`.

use std::thread;
use std::time::Duration;

use distq::{Client, GetError, Server};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let server = Server::builder()
        .authkey("abc")
        .queue("tasks")
        .queue("results")
        .bind("127.0.0.1:0")?;
    let addr = server.local_addr();
    println!("master listening on {addr}");

    let tasks = server.queue::<u64>("tasks")?;
    let results = server.queue::<String>("results")?;
    for n in [3, 14, 15, 92, 65, 35, 89, 79, 32, 38] {
        println!("Put task {n}...");
        tasks.put(n)?;
    }

    let workers: Vec<_> = (0..2)
        .map(|i| thread::spawn(move || worker(i, addr)))
        .collect();

    println!("Try get results...");
    for _ in 0..10 {
        println!("Result: {}", results.get_timeout(Duration::from_secs(10))?);
    }
    for w in workers {
        w.join().expect("worker thread")?;
    }
    server.shutdown();
    Ok(())
}

/// The worker loop of `task_worker.py`: take with a timeout, compute, put the result back.
fn worker(id: usize, addr: std::net::SocketAddr) -> Result<(), BoxError> {
    let client = Client::connect(addr, "abc")?;
    let tasks = client.queue::<u64>("tasks")?;
    let results = client.queue::<String>("results")?;
    loop {
        match tasks.get_timeout(Duration::from_millis(200)) {
            Ok(n) => {
                println!("worker {id}: run task {n} * {n}...");
                results.put(format!("{n} * {n} = {}", n * n))?;
            }
            Err(GetError::Empty) => {
                println!("worker {id}: task queue is empty.");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}
