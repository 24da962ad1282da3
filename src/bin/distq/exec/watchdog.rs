//! The watchdog: a small process per worker (this binary, run as `distq __watchdog`) that
//! knows every process group the worker's commands run in and kills those still there when
//! the worker dies, however it dies.
//!
//! It is the only such mechanism: commands start with posix_spawn, which cannot set
//! PR_SET_PDEATHSIG (and that would reach only a command's main process, not its children).
//! The worker writes `+PGID` when a command starts and `-PGID` once its
//! group is gone, one line each, on the watchdog's stdin. The kernel closes that pipe when
//! the worker exits, so the watchdog's end-of-file means "the worker is gone": it SIGKILLs
//! every group still listed and exits. (A subreaper would have to `waitpid(-1)`, stealing
//! the exit statuses the worker waits for; a cgroup needs privileges.) A worker SIGKILLed in
//! the microseconds between a command's spawn and its `+PGID` leaves that one group behind.

use std::collections::HashSet;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The worker's side: the pipe to the watchdog, and the groups alive now.
pub struct Watchdog {
    pipe: Mutex<Option<ChildStdin>>,
    child: Mutex<Option<Child>>,
    groups: Mutex<HashSet<i32>>,
}

impl Watchdog {
    /// Starts the watchdog process.
    pub fn start() -> io::Result<Watchdog> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("__watchdog")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // A group of its own: a terminal's Ctrl-C, meant for the worker, must not end it.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Watchdog {
            pipe: Mutex::new(pipe),
            child: Mutex::new(Some(child)),
            groups: Mutex::new(HashSet::new()),
        })
    }

    pub fn add(&self, pgid: Pid) {
        lock(&self.groups).insert(pgid.as_raw());
        self.tell(&format!("+{pgid}\n"));
    }

    pub fn remove(&self, pgid: Pid) {
        lock(&self.groups).remove(&pgid.as_raw());
        self.tell(&format!("-{pgid}\n"));
    }

    /// SIGKILLs every group alive now (a second SIGINT/SIGTERM).
    pub fn kill_all(&self) {
        for &pgid in lock(&self.groups).iter() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }

    /// Closes the pipe and waits for the watchdog to exit (it has nothing left to kill).
    pub fn stop(&self) {
        drop(lock(&self.pipe).take());
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.wait();
        }
    }

    fn tell(&self, line: &str) {
        let mut pipe = lock(&self.pipe);
        if let Some(p) = pipe.as_mut() {
            if let Err(e) = p.write_all(line.as_bytes()) {
                log::warn!(
                    "the watchdog process is gone ({e}): commands' child processes may outlive \
                     this worker if it is killed"
                );
                *pipe = None;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `distq __watchdog`: reads `+PGID`/`-PGID` lines until end-of-file, then kills the groups
/// still listed.
pub fn serve() -> crate::Outcome {
    let mut groups: HashSet<i32> = HashSet::new();
    // The worker is the only writer; a line that is not +PGID or -PGID is ignored.
    let stdin = io::stdin().lock();
    for line in stdin.split(b'\n') {
        let Ok(line) = line else { break };
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        let (sign, num) = text.split_at(text.len().min(1));
        let Ok(pgid) = num.parse::<i32>() else {
            continue;
        };
        // Never group 0 or negative: killpg would mean this process's own group or all.
        if pgid <= 1 {
            continue;
        }
        match sign {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    Ok(())
}
