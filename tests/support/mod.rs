//! Shared test helpers: servers on 127.0.0.1:0, bounded waits, and child processes that are
//! always reaped.
#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use distq::Server;

pub const KEY: &str = "test-key";

/// Milliseconds, for short waits.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Routes the library's log to the test output once per process (`RUST_LOG` to see it).
pub fn init_test_log() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = env_logger::builder().is_test(true).try_init();
    });
}

/// A server on a free loopback port with unbounded `tasks` and `results` queues.
pub fn start_server() -> (Server, SocketAddr) {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .queue("results")
        .bind("127.0.0.1:0")
        .expect("bind a loopback port");
    let addr = server.local_addr();
    (server, addr)
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(ms(10));
    }
    cond()
}

/// A child process that is killed and reaped when dropped, whatever happens to the test.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd` with piped stdout and stderr.
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child present").id()
    }

    /// Waits at most `limit` for the child to exit and returns its output; on time-out kills
    /// it and panics with what it printed.
    pub fn wait_output(mut self, limit: Duration) -> Output {
        let mut child = self.child.take().expect("child present");
        let end = Instant::now() + limit;
        loop {
            match child.try_wait().expect("poll child") {
                Some(_) => return child.wait_with_output().expect("collect output"),
                None if Instant::now() >= end => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("collect output");
                    panic!(
                        "{} did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                        self.name,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                None => std::thread::sleep(ms(20)),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `distq` binary built for these tests.
pub fn distq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distq"));
    cmd.env_remove("DISTQ_AUTHKEY").env("RUST_LOG", "info");
    cmd
}
