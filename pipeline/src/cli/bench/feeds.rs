//! `stockanomaly bench --feeds`: how fast each feed's WebSocket JSON becomes
//! Arrow tick batches, and how fast those ticks load into PostgreSQL's tick
//! store by COPY ([`write_ticks`]) against row-by-row `INSERT` (the Python
//! prototype's way: psycopg2 `execute` per row).
//!
//! Frames are generated in memory before any timing, shaped as the feeds
//! send them (JSON arrays of many messages, a few symbols, quotes between
//! the trades for Alpaca and Polygon; Finnhub's `{"type":"trade","data":[..]}`
//! envelopes). The timed loop is the decoder's own work: `decode` per frame
//! and `finish` at micro-batch boundaries.
//!
//! The PostgreSQL part writes into `ticks` on a day of its own
//! ([`BENCH_DAY`]) with its own `source` ([`BENCH_SOURCE`]), refuses to run
//! if that day holds anyone else's ticks, and deletes its rows (and drops the
//! day's partition if it created it) whether it succeeded or not.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use chrono::{DateTime, NaiveDate, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_postgres::Client;

use super::super::output::{count, rate};
use super::super::UsageError;
use crate::sinks::postgres::{migrate, write_ticks, StoreColumns, COPY_COLUMNS};
use crate::sources::alpaca::AlpacaDecoder;
use crate::sources::feed::FrameDecoder;
use crate::sources::finnhub::FinnhubDecoder;
use crate::sources::polygon::PolygonDecoder;
use crate::tick::{col, Validator};

/// Symbols the generated trades rotate through.
const SYMBOLS: [&str; 8] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "SPY",
];

/// Messages per generated frame (Alpaca and Polygon batch up to about this
/// many into one frame when the market is busy).
const MESSAGES_PER_FRAME: usize = 100;

/// One quote after every this many trades (Alpaca and Polygon frames with
/// quotes).
const TRADES_PER_QUOTE: u64 = 4;

/// `finish` (one Arrow batch) after every this many frames, as the stream
/// loop does at its micro-batch boundary.
const FRAMES_PER_BATCH: usize = 100;

/// The day the benchmark's ticks are stamped on, far from any real data.
pub(crate) const BENCH_DAY: &str = "2000-01-03";

/// 2000-01-03T14:30:00Z (the day's US open), µs.
const OPEN_US: i64 = 946_909_800_000_000;

/// The trading session the ticks are spread over (6.5 hours), µs.
const SESSION_US: i64 = 23_400_000_000;

/// The `source` of the benchmark's rows in `ticks`.
pub(crate) const BENCH_SOURCE: &str = "stockanomaly-bench";

/// Alpaca's per-core decoding target (issue #7), ticks/s.
const ALPACA_TARGET: f64 = 2e6;

/// COPY's target (issue #7), rows/s.
const COPY_TARGET: f64 = 3e5;

/// What `--feeds` measures.
#[derive(Debug, Clone)]
pub(crate) struct FeedsOptions {
    /// Trades per feed, also the rows loaded by COPY.
    pub ticks: u64,
    /// Rows loaded by row-by-row INSERT.
    pub insert_rows: u64,
    /// PostgreSQL URL; the load benchmark is skipped without one.
    pub database_url: Option<String>,
}

/// Which feed's frames, and whether quotes are mixed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Alpaca { quotes: bool },
    Polygon,
    Finnhub,
}

impl Layout {
    fn label(self) -> &'static str {
        match self {
            Self::Alpaca { quotes: false } => "alpaca, trades only",
            Self::Alpaca { quotes: true } => "alpaca, trades + quotes",
            Self::Polygon => "polygon, trades + quotes",
            Self::Finnhub => "finnhub, trades",
        }
    }

    fn quotes(self) -> bool {
        matches!(self, Self::Alpaca { quotes: true } | Self::Polygon)
    }
}

/// Generated frames of one feed.
struct Frames {
    frames: Vec<Vec<u8>>,
    trades: u64,
    messages: u64,
    bytes: u64,
}

/// A generated trade or quote, before it is written as a feed's JSON.
struct Msg {
    symbol: &'static str,
    /// Nanoseconds since the epoch (Alpaca keeps them; the others send ms).
    ts_ns: i64,
    price: f64,
    size: u32,
    id: u64,
}

/// Generates frames holding `trades` trades (and quotes, if the layout has
/// them), reproducibly (seeded).
fn generate(layout: Layout, trades: u64) -> Frames {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut prices: [f64; SYMBOLS.len()] = [185.0, 370.0, 480.0, 150.0, 140.0, 350.0, 240.0, 470.0];
    let step_ns = (SESSION_US * 1000 / trades.max(1) as i64).max(1_000);
    let mut out = Frames {
        frames: Vec::new(),
        trades: 0,
        messages: 0,
        bytes: 0,
    };
    let mut frame = String::new();
    let mut in_frame = 0usize;
    let mut ts_ns = OPEN_US * 1000;
    let mut id = 52_983_525_029_000u64;
    while out.trades < trades {
        let k = rng.random_range(0..SYMBOLS.len());
        // A random walk in cents, never below a dollar.
        let cents = (prices[k] * 100.0).round() + f64::from(rng.random_range(-3i32..=3));
        prices[k] = (cents / 100.0).max(1.0);
        ts_ns += step_ns + rng.random_range(0..1000);
        id += 1;
        let msg = Msg {
            symbol: SYMBOLS[k],
            ts_ns,
            price: prices[k],
            size: rng.random_range(1..=500),
            id,
        };
        if layout.quotes() && out.trades.is_multiple_of(TRADES_PER_QUOTE) {
            let spread = f64::from(rng.random_range(1u32..=4)) / 100.0;
            push_message(&mut frame, &mut in_frame, layout, |f| {
                write_quote(f, layout, &msg, spread, &mut rng)
            });
            out.messages += 1;
            if in_frame == MESSAGES_PER_FRAME {
                close_frame(&mut out, &mut frame, &mut in_frame, layout);
            }
        }
        push_message(&mut frame, &mut in_frame, layout, |f| {
            write_trade(f, layout, &msg)
        });
        out.messages += 1;
        out.trades += 1;
        if in_frame == MESSAGES_PER_FRAME {
            close_frame(&mut out, &mut frame, &mut in_frame, layout);
        }
    }
    if in_frame > 0 {
        close_frame(&mut out, &mut frame, &mut in_frame, layout);
    }
    out
}

/// Opens the frame's envelope if it is empty, adds a separator otherwise,
/// then writes one message.
fn push_message(
    frame: &mut String,
    in_frame: &mut usize,
    layout: Layout,
    write: impl FnOnce(&mut String),
) {
    if *in_frame == 0 {
        frame.push_str(match layout {
            Layout::Finnhub => r#"{"type":"trade","data":["#,
            _ => "[",
        });
    } else {
        frame.push(',');
    }
    write(frame);
    *in_frame += 1;
}

fn close_frame(out: &mut Frames, frame: &mut String, in_frame: &mut usize, layout: Layout) {
    frame.push_str(match layout {
        Layout::Finnhub => "]}",
        _ => "]",
    });
    out.bytes += frame.len() as u64;
    out.frames.push(std::mem::take(frame).into_bytes());
    *in_frame = 0;
}

/// `2000-01-03T14:30:00.123456789Z`.
fn rfc3339_ns(f: &mut String, ts_ns: i64) {
    let secs = ts_ns.div_euclid(1_000_000_000);
    let nanos = ts_ns.rem_euclid(1_000_000_000);
    let t = DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or_default();
    let _ = write!(f, "{}.{nanos:09}Z", t.format("%Y-%m-%dT%H:%M:%S"));
}

fn write_trade(f: &mut String, layout: Layout, m: &Msg) {
    let (sym, p, s, id) = (m.symbol, m.price, m.size, m.id);
    match layout {
        Layout::Alpaca { .. } => {
            let _ = write!(
                f,
                r#"{{"T":"t","S":"{sym}","i":{id},"x":"V","p":{p:.2},"s":{s},"c":["@"],"z":"C","t":""#
            );
            rfc3339_ns(f, m.ts_ns);
            f.push_str("\"}");
        }
        Layout::Polygon => {
            let _ = write!(
                f,
                r#"{{"ev":"T","sym":"{sym}","x":12,"i":"{id}","z":3,"p":{p:.2},"s":{s},"c":[37],"t":{},"q":{id}}}"#,
                m.ts_ns / 1_000_000
            );
        }
        Layout::Finnhub => {
            let _ = write!(
                f,
                r#"{{"s":"{sym}","p":{p:.2},"t":{},"v":{s},"c":["1","12"]}}"#,
                m.ts_ns / 1_000_000
            );
        }
    }
}

/// A quote around the trade's price, stamped just before it.
fn write_quote(f: &mut String, layout: Layout, m: &Msg, spread: f64, rng: &mut ChaCha8Rng) {
    let sym = m.symbol;
    let bid = (m.price - spread / 2.0).max(0.01);
    let ask = bid + spread;
    let (bs, as_) = (rng.random_range(1u32..=20), rng.random_range(1u32..=20));
    let ts_ns = m.ts_ns - 500;
    match layout {
        Layout::Alpaca { .. } => {
            let _ = write!(
                f,
                r#"{{"T":"q","S":"{sym}","bx":"V","bp":{bid:.2},"bs":{bs},"ax":"V","ap":{ask:.2},"as":{as_},"c":["R"],"z":"C","t":""#
            );
            rfc3339_ns(f, ts_ns);
            f.push_str("\"}");
        }
        Layout::Polygon | Layout::Finnhub => {
            let _ = write!(
                f,
                r#"{{"ev":"Q","sym":"{sym}","bx":4,"bp":{bid:.2},"bs":{bs},"ax":7,"ap":{ask:.2},"as":{as_},"c":0,"i":[604],"t":{},"q":{},"z":3}}"#,
                ts_ns / 1_000_000,
                m.id
            );
        }
    }
}

/// One feed's decoding, timed.
struct Decoded {
    took: Duration,
    ticks: Vec<RecordBatch>,
}

/// Decodes every frame on this thread, `finish` every [`FRAMES_PER_BATCH`]
/// frames; only the decoder's work is timed. Fails if the decoder refused
/// anything or produced another number of ticks (a generator bug, not a
/// measurement).
fn decode_all<D: FrameDecoder>(mut decoder: D, frames: &Frames) -> anyhow::Result<Decoded> {
    let mut events = Vec::with_capacity(16);
    let mut batches = Vec::with_capacity(frames.frames.len() / FRAMES_PER_BATCH + 1);
    let started = Instant::now();
    for (i, frame) in frames.frames.iter().enumerate() {
        decoder.decode(frame, &mut events);
        if (i + 1).is_multiple_of(FRAMES_PER_BATCH) {
            batches.push(decoder.finish());
        }
    }
    batches.push(decoder.finish());
    let took = started.elapsed();

    let feed = decoder.feed();
    if let Some(r) = batches.iter().flat_map(|b| &b.rejects).next() {
        anyhow::bail!("{feed}: the decoder refused a generated message (a benchmark bug): {r}");
    }
    if let Some(e) = events.first() {
        anyhow::bail!("{feed}: a generated frame raised {e:?} (a benchmark bug)");
    }
    let ticks: Vec<RecordBatch> = batches.into_iter().map(|b| b.ticks).collect();
    let n: u64 = ticks.iter().map(|b| b.num_rows() as u64).sum();
    if n != frames.trades {
        anyhow::bail!(
            "{feed}: {} ticks decoded from {} generated trades (a benchmark bug)",
            count(n),
            count(frames.trades)
        );
    }
    Ok(Decoded { took, ticks })
}

/// Runs the benchmark and prints its figures.
pub(crate) async fn run(opts: FeedsOptions) -> anyhow::Result<()> {
    if opts.ticks == 0 {
        return Err(UsageError("--ticks must be at least 1".into()).into());
    }
    if opts.insert_rows == 0 {
        return Err(UsageError("--insert-rows must be at least 1".into()).into());
    }
    println!(
        "feed decoding: {} trades per feed on one thread, JSON frames of {MESSAGES_PER_FRAME} \
         messages over {} symbols (a quote after every {TRADES_PER_QUOTE} trades where marked), \
         Arrow batch every {FRAMES_PER_BATCH} frames",
        count(opts.ticks),
        SYMBOLS.len()
    );
    let layouts = [
        Layout::Alpaca { quotes: false },
        Layout::Alpaca { quotes: true },
        Layout::Polygon,
        Layout::Finnhub,
    ];
    let mut for_postgres = None;
    for layout in layouts {
        let frames = generate(layout, opts.ticks);
        let validator = Validator::new();
        let decoded = match layout {
            Layout::Alpaca { .. } => decode_all(AlpacaDecoder::new(validator), &frames)?,
            Layout::Polygon => decode_all(PolygonDecoder::new(validator), &frames)?,
            Layout::Finnhub => decode_all(FinnhubDecoder::new(validator), &frames)?,
        };
        let secs = decoded.took.as_secs_f64().max(1e-9);
        let per_s = frames.trades as f64 / secs;
        let target = match layout {
            Layout::Alpaca { quotes: false } => format!(
                "  (target >= 2M/s per core: {})",
                if per_s >= ALPACA_TARGET {
                    "met"
                } else {
                    "NOT met"
                }
            ),
            _ => String::new(),
        };
        println!(
            "  {:<25} {:>12} ticks {:>8} msgs in {:>7.3}s  {:>9} ticks/s  {:>7.1} MB/s{target}",
            layout.label(),
            count(frames.trades),
            count_short(frames.messages),
            secs,
            rate(frames.trades as f64, decoded.took).trim_end_matches("/s"),
            frames.bytes as f64 / 1e6 / secs,
        );
        if layout == (Layout::Alpaca { quotes: true }) {
            for_postgres = Some(decoded.ticks);
        }
    }

    let Some(url) = opts.database_url.as_deref().filter(|u| !u.is_empty()) else {
        println!(
            "postgres load: skipped, no database URL (set --database-url or DATABASE_URL to \
             compare COPY with row-by-row INSERT)"
        );
        return Ok(());
    };
    let batches = for_postgres.unwrap_or_default();
    let Some(first) = batches.first() else {
        anyhow::bail!("no decoded Alpaca ticks to load (a benchmark bug)");
    };
    let ticks = arrow::compute::concat_batches(&first.schema(), &batches)
        .context("cannot join the decoded batches")?;
    let ticks = with_source(&ticks, BENCH_SOURCE)?;
    load(url, &ticks, opts.insert_rows).await
}

/// `1234567` → `1.2M` (columns stay narrow).
fn count_short(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 10_000 {
        format!("{:.0}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// The batch with every `source` set to `source`.
fn with_source(batch: &RecordBatch, source: &str) -> anyhow::Result<RecordBatch> {
    let i = batch.schema().index_of(col::SOURCE)?;
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[i] = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
        source,
        batch.num_rows(),
    )));
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Connects and migrates, then times both loads and cleans up after them
/// whatever happened.
async fn load(url: &str, ticks: &RecordBatch, insert_rows: u64) -> anyhow::Result<()> {
    let mut db = super::super::db::connect(url).await?;
    let applied = migrate(&mut db).await?;
    if !applied.is_empty() {
        println!("migrated the database: {}", applied.join(", "));
    }
    let day = NaiveDate::parse_from_str(BENCH_DAY, "%Y-%m-%d")?;
    let partition = format!("ticks_{}", day.format("%Y%m%d"));
    let leftovers = delete_bench_rows(&db).await?;
    if leftovers > 0 {
        println!(
            "  note: deleted {} {BENCH_SOURCE} rows left by an interrupted run",
            count(leftovers)
        );
    }
    let (lo, hi) = day_bounds()?;
    let others: i64 = db
        .query_one(
            "SELECT count(*) FROM ticks WHERE ts >= $1 AND ts < $2",
            &[&lo, &hi],
        )
        .await
        .context("cannot count the ticks of the benchmark's day")?
        .get(0);
    if others > 0 {
        anyhow::bail!(
            "table ticks already holds ticks of {BENCH_DAY} not written by the benchmark ({}); it \
             loads only into a day nobody else uses, so it leaves this database alone (use \
             another one)",
            count(others as u64)
        );
    }
    let existed = partition_exists(&db, &partition).await?;

    let outcome = load_both(&mut db, ticks, insert_rows, day).await;
    let cleanup = clean_up(&db, &partition, existed).await;
    match (outcome, cleanup) {
        (Ok(()), Ok(note)) => {
            println!("  cleaned up: {note}");
            Ok(())
        }
        (Ok(()), Err(e)) | (Err(e), Err(_)) => Err(e.context(format!(
            "the benchmark's rows may remain; remove them with: DELETE FROM ticks WHERE source = \
             '{BENCH_SOURCE}'"
        ))),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// The benchmark day's first and next UTC midnights.
fn day_bounds() -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let day = NaiveDate::parse_from_str(BENCH_DAY, "%Y-%m-%d")?;
    let lo = day.and_time(chrono::NaiveTime::MIN).and_utc();
    Ok((lo, lo + chrono::Duration::days(1)))
}

/// Deletes the benchmark's rows (its source, its day) from `ticks`.
async fn delete_bench_rows(db: &Client) -> anyhow::Result<u64> {
    let (lo, hi) = day_bounds()?;
    db.execute(
        "DELETE FROM ticks WHERE source = $1 AND ts >= $2 AND ts < $3",
        &[&BENCH_SOURCE, &lo, &hi],
    )
    .await
    .context("cannot delete the benchmark's rows from ticks")
}

/// Whether the table `partition` exists.
async fn partition_exists(db: &Client, partition: &str) -> anyhow::Result<bool> {
    Ok(db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&partition])
        .await
        .context("cannot look the day's partition up")?
        .get(0))
}

/// Deletes the benchmark's rows; drops the day's partition if the
/// benchmark created it and it is empty.
async fn clean_up(db: &Client, partition: &str, existed: bool) -> anyhow::Result<String> {
    let deleted = delete_bench_rows(db).await?;
    let mut note = format!("{} {BENCH_SOURCE} rows deleted", count(deleted));
    if !existed && partition_exists(db, partition).await? {
        let empty: bool = db
            .query_one(
                &format!("SELECT NOT EXISTS (SELECT 1 FROM {partition})"),
                &[],
            )
            .await
            .with_context(|| format!("cannot read {partition}"))?
            .get(0);
        if empty {
            db.batch_execute(&format!("DROP TABLE {partition}"))
                .await
                .with_context(|| format!("cannot drop {partition}"))?;
            let _ = write!(note, ", partition {partition} dropped");
        }
    }
    Ok(note)
}

/// Row-by-row INSERT of a sample first (into the day's partition, created
/// untimed), its rows deleted, then COPY of every tick; prints both.
async fn load_both(
    db: &mut Client,
    ticks: &RecordBatch,
    insert_rows: u64,
    day: NaiveDate,
) -> anyhow::Result<()> {
    let n = ticks.num_rows() as u64;
    let sample = insert_rows.min(n);
    println!(
        "postgres load: {} decoded Alpaca ticks of {BENCH_DAY} into table ticks (source \
         {BENCH_SOURCE:?}), INSERT on the first {}",
        count(n),
        count(sample)
    );
    db.query_one("SELECT stockanomaly_ensure_tick_partition($1)", &[&day])
        .await
        .context("cannot create the benchmark day's partition")?;

    let took = insert_rows_one_by_one(db, &ticks.slice(0, sample as usize)).await?;
    let insert_rate = sample as f64 / took.as_secs_f64().max(1e-9);
    delete_bench_rows(db).await?;

    let started = Instant::now();
    let stats = write_ticks(db, ticks).await?;
    let copy_took = started.elapsed();
    if stats.inserted != n {
        anyhow::bail!(
            "COPY stored {} of {} ticks (a benchmark bug: the day should have been empty)",
            count(stats.inserted),
            count(n)
        );
    }
    let copy_rate = n as f64 / copy_took.as_secs_f64().max(1e-9);
    println!(
        "  COPY   {:>12} rows in {:>7.3}s  {:>9} rows/s  (target >= 300k/s: {})",
        count(n),
        copy_took.as_secs_f64(),
        rate(n as f64, copy_took).trim_end_matches("/s"),
        if copy_rate >= COPY_TARGET {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "         write_ticks: binary COPY into a staging table, INSERT .. ON CONFLICT DO NOTHING; \
         one transaction"
    );
    println!(
        "  INSERT {:>12} rows in {:>7.3}s  {:>9} rows/s",
        count(sample),
        took.as_secs_f64(),
        rate(sample as f64, took).trim_end_matches("/s"),
    );
    println!(
        "         one parameterised INSERT per row, each awaited (a round trip per row), in one \
         transaction committed at the end (psycopg2's default, no autocommit)"
    );
    println!(
        "  COPY / INSERT: {:.1}x the rows/s",
        copy_rate / insert_rate.max(1e-9)
    );
    Ok(())
}

/// The prototype's load: one `INSERT ... VALUES` per row, each awaited
/// before the next (no pipelining), inside one transaction committed at the
/// end (psycopg2's default: no autocommit). Timed from BEGIN to COMMIT.
async fn insert_rows_one_by_one(db: &mut Client, ticks: &RecordBatch) -> anyhow::Result<Duration> {
    let cols = StoreColumns::of(ticks)?;
    let stmt = db
        .prepare(&format!(
            "INSERT INTO ticks ({COPY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13)"
        ))
        .await
        .context("cannot prepare the INSERT")?;
    let started = Instant::now();
    let tx = db.transaction().await.context("cannot begin")?;
    for i in 0..ticks.num_rows() {
        let row = cols.row(i)?;
        tx.execute(&stmt, &row.params())
            .await
            .with_context(|| format!("INSERT of row {i} failed"))?;
    }
    tx.commit().await.context("cannot commit the INSERTs")?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};

    #[test]
    fn the_open_is_the_bench_days_us_open() {
        let day = NaiveDate::parse_from_str(BENCH_DAY, "%Y-%m-%d").unwrap();
        let open = day
            .and_hms_opt(14, 30, 0)
            .unwrap()
            .and_utc()
            .timestamp_micros();
        assert_eq!(open, OPEN_US);
    }

    #[test]
    fn every_layout_decodes_to_its_trades_without_rejects() {
        for layout in [
            Layout::Alpaca { quotes: false },
            Layout::Alpaca { quotes: true },
            Layout::Polygon,
            Layout::Finnhub,
        ] {
            let frames = generate(layout, 1_234);
            assert_eq!(frames.trades, 1_234);
            let quotes = if layout.quotes() {
                1_234u64.div_ceil(4)
            } else {
                0
            };
            assert_eq!(frames.messages, 1_234 + quotes, "{layout:?}");
            assert_eq!(
                frames.frames.len() as u64,
                frames.messages.div_ceil(MESSAGES_PER_FRAME as u64),
                "{layout:?}"
            );
            let v = Validator::new();
            let decoded = match layout {
                Layout::Alpaca { .. } => decode_all(AlpacaDecoder::new(v), &frames),
                Layout::Polygon => decode_all(PolygonDecoder::new(v), &frames),
                Layout::Finnhub => decode_all(FinnhubDecoder::new(v), &frames),
            }
            .unwrap();
            let ticks =
                arrow::compute::concat_batches(&decoded.ticks[0].schema(), &decoded.ticks).unwrap();
            assert_eq!(ticks.num_rows(), 1_234);
            let bid = ticks
                .column_by_name(col::BID)
                .unwrap()
                .as_primitive::<Float64Type>();
            if layout.quotes() {
                // A symbol's trades before its first quote have no bid.
                assert!(bid.null_count() < 1_234 / 2, "{layout:?}");
            } else {
                assert_eq!(bid.null_count(), 1_234, "{layout:?}");
            }
            let ts = ticks
                .column_by_name(col::TS)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            let (lo, hi) = (ts.values()[0], ts.values()[1_233]);
            assert!(
                lo >= OPEN_US && hi < OPEN_US + SESSION_US + 60_000_000,
                "{lo}..{hi}"
            );
        }
    }

    #[test]
    fn the_source_column_is_replaced() {
        let frames = generate(Layout::Alpaca { quotes: true }, 10);
        let decoded = decode_all(AlpacaDecoder::new(Validator::new()), &frames).unwrap();
        let b = with_source(&decoded.ticks[0], BENCH_SOURCE).unwrap();
        let src = b.column_by_name(col::SOURCE).unwrap().as_string::<i32>();
        assert!(src.iter().all(|s| s == Some(BENCH_SOURCE)));
        assert_eq!(b.num_rows(), 10);
    }
}
