//! [`ExactTotal`]: the exact sum of any multiset of doubles, the state behind
//! `exact_sum` and `exact_mean`.
//!
//! # Representation
//!
//! - Finite values with `|x| <= SUM_LIMIT` (`2^960`) go to `small`, an
//!   [`ExactSum`] of the values themselves. With fewer than `2^62` of them
//!   its exact sum stays below `2^1022`, so no partial can overflow.
//! - Larger finite values go to `big`, an [`ExactSum`] of `x · 2^-960`. The
//!   scaling is exact (the scaled values are in `(1, 2^64]`, far from
//!   underflow), and their sum stays far from overflow too.
//! - NaN, `+inf` and `-inf` are only counted.
//!
//! The represented real is `Σsmall + 2^960 · Σbig`, exactly the sum of the
//! finite values added (minus those retracted), whatever the order of the
//! additions and merges. Merging two states adds the partials of one to the
//! other, which is exact too.
//!
//! # Rounding
//!
//! [`ExactTotal::sum`] and [`ExactTotal::mean`] round the exact real (or its
//! quotient by the count) once, to nearest with ties to even: a correctly
//! rounded value is unique, so the results depend only on the multiset of
//! values. The usual case (no value above `2^960`) is [`ExactSum::round`];
//! the mean when the exact sum is itself a double is one IEEE division
//! (correctly rounded by definition). Every other case goes through
//! [`Fixed`], a two's complement fixed-point integer in units of `2^-1074`
//! wide enough for any such sum, divided exactly by the count and rounded by
//! hand, overflow to `±inf` included.

use crate::window::{ExactSum, SUM_LIMIT};

/// `log2` of the scale between `big` and the values it stands for.
const BIG_EXP: u32 = 960;

/// `2^-960`: finite values above [`SUM_LIMIT`] enter `big` multiplied by it.
const BIG_DOWN: f64 = f64::from_bits(((1023 - BIG_EXP) as u64) << 52);

/// The exact sum of the finite values of a multiset of doubles, its
/// non-finite values counted apart (see the module docs): what `exact_sum`
/// and `exact_mean` keep per group, for callers computing the same values
/// outside SQL.
///
/// ```
/// use stockanomaly_udfs::aggregate::ExactTotal;
/// let mut t = ExactTotal::new();
/// for x in [1e16, 1.0, -1e16] {
///     t.add(x);
/// }
/// assert_eq!(t.sum(), Some(1.0));
/// assert_eq!(t.mean(), Some(1.0 / 3.0));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ExactTotal {
    /// Exact sum of the finite values with `|x| <= SUM_LIMIT`.
    pub(crate) small: ExactSum,
    /// Exact sum of `x · 2^-960` over the finite values with `|x| > SUM_LIMIT`.
    pub(crate) big: ExactSum,
    /// Number of values (finite or not).
    pub(crate) count: i64,
    pub(crate) nan: i64,
    pub(crate) pos_inf: i64,
    pub(crate) neg_inf: i64,
}

impl ExactTotal {
    /// An empty total.
    pub fn new() -> Self {
        Self {
            small: ExactSum::new(),
            ..Self::default()
        }
    }

    /// Adds `x` to the multiset.
    #[inline]
    pub fn add(&mut self, x: f64) {
        self.count += 1;
        if x.abs() <= SUM_LIMIT {
            self.small.add(x);
        } else if x.is_finite() {
            self.big.add(x * BIG_DOWN);
        } else if x.is_nan() {
            self.nan += 1;
        } else if x > 0.0 {
            self.pos_inf += 1;
        } else {
            self.neg_inf += 1;
        }
    }

    /// Removes `x`, which must have been added before.
    #[inline]
    pub fn retract(&mut self, x: f64) {
        self.count -= 1;
        if x.abs() <= SUM_LIMIT {
            self.small.add(-x);
        } else if x.is_finite() {
            self.big.add(-x * BIG_DOWN);
        } else if x.is_nan() {
            self.nan -= 1;
        } else if x > 0.0 {
            self.pos_inf -= 1;
        } else {
            self.neg_inf -= 1;
        }
    }

    /// The value when a NaN or an infinity was added: NaN when there is a
    /// NaN or infinities of both signs, else the infinity. `None` when every
    /// value is finite.
    fn non_finite(&self) -> Option<f64> {
        if self.nan > 0 || (self.pos_inf > 0 && self.neg_inf > 0) {
            Some(f64::NAN)
        } else if self.pos_inf > 0 {
            Some(f64::INFINITY)
        } else if self.neg_inf > 0 {
            Some(f64::NEG_INFINITY)
        } else {
            None
        }
    }

    /// The exact finite sum as a fixed-point integer.
    fn fixed(&self) -> Fixed {
        let mut f = Fixed::new();
        for &p in self.small.partials() {
            f.add(p, 0);
        }
        for &p in self.big.partials() {
            f.add(p, BIG_EXP);
        }
        f
    }

    /// The sum, correctly rounded; `None` when there are no values.
    pub fn sum(&self) -> Option<f64> {
        if self.count <= 0 {
            return None;
        }
        if let Some(v) = self.non_finite() {
            return Some(v);
        }
        if self.big.is_zero() {
            return Some(self.small.round());
        }
        Some(self.fixed().round(1))
    }

    /// The sum over the count, correctly rounded; `None` when there are no
    /// values.
    pub fn mean(&self) -> Option<f64> {
        if self.count <= 0 {
            return None;
        }
        if let Some(v) = self.non_finite() {
            return Some(v);
        }
        let n = self.count as u64;
        if self.big.is_zero() && self.small.partials().len() <= 1 && n <= 1 << 53 {
            // The exact sum is a double and `n` is exact: one IEEE division
            // is the correctly rounded quotient.
            return Some(self.small.round() / n as f64);
        }
        Some(self.fixed().round(n))
    }

    /// Bytes held on the heap (partials), for `Accumulator::size`.
    pub fn heap_size(&self) -> usize {
        std::mem::size_of::<f64>() * (self.small.partials().len() + self.big.partials().len())
    }
}

/// Limbs of [`Fixed`]: 2304 bits. A sum of fewer than `2^63` finite doubles
/// is below `2^1087`, i.e. `2^2161` units of `2^-1074`, plus the sign bit.
const LIMBS: usize = 36;

/// A two's complement integer in units of `2^-1074` (the smallest subnormal),
/// so every finite double and every sum of them is exact.
#[derive(Clone)]
pub(crate) struct Fixed {
    limbs: [u64; LIMBS],
}

impl Fixed {
    /// Zero.
    pub fn new() -> Self {
        Self { limbs: [0; LIMBS] }
    }

    /// Adds `x · 2^scale` exactly; `x` finite.
    pub fn add(&mut self, x: f64, scale: u32) {
        debug_assert!(x.is_finite());
        if x == 0.0 {
            return;
        }
        let bits = x.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as u32;
        let frac = bits & ((1u64 << 52) - 1);
        // |x| = mant · 2^(shift − 1074) before scaling.
        let (mant, shift) = if exp == 0 {
            (frac, scale)
        } else {
            (frac | (1u64 << 52), exp - 1 + scale)
        };
        let word = (shift / 64) as usize;
        let wide = (mant as u128) << (shift % 64);
        let (lo, hi) = (wide as u64, (wide >> 64) as u64);
        assert!(word + 1 < LIMBS, "Fixed::add: {x} · 2^{scale} out of range");
        let limbs = &mut self.limbs;
        let mut i = word + 2;
        if x > 0.0 {
            let (s, c0) = limbs[word].overflowing_add(lo);
            limbs[word] = s;
            let (s, c1) = limbs[word + 1].overflowing_add(hi);
            let (s, c2) = s.overflowing_add(c0 as u64);
            limbs[word + 1] = s;
            let mut carry = c1 || c2;
            while carry && i < LIMBS {
                (limbs[i], carry) = limbs[i].overflowing_add(1);
                i += 1;
            }
        } else {
            let (s, b0) = limbs[word].overflowing_sub(lo);
            limbs[word] = s;
            let (s, b1) = limbs[word + 1].overflowing_sub(hi);
            let (s, b2) = s.overflowing_sub(b0 as u64);
            limbs[word + 1] = s;
            let mut borrow = b1 || b2;
            while borrow && i < LIMBS {
                (limbs[i], borrow) = limbs[i].overflowing_sub(1);
                i += 1;
            }
        }
    }

    /// The value divided by `divisor` (≥ 1), rounded to the nearest double,
    /// ties to even, `±inf` beyond the largest double. An exact zero is
    /// `+0.0`; a non-zero quotient that rounds to zero keeps its sign.
    pub fn round(&self, divisor: u64) -> f64 {
        assert!(divisor >= 1, "Fixed::round: divisor {divisor}");
        let mut m = self.limbs;
        let negative = m[LIMBS - 1] >> 63 == 1;
        if negative {
            let mut carry = true;
            for limb in m.iter_mut() {
                (*limb, carry) = (!*limb).overflowing_add(carry as u64);
            }
        }
        let top = |m: &[u64; LIMBS]| (0..LIMBS).rev().find(|&i| m[i] != 0);
        // Long division from the top limb: m = quotient, rem < divisor.
        let mut rem = 0u128;
        if divisor > 1 {
            if let Some(t) = top(&m) {
                let d = divisor as u128;
                for limb in m[..=t].iter_mut().rev() {
                    let cur = (rem << 64) | *limb as u128;
                    *limb = (cur / d) as u64;
                    rem = cur % d;
                }
            }
        }
        let magnitude = match top(&m) {
            // Below 2^53 units: the quotient is on the double grid already,
            // only the remainder (a fraction of a unit) rounds it.
            None | Some(0) if m[0] < 1 << 53 => {
                let q = m[0];
                let twice = 2 * rem;
                let d = divisor as u128;
                let up = twice > d || (twice == d && q & 1 == 1);
                if q == 0 && !up && rem == 0 {
                    return 0.0;
                }
                f64::from_bits(q + up as u64)
            }
            None => unreachable!("a zero quotient is below 2^53"),
            Some(t) => {
                let h = t * 64 + 63 - m[t].leading_zeros() as usize;
                let biased = (h - 51) as u64;
                if biased >= 2047 {
                    f64::INFINITY
                } else {
                    let mant = bits_at(&m, h - 52, 53);
                    let guard = bits_at(&m, h - 53, 1) == 1;
                    let sticky = rem != 0 || any_below(&m, h - 53);
                    let up = guard && (sticky || mant & 1 == 1);
                    // A carry out of the mantissa moves to the exponent,
                    // up to the infinity pattern.
                    f64::from_bits((biased << 52) + (mant - (1 << 52)) + up as u64)
                }
            }
        };
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }
}

/// `len` (≤ 64) bits of `m` from bit `pos` up.
fn bits_at(m: &[u64; LIMBS], pos: usize, len: u32) -> u64 {
    let word = pos / 64;
    let lo = m[word] as u128;
    let hi = m.get(word + 1).copied().unwrap_or(0) as u128;
    let wide = (lo | (hi << 64)) >> (pos % 64);
    (wide as u64) & (u64::MAX >> (64 - len))
}

/// Whether any bit of `m` below bit `pos` is set.
fn any_below(m: &[u64; LIMBS], pos: usize) -> bool {
    let word = pos / 64;
    let mask = (1u64 << (pos % 64)) - 1;
    m[word] & mask != 0 || m[..word].iter().any(|&l| l != 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::window::exact_sum::tests::BigSum;
    use proptest::prelude::*;

    fn total(values: &[f64]) -> ExactTotal {
        let mut t = ExactTotal::new();
        for &v in values {
            t.add(v);
        }
        t
    }

    fn big_sum(values: &[f64]) -> f64 {
        let mut b = BigSum::new();
        for &v in values {
            b.add(v);
        }
        b.round()
    }

    /// Checks that `q` is the correctly rounded `Σvalues / n` with an
    /// independent exact reference: `2·Σ − n·(q + q')` against zero for
    /// both neighbours `q'` of `q`, summed exactly in a [`BigSum`].
    pub(crate) fn assert_correct_mean(values: &[f64], q: f64) {
        let n = values.len();
        assert!(q.is_finite(), "{q} for {values:?}");
        let side = |other: f64| -> f64 {
            let mut b = BigSum::new();
            for &v in values {
                b.add(v);
                b.add(v);
            }
            for _ in 0..n {
                b.add(-q);
                b.add(-other);
            }
            b.round()
        };
        let even = q.to_bits() & 1 == 0;
        let up = q.next_up();
        if up.is_finite() {
            let s = side(up);
            assert!(
                s < 0.0 || (s == 0.0 && even),
                "{q} too small for {values:?}"
            );
        }
        let down = q.next_down();
        if down.is_finite() {
            let s = side(down);
            assert!(
                s > 0.0 || (s == 0.0 && even),
                "{q} too large for {values:?}"
            );
        }
    }

    #[test]
    fn fixed_matches_exact_sum_rounding() {
        let cases: &[&[f64]] = &[
            &[1e16, 1.0, -1e16],
            &[1e16, 1.0, 1e-20],
            &[1e16, 1.0],
            &[1.0, 2f64.powi(-53), 2f64.powi(-106)],
            &[1.0, -(2f64.powi(-54)), -(2f64.powi(-120))],
            &[5e-324, 5e-324, -1e-323],
            &[-5e-324],
            &[0.1, 0.2, 0.3, -0.6],
        ];
        for values in cases {
            let t = total(values);
            assert_eq!(
                t.fixed().round(1).to_bits(),
                t.small.round().to_bits(),
                "{values:?}"
            );
            assert_eq!(t.fixed().round(1).to_bits(), big_sum(values).to_bits());
        }
    }

    #[test]
    fn huge_values_and_overflow() {
        let max = f64::MAX;
        let sum = |v: &[f64]| total(v).sum().unwrap();
        let mean = |v: &[f64]| total(v).mean().unwrap();
        assert_eq!(sum(&[1e308, 1e308, -1e308]), 1e308);
        assert_eq!(sum(&[-1e308, 1e308, 1e308]), 1e308);
        assert_eq!(sum(&[max, max]), f64::INFINITY);
        assert_eq!(sum(&[-max, -max]), f64::NEG_INFINITY);
        assert_eq!(sum(&[max, max, -max]), max);
        assert_eq!(mean(&[max, max]), max);
        assert_eq!(mean(&[max, -max]).to_bits(), 0f64.to_bits());
        assert_eq!(sum(&[1e300, 1.0, -1e300]), 1.0);
        assert_eq!(sum(&[1e300, 5e-324, -1e300]), 5e-324);
        // Half an ulp of MAX above MAX rounds to infinity (ties to even),
        // just below it stays MAX.
        let half_ulp = 2f64.powi(970);
        assert_eq!(sum(&[max, half_ulp]), f64::INFINITY);
        assert_eq!(sum(&[max, half_ulp, -5e-324]), max);
        assert_eq!(sum(&[max, half_ulp, 5e-324]), f64::INFINITY);
        assert_eq!(mean(&[max, max, max, 1.0]), max * 0.75);
    }

    #[test]
    fn tiny_means() {
        // 1 unit / 3 rounds to zero with the sign of the quotient; 2 units /
        // 3 rounds to 1 unit; 3 units / 2 is a tie, to even (2 units).
        let t = |v: &[f64]| total(v).mean().unwrap();
        assert_eq!(t(&[5e-324, 0.0, 0.0]).to_bits(), 0f64.to_bits());
        assert_eq!(t(&[-5e-324, 0.0, 0.0]).to_bits(), (-0f64).to_bits());
        assert_eq!(t(&[5e-324, 5e-324, 0.0]), 5e-324);
        assert_eq!(t(&[1.5e-323, 0.0]), 1e-323);
        assert_eq!(t(&[5e-324, 0.0]), 0.0); // tie between 0 and 1 unit: 0
        assert_eq!(t(&[1e-323 + 5e-324, 1e300, -1e300]), 5e-324); // 3 units / 3
                                                                  // The same through the fixed-point division.
        let fixed = |units: f64, divisor: u64| {
            let mut f = Fixed::new();
            f.add(units * 5e-324, 0);
            f.round(divisor).to_bits()
        };
        assert_eq!(fixed(1.0, 3), 0f64.to_bits());
        assert_eq!(fixed(-1.0, 3), (-0f64).to_bits());
        assert_eq!(fixed(2.0, 3), 5e-324f64.to_bits());
        assert_eq!(fixed(3.0, 2), 1e-323f64.to_bits());
        assert_eq!(fixed(1.0, 2), 0f64.to_bits());
        assert_eq!(fixed(-5.0, 2), (-1e-323f64).to_bits());
        assert_eq!(fixed(3.0, 3), 5e-324f64.to_bits());
        assert_eq!(fixed(0.0, 7), 0f64.to_bits());
        for d in [3u64, 7, 10, 1 << 40, u64::MAX >> 1] {
            let mut f = Fixed::new();
            f.add(1.0, 0);
            assert_eq!(f.round(d), 1.0 / d as f64, "1 / {d}");
        }
    }

    #[test]
    fn non_finite_are_counted_apart() {
        let sum = |v: &[f64]| total(v).sum().unwrap();
        assert!(sum(&[1.0, f64::NAN]).is_nan());
        assert!(sum(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(sum(&[f64::INFINITY, 1e308, 1e308]), f64::INFINITY);
        assert_eq!(sum(&[-1.0, f64::NEG_INFINITY]), f64::NEG_INFINITY);
        assert_eq!(
            total(&[f64::NEG_INFINITY, 1.0]).mean(),
            Some(f64::NEG_INFINITY)
        );
        let mut t = total(&[1.0, f64::NAN, f64::INFINITY, 2.0, 1e300]);
        t.retract(f64::NAN);
        t.retract(f64::INFINITY);
        t.retract(1e300);
        assert_eq!(t.sum(), Some(3.0));
        assert_eq!(t.mean(), Some(1.5));
        assert_eq!(ExactTotal::new().sum(), None);
        assert_eq!(ExactTotal::new().mean(), None);
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => -1e6f64..1e6,
            2 => (0u32..64).prop_map(|k| 1e16 * (k as f64 - 32.0)),
            2 => (-300i32..300, any::<bool>())
                .prop_map(|(e, neg)| if neg { -(10f64.powi(e)) } else { 10f64.powi(e) }),
            2 => (-1e-6f64..1e-6).prop_map(|d| 1000.0 + d),
            1 => (290i32..309, any::<bool>(), 1.0f64..1.797)
                .prop_map(|(e, neg, m)| {
                    let v = (m * 10f64.powi(e)).min(f64::MAX);
                    if neg { -v } else { v }
                }),
            1 => (any::<u64>(), any::<bool>())
                .prop_map(|(m, neg)| {
                    let v = f64::from_bits(m & ((1 << 52) - 1));
                    if neg { -v } else { v }
                }),
            1 => Just(1.0),
            1 => Just(-1.0),
            1 => Just(0.0),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Sum and mean are the correctly rounded exact results, whatever
        /// the split into merged states and the order within them.
        #[test]
        fn sum_and_mean_are_correctly_rounded(
            values in prop::collection::vec(value(), 1..40),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(values.len() + 1);
            let mut a = total(&values[..cut]);
            let mut reversed = values[cut..].to_vec();
            reversed.reverse();
            let b = total(&reversed);
            // Merge as `merge_batch` does: partials of one into the other.
            for &p in b.small.partials() {
                a.small.add(p);
            }
            for &p in b.big.partials() {
                a.big.add(p);
            }
            a.count += b.count;
            let sum = a.sum().unwrap();
            prop_assert_eq!(sum.to_bits(), big_sum(&values).to_bits());
            prop_assert_eq!(sum.to_bits(), total(&values).sum().unwrap().to_bits());
            prop_assert_eq!(sum.to_bits(), a.fixed().round(1).to_bits());
            let mean = a.mean().unwrap();
            prop_assert_eq!(mean.to_bits(), total(&values).mean().unwrap().to_bits());
            prop_assert_eq!(mean.to_bits(), a.fixed().round(values.len() as u64).to_bits());
            assert_correct_mean(&values, mean);
        }
    }
}
