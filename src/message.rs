//! The wire protocol's messages. `docs/PROTOCOL.md` describes their CBOR form.
//!
//! Enums are externally tagged in snake case: a unit variant is a text string (`"empty"`), any
//! other a one-entry map from its name to its fields (`{"get": {"queue": "tasks", ...}}`).
//! Payloads are CBOR byte strings the server never decodes.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol version this build speaks; both sides must agree.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// The handshake, in the order the messages are sent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Handshake {
    /// Client → server: the client's version and its fresh 32-byte nonce.
    Hello { version: u32, nonce: ByteBuf },
    /// Server → client: the server's fresh 32-byte nonce.
    Challenge { nonce: ByteBuf },
    /// Client → server: HMAC proving the client knows the key.
    Proof { mac: ByteBuf },
    /// Server → client: HMAC proving the server knows the key; the session is open.
    Welcome { mac: ByteBuf },
    /// Server → client: the versions differ; the connection closes.
    VersionMismatch { version: u32 },
    /// Server → client: the client's proof was wrong; the connection closes.
    AuthFailed,
}

/// A client's request once the session is open. Timeouts are in milliseconds: absent blocks
/// until the operation can complete, 0 tries once.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request {
    /// Append `items`, in order, waiting for room in a bounded queue.
    Put {
        queue: String,
        items: Vec<ByteBuf>,
        timeout_ms: Option<u64>,
    },
    /// Take up to `max` items: wait for the first, then take those ready without waiting.
    Get {
        queue: String,
        max: u32,
        timeout_ms: Option<u64>,
    },
    /// Report the queue's length and capacity (also how a client checks that a queue exists).
    Len { queue: String },
}

/// The server's answer to a [`Request`]; exactly one per request, in order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    /// Every item of a put was stored.
    Done,
    /// The bounded queue stayed full: the first `accepted` items were stored, the rest not.
    Full { accepted: u64 },
    /// The items a get took, at least one.
    Items { items: Vec<ByteBuf> },
    /// A get found no item before its timeout.
    Empty,
    /// Answer to `len`.
    Len { len: u64, capacity: Option<u64> },
    /// The request failed; the session stays open unless `kind` is `protocol`.
    Error { kind: ErrorKind, message: String },
}

/// Classes of [`Reply::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorKind {
    /// No queue of that name is hosted.
    UnknownQueue,
    /// An item or batch exceeds what the server accepts.
    TooLarge,
    /// The server is shutting down.
    Closed,
    /// The request could not be understood; the server closes the connection after this reply.
    Protocol,
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::codec;

    #[test]
    fn requests_have_the_documented_shape() {
        let req = Request::Len {
            queue: "tasks".into(),
        };
        let bytes = codec::encode(&req).unwrap();
        // {"len": {"queue": "tasks"}}: a one-entry map naming the variant, then its fields.
        let mut expected = vec![0xA1, 0x63];
        expected.extend_from_slice(b"len");
        expected.extend_from_slice(&[0xA1, 0x65]);
        expected.extend_from_slice(b"queue");
        expected.push(0x65);
        expected.extend_from_slice(b"tasks");
        assert_eq!(bytes, expected);
        let empty = codec::encode(&Reply::Empty).unwrap();
        assert_eq!(empty, codec::encode(&"empty").unwrap());
    }

    #[test]
    fn payloads_round_trip_as_byte_strings() {
        let req = Request::Put {
            queue: "q".into(),
            items: vec![ByteBuf::from(vec![0u8; 300])],
            timeout_ms: Some(0),
        };
        let bytes = codec::encode(&req).unwrap();
        // 300 payload bytes plus a little framing; an integer array would take ~600.
        assert!(bytes.len() < 340, "{}", bytes.len());
        match codec::decode::<Request>(&bytes).unwrap() {
            Request::Put { items, .. } => assert_eq!(items[0].len(), 300),
            other => panic!("{other:?}"),
        }
    }
}
