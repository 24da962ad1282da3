//! The joblog: one line per finished task in GNU parallel's columns (so tools written for
//! `parallel --joblog` read it) plus Id, Attempts, Status and Worker; and the small state
//! file beside it that `--resume` needs.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use distq::exec::{Reason, ResultRecord, Status};

/// Parallel's columns, then ours.
const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\tId\tAttempts\tStatus\tWorker";

/// The open joblog.
pub struct Joblog {
    out: BufWriter<File>,
}

impl Joblog {
    /// Opens `path` for appending, writing the header first when it is new or empty.
    pub fn open(path: &Path) -> io::Result<Joblog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let empty = file.metadata()?.len() == 0;
        let mut out = BufWriter::new(file);
        if empty {
            writeln!(out, "{HEADER}")?;
            out.flush()?;
        }
        Ok(Joblog { out })
    }

    /// One line for `result`, `input` being the task's input (shown escaped, as parallel
    /// shows the command) and `dup` whether an earlier result for the id was kept instead.
    pub fn write(&mut self, result: &ResultRecord, input: &[u8], dup: bool) -> io::Result<()> {
        let host = result.worker.split('/').next().unwrap_or("");
        // Parallel writes -1 for a job that did not exit on its own (killed at its timeout).
        let exitval = match (result.timed_out, result.reason, result.exit_code) {
            (true, _, _) | (_, Some(Reason::Lost | Reason::Expired), _) => -1,
            (_, _, Some(code)) => code,
            (_, _, None) => 0,
        };
        let status = if dup { "dup" } else { status(result.status) };
        writeln!(
            self.out,
            "{}\t{}\t{:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            result.seq,
            escape(host.as_bytes()),
            result.started_ms as f64 / 1000.0,
            result.duration_ms as f64 / 1000.0,
            input.len(),
            result.stdout_bytes,
            exitval,
            result.signal.unwrap_or(0),
            escape(input),
            escape(result.id.as_bytes()),
            result.attempt,
            status,
            escape(result.worker.as_bytes()),
        )?;
        // Flushed per line: after a crash the joblog says exactly what finished.
        self.out.flush()
    }
}

pub fn status(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Retrying => "retrying",
        Status::Failed => "failed",
        Status::Lost => "lost",
        Status::Expired => "expired",
        _ => "other",
    }
}

/// Tabs, newlines, backslashes and bytes that are not printable UTF-8 escaped, so one task is
/// one line of columns.
fn escape(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The ids a joblog records as finished (any terminal status but `dup`, which repeats one).
pub fn finished_ids(path: &Path) -> io::Result<HashSet<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    let mut ids = HashSet::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        let cols: Vec<&str> = line.split('\t').collect();
        // A line cut short by a crash, or the header, says nothing finished.
        if cols.len() < 13 || cols[0] == "Seq" {
            continue;
        }
        if matches!(cols[11], "ok" | "failed" | "lost" | "expired") {
            ids.insert(unescape(cols[9]));
        }
    }
    Ok(ids)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(c);
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// What `--resume` needs from the run it continues: its batch id (naming its results queue
/// and its tasks' ids) and how many inputs it had stored.
#[derive(Debug, PartialEq, Eq)]
pub struct State {
    pub batch: String,
    pub stored: u64,
}

/// The state file of a joblog: `FILE.state`.
pub fn state_path(joblog: &Path) -> PathBuf {
    let mut name = joblog.as_os_str().to_owned();
    name.push(".state");
    PathBuf::from(name)
}

impl State {
    pub fn read(path: &Path) -> io::Result<Option<State>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut batch = None;
        let mut stored = 0;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("batch", b)) => batch = Some(b.to_owned()),
                Some(("stored", n)) => stored = n.parse().unwrap_or(0),
                _ => {}
            }
        }
        Ok(batch.map(|batch| State { batch, stored }))
    }

    /// Writes the state atomically (a temporary file renamed over the old one), so a crash
    /// leaves the old state or the new, never half of one.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(
            &tmp,
            format!("batch={}\nstored={}\n", self.batch, self.stored),
        )?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use distq::exec::TaskRecord;

    #[test]
    fn lines_round_trip_ids_and_statuses() {
        let dir = std::env::temp_dir().join(format!("distq-joblog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let mut log = Joblog::open(&path).unwrap();
        let mut task = TaskRecord::new("b-1\tx", "in\nput");
        task.seq = 1;
        let mut ok = ResultRecord::for_task(&task, Status::Ok);
        ok.worker = "host-a/42/0".into();
        log.write(&ok, &task.input, false).unwrap();
        let failed = ResultRecord::for_task(&TaskRecord::new("b-2", ""), Status::Failed);
        log.write(&failed, b"", false).unwrap();
        let dup = ResultRecord::for_task(&TaskRecord::new("b-3", ""), Status::Ok);
        log.write(&dup, b"", true).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("Seq\tHost\t"));
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains("\thost-a\t"), "{text}");
        assert!(text.contains("in\\nput"), "{text}");
        let ids = finished_ids(&path).unwrap();
        assert_eq!(ids, ["b-1\tx".to_owned(), "b-2".to_owned()].into());

        let state = State {
            batch: "abc".into(),
            stored: 12,
        };
        state.write(&state_path(&path)).unwrap();
        assert_eq!(State::read(&state_path(&path)).unwrap(), Some(state));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
