//! [`ExactSum`]: the exact running sum behind every rolling sum, mean,
//! variance and VWAP.
//!
//! # Why exact
//!
//! A sliding window adds each row once and retracts it once. With an ordinary
//! `f64` accumulator every add and retract rounds, so the state of the
//! accumulator after a row depends on every row that ever went through it:
//! recomputing the same window over a shorter history (a backfill starting
//! later, a stream restarted from a checkpoint) gives a different last bit,
//! sometimes a different first digit after cancellation.
//!
//! [`ExactSum`] keeps the sum as Shewchuk's list of non-overlapping partials
//! (the algorithm behind Python's `math.fsum`): every addition is done with an
//! error-free transformation, so the list always represents the **exact real
//! sum** of what was added. Adding `x` and later `-x` is therefore exact, and
//! after any sequence of adds and retracts the list equals (as a real number)
//! the sum of the values still inside the window.
//!
//! [`ExactSum::round`] rounds that exact real correctly (round half to even,
//! the fsum final step with its half-way correction). A correctly rounded
//! real is unique, so the result is **canonical**: the same multiset of
//! values gives the same `f64` whatever the order of the operations and
//! whatever went in and out before. The partials list itself is *not*
//! canonical (it depends on the order of operations): only exact functions of
//! the represented real may be used, which is what the callers do (products of
//! partials through [`two_prod`] are exact, see below).
//!
//! # Products
//!
//! [`two_prod`] splits `a * b` into `p + e` with `p = fl(a * b)` and
//! `e = fma(a, b, -p)`: exact whenever the product neither overflows nor
//! drops below `2^-969`. [`ExactSum::add_product`] adds both parts, so sums of
//! squares and of `price * volume` are exact too. The callers keep inputs in a
//! range where that holds (see [`MOMENT_LIMIT`]).

/// Largest magnitude the moment accumulators (variance, z-score, VWAP) take
/// as a number: `2^480 ≈ 3.1e144`. Squares, products and the `n·Σx² − (Σx)²`
/// combination then stay far from overflow for windows of up to `2^31` rows.
/// Larger or non-finite inputs make the result NaN.
pub const MOMENT_LIMIT: f64 = f64::from_bits((1023 + 480) << 52);

/// Magnitudes below `2^-400 ≈ 3.9e-121` are flushed to zero by the moment
/// accumulators, so every product of two partials keeps an exact error term.
pub const MOMENT_TINY: f64 = f64::from_bits((1023 - 400) << 52);

/// Largest magnitude the plain sum and mean take as a number: `2^960 ≈ 9.7e288`,
/// so no partial can overflow with fewer than `2^62` rows in a window.
pub const SUM_LIMIT: f64 = f64::from_bits((1023 + 960) << 52);

/// `a * b` as the unevaluated sum `p + e`, exactly (see the module docs for
/// the range where this holds).
///
/// ```
/// use stockanomaly_udfs::window::two_prod;
/// let (p, e) = two_prod(0.1, 0.1);
/// assert_eq!(p, 0.1 * 0.1);
/// assert!(e != 0.0); // 0.1 * 0.1 is not a double
/// ```
#[inline]
pub fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    (p, a.mul_add(b, -p))
}

/// The exact sum of finite doubles, as Shewchuk's non-overlapping partials.
///
/// Values passed to [`add`](Self::add) must be finite and the running sum must
/// stay below `2^1023` in magnitude (callers enforce [`SUM_LIMIT`] or
/// [`MOMENT_LIMIT`]).
///
/// ```
/// use stockanomaly_udfs::window::ExactSum;
/// let mut s = ExactSum::new();
/// for x in [1e16, 1.0, -1e16, 0.1] {
///     s.add(x);
/// }
/// assert_eq!(s.round(), 1.1);
/// s.add(-1.0); // retract exactly
/// assert_eq!(s.round(), 0.1);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactSum {
    /// Non-zero, non-overlapping, increasing in magnitude.
    partials: Vec<f64>,
}

impl ExactSum {
    /// An empty (zero) sum.
    pub fn new() -> Self {
        Self {
            partials: Vec::with_capacity(8),
        }
    }

    /// Resets to zero, keeping the allocation.
    #[inline]
    pub fn clear(&mut self) {
        self.partials.clear();
    }

    /// The partials (their exact sum is the represented value).
    pub fn partials(&self) -> &[f64] {
        &self.partials
    }

    /// `true` when the exact sum is zero (non-overlapping non-zero partials
    /// never cancel).
    #[inline]
    pub fn is_zero(&self) -> bool {
        self.partials.is_empty()
    }

    /// Adds `x` exactly. `x` must be finite.
    #[inline]
    pub fn add(&mut self, x: f64) {
        debug_assert!(x.is_finite(), "ExactSum::add({x})");
        let mut x = x;
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        if x != 0.0 {
            self.partials.push(x);
        }
    }

    /// Adds `a * b` exactly (both halves of [`two_prod`]).
    #[inline]
    pub fn add_product(&mut self, a: f64, b: f64) {
        let (p, e) = two_prod(a, b);
        self.add(p);
        if e != 0.0 {
            self.add(e);
        }
    }

    /// The exact sum rounded to the nearest double, ties to even; `+0.0` for
    /// an exact zero. Canonical: depends only on the represented real.
    pub fn round(&self) -> f64 {
        let p = &self.partials;
        let mut n = p.len();
        if n == 0 {
            return 0.0;
        }
        n -= 1;
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        // Half-way case: `hi + lo` rounded to even, but the partials below
        // `lo` push the exact sum off the half-way point, in `lo`'s direction.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
        hi
    }

    /// The exact sum as a canonical double-double `(hi, lo)`: `hi` is the
    /// correctly rounded sum and `lo` the correctly rounded remainder
    /// `sum − hi`. `scratch` is reused working space.
    ///
    /// ```
    /// use stockanomaly_udfs::window::ExactSum;
    /// let mut s = ExactSum::new();
    /// s.add(1.0);
    /// s.add(1e-30);
    /// assert_eq!(s.double_double(&mut ExactSum::new()), (1.0, 1e-30));
    /// ```
    pub fn double_double(&self, scratch: &mut ExactSum) -> (f64, f64) {
        let hi = self.round();
        scratch.partials.clear();
        scratch.partials.extend_from_slice(&self.partials);
        scratch.add(-hi);
        (hi, scratch.round())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent reference: the exact sum as a 2560-bit two's complement
    /// fixed-point integer in units of 2^-1074, rounded half-even by hand.
    #[derive(Clone)]
    pub(crate) struct BigSum {
        limbs: [u64; 40],
    }

    impl BigSum {
        pub(crate) fn new() -> Self {
            Self { limbs: [0; 40] }
        }

        pub(crate) fn add(&mut self, x: f64) {
            assert!(x.is_finite());
            if x == 0.0 {
                return;
            }
            let bits = x.to_bits();
            let exp = ((bits >> 52) & 0x7ff) as i64;
            let frac = bits & ((1u64 << 52) - 1);
            // x = mant * 2^(shift - 1074)
            let (mant, shift) = if exp == 0 {
                (frac, 0)
            } else {
                (frac | (1u64 << 52), exp - 1)
            };
            let mut add = [0u64; 40];
            let word = (shift / 64) as usize;
            let off = (shift % 64) as u32;
            add[word] = mant << off;
            if off > 0 && word + 1 < 40 {
                add[word + 1] = mant >> (64 - off);
            }
            if x < 0.0 {
                // two's complement negation
                let mut carry = 1u128;
                for limb in add.iter_mut() {
                    let v = (!*limb) as u128 + carry;
                    *limb = v as u64;
                    carry = v >> 64;
                }
            }
            let mut carry = 0u128;
            for (a, b) in self.limbs.iter_mut().zip(add) {
                let v = *a as u128 + b as u128 + carry;
                *a = v as u64;
                carry = v >> 64;
            }
        }

        fn bit(limbs: &[u64; 40], i: usize) -> bool {
            (limbs[i / 64] >> (i % 64)) & 1 == 1
        }

        pub(crate) fn round(&self) -> f64 {
            let mut m = self.limbs;
            let negative = m[39] >> 63 == 1;
            if negative {
                let mut carry = 1u128;
                for limb in m.iter_mut() {
                    let v = (!*limb) as u128 + carry;
                    *limb = v as u64;
                    carry = v >> 64;
                }
            }
            let Some(h) = (0..40 * 64).rev().find(|&i| Self::bit(&m, i)) else {
                return 0.0;
            };
            let magnitude = if h < 53 {
                f64::from_bits(m[0])
            } else {
                let mut mant = 0u64;
                for i in (h - 52..=h).rev() {
                    mant = (mant << 1) | Self::bit(&m, i) as u64;
                }
                let guard = Self::bit(&m, h - 53);
                let sticky = (0..h - 53).any(|i| Self::bit(&m, i));
                if guard && (sticky || mant & 1 == 1) {
                    mant += 1;
                }
                let biased = (h - 51) as u64;
                if biased >= 2047 {
                    f64::INFINITY
                } else {
                    f64::from_bits((biased << 52) + (mant - (1u64 << 52)))
                }
            };
            if negative {
                -magnitude
            } else {
                magnitude
            }
        }
    }

    fn fresh(values: &[f64]) -> ExactSum {
        let mut s = ExactSum::new();
        for &v in values {
            s.add(v);
        }
        s
    }

    fn reference(values: &[f64]) -> f64 {
        let mut b = BigSum::new();
        for &v in values {
            b.add(v);
        }
        b.round()
    }

    #[test]
    fn adversarial_cancellation() {
        let cases: &[&[f64]] = &[
            &[1e16, 1.0, -1e16],
            &[1e100, 1.0, -1e100, 1e-100],
            &[1.0, 1e100, 1.0, -1e100],
            &[0.1, 0.2, 0.3, -0.6],
            // Half-way case resolved by a lower partial.
            &[1.0, 2f64.powi(-53), 2f64.powi(-106)],
            &[1.0, -(2f64.powi(-54)), -(2f64.powi(-120))],
            &[2f64.powi(1000), -(2f64.powi(1000)), f64::MIN_POSITIVE / 4.0],
            &[5e-324, 5e-324, -1e-323],
            &[],
        ];
        for values in cases {
            assert_eq!(
                fresh(values).round().to_bits(),
                reference(values).to_bits(),
                "{values:?}"
            );
        }
        assert_eq!(fresh(&[1e16, 1.0, -1e16]).round(), 1.0);
        assert_eq!(fresh(&[1.0, -1.0]).round().to_bits(), 0f64.to_bits());
    }

    #[test]
    fn double_double_is_remainder() {
        // 1e16 + 1 is half-way between doubles; the 1e-20 below decides it
        // upwards (the fsum correction step).
        let s = fresh(&[1e16, 1.0, 1e-20]);
        let (hi, lo) = s.double_double(&mut ExactSum::new());
        assert_eq!(hi, 1e16 + 2.0);
        assert_eq!(lo, reference(&[-1.0, 1e-20]));
        let (hi, lo) = fresh(&[1e16, 1.0]).double_double(&mut ExactSum::new());
        assert_eq!((hi, lo), (1e16, 1.0)); // ties to even
    }

    #[test]
    fn products_are_exact() {
        let mut s = ExactSum::new();
        s.add_product(1_000.000_001, 1_000.000_001);
        s.add(-(1_000.000_001_f64 * 1_000.000_001));
        let (_, e) = two_prod(1_000.000_001, 1_000.000_001);
        assert_eq!(s.round(), e);
        assert!(e != 0.0);
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-1e6f64..1e6),
            (0u32..64).prop_map(|k| 1e16 * (k as f64 - 32.0)),
            (-300i32..300, any::<bool>()).prop_map(|(e, neg)| {
                let v = 10f64.powi(e);
                if neg {
                    -v
                } else {
                    v
                }
            }),
            (-1e-6f64..1e-6).prop_map(|d| 1000.0 + d),
            Just(1.0),
            Just(-1.0),
            Just(0.0),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any interleaving of adds and retracts ends on the same double as a
        /// fresh sum of the remaining multiset, and that double is the
        /// correctly rounded exact sum.
        #[test]
        fn sliding_equals_fresh(
            values in prop::collection::vec(value(), 0..40),
            order in prop::collection::vec(any::<u32>(), 0..80),
            keep in prop::collection::vec(any::<bool>(), 40),
        ) {
            // Retract the values not kept, interleaved with the adds in a
            // random order: each value is retracted after it was added.
            let mut s = ExactSum::new();
            let mut pending: Vec<f64> = Vec::new();
            let mut next = 0;
            let mut step = 0;
            while next < values.len() || !pending.is_empty() {
                let r = order.get(step).copied().unwrap_or(step as u32);
                step += 1;
                if next < values.len() && (pending.is_empty() || r % 2 == 0) {
                    let v = values[next];
                    s.add(v);
                    if !keep[next] {
                        pending.push(v);
                    }
                    next += 1;
                } else {
                    let k = r as usize % pending.len();
                    let v = pending.swap_remove(k);
                    s.add(-v);
                }
            }
            let remaining: Vec<f64> = values
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(v, _)| *v)
                .collect();
            let expected = reference(&remaining);
            prop_assert_eq!(s.round().to_bits(), expected.to_bits());
            let mut reversed = remaining.clone();
            reversed.reverse();
            prop_assert_eq!(fresh(&reversed).round().to_bits(), expected.to_bits());
            let mut scratch = ExactSum::new();
            prop_assert_eq!(
                s.double_double(&mut scratch),
                fresh(&remaining).double_double(&mut scratch)
            );
        }
    }
}
