//! Arbitrary bytes as an `AddFaultRequest`: decoding, conversion, validation and compilation
//! never panic, refusals name a field, and accepted faults decode back from the rule map.
//! The checks are in `faultd_fuzz::check` (src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    faultd_fuzz::check(data);
});
