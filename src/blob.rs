//! `Blob`: an encoded item as the server holds it — shared, never decoded, cheap to clone.
//!
//! One allocation per item: the bytes are copied once out of the frame buffer, and after that
//! the queue, a lease and a reply share them by reference count.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The encoded bytes of one item; travels as a CBOR byte string.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Blob(Arc<[u8]>);

impl Blob {
    /// The encoded bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// How many bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Blob(bytes.into())
    }
}

impl From<&[u8]> for Blob {
    fn from(bytes: &[u8]) -> Self {
        Blob(bytes.into())
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads are never logged; their size is enough to debug framing.
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
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
    fn an_array_of_integers_is_refused() {
        let bytes = codec::encode(&vec![1u8, 2, 3]).unwrap();
        assert!(codec::decode::<Blob>(&bytes).is_err());
    }
}
