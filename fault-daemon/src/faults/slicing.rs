//! The bounds of `slice` and of corrupt's per-byte density, and the density as the programs
//! read it.

use std::time::Duration;

use fault_common::{CORRUPT_SCALE_BITS, MAX_SLICE_BYTES, MIN_SLICE_BYTES};

use super::{FaultError, MAX_DELAY};

/// Lowest per-byte density: one byte in a million. Lower, a fault would change nothing
/// most tests could see, and the gap's fixed point would lose its precision.
pub const MIN_BYTE_PROBABILITY: f64 = 1e-6;

impl super::Action {
    /// A slice from numbers as callers give them (bytes, spacing in µs); only what no
    /// domain type can hold is checked here, the bounds in [`validate_slice`].
    pub fn slice(bytes: i64, delay_us: i64) -> Result<Self, FaultError> {
        let bytes = u32::try_from(bytes).map_err(|_| {
            FaultError::invalid(
                "action.slice.bytes",
                format!("{bytes} bytes is not in {MIN_SLICE_BYTES}..={MAX_SLICE_BYTES}"),
            )
        })?;
        let delay_us = u64::try_from(delay_us).map_err(|_| {
            FaultError::invalid("action.slice.delay", format!("{delay_us} µs is negative"))
        })?;
        Ok(super::Action::Slice {
            bytes,
            spacing: Duration::from_micros(delay_us),
        })
    }
}

/// A slice's segment size and spacing; errors name the domain's fields.
pub fn validate_slice(bytes: u32, spacing: Duration) -> Result<(), FaultError> {
    if bytes < MIN_SLICE_BYTES {
        return Err(FaultError::invalid(
            "action.slice.bytes",
            format!(
                "{bytes} bytes is below {MIN_SLICE_BYTES}, the smallest segment Linux sends \
                 (TCP_MIN_SND_MSS: a sender told a smaller MSS still sends {MIN_SLICE_BYTES} \
                 bytes)"
            ),
        ));
    }
    if bytes > MAX_SLICE_BYTES {
        return Err(FaultError::invalid(
            "action.slice.bytes",
            format!("{bytes} bytes is above {MAX_SLICE_BYTES}, the largest unscaled TCP window"),
        ));
    }
    if spacing > MAX_DELAY {
        return Err(FaultError::invalid(
            "action.slice.delay",
            format!(
                "{spacing:?} is beyond the horizon of {MAX_DELAY:?} (fq drops packets \
                 scheduled further ahead)"
            ),
        ));
    }
    Ok(())
}

/// A share of payload bytes in [1e-6, 1]; errors give it in percent.
pub fn validate_byte_probability(p: f64) -> Result<(), FaultError> {
    if p.is_finite() && (MIN_BYTE_PROBABILITY..=1.0).contains(&p) {
        return Ok(());
    }
    let percent = (p * 100.0 * 1e6).round() / 1e6;
    Err(FaultError::invalid(
        "action.corrupt.byte_probability",
        format!("{percent} % is not a share of payload bytes in [0.0001 %, 100 %]"),
    ))
}

/// The density the programs read for a byte probability given as its 32-bit threshold
/// (see `super::threshold`): `2^16 / -log2(1 - p)` in Q16, so that the gap between changed
/// bytes, `floor(-log2(u) * density / 2^32)` with `-log2(u)` in Q16, is geometric with
/// parameter p. 0 (every byte) for p = 1.
pub fn byte_density(threshold: u32) -> u64 {
    let p = (threshold as f64 + 1.0) / 4_294_967_296.0;
    if p >= 1.0 {
        return 0;
    }
    // The gap is (-log2(u) in Q16) * density >> 32: the density carries 2^16 more.
    let scale = (1u64 << (CORRUPT_SCALE_BITS - 16)) as f64;
    (scale / -(1.0 - p).log2()).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::threshold;

    /// The programs' gap, computed here as they compute it (fault-ebpf/src/spread.rs),
    /// with u running over a fine grid of (0, 1]: its mean is the geometric law's,
    /// (1 - p) / p, within 1 %.
    #[test]
    fn gaps_drawn_with_the_density_have_the_geometric_mean() {
        for p in [0.5, 0.1, 0.01, 0.001] {
            let density = byte_density(threshold(p));
            let n = 1u64 << 20;
            let total: u64 = (1..=n)
                .map(|i| {
                    let u = i << 12; // 1..=2^32
                    (neg_log2_q16(u) * density) >> CORRUPT_SCALE_BITS
                })
                .sum();
            let mean = total as f64 / n as f64;
            let want = (1.0 - p) / p;
            assert!(
                (mean - want).abs() <= 0.01 * want + 0.01,
                "p {p}: mean gap {mean}, the law's {want}"
            );
        }
        assert_eq!(byte_density(u32::MAX), 0, "p = 1: every byte");
    }

    #[test]
    fn slices_below_the_kernels_minimum_are_refused_naming_the_field() {
        let err = validate_slice(47, Duration::ZERO).unwrap_err();
        let FaultError::Invalid { field, reason } = err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "action.slice.bytes");
        assert!(reason.contains("48"), "{reason}");
        assert!(validate_slice(48, Duration::ZERO).is_ok());
        assert!(validate_slice(65_535, Duration::from_secs(10)).is_ok());
        assert!(validate_slice(65_536, Duration::ZERO).is_err());
        assert!(validate_slice(100, Duration::from_secs(11)).is_err());
    }

    #[test]
    fn byte_shares_outside_their_range_are_refused() {
        for p in [0.0, 1e-7, 1.01, f64::NAN, -0.5] {
            assert!(validate_byte_probability(p).is_err(), "{p}");
        }
        for p in [1e-6, 0.01, 1.0] {
            assert!(validate_byte_probability(p).is_ok(), "{p}");
        }
    }

    /// A copy of fault-ebpf/src/spread.rs's `neg_log2_q16` (the eBPF crate does not build
    /// for the host); the program tests check the programs' own draws end to end.
    fn neg_log2_q16(u: u64) -> u64 {
        let top = 63 - u.leading_zeros() as u64;
        let f = ((u << 16) >> top) - (1 << 16);
        let c = 22_708;
        let log_frac = f + ((c * f >> 16) * ((1 << 16) - f) >> 16);
        ((32 - top) << 16) - log_frac
    }

    #[test]
    fn neg_log2_is_close_to_the_real_one() {
        for u in [
            1u64,
            2,
            3,
            1000,
            123_456_789,
            1 << 31,
            (1 << 32) - 1,
            1 << 32,
        ] {
            let want = -((u as f64) / 4_294_967_296.0).log2();
            let got = neg_log2_q16(u) as f64 / 65_536.0;
            assert!((got - want).abs() < 0.01, "u {u}: {got} vs {want}");
        }
    }
}
