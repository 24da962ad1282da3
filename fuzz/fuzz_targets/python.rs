//! Arbitrary bytes as Python frames: each pickle read as a Python client's request and as a
//! Python server's reply, translated and written again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    distq::fuzzing::python(data);
});
