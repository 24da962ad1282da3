//! The task and result records, version 1.
//!
//! Every field but `v` and `id` has a default and unknown keys are ignored, so writers of
//! other versions and languages interoperate; `v` says whether the meaning changed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The record version this build writes and understands.
///
/// # Examples
///
/// ```
/// assert_eq!(distq::exec::TaskRecord::new("a", "x").v, distq::exec::RECORD_VERSION);
/// ```
pub const RECORD_VERSION: u32 = 1;

/// The longest task id, in bytes.
///
/// # Examples
///
/// ```
/// use distq::exec::{TaskRecord, MAX_ID};
/// assert!(TaskRecord::new("x".repeat(MAX_ID + 1), "").check().is_err());
/// ```
pub const MAX_ID: usize = 128;

/// How many earlier attempts a task record keeps in its `history` (the oldest are dropped).
///
/// # Examples
///
/// ```
/// use distq::exec::{AttemptRecord, Reason, TaskRecord, MAX_HISTORY};
/// let mut task = TaskRecord::new("a", "x");
/// for n in 1..=10 {
///     task = task.retry(AttemptRecord::new(n, Reason::Exit));
/// }
/// assert_eq!(task.history.len(), MAX_HISTORY);
/// assert_eq!(task.history[0].attempt, 6);
/// ```
pub const MAX_HISTORY: usize = 5;

/// The longest stderr excerpt kept per attempt in a task's `history`, in bytes.
const MAX_STDERR_TAIL: usize = 2048;

/// One task: an input for a command, with its id and how it should be run.
///
/// Built with [`TaskRecord::new`], then fields assigned. Its CBOR form is a map with these
/// field names (`input` a byte string); absent fields take their defaults.
///
/// # Examples
///
/// ```
/// use distq::exec::TaskRecord;
/// let mut task = TaskRecord::new("scene-0042", "scenes/0042.blend");
/// task.timeout_ms = Some(20 * 60 * 1000);
/// task.reply_to = Some("r.b7f3".into());
/// assert_eq!(task.attempt, 1);
/// assert!(task.check().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The record version, [`RECORD_VERSION`].
    pub v: u32,
    /// 1 to [`MAX_ID`] bytes chosen by the submitter, stable across resubmissions: the key
    /// results are matched by, and what a command can use to recognise a second run
    /// (`DISTQ_TASK_ID`).
    pub id: String,
    /// The submit run this task belongs to (`""` for none).
    #[serde(default)]
    pub batch: String,
    /// The input's position in its batch: the order `submit -k` prints in.
    #[serde(default)]
    pub seq: u64,
    /// The input, given to the command on its stdin (or as `{}` in its arguments).
    #[serde(with = "serde_bytes")]
    #[serde(default)]
    pub input: Vec<u8>,
    /// Extra argument values for the command, never shell-parsed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables for the command; a worker honours only the names it allows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// This task's time limit in milliseconds, instead of the worker's (which caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How many times a failed run may be retried, instead of the worker's (which caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The queue the worker puts this task's [`ResultRecord`]s on; `None` wants no result
    /// (fire and forget, as `distq put` does by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// When the task was made, in milliseconds since the Unix epoch (informational).
    #[serde(default)]
    pub created_ms: u64,
    /// Unix time in milliseconds after which the task is not started any more: a worker
    /// reports it [`Status::Expired`] instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_ms: Option<u64>,
    /// Which run this is: 1 for the first, one more for each retry after a failure
    /// (`DISTQ_ATTEMPT`). A redelivery after a lost worker keeps the number. Absent means 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The last [`MAX_HISTORY`] failed attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
}

impl TaskRecord {
    /// A first attempt at `input` under `id`, made now, wanting no result.
    ///
    /// # Examples
    ///
    /// ```
    /// let task = distq::exec::TaskRecord::new("7", b"\x00binary is fine".to_vec());
    /// assert_eq!(task.id, "7");
    /// assert_eq!(task.input[0], 0);
    /// assert_eq!(task.reply_to, None);
    /// ```
    pub fn new(id: impl Into<String>, input: impl Into<Vec<u8>>) -> Self {
        TaskRecord {
            v: RECORD_VERSION,
            id: id.into(),
            input: input.into(),
            created_ms: now_ms(),
            attempt: 1,
            ..TaskRecord::default()
        }
    }

    /// Whether this build can run the record: its version is [`RECORD_VERSION`] and its id
    /// is 1 to [`MAX_ID`] bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::exec::{RecordError, TaskRecord};
    /// let mut task = TaskRecord::new("", "x");
    /// assert_eq!(task.check(), Err(RecordError::Id { len: 0 }));
    /// task.id = "a".into();
    /// task.v = 2;
    /// assert_eq!(task.check(), Err(RecordError::Version { found: 2 }));
    /// ```
    pub fn check(&self) -> Result<(), RecordError> {
        if self.v != RECORD_VERSION {
            return Err(RecordError::Version { found: self.v });
        }
        if self.id.is_empty() || self.id.len() > MAX_ID {
            return Err(RecordError::Id { len: self.id.len() });
        }
        Ok(())
    }

    /// The record to put back for the next attempt after `failed`: `attempt` one more and
    /// `failed` appended to the history (which keeps the last [`MAX_HISTORY`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::exec::{AttemptRecord, Reason, TaskRecord};
    /// let task = TaskRecord::new("a", "x");
    /// let mut failed = AttemptRecord::new(task.attempt, Reason::Exit);
    /// failed.exit_code = Some(75);
    /// let next = task.retry(failed);
    /// assert_eq!(next.attempt, 2);
    /// assert_eq!(next.history[0].exit_code, Some(75));
    /// ```
    pub fn retry(&self, failed: AttemptRecord) -> TaskRecord {
        let mut next = self.clone();
        next.attempt = self.attempt.saturating_add(1);
        next.push_history(failed);
        next
    }

    /// Appends `attempt` to the history, dropping the oldest past [`MAX_HISTORY`] and
    /// trimming its stderr excerpt to its last 2 KiB; a dead letter carries its final attempt
    /// this way.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::exec::{AttemptRecord, Reason, TaskRecord};
    /// let mut task = TaskRecord::new("a", "x");
    /// let mut last = AttemptRecord::new(1, Reason::Exit);
    /// last.stderr_tail = "e".repeat(10_000);
    /// task.push_history(last);
    /// assert_eq!(task.history[0].stderr_tail.len(), 2048);
    /// ```
    pub fn push_history(&mut self, mut attempt: AttemptRecord) {
        attempt.stderr_tail = tail(&attempt.stderr_tail, MAX_STDERR_TAIL).to_owned();
        self.history.push(attempt);
        let excess = self.history.len().saturating_sub(MAX_HISTORY);
        self.history.drain(..excess);
    }
}

/// What one failed attempt at a task came to, kept in the task's `history`.
///
/// # Examples
///
/// ```
/// use distq::exec::{AttemptRecord, Reason};
/// let mut failed = AttemptRecord::new(1, Reason::Signal);
/// failed.signal = Some(9);
/// failed.worker = "render-3/4711/2".into();
/// assert_eq!(failed.reason, Reason::Signal);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AttemptRecord {
    /// The attempt's number (`TaskRecord::attempt` when it ran).
    pub attempt: u32,
    /// The worker that ran it, as `host/pid/slot`.
    pub worker: String,
    /// The command's exit status, if it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the command, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why the attempt failed.
    pub reason: Reason,
    /// When it ended, in milliseconds since the Unix epoch.
    pub ended_ms: u64,
    /// The end of its stderr, at most 2 KiB, as text (invalid UTF-8 replaced).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
}

impl AttemptRecord {
    /// Attempt number `attempt`, failed for `reason`, ending now.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = distq::exec::AttemptRecord::new(2, distq::exec::Reason::Timeout);
    /// assert_eq!(a.attempt, 2);
    /// assert!(a.ended_ms > 0);
    /// ```
    pub fn new(attempt: u32, reason: Reason) -> Self {
        AttemptRecord {
            attempt,
            reason,
            ended_ms: now_ms(),
            ..AttemptRecord::default()
        }
    }
}

/// What a worker reports about one run of a task, on the task's `reply_to` queue.
///
/// # Examples
///
/// ```
/// use distq::exec::{ResultRecord, Status, TaskRecord};
/// let task = TaskRecord::new("a", "x");
/// let mut result = ResultRecord::for_task(&task, Status::Ok);
/// result.exit_code = Some(0);
/// result.stdout = b"done\n".to_vec();
/// assert!(result.is_terminal());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ResultRecord {
    /// The record version, [`RECORD_VERSION`].
    pub v: u32,
    /// The task's id.
    pub id: String,
    /// The task's batch.
    #[serde(default)]
    pub batch: String,
    /// The task's position in its batch.
    #[serde(default)]
    pub seq: u64,
    /// How the run ended.
    pub status: Status,
    /// Why, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The command's exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the command, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether the worker stopped the command at its time limit.
    #[serde(default)]
    pub timed_out: bool,
    /// The last signal the worker sent the command's process group (`"TERM"`, `"KILL"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<String>,
    /// The task's attempt number.
    #[serde(default)]
    pub attempt: u32,
    /// How many times the server had delivered the task before without an outcome (lost
    /// workers, give-backs that count).
    #[serde(default)]
    pub redeliveries: u32,
    /// The worker that ran it, as `host/pid/slot`.
    #[serde(default)]
    pub worker: String,
    /// When the command started, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_ms: u64,
    /// How long it ran, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// The command's stdout, up to the worker's cap.
    #[serde(with = "serde_bytes")]
    #[serde(default)]
    pub stdout: Vec<u8>,
    /// The length of the whole stdout, kept or not.
    #[serde(default)]
    pub stdout_bytes: u64,
    /// Whether `stdout` is shorter than `stdout_bytes`.
    #[serde(default)]
    pub stdout_truncated: bool,
    /// The command's stderr, or its first and last parts when it was longer than the cap.
    #[serde(with = "serde_bytes")]
    #[serde(default)]
    pub stderr: Vec<u8>,
    /// The length of the whole stderr, kept or not.
    #[serde(default)]
    pub stderr_bytes: u64,
    /// Whether part of the stderr was dropped.
    #[serde(default)]
    pub stderr_truncated: bool,
    /// For a [`Status::Retrying`] notice: Unix time in milliseconds of the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_ms: Option<u64>,
}

impl ResultRecord {
    /// A result for `task` with `status`, its other fields at their defaults.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::exec::{ResultRecord, Status, TaskRecord};
    /// let mut task = TaskRecord::new("a", "x");
    /// task.batch = "b1".into();
    /// task.seq = 3;
    /// let r = ResultRecord::for_task(&task, Status::Failed);
    /// assert_eq!((r.id.as_str(), r.batch.as_str(), r.seq, r.attempt), ("a", "b1", 3, 1));
    /// ```
    pub fn for_task(task: &TaskRecord, status: Status) -> Self {
        ResultRecord {
            v: RECORD_VERSION,
            id: task.id.clone(),
            batch: task.batch.clone(),
            seq: task.seq,
            status,
            attempt: task.attempt,
            ..ResultRecord::default()
        }
    }

    /// Whether this is the task's outcome, not a notice that it will be retried.
    ///
    /// # Examples
    ///
    /// ```
    /// use distq::exec::{ResultRecord, Status, TaskRecord};
    /// let task = TaskRecord::new("a", "x");
    /// assert!(!ResultRecord::for_task(&task, Status::Retrying).is_terminal());
    /// assert!(ResultRecord::for_task(&task, Status::Lost).is_terminal());
    /// ```
    pub fn is_terminal(&self) -> bool {
        self.status != Status::Retrying
    }
}

/// How a run of a task ended.
///
/// # Examples
///
/// ```
/// assert_eq!(distq::exec::Status::default(), distq::exec::Status::Ok);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// The command succeeded.
    #[default]
    Ok,
    /// The command failed and the task will run again (not an outcome yet).
    Retrying,
    /// The command failed for good: permanently, or with no retries left.
    Failed,
    /// Workers running it were lost too often (the task probably kills its worker).
    Lost,
    /// The task was not started before its `expire_ms`.
    Expired,
}

/// Why a run did not succeed.
///
/// # Examples
///
/// ```
/// use distq::exec::Reason;
/// assert_ne!(Reason::Timeout, Reason::Exit);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The command exited with a failing status.
    #[default]
    Exit,
    /// The command was killed by a signal the worker did not send.
    Signal,
    /// The command ran past its time limit and the worker stopped it.
    Timeout,
    /// The command wrote more than the worker keeps.
    OutputLimit,
    /// The command could not be started with this input (its arguments were too long, say).
    SpawnError,
    /// The input was larger than one item may be.
    InputTooLarge,
    /// The workers running it were lost too often.
    Lost,
    /// The task expired before it started.
    Expired,
    /// The item was not a task record this worker can run.
    BadTask,
    /// The worker stopped the command because it was told to shut down.
    Interrupted,
}

/// A task record this build cannot run.
///
/// # Examples
///
/// ```
/// use distq::exec::TaskRecord;
/// let err = TaskRecord::new("", "x").check().unwrap_err();
/// assert!(err.to_string().contains("1 to 128 bytes"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The record's `v` is not [`RECORD_VERSION`].
    Version {
        /// The version it has.
        found: u32,
    },
    /// The id is empty or longer than [`MAX_ID`] bytes.
    Id {
        /// Its length in bytes.
        len: usize,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Version { found } => write!(
                f,
                "task record version {found} is not {RECORD_VERSION}, the one this worker \
                 runs: upgrade the worker, or submit with a matching distq"
            ),
            RecordError::Id { len } => write!(
                f,
                "a task id must be 1 to {MAX_ID} bytes, this one has {len}: choose a shorter id"
            ),
        }
    }
}

impl std::error::Error for RecordError {}

/// A record that does not say which attempt it is describes the first.
fn first_attempt() -> u32 {
    1
}

/// Milliseconds since the Unix epoch (0 on a clock set before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The last `max` bytes of `s` at most, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::codec;

    #[test]
    fn a_task_round_trips_through_cbor() {
        let mut task = TaskRecord::new("id-1", vec![0, 159, 146, 150]);
        task.args = vec!["--frames".into(), "1-24".into()];
        task.env.insert("A".into(), "b".into());
        task.reply_to = Some("r.x".into());
        task.push_history(AttemptRecord::new(1, Reason::Signal));
        let bytes = codec::encode(&task).unwrap();
        assert_eq!(codec::decode::<TaskRecord>(&bytes).unwrap(), task);
    }

    #[test]
    fn fields_are_a_map_with_names_and_input_a_byte_string() {
        let task = TaskRecord::new("a", vec![1, 2]);
        let bytes = codec::encode(&task).unwrap();
        // Any language reads it: a map (major type 5) keyed by text, `input` as bytes (0x42).
        assert_eq!(bytes[0] >> 5, 5);
        let needle = [&[0x65][..], b"input", &[0x42, 1, 2]].concat();
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn unknown_keys_are_ignored_and_missing_ones_default() {
        #[derive(Serialize)]
        struct Foreign<'a> {
            v: u32,
            id: &'a str,
            future_field: [u8; 3],
        }
        let bytes = codec::encode(&Foreign {
            v: 1,
            id: "x",
            future_field: [1, 2, 3],
        })
        .unwrap();
        let task: TaskRecord = codec::decode(&bytes).unwrap();
        assert_eq!(
            (task.id.as_str(), task.attempt, task.input.len()),
            ("x", 1, 0)
        );
        assert!(task.check().is_ok());
    }

    #[test]
    fn a_map_without_version_and_id_is_not_a_task() {
        // So a reader can tell a task from any other map (an e-mail's fields, say).
        let mail: std::collections::BTreeMap<&str, &str> = [("to", "a@b")].into();
        let bytes = codec::encode(&mail).unwrap();
        assert!(codec::decode::<TaskRecord>(&bytes).is_err());
        assert!(codec::decode::<ResultRecord>(&bytes).is_err());
        let task = codec::encode(&TaskRecord::new("a", "x")).unwrap();
        assert!(
            codec::decode::<ResultRecord>(&task).is_err(),
            "a task has no status"
        );
    }

    #[test]
    fn a_result_round_trips_through_cbor() {
        let task = TaskRecord::new("a", "x");
        let mut r = ResultRecord::for_task(&task, Status::Retrying);
        r.reason = Some(Reason::Timeout);
        r.stdout = vec![255, 0];
        r.next_retry_ms = Some(5);
        let bytes = codec::encode(&r).unwrap();
        assert_eq!(codec::decode::<ResultRecord>(&bytes).unwrap(), r);
    }

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("ab", 10), "ab");
    }
}
