//! Python's own manager protocol (`multiprocessing.managers`), so unchanged `BaseManager`
//! clients can join a distq server and distq workers an unchanged Python master.
//!
//! Built so far: the `multiprocessing.connection` framing ([`connection`]), the mutual
//! challenge handshake of both generations, HMAC-MD5 up to Python 3.11 and `{sha256}` from
//! 3.12 ([`challenge`]), and plain-data pickles ([`pickle`]): a reader that never imports
//! or calls anything and bounds what a pickle may cost, a writer for Python 2 and 3, and the
//! queue exceptions; and the translation of plain values to and from the CBOR items native
//! clients put and get ([`value`]); the manager RPC's requests read into typed calls, and
//! the replies that need no queue ([`rpc`]). The listener that runs them comes next.

// Not wired to a listener yet (the manager RPC comes next): tested on its own for now.
#![allow(dead_code)]

pub(crate) mod challenge;
pub(crate) mod connection;
pub(crate) mod pickle;
pub(crate) mod rpc;
mod value;

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
