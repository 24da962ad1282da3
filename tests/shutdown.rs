//! `shutdown()` wakes blocked operations, closes connections and joins every thread.
//! One test in this file, so the thread census sees only this test's threads.

#[allow(dead_code)] // this test uses a subset of the helpers
#[path = "it/support/mod.rs"]
mod support;

use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, Error, GetError};
use support::{start_server, wait_until, KEY};

/// Names of this process's threads that the server started (`distq-accept`, `distq-leases`,
/// `distq-conn-N`); clients' `distq-heartbeat` threads are not the server's.
fn server_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("distq-") && name != "distq-heartbeat")
        .collect()
}

#[test]
fn shutdown_wakes_waiters_and_leaves_no_thread_behind() {
    let (server, addr) = start_server();
    let clients: Vec<Client> = (0..5)
        .map(|_| Client::connect(addr, KEY).unwrap())
        .collect();
    // One client blocks in a get with no timeout; another sits idle.
    let waiter = {
        let tasks = Client::connect(addr, KEY)
            .unwrap()
            .queue::<u32>("tasks")
            .unwrap();
        thread::spawn(move || tasks.get())
    };
    let local = server.queue::<u32>("tasks").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || server_threads().len() >= 8),
        "threads: {:?}",
        server_threads()
    );

    let start = Instant::now();
    server.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert_eq!(server_threads(), Vec::<String>::new());

    let err = waiter.join().unwrap().unwrap_err();
    assert!(matches!(err, GetError::Failed(Error::Closed)), "{err}");
    assert!(matches!(local.get(), Err(GetError::Failed(Error::Closed))));
    for client in clients {
        assert!(client.queue::<u32>("tasks").is_err());
    }
    server.shutdown(); // idempotent
}
