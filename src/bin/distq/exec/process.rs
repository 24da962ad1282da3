//! One command's life: spawn it in a session and process group of its own, feed its stdin,
//! read its stdout and stderr into capped buffers, enforce its timeout on the whole group,
//! and leave nothing of the group behind.
//!
//! Commands start with `posix_spawnp`, not std's `Command`: std forks when asked for a new
//! session (a `pre_exec` hook), and copying the worker's page tables for each fork was more
//! than half a short command's cost. glibc's posix_spawn clones without copying them (like
//! vfork) and can itself make the new session (POSIX_SPAWN_SETSID).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
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

/// Runs one command to its end.
pub fn run(spec: Spec, watchdog: &Watchdog) -> Result<Finished, SpawnError> {
    let started = Instant::now();
    let child = spawn(&spec.argv, &spec.env).map_err(|e| match e {
        Spawn::BadArgs(e) => SpawnError::BadArgs(e),
        Spawn::Failed(errno) => spawn_error(io::Error::from(errno)),
    })?;
    let pid = child.pid;
    // With its own session the command's pid is also its group's id. A worker SIGKILLed
    // between the spawn and this line (microseconds) leaves this one group unlisted: the
    // only window the watchdog does not cover.
    watchdog.add(pid);
    // From here on the group is killed and unlisted however this function ends, a panic
    // included.
    let group = Group {
        pgid: pid,
        watchdog,
    };
    // The waiter is started before anything else can fail, so the child is always reaped.
    let (exit_tx, exit_rx) = bounded(1);
    thread::Builder::new()
        .name("distq-exec-wait".into())
        .spawn(move || {
            let _ = exit_tx.send(wait(pid));
        })
        .map_err(|e| {
            // No thread to reap it: kill it and reap it here (SIGKILL cannot be ignored).
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = wait(pid);
            SpawnError::Other(e)
        })?;

    let input = spec.input;
    // A command that reads nothing closes the pipe: EPIPE is no error. An input that fits in
    // an empty pipe (at least a page on Linux) is written at once: no thread needed.
    let writer = {
        let mut pipe = File::from(child.stdin);
        if input.len() <= SMALL_INPUT {
            let _ = pipe.write_all(&input);
            None
        } else {
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&input);
            }))
        }
    };
    let stdout = Arc::new(Mutex::new(Capture::default()));
    let stderr = Arc::new(Mutex::new(Capture::default()));
    let (done_tx, done_rx) = bounded::<()>(2);
    {
        let pipe = File::from(child.stdout);
        let (cap, tx) = (Arc::clone(&stdout), done_tx.clone());
        let max = spec.max_stdout;
        thread::spawn(move || {
            drain(pipe, &cap, max, 0);
            let _ = tx.send(());
        });
    }
    {
        let pipe = File::from(child.stderr);
        let (cap, tx) = (Arc::clone(&stderr), done_tx.clone());
        let head = spec.max_stderr.min(STDERR_HEAD);
        let tail = spec.max_stderr - head;
        thread::spawn(move || {
            drain(pipe, &cap, head, tail);
            let _ = tx.send(());
        });
    }
    drop(done_tx);

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
                let _ = killpg(pid, Signal::SIGTERM);
                match exit_rx.recv_timeout(spec.kill_after) {
                    Ok(status) => Some(status),
                    Err(RecvTimeoutError::Disconnected) => None,
                    Err(RecvTimeoutError::Timeout) => {
                        killed_by = Some("KILL");
                        let _ = killpg(pid, Signal::SIGKILL);
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
    drop(group);
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
        // waitpid failed (it cannot, for a child we own): say it died of SIGKILL.
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

/// A started command: its pid and the worker's ends of its three pipes.
struct Child {
    pid: Pid,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Why `spawn` failed, before the mapping to `SpawnError`.
enum Spawn {
    /// An argument or environment value holds a NUL byte.
    BadArgs(io::Error),
    /// A system call failed; for posix_spawnp itself, glibc reports the exec's errno.
    Failed(Errno),
}

impl From<Errno> for Spawn {
    fn from(e: Errno) -> Spawn {
        Spawn::Failed(e)
    }
}

/// Kills what is left of a command's group and unlists it from the watchdog when dropped.
struct Group<'a> {
    pgid: Pid,
    watchdog: &'a Watchdog,
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
        self.watchdog.remove(self.pgid);
    }
}

/// Starts `argv` (looked up in PATH) in a new session, with pipes on its stdin, stdout and
/// stderr, every signal's default disposition and an empty signal mask, and the worker's
/// environment less DISTQ_AUTHKEY plus `env`.
fn spawn(argv: &[OsString], env: &[(String, String)]) -> Result<Child, Spawn> {
    let nul = |what: &str| Spawn::BadArgs(io::Error::other(format!("{what} holds a NUL byte")));
    if argv.is_empty() {
        return Err(Spawn::BadArgs(io::Error::other("empty command")));
    }
    let args = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| nul("an argument")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut envp = Vec::new();
    for (key, value) in std::env::vars_os() {
        // The task's variables replace the worker's of the same name.
        if key == "DISTQ_AUTHKEY" || env.iter().any(|(k, _)| OsStr::new(k) == key) {
            continue;
        }
        let mut pair = key.into_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        // The OS never hands out a variable with a NUL in it; skip one rather than fail.
        if let Ok(pair) = CString::new(pair) {
            envp.push(pair);
        }
    }
    for (key, value) in env {
        envp.push(CString::new(format!("{key}={value}")).map_err(|_| nul("a variable"))?);
    }

    // Close-on-exec, so no other command started meanwhile inherits them; dup2 onto 0, 1 and
    // 2 clears the flag on the copies the command gets. (Rust's runtime keeps fds 0-2 open, so
    // none of these is one of them.)
    let (stdin_r, stdin_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stdout_r, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_r, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_dup2(raw(&stdin_r), 0)?;
    actions.add_dup2(raw(&stdout_w), 1)?;
    actions.add_dup2(raw(&stderr_w), 2)?;

    let mut attr = PosixSpawnAttr::init()?;
    // A session and group of its own, so a timeout or cleanup reaches every process it
    // starts, and a terminal's Ctrl-C reaches none of them (glibc 2.26+; nix names no
    // constant for it).
    let setsid = PosixSpawnFlags::from_bits_retain(nix::libc::POSIX_SPAWN_SETSID.into());
    attr.set_flags(
        setsid | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK,
    )?;
    // Rust ignores SIGPIPE and an ignored signal survives exec: without this a command
    // writing to a closed pipe would get EPIPE errors instead of the quiet death pipelines
    // rely on. std resets it the same way. (glibc still leaves its internal signals 32 and 33
    // ignored, as it does for std; no program can name them.)
    attr.set_sigdefault(&SigSet::all())?;
    attr.set_sigmask(&SigSet::empty())?;

    let pid = posix_spawnp(&args[0], &actions, &attr, &args, &envp)?;
    // The command's ends are closed here (on an error above too, by their drop), so the
    // command's exit ends the pipes.
    drop((stdin_r, stdout_w, stderr_w));
    Ok(Child {
        pid,
        stdin: stdin_w,
        stdout: stdout_r,
        stderr: stderr_r,
    })
}

fn raw(fd: &OwnedFd) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Reaps the command's main process and gives its status as std's `ExitStatus`, so the
/// rest of the worker reads it as before.
fn wait(pid: Pid) -> io::Result<ExitStatus> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::from_raw(code << 8)),
            Ok(WaitStatus::Signaled(_, signal, core)) => {
                let core = if core { 0x80 } else { 0 };
                return Ok(ExitStatus::from_raw(signal as i32 | core));
            }
            // Stops and continues are not reported without WUNTRACED; wait on.
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
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
