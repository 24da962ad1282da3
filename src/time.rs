//! The one rounding rule between `Duration`s and the wire's milliseconds, and deadlines that
//! never overflow.

use std::time::{Duration, Instant};

/// Whole milliseconds, rounded up, so a short non-zero wait never becomes "don't wait";
/// saturates at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The instant `timeout` from now; `None` (wait for ever) when absent or too far away to
/// represent.
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// [`deadline`] for a timeout in wire milliseconds.
pub(crate) fn deadline_ms(timeout_ms: Option<u64>) -> Option<Instant> {
    deadline(timeout_ms.map(Duration::from_millis))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn millis_round_up_and_saturate() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert!(deadline(Some(Duration::MAX)).is_none());
    }
}
