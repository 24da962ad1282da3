//! `Blob`: an encoded item as the server holds it — never decoded, cheap to clone.
//!
//! Small items (most tasks and results) live inline, with no heap allocation at all. Larger
//! ones take one allocation: the bytes are copied once out of the frame buffer, and after
//! that the queue, a lease and a reply share them by reference count.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The most bytes kept inline: the enum is then 48 bytes, as large as it gets anyway with
/// room for a typical task.
const INLINE: usize = 46;

/// The encoded bytes of one item; travels as a CBOR byte string.
#[derive(Clone)]
pub(crate) enum Blob {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<[u8]>),
}

impl Blob {
    /// The encoded bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Blob::Inline { len, bytes } => &bytes[..*len as usize],
            Blob::Shared(bytes) => bytes,
        }
    }

    /// How many bytes.
    pub(crate) fn len(&self) -> usize {
        self.as_bytes().len()
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Blob {}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Blob::from(&bytes[..])
    }
}

impl From<&[u8]> for Blob {
    fn from(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            // Cannot truncate: at most INLINE (46) bytes.
            Blob::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Blob::Shared(bytes.into())
        }
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads are never logged; their size is enough to debug framing.
        write!(f, "Blob({} bytes)", self.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(BlobVisitor)
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob::from(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob::from(v))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::codec;

    #[test]
    fn travels_as_a_byte_string() {
        let blob = Blob::from(vec![1u8, 2, 3]);
        let bytes = codec::encode(&blob).unwrap();
        assert_eq!(bytes, [0x43, 1, 2, 3]);
        assert_eq!(codec::decode::<Blob>(&bytes).unwrap(), blob);
    }

    #[test]
    fn small_blobs_are_inline_and_large_ones_shared() {
        assert_eq!(std::mem::size_of::<Blob>(), 48);
        let small = Blob::from(vec![7u8; INLINE]);
        let large = Blob::from(vec![7u8; INLINE + 1]);
        assert!(matches!(small, Blob::Inline { .. }));
        assert!(matches!(large, Blob::Shared(_)));
        assert_eq!((small.len(), large.len()), (INLINE, INLINE + 1));
        assert_eq!(large.clone().as_bytes(), &[7u8; INLINE + 1][..]);
    }

    #[test]
    fn an_array_of_integers_is_refused() {
        let bytes = codec::encode(&vec![1u8, 2, 3]).unwrap();
        assert!(codec::decode::<Blob>(&bytes).is_err());
    }
}
