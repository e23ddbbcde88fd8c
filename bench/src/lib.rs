//! What the benchmark binaries share: one percentile definition for every figure they
//! print, and an in-process gateway.

mod gateway;
pub use gateway::{start_gateway, start_gateway_hedging};

/// The nearest-rank percentile `p` (0..=1) of `sorted` (ascending): the smallest value
/// with at least a `p` share of the values at or below it. NaN when there are none.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pct(&xs, 0.5), 2.0);
        assert_eq!(pct(&xs, 0.99), 4.0);
        assert_eq!(pct(&xs, 0.0), 1.0);
        assert!(pct(&[], 0.5).is_nan());
    }
}
