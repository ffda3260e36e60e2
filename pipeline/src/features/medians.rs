//! Medians over small groups, with DataFusion's `median`'s bits, by
//! selection instead of a hash aggregate: the context tables' order
//! statistics (the market buckets' cross-section medians, the intraday
//! profiles' medians over the trailing days) computed natively.

/// DataFusion's `median` of `values` (NULLs already left out): the middle
/// value in the total order of `f64`, or the mean of the two middle ones for
/// an even count; `None` when there are none.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (low, mid, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let mid = *mid;
    if n % 2 == 1 {
        return Some(mid);
    }
    let left = low.iter().copied().max_by(f64::total_cmp)?;
    Some((left + mid) / 2.0)
}
