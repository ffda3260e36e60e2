//! Sorting batches by a table's key, cheaply when they are made of sorted
//! runs.
//!
//! What the lake hands back is rarely in random order: every file is written
//! sorted by its table's key, so a read of several dates is a few sorted runs
//! (one per file, or per batch when partitions interleave). A full
//! `lexsort` of 1.5M ticks by `(symbol, ts, seq)` compares strings about 20
//! times per row; merging 21 runs touches each row about 5 times and, since
//! runs interleave in long blocks (a symbol's ticks of one date), finds each
//! block's end by galloping with a handful of comparisons.

use std::cmp::Ordering;

use arrow::array::{make_comparator, ArrayRef, DynComparator, RecordBatch, UInt32Array};
use arrow::compute::{lexsort_to_indices, take_record_batch, SortColumn};
use arrow::error::ArrowError;

/// Above this many sorted runs per row, `lexsort` is used instead of merging
/// (random input has a run every two rows; merging pays per run).
const MAX_RUN_FRACTION: usize = 64;

/// `batch` sorted by `cols` (ascending, NULLs first), the same batch when it
/// is sorted already.
///
/// Rows with equal keys keep their relative order when the batch is merged
/// from runs; when it is sorted in full, their order is unspecified.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, RecordBatch, StringArray};
/// use stockanomaly::lake::sort_by;
///
/// // Two sorted runs, as two appended files read back give.
/// let batch = RecordBatch::try_from_iter([
///     ("symbol", Arc::new(StringArray::from(vec!["A", "B", "A", "B"])) as _),
///     ("seq", Arc::new(Int64Array::from(vec![1, 1, 2, 2])) as _),
/// ]).unwrap();
/// let sorted = sort_by(&batch, &["symbol", "seq"]).unwrap();
/// let seq = sorted.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
/// assert_eq!(seq.values(), &[1, 2, 1, 2]);
/// ```
pub fn sort_by(batch: &RecordBatch, cols: &[&str]) -> Result<RecordBatch, ArrowError> {
    let arrays: Vec<ArrayRef> = cols
        .iter()
        .map(|c| batch.schema().index_of(c).map(|i| batch.column(i).clone()))
        .collect::<Result<_, _>>()?;
    let comparators = arrays
        .iter()
        .map(|a| make_comparator(a.as_ref(), a.as_ref(), Default::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let cmp = |a: usize, b: usize| key_cmp(&comparators, a, b);
    let n = batch.num_rows();
    let starts = run_starts(n, cmp);
    if starts.len() <= 1 {
        return Ok(batch.clone());
    }
    let indices = match u32::try_from(n) {
        Ok(_) if starts.len() <= (n / MAX_RUN_FRACTION).max(2) => merge_runs(&starts, n, cmp),
        _ => {
            let sort_cols: Vec<SortColumn> = arrays
                .into_iter()
                .map(|values| SortColumn {
                    values,
                    options: None,
                })
                .collect();
            lexsort_to_indices(&sort_cols, None)?
        }
    };
    take_record_batch(batch, &indices)
}

/// Compares rows `a` and `b` column by column.
fn key_cmp(comparators: &[DynComparator], a: usize, b: usize) -> Ordering {
    for cmp in comparators {
        match cmp(a, b) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

/// Where each maximal ascending run of rows `0..n` starts (`[0]` when sorted;
/// empty when `n == 0`).
fn run_starts(n: usize, cmp: impl Fn(usize, usize) -> Ordering) -> Vec<usize> {
    let mut starts = Vec::new();
    if n > 0 {
        starts.push(0);
    }
    for i in 1..n {
        if cmp(i - 1, i) == Ordering::Greater {
            starts.push(i);
        }
    }
    starts
}

/// Row indices that order the runs beginning at `starts` (each ascending,
/// the last one ending at `n`; `n` fits in `u32`): merged pairwise, earlier
/// runs first on equal keys.
fn merge_runs(starts: &[usize], n: usize, cmp: impl Fn(usize, usize) -> Ordering) -> UInt32Array {
    // Indices fit in u32 (the caller checked n).
    let mut runs: Vec<Vec<u32>> = starts
        .iter()
        .zip(starts.iter().skip(1).chain(std::iter::once(&n)))
        .map(|(&s, &e)| (s as u32..e as u32).collect())
        .collect();
    while runs.len() > 1 {
        let mut next = Vec::with_capacity(runs.len().div_ceil(2));
        let mut pairs = runs.into_iter();
        while let Some(a) = pairs.next() {
            match pairs.next() {
                Some(b) => next.push(merge_two(&a, &b, &cmp)),
                None => next.push(a),
            }
        }
        runs = next;
    }
    UInt32Array::from(runs.pop().unwrap_or_default())
}

/// Merges two ascending index lists, `a`'s rows first on equal keys, taking
/// whole blocks at a time: the end of each block is found by galloping.
fn merge_two(a: &[u32], b: &[u32], cmp: &impl Fn(usize, usize) -> Ordering) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let head_b = b[j] as usize;
        let take_a = gallop(&a[i..], |x| cmp(x as usize, head_b) != Ordering::Greater);
        out.extend_from_slice(&a[i..i + take_a]);
        i += take_a;
        if i == a.len() {
            break;
        }
        let head_a = a[i] as usize;
        let take_b = gallop(&b[j..], |y| cmp(y as usize, head_a) == Ordering::Less);
        out.extend_from_slice(&b[j..j + take_b]);
        j += take_b;
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The length of the prefix of `xs` where `pred` holds (it holds on a prefix
/// and fails after), in O(log length) calls.
fn gallop(xs: &[u32], pred: impl Fn(u32) -> bool) -> usize {
    let mut hi = 1;
    while hi <= xs.len() && pred(xs[hi - 1]) {
        hi *= 2;
    }
    let lo = hi / 2;
    let hi = hi.min(xs.len() + 1) - 1;
    // pred holds on xs[..lo] and fails at xs[hi] (or hi == len).
    lo + xs[lo..hi].partition_point(|&x| pred(x))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int64Array, StringArray};
    use arrow::datatypes::Int64Type;

    use super::*;

    fn batch(symbols: Vec<Option<&str>>, seqs: Vec<i64>) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("symbol", Arc::new(StringArray::from(symbols)) as ArrayRef),
            ("seq", Arc::new(Int64Array::from(seqs)) as ArrayRef),
        ])
        .unwrap()
    }

    fn keys(b: &RecordBatch) -> Vec<(Option<String>, i64)> {
        let s = b.column(0).as_string::<i32>();
        let q = b.column(1).as_primitive::<Int64Type>();
        (0..b.num_rows())
            .map(|i| (s.is_valid(i).then(|| s.value(i).to_string()), q.value(i)))
            .collect()
    }

    /// A small deterministic generator (no test dependency on `rand`'s
    /// stream).
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn gallop_finds_the_prefix_where_the_predicate_holds() {
        let xs: Vec<u32> = (0..100).collect();
        for k in 0..=100 {
            assert_eq!(gallop(&xs, |x| x < k), k as usize, "k = {k}");
        }
        assert_eq!(gallop(&[], |_| true), 0);
    }

    #[test]
    fn merged_runs_equal_a_full_sort_and_keep_the_order_of_ties() {
        let mut state = 7;
        for case in 0..200 {
            let runs = 1 + lcg(&mut state) as usize % 12;
            let mut symbols = Vec::new();
            let mut seqs = Vec::new();
            for _ in 0..runs {
                let len = lcg(&mut state) as usize % 40;
                let mut run: Vec<(Option<&str>, i64)> = (0..len)
                    .map(|_| {
                        let s = ["A", "B", "C", "D"][lcg(&mut state) as usize % 4];
                        let s = (!lcg(&mut state).is_multiple_of(17)).then_some(s);
                        // Few distinct seqs: ties across runs.
                        (s, (lcg(&mut state) % 5) as i64)
                    })
                    .collect();
                run.sort();
                for (s, q) in run {
                    symbols.push(s);
                    seqs.push(q);
                }
            }
            let b = batch(symbols, seqs);
            let n = b.num_rows();
            let comparators: Vec<DynComparator> = b
                .columns()
                .iter()
                .map(|a| make_comparator(a.as_ref(), a.as_ref(), Default::default()).unwrap())
                .collect();
            let cmp = |x: usize, y: usize| key_cmp(&comparators, x, y);
            let starts = run_starts(n, cmp);
            let merged = merge_runs(&starts, n, cmp);
            let mut expected: Vec<u32> = (0..n as u32).collect();
            // A stable sort: ties keep their input order, as merging promises.
            expected.sort_by(|&x, &y| cmp(x as usize, y as usize));
            assert_eq!(merged.values().to_vec(), expected, "case {case}");
        }
    }

    #[test]
    fn sort_by_merges_runs_sorts_shuffled_rows_and_keeps_sorted_batches() {
        let sorted = batch(vec![Some("A"), Some("A"), Some("B")], vec![1, 2, 1]);
        let same = sort_by(&sorted, &["symbol", "seq"]).unwrap();
        assert_eq!(keys(&same), keys(&sorted));

        let runs = batch(
            vec![None, Some("A"), Some("B"), Some("A"), Some("C")],
            vec![5, 1, 1, 2, 0],
        );
        let merged = sort_by(&runs, &["symbol", "seq"]).unwrap();
        let want = vec![
            (None, 5),
            (Some("A".to_string()), 1),
            (Some("A".to_string()), 2),
            (Some("B".to_string()), 1),
            (Some("C".to_string()), 0),
        ];
        assert_eq!(keys(&merged), want);

        // Many runs (descending input): the full sort.
        let n = 1000;
        let shuffled = batch(vec![Some("A"); n], (0..n as i64).rev().collect());
        let out = sort_by(&shuffled, &["symbol", "seq"]).unwrap();
        let seqs: Vec<i64> = keys(&out).into_iter().map(|(_, q)| q).collect();
        assert_eq!(seqs, (0..n as i64).collect::<Vec<_>>());

        assert!(sort_by(&sorted, &["nope"]).is_err());
    }
}
