//! Python's own manager protocol (`multiprocessing.managers`), so unchanged `BaseManager`
//! clients can join a distq server and distq workers an unchanged Python master.
//!
//! Built so far: the `multiprocessing.connection` framing ([`connection`]) and the mutual
//! challenge handshake of both generations, HMAC-MD5 up to Python 3.11 and `{sha256}` from
//! 3.12 ([`challenge`]). The manager RPC and the pickle translation come next.

// Not wired to a listener yet (the manager RPC comes next): tested on its own for now.
#![allow(dead_code)]

pub(crate) mod challenge;
pub(crate) mod connection;
