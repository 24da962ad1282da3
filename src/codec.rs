//! CBOR encoding: the only module that names the CBOR crate, so replacing it touches one file.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value that could not be encoded to, or decoded from, CBOR.
#[derive(Debug)]
pub struct CodecError(serde_cbor::Error);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Appends the CBOR encoding of `value` to `buf`, reusing its allocation.
pub(crate) fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    serde_cbor::to_writer(buf, value).map_err(CodecError)
}

/// The CBOR encoding of `value` in a new buffer (the hot path uses [`encode_into`]).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    serde_cbor::to_vec(value).map_err(CodecError)
}

/// Decodes exactly one CBOR value filling all of `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    serde_cbor::from_slice(bytes).map_err(CodecError)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn round_trip() {
        let v = (7u32, "seven".to_string(), vec![1i64, -2]);
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u32, String, Vec<i64>)>(&bytes).unwrap(), v);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&1u8).unwrap();
        bytes.push(0);
        assert!(decode::<u8>(&bytes).is_err());
    }

    #[test]
    fn byte_strings_stay_byte_strings() {
        let bytes = encode(&serde_bytes::Bytes::new(&[1, 2, 3])).unwrap();
        // Major type 2 (byte string) of length 3, not an array of integers.
        assert_eq!(bytes, [0x43, 1, 2, 3]);
    }
}
