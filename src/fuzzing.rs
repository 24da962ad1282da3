//! Entry points for the cargo-fuzz targets in `fuzz/` and the codec benchmark; not part of
//! the public API.
//!
//! This module exists only so the fuzz targets and `benches/codec.rs` can reach the
//! crate-private frame reader and message codec. It is compiled only with the `fuzzing` feature and may change or
//! disappear at any time. Every function here must return normally on any input: a panic is a
//! bug in the code under test.

use std::io::Cursor;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::blob::Blob;
use crate::codec;
use crate::wire::frame::{read_frame, Framed};
use crate::wire::message::{Handshake, Request};

/// The frame size limit used while fuzzing: small, so a hostile length prefix is refused
/// quickly instead of allocating.
const MAX_FRAME: usize = 64 * 1024;

/// Reads `data` as a stream of frames until the first error, decoding every frame body both
/// as a request and as a handshake message and ignoring the outcome.
///
/// The stream is read twice: once with the bare frame reader and once through the framed
/// stream the server and client use, including its "is a whole frame buffered" check.
pub fn frame(data: &[u8]) {
    let mut cursor = Cursor::new(data);
    let mut buf = Vec::new();
    while read_frame(&mut cursor, MAX_FRAME, &mut buf).is_ok() {
        assert!(buf.len() <= MAX_FRAME, "frame over the limit was accepted");
        let _ = codec::decode::<Request>(&buf);
        let _ = codec::decode::<Handshake>(&buf);
    }

    let mut framed = Framed::new(Cursor::new(data.to_vec()), MAX_FRAME);
    while framed.frame_started().is_ok() {
        if framed.recv::<Request>().is_err() {
            break;
        }
    }
}

/// Decodes `data` as a request and as a handshake message; whatever decodes must encode
/// again, and that encoding must decode back.
pub fn request(data: &[u8]) {
    round_trip::<Request>(data);
    round_trip::<Handshake>(data);
}

/// Checks that `data`, if it decodes as a `T`, survives an encode/decode round trip.
fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(data: &[u8]) {
    let Ok(value) = codec::decode::<T>(data) else {
        return;
    };
    let bytes = codec::encode(&value)
        .unwrap_or_else(|e| panic!("decoded {value:?} but could not encode it again: {e}"));
    let again = codec::decode::<T>(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded {value:?} does not decode: {e}"));
    // The types have no PartialEq; their Debug forms must agree instead (payloads show only
    // their length, which is enough to catch a lost or changed item).
    assert_eq!(
        format!("{value:?}"),
        format!("{again:?}"),
        "round trip changed the message"
    );
}

/// Reads `data` as a stream of Python (`multiprocessing.connection`) frames until the first
/// error, and each frame's pickle as a Python client's request and as a Python server's
/// reply, as the Python listener and `python::Manager` read them. Whatever decodes is read
/// into a call, translated to the CBOR of a queue item and written again as a pickle, which
/// must decode.
pub fn python(data: &[u8]) {
    use crate::python::pickle::{decode, decode_reply, encode, Dialect, Limits};
    const LIMITS: Limits = Limits {
        nodes: 4096,
        depth: 100,
        bytes: MAX_FRAME,
    };
    let mut cursor = Cursor::new(data);
    let mut buf = Vec::new();
    while crate::python::connection::read_frame(&mut cursor, MAX_FRAME, &mut buf).is_ok() {
        assert!(
            buf.len() <= MAX_FRAME,
            "a Python frame over the limit was accepted"
        );
        let _ = decode_reply(&buf, LIMITS);
        let Ok(value) = decode(&buf, LIMITS) else {
            continue;
        };
        if let Ok(item) = crate::payload::encode(&value) {
            let _ = codec::decode::<crate::python::pickle::Value>(item.as_bytes());
        }
        for dialect in [Dialect::Python2, Dialect::Python3] {
            let again = encode(&value, dialect);
            let big = Limits {
                nodes: usize::MAX,
                depth: 200,
                bytes: usize::MAX,
            };
            if let Err(e) = decode(&again, big) {
                panic!("{value:?} written for {dialect:?} does not read back: {e}");
            }
        }
        if let Ok(request) = crate::python::rpc::request(value) {
            let _ = request.server_call();
            let _ = request.queue_call();
        }
    }
}

/// A `put` request of `items` payloads of `size` bytes each, framed as a client sends it.
pub fn put_frame(items: usize, size: usize) -> Vec<u8> {
    let request = Request::Put {
        delay_ms: None,
        queue: "tasks".into(),
        items: (0..items)
            .map(|i| Blob::from(vec![i as u8; size]))
            .collect(),
        timeout_ms: None,
    };
    let mut framed = Framed::new(Cursor::new(Vec::new()), usize::MAX >> 1);
    framed.send(&request).expect("encode a put frame");
    framed.into_inner().into_inner()
}

/// Reads the frame at the start of `frame` and decodes it as a request; returns how many
/// items it carries.
pub fn decode_frame(frame: &[u8]) -> usize {
    let mut body = Vec::new();
    if read_frame(&mut Cursor::new(frame), usize::MAX >> 1, &mut body).is_err() {
        return 0;
    }
    match codec::decode::<Request>(&body) {
        Ok(Request::Put { items, .. }) => items.len(),
        _ => 0,
    }
}

/// Recovers a journal segment holding `data` (as it is, and after a valid file header), as
/// a server starting on a damaged or hostile journal directory would: it must end in a state
/// or an error, never a panic, and never allocate beyond what the bytes hold.
pub fn journal(data: &[u8]) {
    crate::journal::recover_bytes(data);
}

#[cfg(test)]
mod test {
    /// The Python entry point on frames made from real requests and on noise: it must
    /// return, whatever the bytes.
    #[test]
    fn python_survives_captured_frames_and_noise() {
        let dummy =
            crate::python::hex("0000001b8004951000000000000000284e8c0564756d6d7994297d9474942e");
        super::python(&dummy);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20_000 {
            let mut data = dummy.clone();
            for _ in 0..(round % 7) + 1 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % data.len();
                data[at] = (x >> 32) as u8;
            }
            super::python(&data);
        }
    }
}
