//! Arbitrary frames through faultd's eBPF programs (BPF_PROG_TEST_RUN) with a fixed rule
//! set: a frame on a port without faults comes out identical — bytes, verdict, and at TC
//! the mark. The checks are in `faultd_fuzz::frames` (src/frames.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    faultd_fuzz::frames::check_frame(data);
});
