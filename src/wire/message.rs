//! The wire protocol's messages. `docs/PROTOCOL.md` describes their CBOR form.
//!
//! Enums are externally tagged in snake case: a unit variant is a text string (`"empty"`), any
//! other a one-entry map from its name to its fields (`{"get": {"queue": "tasks", ...}}`).
//! Payloads are CBOR byte strings the server never decodes.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::blob::Blob;
use crate::stats::Stats;

/// The protocol version this build speaks; both sides must agree.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// The longest queue name, in bytes, so a frame's overhead stays bounded.
pub(crate) const MAX_QUEUE_NAME: usize = 128;

/// CBOR overhead of one item inside a reply: a 3-entry array, a lease id, a byte string
/// header and a redelivery count.
pub(crate) const ITEM_OVERHEAD: usize = 1 + 9 + 9 + 5;
/// CBOR overhead of a request or reply around its items, queue name included.
pub(crate) const FRAME_OVERHEAD: usize = 64 + MAX_QUEUE_NAME;

/// The most items (or lease ids) one request may carry: a put's or a fused get's items, an
/// ack's, nack's or touch's ids, a get's `max`. Enforced while decoding, so a frame of
/// millions of tiny items is refused before they are allocated (each decoded item costs
/// 48 bytes however short it is on the wire).
pub(crate) const MAX_BATCH_ITEMS: usize = 65_536;

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
    /// Server → client: HMAC proving the server knows the key (and that `instance` is
    /// its own); the session is open. `info` carries the settings a client needs.
    Welcome {
        mac: ByteBuf,
        instance: ByteBuf,
        info: ServerInfo,
    },
    /// Server → client: the versions differ; the connection closes.
    VersionMismatch { version: u32 },
    /// Server → client: the client's proof was wrong; the connection closes.
    AuthFailed,
    /// Server → client, first thing on a connection it will not serve (too many
    /// connections); the connection closes.
    Refused { reason: String },
}

/// Bytes in a server instance id.
pub(crate) const INSTANCE_LEN: usize = 16;

/// The server's settings a client needs, sent in the `welcome`. They are fixed for the
/// server instance's life, so a connection learns them once, at no extra round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServerInfo {
    /// The largest frame body the server accepts and sends.
    pub(crate) max_frame_size: u64,
    /// The largest item a put may carry (`max_frame_size` less the reply's overhead).
    pub(crate) max_item: u64,
    /// The server-wide memory budget for stored items, in bytes (`ServerConfig::max_memory`).
    #[serde(default)]
    pub(crate) max_memory: u64,
    /// Every hosted queue's settings, in the order the server named them.
    #[serde(default)]
    pub(crate) queues: Vec<QueueInfo>,
    /// Optional requests this server understands, such as [`FEATURE_DELAY`], so a client
    /// never sends one an older server would silently ignore.
    #[serde(default)]
    pub(crate) features: Vec<String>,
}

/// The `features` entry for `delay_ms` on `put` and `nack`.
pub(crate) const FEATURE_DELAY: &str = "delay";

/// The `features` entry for the `declare` request (temporary queues).
pub(crate) const FEATURE_TEMPORARY: &str = "temporary_queues";

/// The `features` entry for `count: false` on `nack` (a give-back that does not count).
pub(crate) const FEATURE_UNCOUNTED_NACK: &str = "uncounted_nack";

/// One queue's settings in [`ServerInfo`] (its `NAME.dead` shares them, unbounded and
/// never dead-lettering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueInfo {
    pub(crate) name: String,
    pub(crate) capacity: Option<u64>,
    pub(crate) lease_ms: u64,
    pub(crate) max_redeliveries: u32,
}

/// A client's request once the session is open. Timeouts are in milliseconds: absent blocks
/// until the operation can complete, 0 tries once.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request {
    /// Append `items`, in order, waiting for room in a bounded queue.
    Put {
        queue: String,
        #[serde(deserialize_with = "bounded")]
        items: Vec<Blob>,
        timeout_ms: Option<u64>,
        /// Hold the items in the queue's delayed lane for this long before they can be taken.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
    },
    /// Store the items of `put` (if any), then acknowledge the leases in `ack`, then take up
    /// to `max` items under new leases: wait for the first, then take those ready without
    /// waiting. A worker's whole cycle in one round trip.
    Get {
        queue: String,
        max: u32,
        timeout_ms: Option<u64>,
        #[serde(
            default,
            skip_serializing_if = "Vec::is_empty",
            deserialize_with = "bounded"
        )]
        ack: Vec<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        put: Option<PutFirst>,
    },
    /// End leases: the items are done.
    Ack {
        queue: String,
        #[serde(deserialize_with = "bounded")]
        leases: Vec<u64>,
    },
    /// End leases: the items go back to the queue now.
    Nack {
        queue: String,
        #[serde(deserialize_with = "bounded")]
        leases: Vec<u64>,
        /// Bring the items back only after this long (in the delayed lane meanwhile).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
        /// Whether this counts as a failed delivery (the default); `false` gives the items
        /// back with their redelivery count unchanged.
        #[serde(default = "yes", skip_serializing_if = "is_yes")]
        count: bool,
    },
    /// Extend leases by a full lease timeout from now.
    Touch {
        queue: String,
        #[serde(deserialize_with = "bounded")]
        leases: Vec<u64>,
    },
    /// Report the queue's length and capacity (also how a client checks that a queue exists).
    Len { queue: String },
    /// Report every queue's figures.
    Stats,
    /// Create the temporary queue `queue`, owned by this connection (or adopt it if its
    /// creator is gone). It is removed once its creator is gone and it is empty, or no
    /// request touched it for `idle_ttl_ms` (default an hour, at most 7 days).
    Declare {
        queue: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capacity: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idle_ttl_ms: Option<u64>,
    },
}

impl Request {
    /// The queue the request is about, if any.
    pub(crate) fn queue(&self) -> Option<&str> {
        match self {
            Request::Put { queue, .. }
            | Request::Get { queue, .. }
            | Request::Ack { queue, .. }
            | Request::Nack { queue, .. }
            | Request::Touch { queue, .. }
            | Request::Len { queue } => Some(queue),
            // Names a queue that may not exist yet: served before any lookup.
            Request::Stats | Request::Declare { .. } => None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// Items a `get` stores before it takes anything (a worker's results).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PutFirst {
    pub(crate) queue: String,
    #[serde(deserialize_with = "bounded")]
    pub(crate) items: Vec<Blob>,
}

/// Decodes a sequence of at most [`MAX_BATCH_ITEMS`] elements, failing at the first one past
/// it: nothing beyond the cap is ever allocated, whatever length the peer announces.
fn bounded<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_BATCH_ITEMS} elements")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0).min(MAX_BATCH_ITEMS);
            let mut out = Vec::with_capacity(hint);
            while let Some(element) = seq.next_element()? {
                if out.len() == MAX_BATCH_ITEMS {
                    return Err(serde::de::Error::custom(format_args!(
                        "more than {MAX_BATCH_ITEMS} items or leases in one request (split the batch)"
                    )));
                }
                out.push(element);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Bounded(std::marker::PhantomData))
}

/// One item handed out by a get: its lease id, its payload and how many times it came back
/// to the queue before. Travels as a 3-element CBOR array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Delivered(pub(crate) u64, pub(crate) Blob, pub(crate) u32);

/// The server's answer to a [`Request`]; exactly one per request, in order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    /// Every item of a put was stored.
    Done,
    /// The bounded queue stayed full: the first `accepted` items were stored, the rest not.
    Full { accepted: u64 },
    /// The items a get took, at least one, each leased for `lease_ms` milliseconds.
    Items {
        items: Vec<Delivered>,
        lease_ms: u64,
    },
    /// A get found no item before its timeout.
    Empty,
    /// Answer to `len`.
    Len { len: u64, capacity: Option<u64> },
    /// Answer to `ack`, `nack` and `touch`: the leases the connection does not hold (expired
    /// or unknown); the others were handled.
    Leases { refused: Vec<u64> },
    /// Answer to `stats`.
    Stats { stats: Stats },
    /// The server's memory budget stayed used up until the put's timeout: the first
    /// `accepted` items were stored, the rest not. `used` and `limit` are in bytes.
    OverBudget {
        accepted: u64,
        used: u64,
        limit: u64,
    },
    /// The request failed; the session stays open unless `kind` is `protocol`. For a put,
    /// `accepted` counts the items stored before the failure.
    Error {
        kind: ErrorKind,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accepted: Option<u64>,
    },
}

/// Classes of [`Reply::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorKind {
    /// No queue of that name is hosted.
    UnknownQueue,
    /// An item exceeds what the server accepts.
    TooLarge,
    /// The server is shutting down.
    Closed,
    /// The request could not be understood; the server closes the connection after this reply.
    Protocol,
    /// `declare`: another connection, still open, created that temporary queue.
    InUse,
    /// `declare`: the name is not one a temporary queue may have (it names a queue the
    /// server was started with, ends in `.dead`, or is empty or too long).
    NameConflict,
    /// `declare`: the server holds as many temporary queues as it may (or this connection
    /// does, or the bound asked for cannot be had).
    TemporaryLimit,
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
    fn a_get_without_acks_omits_the_field_and_decodes_without_it() {
        let get = Request::Get {
            queue: "q".into(),
            max: 1,
            timeout_ms: Some(0),
            ack: vec![],
            put: None,
        };
        let bytes = codec::encode(&get).unwrap();
        assert!(!bytes.windows(3).any(|w| w == b"ack" || w == b"put"));
        assert!(
            matches!(codec::decode::<Request>(&bytes).unwrap(), Request::Get { ack, .. } if ack.is_empty())
        );
    }

    #[test]
    fn a_nack_counts_unless_it_says_otherwise_and_omits_the_default() {
        let nack = |count| Request::Nack {
            queue: "q".into(),
            leases: vec![1],
            delay_ms: None,
            count,
        };
        let counted = codec::encode(&nack(true)).unwrap();
        assert!(!counted.windows(5).any(|w| w == b"count"));
        assert!(matches!(
            codec::decode::<Request>(&counted).unwrap(),
            Request::Nack { count: true, .. }
        ));
        let uncounted = codec::encode(&nack(false)).unwrap();
        assert!(matches!(
            codec::decode::<Request>(&uncounted).unwrap(),
            Request::Nack { count: false, .. }
        ));
    }

    #[test]
    fn deliveries_are_compact_arrays_with_byte_string_payloads() {
        let d = Delivered(7, Blob::from(vec![0u8; 300]), 2);
        let bytes = codec::encode(&d).unwrap();
        // Array of 3, id 7, byte string header (0x59 + 2-byte length), 300 bytes, 2.
        assert_eq!(&bytes[..5], &[0x83, 0x07, 0x59, 0x01, 0x2C]);
        assert_eq!(bytes.len(), 2 + 3 + 300 + 1);
        assert_eq!(codec::decode::<Delivered>(&bytes).unwrap(), d);
    }

    #[test]
    fn a_request_with_too_many_items_is_refused_while_decoding() {
        let ack = |n: usize| Request::Ack {
            queue: "q".into(),
            leases: vec![1; n],
        };
        let fits = codec::encode(&ack(MAX_BATCH_ITEMS)).unwrap();
        assert!(codec::decode::<Request>(&fits).is_ok());
        let over = codec::encode(&ack(MAX_BATCH_ITEMS + 1)).unwrap();
        let err = codec::decode::<Request>(&over).unwrap_err().to_string();
        assert!(err.contains("split the batch"), "{err}");
        let put = Request::Put {
            delay_ms: None,
            queue: "q".into(),
            items: vec![Blob::from(vec![]); MAX_BATCH_ITEMS + 1],
            timeout_ms: None,
        };
        assert!(codec::decode::<Request>(&codec::encode(&put).unwrap()).is_err());
    }
}
