//! Records for running commands as tasks: what `distq submit` and `distq put` store, what
//! `distq worker --exec` reads, and what it sends back.
//!
//! Both are versioned CBOR maps inside an item's payload; the server never decodes them.
//! `docs/PROTOCOL.md` (section "Task and result records") gives their fields, so a program in
//! any language can submit tasks to `--exec` workers or read their results. A Rust program
//! uses them as `Queue<TaskRecord>` and `Queue<ResultRecord>`:
//!
//! ```
//! use std::time::Duration;
//! use distq::exec::{ResultRecord, Status, TaskRecord};
//!
//! let server = distq::Server::builder().authkey("k").queue("tasks").queue("r").bind("127.0.0.1:0")?;
//! let tasks = server.queue::<TaskRecord>("tasks")?;
//! let mut task = TaskRecord::new("job-1", "hello");
//! task.reply_to = Some("r".into());
//! tasks.put(&task)?;
//!
//! // What an `--exec` worker does with it, in short.
//! let got = tasks.get_timeout(Duration::from_secs(1))?;
//! let mut result = ResultRecord::for_task(&got, Status::Ok);
//! result.stdout = got.input.to_ascii_uppercase();
//! server.queue::<ResultRecord>("r")?.put(&result)?;
//!
//! let back = server.queue::<ResultRecord>("r")?.get_timeout(Duration::from_secs(1))?;
//! assert_eq!((back.id.as_str(), &back.stdout[..]), ("job-1", &b"HELLO"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod record;

pub use record::{
    AttemptRecord, Reason, RecordError, ResultRecord, Status, TaskRecord, MAX_HISTORY, MAX_ID,
    RECORD_VERSION,
};
