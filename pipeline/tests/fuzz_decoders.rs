//! The fuzz targets' short pass, on stable: every decoder that reads the
//! outside world gets its seed corpus (fuzz/seeds, the CSV fixtures) and
//! 20,000 inputs made from it by a fixed-seed random mutator, through the
//! same drivers the cargo-fuzz targets use (`fuzz/src/lib.rs`, included
//! below). A decoder passes when no input panics; nothing is asserted
//! about what it decoded.
//!
//! This is what CI runs instead of libFuzzer: building the fuzz crate with
//! nightly and coverage instrumentation takes far longer than the ten
//! minutes a clean CI run may spend on it. The long runs are
//! `scripts/fuzz.sh` (README, "Fuzzing").

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod drivers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stockanomaly::sources::alpaca::rest::AlpacaHistory;
use stockanomaly::sources::csv::CsvFormat;

/// Inputs per decoder, seeds excluded.
const INPUTS: usize = 20_000;

/// The longest input made: libFuzzer's default `-max_len`.
const MAX_LEN: usize = 4096;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of `dir`, sorted (so that the mutator's choices repeat); none
/// when it does not exist (the CSV targets' seeds are the fixtures).
fn files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// The seed corpus of a target, as `scripts/fuzz.sh` writes it.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let root = repo();
    let mut out = files(&root.join("fuzz/seeds").join(target));
    if target.starts_with("csv_") {
        out.extend(files(&root.join("pipeline/tests/fixtures")));
        out.extend(files(&root.join("fuzz/seeds/csv_nse_udiff")));
    }
    if target == "csv_auto" {
        out.extend(files(&root.join("fuzz/seeds/nse_zip")));
    }
    assert!(!out.is_empty(), "no seeds for {target} in fuzz/seeds");
    out
}

/// Bytes a decoder cares about: JSON and CSV structure, the frame
/// separator, numbers at the edges of their types, odd UTF-8.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\n",
    b"\r\n",
    b"\xff",
    b"\xff\xff",
    b"null",
    b"-",
    b"0",
    b"-0",
    b"1e309",
    b"-1e309",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551616",
    b"1e-400",
    b"NaN",
    b"inf",
    b"9999-12-31T23:59:59.999999999Z",
    b"0000-01-01T00:00:00Z",
    b"2025-02-29T00:00:00+99:99",
    b"31-FEB-2024",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"PK\x03\x04",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
];

/// One mutation of `input` (in place), as libFuzzer's mutators do.
fn mutate(rng: &mut ChaCha8Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let at = |rng: &mut ChaCha8Rng, len: usize| rng.random_range(0..=len);
    match rng.random_range(0..9) {
        0 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input[i] = rng.random();
        }
        2 => {
            let i = at(rng, input.len());
            input.insert(i, rng.random());
        }
        3 if !input.is_empty() => {
            let a = rng.random_range(0..input.len());
            let b = (a + rng.random_range(1..=16)).min(input.len());
            input.drain(a..b);
        }
        4 if !input.is_empty() => {
            // Repeat a range: long strings, deep nesting, many records.
            let a = rng.random_range(0..input.len());
            let b = (a + rng.random_range(1..=64)).min(input.len());
            let piece = input[a..b].to_vec();
            let i = at(rng, input.len());
            for _ in 0..rng.random_range(1..=32) {
                input.splice(i..i, piece.iter().copied());
            }
        }
        5 => {
            let t = TOKENS[rng.random_range(0..TOKENS.len())];
            let i = at(rng, input.len());
            input.splice(i..i, t.iter().copied());
        }
        6 => {
            // Splice another seed in, or cut this one short.
            let other = &corpus[rng.random_range(0..corpus.len())];
            let i = at(rng, input.len());
            let j = at(rng, other.len());
            input.truncate(i);
            input.extend_from_slice(&other[j..]);
        }
        7 if !input.is_empty() => {
            let i = rng.random_range(0..input.len());
            input.truncate(i);
        }
        _ => {
            // An ASCII digit run where a number may be.
            let i = at(rng, input.len());
            let n = rng.random_range(1..=24);
            let digits: Vec<u8> = (0..n).map(|_| b'0' + rng.random_range(0..10)).collect();
            input.splice(i..i, digits);
        }
    }
    input.truncate(MAX_LEN);
}

/// Runs `drive` on the seeds of `target`, then on [`INPUTS`] inputs: each a
/// seed with 1 to 8 mutations, or (one in 16) random bytes. Reports the
/// slowest input, which must stay far under libFuzzer's 10 s timeout.
fn run(target: &str, seed: u64, drive: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let corpus = seeds(target);
    for s in &corpus {
        drive(s);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut slowest = (Duration::ZERO, Vec::new());
    for _ in 0..INPUTS {
        let input = if rng.random_range(0..16) == 0 {
            let mut bytes = vec![0u8; rng.random_range(0..512)];
            rng.fill_bytes(&mut bytes);
            bytes
        } else {
            let mut input = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..=8) {
                mutate(&mut rng, &mut input, &corpus);
            }
            input
        };
        let started = Instant::now();
        if let Err(panic) = std::panic::catch_unwind(|| drive(&input)) {
            // The input, as a literal to paste into a regression test.
            eprintln!(
                "{target}: this input panicked: b\"{}\"",
                input.escape_ascii()
            );
            std::panic::resume_unwind(panic);
        }
        let took = started.elapsed();
        if took > slowest.0 {
            slowest = (took, input);
        }
    }
    // Debug builds are slow; a second for one input of at most 4 KB means
    // something quadratic or worse.
    assert!(
        slowest.0 < Duration::from_secs(1),
        "{target}: one input took {:?}: {:?}",
        slowest.0,
        String::from_utf8_lossy(&slowest.1)
    );
}

#[test]
fn kafka_json() {
    run("kafka_json", 1, drivers::kafka_json);
}

#[test]
fn alpaca_frame() {
    run("alpaca_frame", 2, drivers::alpaca_frames);
}

#[test]
fn polygon_frame() {
    run("polygon_frame", 3, drivers::polygon_frames);
}

#[test]
fn finnhub_frame() {
    run("finnhub_frame", 4, drivers::finnhub_frames);
}

#[test]
fn alpaca_rest_bars() {
    run("alpaca_rest_bars", 5, |d| {
        drivers::alpaca_rest(AlpacaHistory::Bars, d)
    });
}

#[test]
fn alpaca_rest_trades() {
    run("alpaca_rest_trades", 6, |d| {
        drivers::alpaca_rest(AlpacaHistory::Trades, d)
    });
}

#[test]
fn polygon_rest() {
    run("polygon_rest", 7, drivers::polygon_rest);
}

#[test]
fn market_ipc() {
    run("market_ipc", 8, drivers::market_ipc);
}

#[test]
fn csv_auto() {
    run("csv_auto", 9, |d| drivers::csv(CsvFormat::Auto, d));
}

#[test]
fn csv_canonical() {
    run("csv_canonical", 10, |d| {
        drivers::csv(CsvFormat::Canonical, d)
    });
}

#[test]
fn csv_seed_history() {
    run("csv_seed_history", 11, |d| {
        drivers::csv(CsvFormat::SeedHistory, d)
    });
}

#[test]
fn csv_seed_annotated() {
    run("csv_seed_annotated", 12, |d| {
        drivers::csv(CsvFormat::SeedAnnotated, d)
    });
}

#[test]
fn csv_nse_bhavcopy() {
    run("csv_nse_bhavcopy", 13, |d| {
        drivers::csv(CsvFormat::NseBhavcopy, d)
    });
}

#[test]
fn csv_nse_udiff() {
    run("csv_nse_udiff", 14, |d| {
        drivers::csv(CsvFormat::NseUdiff, d)
    });
}

#[test]
fn nse_zip() {
    run("nse_zip", 15, |d| drivers::csv(CsvFormat::Auto, d));
}

/// Every cargo-fuzz target has a test above and a seed directory, and the
/// market seed still decodes (it is an encoded message of today's schema;
/// rewrite it with `STOCKANOMALY_WRITE_SEEDS=1` after a schema change).
#[test]
fn seeds_cover_every_target() {
    let root = repo();
    let source = include_str!("fuzz_decoders.rs");
    let seed = root.join("fuzz/seeds/market_ipc/closing.arrow");
    if std::env::var_os("STOCKANOMALY_WRITE_SEEDS").is_some() {
        std::fs::write(&seed, market_closing()).unwrap();
    }
    for entry in std::fs::read_dir(root.join("fuzz/fuzz_targets")).unwrap() {
        let path = entry.unwrap().path();
        let target = path.file_stem().unwrap().to_str().unwrap().to_owned();
        assert!(
            source.contains(&format!("fn {target}()")),
            "fuzz target {target} has no stable pass in this file"
        );
        assert!(!seeds(&target).is_empty());
    }
    let bytes = std::fs::read(&seed).unwrap();
    let (rows, closed) = stockanomaly::sources::kafka::market::decode_market(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
    assert_eq!((rows.num_rows(), closed), (2, 1_741_012_200_000_000));
}

/// A market message of two buckets, as the market-context stage writes.
fn market_closing() -> Vec<u8> {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::record_batch::RecordBatch;
    use stockanomaly::features::market::market_schema;

    let schema = market_schema();
    let ts = Arc::new(
        TimestampMicrosecondArray::from(vec![1_741_012_140_000_000, 1_741_012_140_000_000])
            .with_timezone("UTC"),
    ) as ArrayRef;
    let f = |a: f64, b: Option<f64>| Arc::new(Float64Array::from(vec![Some(a), b])) as ArrayRef;
    let columns = vec![
        ts,
        Arc::new(StringArray::from(vec!["AAPL", "MSFT"])) as ArrayRef,
        Arc::new(Int64Array::from(vec![12, 3])) as ArrayRef,
        f(189.4, Some(412.0)),
        f(0.001, Some(-0.002)),
        f(1200.0, Some(30.0)),
        f(1.5, None),
        f(0.9, Some(0.1)),
        Arc::new(Int64Array::from(vec![2, 2])) as ArrayRef,
        f(-0.0005, Some(-0.0005)),
        f(-0.0005, Some(-0.0005)),
        f(0.0015, Some(0.0015)),
        f(1.5, Some(1.5)),
    ];
    let rows = RecordBatch::try_new(schema, columns).unwrap();
    stockanomaly::sources::kafka::market::encode_market(&rows, 1_741_012_200_000_000).unwrap()
}
