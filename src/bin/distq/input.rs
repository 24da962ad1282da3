//! Task inputs from a stream, one per record: LF-terminated lines, NUL-terminated records, or
//! JSON lines (a task object, or any value as the input).

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};

use distq::exec::TaskRecord;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::item::unb64;

/// How records are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Lines,
    Null,
    Jsonl,
}

/// One record, with what a JSON task object said about it.
#[derive(Debug, Default, PartialEq)]
pub struct Input {
    pub input: Vec<u8>,
    pub id: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<f64>,
    pub retries: Option<u32>,
}

impl Input {
    /// The task record for input number `seq` of run `batch`: the id the input names, else
    /// `BATCH-SEQ`.
    pub fn into_task(
        self,
        batch: &str,
        seq: u64,
        reply_to: Option<String>,
    ) -> Result<TaskRecord, String> {
        let id = self.id.unwrap_or_else(|| default_id(batch, seq));
        let mut task = TaskRecord::new(id, self.input);
        task.check()
            .map_err(|e| format!("input record {seq}: {e}"))?;
        task.batch = batch.to_owned();
        task.seq = seq;
        task.args = self.args;
        task.env = self.env;
        task.timeout_ms = self.timeout.map(|s| (s * 1000.0).ceil() as u64);
        task.retries = self.retries;
        task.reply_to = reply_to;
        Ok(task)
    }
}

/// The id of input number `seq` of run `batch` when the input names none.
pub fn default_id(batch: &str, seq: u64) -> String {
    format!("{batch}-{seq}")
}

/// A record that could not be read.
#[derive(Debug)]
pub enum InputError {
    Io(io::Error),
    /// Record `n` (1-based) is longer than an item may be.
    TooLarge {
        record: u64,
        limit: usize,
    },
    /// Record `n` of `--jsonl` input is not JSON, or a task object with bad fields.
    Json {
        record: u64,
        error: String,
    },
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::Io(e) => write!(f, "reading the input: {e}"),
            InputError::TooLarge { record, limit } => write!(
                f,
                "input record {record} is longer than {limit} bytes, the most one task may \
                 carry: pass a path or URL to the data instead"
            ),
            InputError::Json { record, error } => {
                write!(f, "input line {record} is not a valid JSON task: {error}")
            }
        }
    }
}

impl std::error::Error for InputError {}

/// The fields a `--jsonl` task object may carry; an object with `input` or `input_b64`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskObject {
    id: Option<String>,
    input: Option<String>,
    input_b64: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout: Option<f64>,
    retries: Option<u32>,
}

/// Reads records one at a time, each at most `limit` bytes, so memory stays bounded
/// whatever the input.
pub struct Records<R> {
    reader: R,
    format: Format,
    limit: usize,
    count: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Records<R> {
    pub fn new(reader: R, format: Format, limit: usize) -> Self {
        Records {
            reader,
            format,
            limit,
            count: 0,
            buf: Vec::new(),
        }
    }

    /// The next record, or `None` at the end of the input.
    pub fn next_record(&mut self) -> Result<Option<Input>, InputError> {
        loop {
            let delimiter = if self.format == Format::Null {
                0
            } else {
                b'\n'
            };
            self.buf.clear();
            // One byte past the limit (plus the delimiter) says the record is too long.
            let cap = self.limit as u64 + 2;
            let n = (&mut self.reader)
                .take(cap)
                .read_until(delimiter, &mut self.buf)
                .map_err(InputError::Io)?;
            if n == 0 {
                return Ok(None);
            }
            self.count += 1;
            if self.buf.last() == Some(&delimiter) {
                self.buf.pop();
            } else if n as u64 == cap {
                return Err(InputError::TooLarge {
                    record: self.count,
                    limit: self.limit,
                });
            }
            if self.buf.len() > self.limit {
                return Err(InputError::TooLarge {
                    record: self.count,
                    limit: self.limit,
                });
            }
            match self.format {
                Format::Lines | Format::Null => {
                    return Ok(Some(Input {
                        input: std::mem::take(&mut self.buf),
                        ..Input::default()
                    }))
                }
                Format::Jsonl => {
                    // Blank lines between JSON values carry nothing.
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        self.count -= 1;
                        continue;
                    }
                    return self.json().map(Some);
                }
            }
        }
    }

    fn json(&self) -> Result<Input, InputError> {
        let record = self.count;
        let bad = |error: String| InputError::Json { record, error };
        let json: Json = serde_json::from_slice(&self.buf).map_err(|e| bad(e.to_string()))?;
        let is_task = json
            .as_object()
            .is_some_and(|o| o.contains_key("input") || o.contains_key("input_b64"));
        if !is_task {
            // Any other value is the input itself, as compact JSON text and a newline.
            let mut input = json.to_string().into_bytes();
            input.push(b'\n');
            return Ok(Input {
                input,
                ..Input::default()
            });
        }
        let task: TaskObject = serde_json::from_value(json).map_err(|e| {
            bad(format!(
                "{e} (a task object has id, input or input_b64, args, env, timeout, retries)"
            ))
        })?;
        let input = match (task.input, task.input_b64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => unb64(&b64).map_err(|e| bad(format!("input_b64: {e}")))?,
            _ => return Err(bad("give either input or input_b64, not both".into())),
        };
        if input.len() > self.limit {
            return Err(InputError::TooLarge {
                record,
                limit: self.limit,
            });
        }
        if let Some(t) = task.timeout {
            if !(t.is_finite() && t >= 0.0) {
                return Err(bad(format!("timeout {t} is not a number of seconds")));
            }
        }
        Ok(Input {
            input,
            id: task.id,
            args: task.args,
            env: task.env,
            timeout: task.timeout,
            retries: task.retries,
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn all(data: &[u8], format: Format, limit: usize) -> Result<Vec<Input>, InputError> {
        let mut r = Records::new(data, format, limit);
        let mut out = Vec::new();
        while let Some(i) = r.next_record()? {
            out.push(i);
        }
        Ok(out)
    }

    fn inputs(data: &[u8], format: Format) -> Vec<Vec<u8>> {
        all(data, format, 100)
            .unwrap()
            .into_iter()
            .map(|i| i.input)
            .collect()
    }

    #[test]
    fn lines_and_nul_records() {
        assert_eq!(
            inputs(b"a\nb\n\nc", Format::Lines),
            [&b"a"[..], b"b", b"", b"c"]
        );
        assert_eq!(inputs(b"a b\0c\n\0", Format::Null), [&b"a b"[..], b"c\n"]);
        assert!(inputs(b"", Format::Lines).is_empty());
    }

    #[test]
    fn records_past_the_limit_are_refused() {
        assert!(all(b"12345\n", Format::Lines, 5).is_ok());
        let err = all(b"ok\n123456\n", Format::Lines, 5).unwrap_err();
        assert!(
            matches!(err, InputError::TooLarge { record: 2, .. }),
            "{err}"
        );
        assert!(all(b"123456", Format::Lines, 5).is_err());
    }

    #[test]
    fn json_lines() {
        let data = b"{\"to\":\"a@b\"}\n\n\"text\"\n{\"id\":\"x\",\"input\":\"hi\",\"retries\":2}\n{\"input_b64\":\"/w==\"}\n";
        let got = all(data, Format::Jsonl, 100).unwrap();
        assert_eq!(got[0].input, b"{\"to\":\"a@b\"}\n");
        assert_eq!(got[1].input, b"\"text\"\n");
        assert_eq!(
            (got[2].id.as_deref(), &got[2].input[..], got[2].retries),
            (Some("x"), &b"hi"[..], Some(2))
        );
        assert_eq!(got[3].input, [0xff]);
        let err = all(b"{\"input\":\"a\",\"nope\":1}\n", Format::Jsonl, 100).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(all(b"{not json\n", Format::Jsonl, 100).is_err());
    }
}
