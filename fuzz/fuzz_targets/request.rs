//! Arbitrary bytes as one CBOR request or handshake message, round-tripped when it decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    distq::fuzzing::request(data);
});
