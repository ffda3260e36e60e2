//! The incremental executor against batch: over random micro-batch sizes
//! from 1 to 50,000 ticks and random restarts through `warm_up`, every
//! emitted feature equals `compute_features` over the whole stream, bit for
//! bit, for the files computed incrementally and for a file the
//! incremental path cannot run (recomputed over the held history).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use arrow::array::{Array, AsArray, Int32Array, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use stockanomaly::features::incremental::Program;
use stockanomaly::features::{compute_features, Catalog};
use stockanomaly::sources::simulate::{SimConfig, Simulator};
use stockanomaly::stream::{Executor, ExecutorConfig, Input, PartitionPosition};

/// A file the incremental path cannot run: a `ROWS` frame.
const ROWS_FILE: &str = "-- name: rows\n-- description: the highest of the last 11 prices.\nSELECT symbol, ts, seq,\n       max(price) OVER (PARTITION BY symbol ORDER BY ts, seq ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS max_11\nFROM ticks\n";

/// The default pack without the market file (a restarted in-process
/// market closer recomputes buckets from the replayed ticks only; the
/// market context has its own stage and tests), plus `extra` files.
async fn catalog(extra: &[(&str, &str)]) -> Catalog {
    let full = Catalog::embedded().await.unwrap();
    let mut sources: Vec<(PathBuf, String)> = full
        .files()
        .iter()
        .filter(|f| !f.reads_market)
        .map(|f| (f.path.clone(), f.sql.clone()))
        .collect();
    for (path, sql) in extra {
        sources.push((PathBuf::from(path), (*sql).to_owned()));
    }
    Catalog::from_sources(sources).await.unwrap()
}

type Key = (String, i64, u32);

/// Simulated trades of 4 symbols, in arrival order (time, then symbol and
/// seq), each symbol in partition `symbol % 2`.
fn stream() -> (RecordBatch, Vec<i32>, Vec<i64>) {
    let sim = Simulator::new(SimConfig {
        symbols: 4,
        days: 1,
        trades_per_day: 1500.0,
        seed: 5,
        ..SimConfig::default()
    });
    let day = sim.simulate_day(0).ticks;
    let ts = day.column(0).as_primitive::<TimestampMicrosecondType>();
    let syms = day.column(1).as_string::<i32>();
    let seqs = day.column(2).as_primitive::<UInt32Type>();
    let mut order: Vec<u32> = (0..day.num_rows() as u32).collect();
    order.sort_by_key(|&i| {
        let i = i as usize;
        (ts.value(i), syms.value(i).to_owned(), seqs.value(i))
    });
    let ticks = take_record_batch(&day, &UInt32Array::from(order)).unwrap();
    let syms = ticks.column(1).as_string::<i32>();
    let mut next = [0i64; 2];
    let (mut parts, mut offs) = (Vec::new(), Vec::new());
    for i in 0..ticks.num_rows() {
        let p = (syms.value(i).bytes().map(u32::from).sum::<u32>() % 2) as i32;
        parts.push(p);
        offs.push(next[p as usize]);
        next[p as usize] += 1;
    }
    (ticks, parts, offs)
}

fn key(b: &RecordBatch, i: usize) -> Key {
    let ts = b
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let sym = b.column_by_name("symbol").unwrap().as_string::<i32>();
    let seq = b
        .column_by_name("seq")
        .unwrap()
        .as_primitive::<UInt32Type>();
    (sym.value(i).to_owned(), ts.value(i), seq.value(i))
}

/// Per tick key, the bits of every feature.
fn rows(b: &RecordBatch, names: &[&str]) -> BTreeMap<Key, Vec<Option<u64>>> {
    let mut out = BTreeMap::new();
    for i in 0..b.num_rows() {
        let values = names
            .iter()
            .map(|n| {
                let c = b.column_by_name(n).unwrap().as_primitive::<Float64Type>();
                (!c.is_null(i)).then(|| c.value(i).to_bits())
            })
            .collect();
        out.insert(key(b, i), values);
    }
    out
}

fn input(ticks: &RecordBatch, parts: &[i32], offs: &[i64], idx: &[usize]) -> Input {
    let order = UInt32Array::from_iter_values(idx.iter().map(|&i| i as u32));
    Input {
        ticks: take_record_batch(ticks, &order).unwrap(),
        partitions: Int32Array::from_iter_values(idx.iter().map(|&i| parts[i])),
        offsets: Int64Array::from_iter_values(idx.iter().map(|&i| offs[i])),
        arrived_us: None,
    }
}

fn executor(catalog: &Catalog) -> Executor {
    let mut ex = Executor::new(
        catalog.clone(),
        Vec::new(),
        None,
        ExecutorConfig {
            idle_timeout: Duration::from_secs(3600),
            top_shap: 0,
            allowed_lateness: Duration::ZERO,
        },
    )
    .unwrap();
    ex.set_clock(Duration::ZERO);
    ex
}

/// Feeds the stream in batches of random sizes (log-uniform up to
/// `max_batch`), restarting the executor `restarts` times at random points
/// from its positions (replaying in batches of random sizes); returns every emission by key, checking repeats
/// (ticks after the positions are read again after a restart) agree.
async fn run(
    catalog: &Catalog,
    names: &[&str],
    seed: u64,
    max_batch: usize,
    restarts: usize,
) -> (BTreeMap<Key, Vec<Option<u64>>>, usize) {
    let (ticks, parts, offs) = stream();
    let n = ticks.num_rows();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut restart_at: Vec<usize> = (0..restarts).map(|_| rng.random_range(1..n)).collect();
    restart_at.sort_unstable();
    let mut ex = executor(catalog);
    let mut out: BTreeMap<Key, Vec<Option<u64>>> = BTreeMap::new();
    let mut recomputed = 0;
    let mut collect = |step: stockanomaly::stream::Step, out: &mut BTreeMap<_, _>| {
        recomputed += step.recomputed;
        if let Some(f) = step.features {
            for (k, v) in rows(&f, names) {
                if let Some(before) = out.insert(k.clone(), v.clone()) {
                    assert_eq!(before, v, "{k:?} emitted twice with different features");
                }
            }
        }
    };
    // The ticks still to read, in arrival order.
    let mut todo: Vec<usize> = (0..n).collect();
    let mut fed = 0;
    while !todo.is_empty() {
        let size = (1.0f64 * (max_batch as f64).powf(rng.random::<f64>())) as usize;
        let take = size.clamp(1, todo.len());
        let batch: Vec<usize> = todo.drain(..take).collect();
        fed += batch.len();
        let step = ex.step(input(&ticks, &parts, &offs, &batch)).await.unwrap();
        assert!(step.late.is_empty(), "{:?}", step.late);
        collect(step, &mut out);
        if restart_at.first().is_some_and(|&r| fed >= r) {
            restart_at.remove(0);
            // A crash: a new executor warms up from the positions and reads
            // each partition again from its next offset.
            let pos: BTreeMap<i32, PartitionPosition> = ex.positions();
            ex = executor(catalog);
            let within =
                |i: usize, lo: fn(&PartitionPosition) -> i64, hi: fn(&PartitionPosition) -> i64| {
                    pos.get(&parts[i])
                        .is_some_and(|p| offs[i] >= lo(p) && offs[i] < hi(p))
                };
            let replay: Vec<usize> = (0..n)
                .filter(|&i| within(i, |p| p.warmup_offset, |p| p.next_offset))
                .collect();
            // Replayed in batches of random sizes too, as a consumer reads
            // them: a cut may fall inside a (symbol, ts) group.
            let mut rest = &replay[..];
            while !rest.is_empty() {
                let size = (max_batch as f64).powf(rng.random::<f64>()) as usize;
                let (now, later) = rest.split_at(size.clamp(1, rest.len()));
                let late = ex.warm_up(input(&ticks, &parts, &offs, now)).unwrap();
                assert!(late.is_empty(), "{late:?}");
                rest = later;
            }
            todo = (0..n)
                .filter(|&i| pos.get(&parts[i]).is_none_or(|p| offs[i] >= p.next_offset))
                .collect();
        }
    }
    collect(ex.flush(true).await.unwrap(), &mut out);
    (out, recomputed)
}

fn want(catalog: &Catalog, names: &[&str]) -> BTreeMap<Key, Vec<Option<u64>>> {
    let (ticks, _, _) = stream();
    let rt = tokio::runtime::Handle::current();
    let batch = tokio::task::block_in_place(|| {
        rt.block_on(compute_features(
            &stockanomaly::lake::schema_session(),
            catalog,
            &stockanomaly::lake::with_date(&ticks).unwrap(),
        ))
    })
    .unwrap();
    rows(&batch, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_incremental_path_cannot_run_is_named_and_recomputed() {
    let catalog = catalog(&[("queries/features/rows.sql", ROWS_FILE)]).await;
    let program = Program::compile(&catalog);
    let not: Vec<String> = program
        .not_incremental()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(not.len(), 1, "{not:?}");
    assert!(
        not[0].starts_with("queries/features/rows.sql:4:") && not[0].contains("ROWS frame"),
        "{not:?}"
    );
    let names = catalog.feature_names();
    // The recompute path re-runs the file's SQL each step: a few hundred
    // steps, two restarts (its history must survive a warm-up too).
    let (got, recomputed) = run(&catalog, &names, 1, 700, 2).await;
    assert!(
        recomputed > 0,
        "the rows file went through the recompute path"
    );
    assert_eq!(got, want(&catalog, &names));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any micro-batch sizes (1 to 50,000 ticks) and restarts give the
    /// batch features.
    #[test]
    fn any_split_and_restarts_give_the_batch_features(
        seed in any::<u64>(),
        max_batch in prop_oneof![Just(1usize), 2usize..100, 100usize..5_000, Just(50_000usize)],
        restarts in 0usize..4,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let catalog = catalog(&[]).await;
            let names = catalog.feature_names();
            assert!(Program::compile(&catalog).not_incremental().is_empty());
            let (got, _) = run(&catalog, &names, seed, max_batch, restarts).await;
            let want = want(&catalog, &names);
            prop_assert_eq!(got.len(), want.len());
            for (k, v) in &want {
                prop_assert_eq!(got.get(k), Some(v), "{:?}", k);
            }
            Ok(())
        })?;
    }
}
