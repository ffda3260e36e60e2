//! The executor's unit tests: groups, lateness, partitions, delayed
//! confirmation and market buckets.

use super::*;
use crate::model::RuleSet;
use crate::tick::{TickBuilder, TickRecord};

const T0: i64 = 1_704_205_800_000_000;

fn input(ticks: &[(i64, f64)], first_offset: i64, b: &mut TickBuilder) -> Input {
    for &(ts, price) in ticks {
        b.push(&TickRecord::trade(ts, "AAA", price, 10.0)).unwrap();
    }
    let n = ticks.len() as i64;
    Input {
        ticks: b.finish(),
        partitions: Int32Array::from(vec![0; ticks.len()]),
        offsets: Int64Array::from_iter_values(first_offset..first_offset + n),
        arrived_us: None,
    }
}

/// The embedded pack's files that `keep` keeps.
async fn pack_with(keep: impl Fn(&crate::features::FeatureFile) -> bool) -> Catalog {
    let full = Catalog::embedded().await.unwrap();
    let sources = full
        .files()
        .iter()
        .filter(|f| keep(f))
        .map(|f| (f.path.clone(), f.sql.clone()))
        .collect();
    Catalog::from_sources(sources).await.unwrap()
}

/// The embedded pack without its delayed-confirmation and market
/// files: these tests are about groups, lateness and partitions
/// (delayed confirmation and market buckets have tests of their own).
async fn pack_without_delay() -> Catalog {
    let catalog = pack_with(|f| f.delay == 0 && !f.reads_market).await;
    assert_eq!(catalog.delay(), 0);
    assert!(!catalog.uses_market());
    catalog
}

#[tokio::test]
async fn market_buckets_hold_ticks_until_closed() {
    let catalog = pack_with(|f| f.delay == 0).await;
    assert!(catalog.uses_market());
    let mut ex = Executor::new(
        catalog,
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
    let mut b = TickBuilder::new("test");
    let mut two = |rows: &[(i64, &str, f64, i32)], first_offset: i64| {
        for &(ts, sym, price, _) in rows {
            b.push(&TickRecord::trade(ts, sym, price, 10.0)).unwrap();
        }
        Input {
            ticks: b.finish(),
            partitions: Int32Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>()),
            offsets: Int64Array::from_iter_values(first_offset..first_offset + rows.len() as i64),
            arrived_us: None,
        }
    };
    let minute = 60_000_000;
    // AAA (partition 0) and BBB (partition 1) trade in the first minute.
    let step = ex
        .step(two(
            &[
                (T0, "AAA", 10.0, 0),
                (T0 + 1_000_000, "BBB", 20.0, 1),
                (T0 + 2_000_000, "AAA", 10.5, 0),
                (T0 + 3_000_000, "BBB", 20.0, 1),
            ],
            0,
        ))
        .await
        .unwrap();
    assert_eq!(step.emitted(), 0, "the bucket is open");
    // AAA moves on; BBB's partition still holds the first minute open.
    let step = ex
        .step(two(&[(T0 + minute, "AAA", 10.6, 0)], 4))
        .await
        .unwrap();
    assert_eq!(step.emitted(), 0);
    assert!(ex.market_closed_until().is_none_or(|c| c <= T0));
    let step = ex
        .step(two(&[(T0 + minute + 5, "BBB", 20.2, 1)], 5))
        .await
        .unwrap();
    assert_eq!(step.emitted(), 4, "both partitions passed the first minute");
    assert_eq!(ex.market_closed_until(), Some(T0 + minute));
    let f = step.features.unwrap();
    let col = |name: &str| {
        f.column(f.schema().index_of(name).unwrap())
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone()
    };
    // Returns in the minute: AAA ln(10.5/10), BBB 0; median of two.
    let want = (10.5f64 / 10.0).ln() / 2.0;
    assert!(col("mkt_ret_1m").iter().all(|v| v == Some(want)));
    // AAA's move ranks first among the two.
    let rank = col("move_rank_1m");
    let syms = f.column(1).as_string::<i32>();
    for i in 0..f.num_rows() {
        let want = if syms.value(i) == "AAA" { 1.0 } else { 0.0 };
        assert_eq!(rank.value(i), want, "row {i}");
    }
    // A tick of the closed minute is refused as late (a symbol the
    // market row never saw in it).
    let step = ex
        .step(two(&[(T0 + 30_000_000, "CCC", 20.1, 1)], 6))
        .await
        .unwrap();
    assert_eq!(step.late.len(), 1);
    assert!(
        step.late[0].detail.contains("market bucket closed"),
        "{:?}",
        step.late
    );
    // The end of the stream closes the last minute.
    let step = ex.flush(true).await.unwrap();
    assert_eq!(step.emitted(), 2);
}

#[tokio::test]
async fn delayed_confirmation_holds_ticks_until_later_ones_or_the_end() {
    let full = Catalog::embedded().await.unwrap();
    assert_eq!(full.delay(), 5, "the shipped pack confirms over 5 ticks");
    let catalog = pack_with(|f| !f.reads_market).await;
    let mut ex = Executor::new(
        catalog,
        Vec::new(),
        None,
        ExecutorConfig {
            idle_timeout: Duration::from_secs(3600),
            top_shap: 0,
            allowed_lateness: Duration::ZERO,
        },
    )
    .unwrap();
    let mut b = TickBuilder::new("test");
    let ticks: Vec<(i64, f64)> = (0..8)
        .map(|i| (T0 + i * 1_000_000, 10.0 + i as f64 / 10.0))
        .collect();
    let step = ex.step(input(&ticks, 0, &mut b)).await.unwrap();
    // Ticks 0 and 1 have 5 later ones, the 5th settled (older than the
    // newest); the rest wait.
    assert_eq!(step.emitted(), 2);
    assert_eq!(ex.pending(), 6);
    // The end of the stream: what is held is all there is.
    let step = ex.flush(true).await.unwrap();
    assert_eq!(step.emitted(), 6);
}

#[tokio::test]
async fn groups_wait_for_a_later_tick_and_late_ticks_are_refused() {
    let catalog = pack_without_delay().await;
    let rules = RuleSet::load(std::path::Path::new("/nonexistent"), &catalog)
        .await
        .unwrap();
    let detectors = rules.rules().iter().cloned().map(Detector::Rule).collect();
    let mut ex = Executor::new(
        catalog,
        detectors,
        None,
        ExecutorConfig {
            idle_timeout: Duration::from_secs(3600),
            top_shap: 0,
            allowed_lateness: Duration::ZERO,
        },
    )
    .unwrap();
    let mut b = TickBuilder::new("test");
    // Two ticks share T0 + 1 s: nothing after them yet, so only T0 is
    // complete.
    let step = ex
        .step(input(
            &[(T0, 10.0), (T0 + 1_000_000, 10.5), (T0 + 1_000_000, 10.6)],
            0,
            &mut b,
        ))
        .await
        .unwrap();
    assert_eq!(step.emitted(), 1);
    assert_eq!(
        step.positions[&0].next_offset, 1,
        "resume at the open group"
    );
    assert_eq!(ex.pending(), 2);
    // A tick before the newest is late; a later one completes the group.
    let step = ex
        .step(input(
            &[(T0 + 500_000, 9.0), (T0 + 2_000_000, 10.7)],
            3,
            &mut b,
        ))
        .await
        .unwrap();
    assert_eq!(step.late.len(), 1);
    assert_eq!(step.late[0].offset, 3);
    assert_eq!(step.emitted(), 2, "the T0 + 1 s group, both ticks");
    let seqs: Vec<u32> = step
        .features
        .as_ref()
        .unwrap()
        .column(2)
        .as_primitive::<arrow::datatypes::UInt32Type>()
        .values()
        .to_vec();
    assert_eq!(seqs, [0, 1]);
    assert_eq!(step.scores.len(), 1, "one rule");
    let step = ex.flush(true).await.unwrap();
    assert_eq!(step.emitted(), 1);
    assert_eq!(step.positions[&0].next_offset, 5, "everything done");
    assert_eq!(ex.pending(), 0);
    // The emitted group's timestamp is now closed.
    let step = ex
        .step(input(&[(T0 + 2_000_000, 10.8)], 5, &mut b))
        .await
        .unwrap();
    assert_eq!(step.late.len(), 1);
}

#[tokio::test]
async fn allowed_lateness_reorders_and_forgotten_partitions_start_afresh() {
    let catalog = pack_without_delay().await;
    let mut ex = Executor::new(
        catalog,
        Vec::new(),
        None,
        ExecutorConfig {
            idle_timeout: Duration::from_secs(3600),
            top_shap: 0,
            allowed_lateness: Duration::from_secs(2),
        },
    )
    .unwrap();
    let mut b = TickBuilder::new("test");
    // T0 + 3 s arrives before T0 + 2 s and T0 + 1.5 s: within the 2 s of
    // lateness both are taken; only groups more than 2 s behind the
    // newest (T0) are complete.
    let step = ex
        .step(input(
            &[(T0, 10.0), (T0 + 3_000_000, 10.3), (T0 + 2_000_000, 10.2)],
            0,
            &mut b,
        ))
        .await
        .unwrap();
    assert!(step.late.is_empty(), "{:?}", step.late);
    assert_eq!(step.emitted(), 1, "T0 only");
    let step = ex
        .step(input(
            &[(T0 + 1_500_000, 10.1), (T0 + 500_000, 9.9)],
            3,
            &mut b,
        ))
        .await
        .unwrap();
    assert_eq!(
        step.late.len(),
        1,
        "T0 + 0.5 s: before the emitted T0 + ... horizon"
    );
    assert_eq!(step.late[0].offset, 4);
    assert_eq!(step.emitted(), 0);
    let step = ex.flush(true).await.unwrap();
    let ts: Vec<i64> = step
        .features
        .as_ref()
        .unwrap()
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec();
    assert_eq!(
        ts,
        [T0 + 1_500_000, T0 + 2_000_000, T0 + 3_000_000],
        "emitted in event order"
    );
    assert_eq!(step.positions[&0].next_offset, 5);
    // Forgetting the partition drops its symbols and positions.
    assert_eq!(ex.forget_partitions(&[0]).unwrap(), ["AAA".to_owned()]);
    assert_eq!(ex.held(), 0);
    assert!(ex.positions().is_empty());
    // The symbol starts afresh: an old timestamp is no longer late.
    let step = ex
        .step(input(&[(T0, 10.0), (T0 + 10_000_000, 10.0)], 0, &mut b))
        .await
        .unwrap();
    assert!(step.late.is_empty());
    assert_eq!(step.emitted(), 1);
}

#[tokio::test]
async fn warming_up_one_partition_leaves_another_partitions_pending_groups() {
    let catalog = pack_without_delay().await;
    let mut ex = Executor::new(
        catalog,
        Vec::new(),
        None,
        ExecutorConfig {
            idle_timeout: Duration::from_secs(3600),
            ..ExecutorConfig::default()
        },
    )
    .unwrap();
    let mut b = TickBuilder::new("test");
    // AAA (partition 0) has its last group pending...
    let step = ex
        .step(input(&[(T0, 10.0), (T0 + 1_000_000, 10.1)], 0, &mut b))
        .await
        .unwrap();
    assert_eq!(step.emitted(), 1);
    // ...when partition 1 (BBB) is taken over and replayed.
    b.push(&TickRecord::trade(T0, "BBB", 5.0, 1.0)).unwrap();
    ex.warm_up(Input {
        ticks: b.finish(),
        partitions: Int32Array::from(vec![1]),
        offsets: Int64Array::from(vec![0]),
        arrived_us: None,
    })
    .unwrap();
    assert_eq!(ex.pending(), 1, "AAA's group is still pending");
    let step = ex.flush(true).await.unwrap();
    assert_eq!(step.emitted(), 1, "and is emitted");
    assert_eq!(step.sources, [(0, 1)]);
}

#[test]
fn confirmation_waits_for_settled_followers_and_never_splits_a_timestamp() {
    // AAA pending: ts 1, 2, 2, 3, 4, 5.
    let ts = [1i64, 2, 2, 3, 4, 5];
    let newest_first = || ts.iter().rev().copied();
    // All settled: index 3 (ts 3) has two followers; index 2 (ts 2)
    // too, and its group ends there: up to ts 3, 4 ticks.
    assert_eq!(confirmed_prefix(newest_first(), 6, 6, 2), 4);
    // Two ticks, none with two later ones.
    assert_eq!(confirmed_prefix([2i64, 1].into_iter(), 2, 2, 2), 0);
    // The follower at ts 5 is not settled yet: index 3 (ts 3) waits;
    // index 2, the last of ts 2's group, has its second follower at
    // ts 4, settled: up to ts 2, 3 ticks.
    assert_eq!(confirmed_prefix(newest_first(), 6, 5, 2), 3);
    // Followers settled only before ts 4: index 1 (ts 2) is confirmed
    // (its second follower is ts 3) but index 2, the same ts, is not:
    // the whole group waits, down to ts 1.
    assert_eq!(confirmed_prefix(newest_first(), 6, 4, 2), 1);
    assert_eq!(confirmed_prefix(newest_first(), 6, 0, 2), 0);
}

/// A replay read in several batches can split a `(symbol, ts)` group
/// between two of them: the second part must join the first, not be refused
/// as late (the crash soak found a restarted detector whose 30-minute
/// volume z-score missed such a tick for half an hour).
#[tokio::test]
async fn a_replay_split_inside_a_group_restores_the_whole_group() {
    let config = || ExecutorConfig {
        idle_timeout: Duration::from_secs(3600),
        ..ExecutorConfig::default()
    };
    let ticks = [
        (T0, 10.0),
        (T0 + 1_000_000, 10.4),
        (T0 + 1_000_000, 10.2),
        (T0 + 2_000_000, 10.3),
        (T0 + 3_000_000, 10.1),
    ];
    let mut b = TickBuilder::new("test");
    // Uninterrupted: every tick live.
    let mut whole = Executor::new(pack_without_delay().await, Vec::new(), None, config()).unwrap();
    whole.set_clock(Duration::ZERO);
    let first = whole.step(input(&ticks, 0, &mut b)).await.unwrap();
    let end = whole.flush(true).await.unwrap();
    let parts: Vec<RecordBatch> = [first.features, end.features]
        .into_iter()
        .flatten()
        .collect();
    let want = concat_batches(&parts[0].schema(), &parts).unwrap();
    assert_eq!(want.num_rows(), ticks.len());

    // Restarted after the first four were emitted: replayed in two
    // batches cut inside the group at T0 + 1 s, then the last tick live.
    let mut ex = Executor::new(pack_without_delay().await, Vec::new(), None, config()).unwrap();
    ex.set_clock(Duration::ZERO);
    let mut b = TickBuilder::new("test");
    let late = ex.warm_up(input(&ticks[..2], 0, &mut b)).unwrap();
    assert!(late.is_empty(), "{late:?}");
    let late = ex.warm_up(input(&ticks[2..4], 2, &mut b)).unwrap();
    assert!(
        late.is_empty(),
        "the group's second tick joins it: {late:?}"
    );
    assert_eq!(ex.pending(), 0, "replayed ticks are never emitted again");
    assert_eq!(
        ex.positions().get(&0).map(|p| p.next_offset),
        Some(4),
        "positions stay past the replay"
    );
    let step = ex.step(input(&ticks[4..], 4, &mut b)).await.unwrap();
    assert!(step.late.is_empty(), "{:?}", step.late);
    let end = ex.flush(true).await.unwrap();
    assert_eq!(step.emitted() + end.emitted(), 1);
    let got = [step.features, end.features]
        .into_iter()
        .flatten()
        .next()
        .unwrap();
    let want = want.slice(4, 1);
    for (i, f) in want.schema().fields().iter().enumerate() {
        assert_eq!(got.column(i), want.column(i), "{}", f.name());
    }
}
