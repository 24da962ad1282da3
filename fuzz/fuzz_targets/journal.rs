//! Arbitrary bytes as a journal segment: recovery ends in a state or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    distq::fuzzing::journal(data);
});
