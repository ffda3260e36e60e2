//! The compiled program against the batch path (`compute_features`), bit
//! for bit, over random splits of the ticks into chunks.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use rand::{Rng, SeedableRng};

use super::*;
use crate::features::Catalog;
use crate::tick::{TickBuilder, TickRecord};

const T0: i64 = 1_704_205_800_000_000;

/// Ticks of `symbols` symbols: bursts with ties on `ts`, quotes on some,
/// gaps longer than every window.
fn ticks(seed: u64, symbols: usize, per_symbol: usize) -> RecordBatch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut b = TickBuilder::new("test");
    let names: Vec<String> = (0..symbols).map(|i| format!("S{i:02}")).collect();
    let mut rows = Vec::new();
    for name in &names {
        let (mut t, mut p) = (T0 + rng.random_range(0..60_000_000), 100.0);
        for _ in 0..per_symbol {
            t += match rng.random_range(0..10) {
                0 => 0,
                1 => 40 * 60_000_000,
                _ => rng.random_range(1..20_000_000),
            };
            p *= 1.0 + rng.random_range(-0.002..0.002);
            let mut r = TickRecord::trade(t, name, p, rng.random_range(1..500) as f64);
            if rng.random_bool(0.5) {
                r.bid = Some(p - 0.01);
                r.ask = Some(p + 0.01);
                r.bid_size = Some(rng.random_range(0..300) as f64);
                r.ask_size = Some(rng.random_range(0..300) as f64);
            }
            let bar = rng.random_bool(0.3).then_some((p * 0.999, p * 1.001));
            rows.push((
                t,
                name.clone(),
                r.price,
                r.volume,
                r.bid,
                r.ask,
                r.bid_size,
                r.ask_size,
                bar,
            ));
        }
    }
    // Arrival order: by time (the builder numbers ties in arrival order).
    rows.sort_by_key(|r| r.0);
    for (t, name, price, volume, bid, ask, bid_size, ask_size, bar) in &rows {
        let mut r = TickRecord::trade(*t, name, *price, *volume);
        (r.bid, r.ask, r.bid_size, r.ask_size) = (*bid, *ask, *bid_size, *ask_size);
        if let Some((low, high)) = bar {
            (r.open, r.low, r.high) = (Some(*price), Some(*low), Some(*high));
        }
        b.push(&r).unwrap();
    }
    let batch = b.finish();
    crate::lake::sort_by(
        &batch,
        &[
            crate::tick::col::SYMBOL,
            crate::tick::col::TS,
            crate::tick::col::SEQ,
        ],
    )
    .unwrap()
}

fn context() -> ContextTables {
    let mut c = ContextTables::default();
    for spec in [
        crate::lake::TableSpec::symbols(),
        crate::lake::TableSpec::profiles(),
        crate::lake::TableSpec::market(),
        crate::lake::TableSpec::betas(),
    ] {
        c.set(&spec.name, crate::lake::with_partitions(&spec), Vec::new());
    }
    c
}

/// Cuts the sorted `ticks` into chunks of whole `(symbol, ts)` groups, each
/// chunk taking a random number of groups of every symbol, with up to
/// `ahead` read-ahead rows after each symbol's computed ones.
fn chunks(ticks: &RecordBatch, ahead: usize, rng: &mut impl Rng) -> Vec<Chunk> {
    let syms = ticks.column(1).as_string::<i32>();
    let ts = ticks.column(0).as_primitive::<TimestampMicrosecondType>();
    // Per symbol: its rows and the group starts.
    let mut per_symbol: Vec<(usize, usize, usize)> = Vec::new(); // (start, end, next)
    let mut a = 0;
    while a < ticks.num_rows() {
        let mut b = a;
        while b < ticks.num_rows() && syms.value(b) == syms.value(a) {
            b += 1;
        }
        per_symbol.push((a, b, a));
        a = b;
    }
    let mut out = Vec::new();
    while per_symbol.iter().any(|s| s.2 < s.1) {
        let mut idx: Vec<u32> = Vec::new();
        let mut segments = Vec::new();
        for (sym, s) in per_symbol.iter_mut().enumerate() {
            if s.2 >= s.1 {
                continue;
            }
            // Take 0..n groups.
            let groups = rng.random_range(0..6usize);
            let mut end = s.2;
            for _ in 0..groups {
                if end >= s.1 {
                    break;
                }
                let t = ts.value(end);
                while end < s.1 && ts.value(end) == t {
                    end += 1;
                }
            }
            if end == s.2 {
                continue;
            }
            let extra = (s.1 - end).min(ahead);
            let start = idx.len();
            idx.extend((s.2..end + extra).map(|i| i as u32));
            segments.push(Segment {
                sym,
                start,
                live_end: start + (end - s.2),
                end: idx.len(),
            });
            s.2 = end;
        }
        if segments.is_empty() {
            continue;
        }
        let idx = arrow::array::UInt32Array::from(idx);
        let batch = arrow::compute::take_record_batch(ticks, &idx).unwrap();
        let batch = crate::lake::with_date(&batch).unwrap();
        let ts = batch
            .column(0)
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec();
        out.push(Chunk {
            ticks: batch,
            ts,
            segments,
        });
    }
    out
}

#[tokio::test]
async fn the_default_pack_compiles_whole() {
    let catalog = Catalog::embedded().await.unwrap();
    let program = Program::compile(&catalog);
    assert!(
        program.not_incremental().is_empty(),
        "{:?}",
        program.not_incremental()
    );
    assert_eq!(program.files().len(), catalog.files().len());
    assert!(program.reads_ahead(), "confirm.sql reads 5 ticks ahead");
}

#[tokio::test]
async fn any_split_into_chunks_gives_the_batch_bits() {
    let catalog = Catalog::embedded().await.unwrap();
    let ticks = ticks(11, 4, 300);
    let batch = crate::features::compute_features(
        &crate::lake::schema_session(),
        &catalog,
        &crate::lake::with_date(&ticks).unwrap(),
    )
    .await
    .unwrap();
    let delay = usize::try_from(catalog.delay()).unwrap();
    for seed in 0..4u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut program = Program::compile(&catalog);
        program.refresh(&context()).await.unwrap();
        // Per feature (catalog order), the values of the rows in chunk order.
        let names = catalog.feature_names();
        let mut got: Vec<Vec<Option<u64>>> = vec![Vec::new(); names.len()];
        let mut order: Vec<u32> = Vec::new();
        let mut offset = 0u32;
        let all = chunks(&ticks, delay, &mut rng);
        // Row numbers of each chunk's computed rows in `ticks`.
        let mut next_of_sym = std::collections::HashMap::new();
        let syms = ticks.column(1).as_string::<i32>();
        for (i, s) in (0..ticks.num_rows()).map(|i| (i, syms.value(i))) {
            next_of_sym.entry(s.to_owned()).or_insert(i);
        }
        for chunk in &all {
            let outputs = program.evaluate(chunk, Mode::Emit).unwrap();
            let csyms = chunk.ticks.column(1).as_string::<i32>();
            for seg in &chunk.segments {
                let n = next_of_sym.get_mut(csyms.value(seg.start)).unwrap();
                order.extend((*n..*n + (seg.live_end - seg.start)).map(|r| r as u32));
                *n += seg.live_end - seg.start;
            }
            let mut k = 0;
            for (_, columns) in outputs {
                for c in columns {
                    let c = c.as_primitive::<Float64Type>();
                    got[k].extend(c.iter().map(|v| v.map(f64::to_bits)));
                    k += 1;
                }
            }
            offset += chunk.live_rows() as u32;
        }
        assert_eq!(offset as usize, ticks.num_rows());
        let order = arrow::array::UInt32Array::from(order);
        for (k, name) in names.iter().enumerate() {
            let want = batch.column(batch.schema().index_of(name).unwrap());
            let want = arrow::compute::take(want.as_ref(), &order, None).unwrap();
            let want: Vec<Option<u64>> = want
                .as_primitive::<Float64Type>()
                .iter()
                .map(|v| v.map(f64::to_bits))
                .collect();
            let first_diff = want.iter().zip(&got[k]).position(|(a, b)| a != b);
            assert_eq!(want.len(), got[k].len(), "{name}");
            let context = ["seasonality", "market"].iter().any(|f| {
                catalog
                    .files()
                    .iter()
                    .any(|c| c.name == *f && c.features.iter().any(|n| n == name))
            });
            let values = got[k].iter().filter(|v| v.is_some()).count();
            assert!(
                context || values > ticks.num_rows() / 4,
                "{name}: only {values} values: the comparison would be empty"
            );
            assert!(
                first_diff.is_none(),
                "seed {seed}, {name}: first difference at chunk row {:?}: {:?} vs {:?}",
                first_diff,
                first_diff.map(|i| want[i].map(f64::from_bits)),
                first_diff.map(|i| got[k][i].map(f64::from_bits))
            );
        }
    }
}
