//! Typed values to and from the encoded bytes queues carry.

use std::borrow::Borrow;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::blob::Blob;
use crate::codec;
use crate::error::{Error, Result};

/// Encodes one value.
pub(crate) fn encode<T: Serialize>(item: &T) -> Result<Blob> {
    thread_local! {
        // Encoding goes through one buffer per thread, so a small item costs no allocation.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        codec::encode_into(item, &mut buf).map_err(Error::Encode)?;
        Ok(Blob::from(&buf[..]))
    })
}

/// Encodes every value, stopping at the first that fails.
pub(crate) fn encode_all<T, I>(items: I) -> Result<Vec<Blob>>
where
    T: Serialize,
    I: IntoIterator,
    I::Item: Borrow<T>,
{
    items
        .into_iter()
        .map(|item| encode(item.borrow()))
        .collect()
}

/// Decodes every payload as a `T`, stopping at the first that does not decode.
pub(crate) fn decode_all<'a, T: DeserializeOwned>(
    payloads: impl Iterator<Item = &'a Blob>,
) -> Result<Vec<T>> {
    payloads
        .map(|p| codec::decode(p.as_bytes()).map_err(Error::Payload))
        .collect()
}
