//! Arbitrary bytes as a stream of length-prefixed frames, each body decoded as a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    distq::fuzzing::frame(data);
});
