//! Python's own manager protocol (`multiprocessing.managers`), in both directions.
//!
//! - A server's Python listener ([`ServerBuilder::python_bind`](crate::ServerBuilder::python_bind))
//!   lets unchanged `BaseManager.connect()` clients (the seed's `task_worker.py`) use its
//!   queues.
//! - [`Manager`] joins an unchanged Python master (the seed's `taskmanager.py`, which calls
//!   `manager.start()`), as `manager.connect()` does.
//!
//! Both speak `multiprocessing.connection`'s framing and its mutual challenge (HMAC-MD5 up
//! to Python 3.11, `{sha256}` from 3.12; both accepted), and carry plain data only: None,
//! bool, 64-bit int, float, str, bytes, list, tuple and dict, translated to and from the CBOR
//! native clients use (a Python 2 `str` becomes text when it is UTF-8, else bytes; a tuple
//! comes back a list). A pickle is read by distq's own reader, which never imports or calls
//! anything and bounds what a pickle may cost before it allocates.
//!
//! ```
//! use std::time::Duration;
//! use distq::python::Manager;
//!
//! // A distq server with a Python listener stands in for a Python master here.
//! let server = distq::Server::builder()
//!     .authkey("abc")
//!     .queue("tasks")
//!     .queue("results")
//!     .python_bind("127.0.0.1:0")
//!     .bind("127.0.0.1:0")?;
//! server.queue::<i64>("tasks")?.put(12)?;
//! let manager = Manager::connect(server.python_addr().unwrap(), "abc")?;
//! let (tasks, results) = (
//!     manager.queue::<i64>("get_task_queue")?,
//!     manager.queue::<String>("get_result_queue")?,
//! );
//! let n = tasks.get_timeout(Duration::from_secs(1))?;
//! results.put(format!("{n} * {n} = {}", n * n))?;
//! let answer = server.queue::<String>("results")?.get_timeout(Duration::from_secs(1))?;
//! assert_eq!(answer, "12 * 12 = 144");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod challenge;
mod client;
pub(crate) mod connection;
pub(crate) mod pickle;
pub(crate) mod rpc;
mod value;

pub use client::{ManagedQueue, Manager};

/// Bytes from the hex CPython's captures are written in.
#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// The Python interpreters the tests run, as (label, program): pyenv's 2.7, 3.12 and 3.13
/// where installed, and always `python3` (a test fails if it is missing).
#[cfg(test)]
pub(crate) fn pythons() -> Vec<(String, std::path::PathBuf)> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv")
        });
    let mut found: Vec<_> = ["2.7.18", "3.12.1", "3.13.0"]
        .iter()
        .map(|v| {
            (
                v.to_string(),
                root.join("versions").join(v).join("bin/python"),
            )
        })
        .filter(|(_, path)| path.exists())
        .collect();
    found.push(("python3".into(), "python3".into()));
    found
}
