//! What a finished command means (EXEC.md §5.3.2), the exit-status lists and the backoff.

use std::time::Duration;

use distq::exec::Reason;

use super::process::Finished;
use crate::common::duration;

/// What to do with a task once its command has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Done: put the result, acknowledge.
    Ok,
    /// Will fail again: dead-letter it at once.
    Permanent(Reason),
    /// May pass next time: retry with backoff while retries are left.
    Temporary(Reason),
}

/// Classifies a finished command. Under `--sh`, 126 and 127 are `sh`'s own "cannot run" and
/// "not found" statuses; a program run by `--exec` that exits 127 is an ordinary failure.
pub fn classify(done: &Finished, max_stdout: usize, fail: &ExitSet, shell: bool) -> Class {
    if done.stdout.total > max_stdout as u64 {
        // A rerun would overflow again.
        return Class::Permanent(Reason::OutputLimit);
    }
    if done.timed_out {
        return Class::Temporary(Reason::Timeout);
    }
    match done.status.code() {
        Some(0) => Class::Ok,
        // `sh` could not find (127) or run (126) a command of the script. The script ran up
        // to there (its side effects happened), so the task is not given back; it would fail
        // the same way again, so it is not retried either.
        Some(126 | 127) if shell => Class::Permanent(Reason::Exit),
        Some(code) if fail.contains(code) => Class::Permanent(Reason::Exit),
        Some(_) => Class::Temporary(Reason::Exit),
        // Killed by a signal the worker did not send: never a success.
        None => Class::Temporary(Reason::Signal),
    }
}

/// A list of exit statuses such as `64-68,77,78,100`; empty for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitSet(Vec<(i32, i32)>);

impl ExitSet {
    pub fn contains(&self, code: i32) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl std::str::FromStr for ExitSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                format!("{part:?} is not an exit status or range: write e.g. 64-68,77,78,100 (0-255), or '' for none")
            };
            let status = |t: &str| {
                t.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|n| (0..=255).contains(n))
            };
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (status(lo).ok_or_else(bad)?, status(hi).ok_or_else(bad)?),
                None => {
                    let n = status(part).ok_or_else(bad)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(bad());
            }
            ranges.push((lo, hi));
        }
        Ok(ExitSet(ranges))
    }
}

/// `MIN..MAX`: exponential doubling from MIN, capped at MAX, with equal jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before the run after failed attempt `attempt` (1 for the first run): the
    /// doubled delay `d`, then `d/2 + rand(d/2)`, so at least half of it is always waited
    /// (full jitter could retry at once).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(40);
        let d = self
            .min
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

impl std::str::FromStr for Backoff {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not MIN..MAX: write e.g. 10s..1h, 500ms..30s or 0.1..0.2");
        let (min, max) = s.split_once("..").ok_or_else(bad)?;
        let (min, max) = (
            duration(min).ok_or_else(bad)?,
            duration(max).ok_or_else(bad)?,
        );
        if min > max {
            return Err(format!("--backoff {s:?}: MIN is longer than MAX"));
        }
        Ok(Backoff { min, max })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn exit_lists_parse() {
        let set: ExitSet = "64-68,77,78,100".parse().unwrap();
        assert!(set.contains(65) && set.contains(100) && set.contains(77));
        assert!(!set.contains(75) && !set.contains(1) && !set.contains(69));
        let none: ExitSet = "".parse().unwrap();
        assert!(!none.contains(65));
        assert!("70-60".parse::<ExitSet>().is_err());
        assert!("x".parse::<ExitSet>().is_err());
        assert!("300".parse::<ExitSet>().is_err());
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_caps() {
        let b: Backoff = "10s..1h".parse().unwrap();
        assert_eq!(
            (b.min, b.max),
            (Duration::from_secs(10), Duration::from_secs(3600))
        );
        for _ in 0..50 {
            let first = b.delay(1);
            assert!(first >= Duration::from_secs(5) && first <= Duration::from_secs(10));
            let third = b.delay(3);
            assert!(third >= Duration::from_secs(20) && third <= Duration::from_secs(40));
            let late = b.delay(30);
            assert!(late >= Duration::from_secs(1800) && late <= Duration::from_secs(3600));
        }
        let small: Backoff = "0.1..0.2".parse().unwrap();
        assert_eq!(small.min, Duration::from_millis(100));
        assert!("5m..1s".parse::<Backoff>().is_err());
        assert!("10s".parse::<Backoff>().is_err());
        assert_eq!(duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration("2h"), Some(Duration::from_secs(7200)));
    }
}
