//! One command's life: spawn it in a session and process group of its own, feed its stdin,
//! read its stdout and stderr into capped buffers, enforce its timeout on the whole group,
//! and leave nothing of the group behind.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::watchdog::Watchdog;

/// What stays of stderr's beginning; the rest of its cap keeps its end, where errors are.
const STDERR_HEAD: usize = 8 << 10;
/// How long pipes may stay open after the main process exits (a background child holding
/// them) before the group is killed.
const DRAIN: Duration = Duration::from_secs(2);
/// How long to wait for the pipes to close once the group is killed: a process that left the
/// group (its own `setsid`) may hold them for ever, and is then left to its pipes.
const CLOSE: Duration = Duration::from_secs(2);
/// An input this small is written without a thread: an empty pipe always takes it.
const SMALL_INPUT: usize = 4096;
/// The chunk each pipe is read in.
const CHUNK: usize = 64 << 10;

/// What to run and how.
pub struct Spec {
    pub argv: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub input: Vec<u8>,
    pub timeout: Option<Duration>,
    pub kill_after: Duration,
    pub max_stdout: usize,
    pub max_stderr: usize,
}

/// A command that ran to its end (or was killed).
pub struct Finished {
    pub status: ExitStatus,
    pub timed_out: bool,
    /// The last signal the worker sent the group at the timeout.
    pub killed_by: Option<&'static str>,
    pub stdout: Capture,
    pub stderr: Capture,
    pub took: Duration,
}

/// The kept part of one output stream, and how much there was.
#[derive(Default)]
pub struct Capture {
    pub head: Vec<u8>,
    /// The end kept beyond the head (stderr only), oldest byte first.
    pub tail: std::collections::VecDeque<u8>,
    pub total: u64,
}

impl Capture {
    /// The kept bytes, head then tail.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        out.extend(self.tail.iter());
        out
    }

    pub fn truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }
}

/// Why a command could not start.
#[derive(Debug)]
pub enum SpawnError {
    /// The program does not exist (ENOENT): the worker is misconfigured.
    NotFound(io::Error),
    /// The program may not be run (EACCES): the worker is misconfigured.
    Denied(io::Error),
    /// The task's arguments cannot be passed (E2BIG, a NUL byte): the task's fault.
    BadArgs(io::Error),
    /// Anything else (out of processes, memory): the worker's trouble, not the task's.
    Other(io::Error),
}

/// Runs one command to its end. Called from the slot's long-lived thread, because
/// PR_SET_PDEATHSIG fires when the thread that forked the child ends.
pub fn run(spec: Spec, watchdog: &Watchdog) -> Result<Finished, SpawnError> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| SpawnError::BadArgs(io::Error::other("empty command")))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("DISTQ_AUTHKEY")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: setsid, prctl and getppid are plain system calls
    // (nix's wrappers allocate nothing), and the error is built from an errno integer.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session and group, so a timeout or cleanup reaches every process it
            // starts, and a terminal's Ctrl-C reaches none of them.
            nix::unistd::setsid().map_err(io::Error::from)?;
            // Killed with the slot's thread if the worker dies; the group kill and the
            // watchdog cover the rest of the group.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The worker died between fork and prctl: the signal will never come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let pgid = Pid::from_raw(child.id() as i32);
    watchdog.add(pgid);

    let stdin = child.stdin.take();
    let input = spec.input;
    // A command that reads nothing closes the pipe: EPIPE is no error. An input that fits in
    // an empty pipe (at least a page on Linux) is written at once: no thread needed.
    let writer = match stdin {
        Some(mut pipe) if input.len() <= SMALL_INPUT => {
            let _ = pipe.write_all(&input);
            None
        }
        Some(mut pipe) => Some(thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })),
        None => None,
    };
    let stdout = Arc::new(Mutex::new(Capture::default()));
    let stderr = Arc::new(Mutex::new(Capture::default()));
    let (done_tx, done_rx) = bounded::<()>(2);
    if let Some(pipe) = child.stdout.take() {
        let (cap, tx) = (Arc::clone(&stdout), done_tx.clone());
        let max = spec.max_stdout;
        thread::spawn(move || {
            drain(pipe, &cap, max, 0);
            let _ = tx.send(());
        });
    }
    if let Some(pipe) = child.stderr.take() {
        let (cap, tx) = (Arc::clone(&stderr), done_tx.clone());
        let head = spec.max_stderr.min(STDERR_HEAD);
        let tail = spec.max_stderr - head;
        thread::spawn(move || {
            drain(pipe, &cap, head, tail);
            let _ = tx.send(());
        });
    }
    drop(done_tx);

    let (exit_tx, exit_rx) = bounded(1);
    thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    let mut timed_out = false;
    let mut killed_by = None;
    let waited = match spec.timeout {
        None => exit_rx.recv().ok(),
        Some(timeout) => match exit_rx.recv_timeout(timeout) {
            Ok(status) => Some(status),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                killed_by = Some("TERM");
                let _ = killpg(pgid, Signal::SIGTERM);
                match exit_rx.recv_timeout(spec.kill_after) {
                    Ok(status) => Some(status),
                    Err(RecvTimeoutError::Disconnected) => None,
                    Err(RecvTimeoutError::Timeout) => {
                        killed_by = Some("KILL");
                        let _ = killpg(pgid, Signal::SIGKILL);
                        exit_rx.recv().ok()
                    }
                }
            }
        },
    };
    // The main process is gone; give a background child a moment to close the pipes, then
    // kill whatever is left of the group: the task is over.
    let drain_end = Instant::now() + DRAIN;
    let mut open = 2;
    while open > 0 && done_rx.recv_deadline(drain_end).is_ok() {
        open -= 1;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    watchdog.remove(pgid);
    let close_end = Instant::now() + CLOSE;
    while open > 0 && done_rx.recv_deadline(close_end).is_ok() {
        open -= 1;
    }
    if let Some(writer) = writer {
        if open == 0 {
            let _ = writer.join();
        }
    }
    let status = match waited {
        Some(Ok(status)) => status,
        // wait() failed (it cannot, for a child we own): say it died of SIGKILL.
        _ => ExitStatus::from_raw(Signal::SIGKILL as i32),
    };
    let took = started.elapsed();
    let take = |cap: &Arc<Mutex<Capture>>| std::mem::take(&mut *distq_lock(cap));
    Ok(Finished {
        status,
        timed_out,
        killed_by,
        stdout: take(&stdout),
        stderr: take(&stderr),
        took,
    })
}

fn distq_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads a pipe to its end, keeping the first `head` bytes and the last `tail` bytes and
/// counting the rest, so the writer never blocks on a full pipe.
fn drain(mut pipe: impl Read, cap: &Mutex<Capture>, head: usize, tail: usize) {
    let mut buf = vec![0; CHUNK];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut cap = distq_lock(cap);
        cap.total += n as u64;
        let mut chunk = &buf[..n];
        let room = head.saturating_sub(cap.head.len());
        let first = room.min(chunk.len());
        cap.head.extend_from_slice(&chunk[..first]);
        chunk = &chunk[first..];
        if tail > 0 && !chunk.is_empty() {
            let chunk = &chunk[chunk.len().saturating_sub(tail)..];
            let over = (cap.tail.len() + chunk.len()).saturating_sub(tail);
            cap.tail.drain(..over);
            cap.tail.extend(chunk.iter());
        }
    }
}

fn spawn_error(e: io::Error) -> SpawnError {
    match e.raw_os_error() {
        Some(nix::libc::ENOENT) | Some(nix::libc::ENOTDIR) => SpawnError::NotFound(e),
        Some(nix::libc::EACCES) | Some(nix::libc::EPERM) | Some(nix::libc::ENOEXEC) => {
            SpawnError::Denied(e)
        }
        Some(nix::libc::E2BIG) => SpawnError::BadArgs(e),
        _ if e.kind() == io::ErrorKind::InvalidInput => SpawnError::BadArgs(e),
        _ => SpawnError::Other(e),
    }
}

/// The signal that ended a process, if one did.
pub fn signal_of(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_capture_keeps_head_and_tail_and_counts_all() {
        let cap = Mutex::new(Capture::default());
        let data: Vec<u8> = (0..200u8).collect();
        drain(&data[..], &cap, 10, 5);
        let cap = cap.into_inner().unwrap();
        assert_eq!(cap.total, 200);
        assert_eq!(cap.head, (0..10).collect::<Vec<u8>>());
        assert_eq!(
            cap.tail.iter().copied().collect::<Vec<_>>(),
            [195, 196, 197, 198, 199]
        );
        assert!(cap.truncated());
        let whole = Mutex::new(Capture::default());
        drain(&b"hi"[..], &whole, 10, 0);
        assert!(!whole.into_inner().unwrap().truncated());
    }
}
