//! Shared test helpers: servers on 127.0.0.1:0, bounded waits, and child processes that are
//! always reaped.

pub mod raw;
pub mod redis;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
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

/// A server on a free loopback port with one unbounded `tasks` queue and the given settings.
pub fn server_with(config: distq::ServerConfig) -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .config(config)
        .bind("127.0.0.1:0")
        .expect("bind a loopback port")
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(ms(10));
    }
    cond()
}

/// A child process that is killed and reaped when dropped, whatever happens to the test.
/// Its stdout and stderr are drained by threads, so it never blocks on a full pipe.
pub struct ChildGuard {
    child: Child,
    name: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a finished child printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ChildGuard {
    /// Spawns `cmd` with its output captured.
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        Self::spawn_inner(name, cmd, None)
    }

    /// Spawns `cmd` with its output captured and `input` written to its stdin (then closed)
    /// by a thread, so a large input never blocks the test.
    pub fn spawn_with_stdin(name: &str, cmd: &mut Command, input: Vec<u8>) -> ChildGuard {
        Self::spawn_inner(name, cmd, Some(input))
    }

    fn spawn_inner(name: &str, cmd: &mut Command, input: Option<Vec<u8>>) -> ChildGuard {
        let stdin = if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(stdin)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
            thread::spawn(move || {
                use std::io::Write;
                // The child may exit without reading it all: a broken pipe is its business.
                let _ = pipe.write_all(&input);
            });
        }
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            drain(
                child.stdout.take().expect("piped stdout"),
                Arc::clone(&stdout),
            ),
            drain(
                child.stderr.take().expect("piped stderr"),
                Arc::clone(&stderr),
            ),
        ];
        ChildGuard {
            child,
            name: name.to_owned(),
            stdout,
            stderr,
            readers,
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (such as "TERM" or "KILL") to this child, by its PID.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.id());
    }

    /// Waits at most `limit` for a stderr line containing `needle`; returns that line.
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) -> String {
        let mut found = None;
        let ok = wait_until(limit, || {
            found = self
                .stderr
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(needle))
                .map(String::from);
            found.is_some()
        });
        assert!(
            ok,
            "{} printed no {needle:?} within {limit:?}; stderr:\n{}",
            self.name,
            self.stderr.lock().unwrap()
        );
        found.unwrap()
    }

    /// The address from the child's `listening on ADDR` log line.
    pub fn listening_addr(&self) -> SocketAddr {
        let line = self.wait_for_stderr("listening on ", Duration::from_secs(20));
        let addr = line
            .rsplit("listening on ")
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap_or("");
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?}: {e}"))
    }

    /// Waits at most `limit` for the child to exit; on time-out kills it and panics with
    /// what it printed.
    pub fn wait_output(mut self, limit: Duration) -> Finished {
        let end = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                break status;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.join_readers();
                panic!(
                    "{} did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout.lock().unwrap(),
                    self.stderr.lock().unwrap()
                );
            }
            thread::sleep(ms(20));
        };
        self.join_readers();
        Finished {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Reaped already when wait_output returned; otherwise kill it now.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.join_readers();
    }
}

/// Fails the test with everything `what` printed unless it exited 0.
pub fn assert_success(what: &str, out: &Finished) {
    assert!(
        out.status.success(),
        "{what} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// The `distq` binary built for these tests.
pub fn distq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distq"));
    cmd.env_remove("DISTQ_AUTHKEY").env("RUST_LOG", "info");
    cmd
}

/// Resident memory of process `pid`, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// A `distq serve` child on a free loopback port with `tasks` and `results`, and its address.
pub fn serve_process(extra: &[&str]) -> (ChildGuard, SocketAddr) {
    let child = ChildGuard::spawn(
        "serve",
        distq()
            .args(["serve", "--bind", "127.0.0.1:0", "--authkey", KEY])
            .args(extra),
    );
    let addr = child.listening_addr();
    (child, addr)
}
