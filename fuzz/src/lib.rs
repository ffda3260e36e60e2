//! Drivers shared by the fuzz targets: each feeds arbitrary bytes through a
//! decoder's public entry point, the one production calls, and drops what
//! comes out. Nothing is asserted about the output: a target fails only if
//! the decoder panics, hangs or allocates without bound (libFuzzer's
//! `-timeout` and `-rss_limit_mb` catch the last two).
//!
//! `pipeline/tests/fuzz_decoders.rs` includes this file as a module and runs
//! the same drivers on stable, over the seed corpus and seeded random
//! mutations of it: so it uses nothing but the `stockanomaly` library.

use std::io::Write;
use std::path::PathBuf;

use stockanomaly::sources::alpaca::rest::{AlpacaHistory, AlpacaHistoryDecoder};
use stockanomaly::sources::alpaca::AlpacaDecoder;
use stockanomaly::sources::csv::{CsvFormat, CsvSource};
use stockanomaly::sources::feed::FrameDecoder;
use stockanomaly::sources::finnhub::FinnhubDecoder;
use stockanomaly::sources::kafka::market::decode_market;
use stockanomaly::sources::kafka::JsonTickDecoder;
use stockanomaly::sources::polygon::rest::PolygonAggsDecoder;
use stockanomaly::sources::polygon::PolygonDecoder;
use stockanomaly::tick::{TickBuilder, Validator};

/// The clock every decoder judges times against (2025-03-03T14:30:01Z), so
/// that a run is reproducible.
pub const NOW_US: i64 = 1_741_012_201_000_000;

/// Byte that separates frames (or pages) in one fuzz input: never valid in
/// UTF-8, so it never occurs inside a meaningful frame. An empty piece (two
/// separators in a row) ends a micro-batch (`finish`).
pub const SEP: u8 = 0xff;

/// A Kafka message payload through the JSON tick decoder and into the tick
/// builder, as `KafkaSource` does with each message.
pub fn kafka_json(data: &[u8]) {
    let mut decoder = JsonTickDecoder::default();
    let mut builder = TickBuilder::with_validator("kafka:ticks", Validator::with_now(NOW_US));
    for payload in data.split(|&b| b == SEP) {
        if let Ok(rec) = decoder.decode(payload) {
            let _ = builder.push(&rec);
        }
    }
    let _ = builder.finish();
}

/// WebSocket frames through a feed's frame decoder, with a micro-batch
/// boundary at each empty piece and at the end.
pub fn frames(decoder: &mut dyn FrameDecoder, data: &[u8]) {
    let mut events = Vec::new();
    // Whether a frame came since the last `finish`: a run of separators is
    // one boundary (each `finish` builds two Arrow batches, and inputs of
    // nothing but separators would be slow to no purpose).
    let mut pending = false;
    for frame in data.split(|&b| b == SEP) {
        if frame.is_empty() {
            if pending {
                let _ = decoder.finish();
                pending = false;
            }
        } else {
            decoder.decode(frame, &mut events);
            pending = true;
        }
        events.clear();
    }
    let _ = decoder.finish();
    let _ = decoder.counters();
}

/// Alpaca's WebSocket frames.
pub fn alpaca_frames(data: &[u8]) {
    frames(&mut AlpacaDecoder::new(Validator::with_now(NOW_US)), data);
}

/// Polygon's WebSocket frames.
pub fn polygon_frames(data: &[u8]) {
    frames(&mut PolygonDecoder::new(Validator::with_now(NOW_US)), data);
}

/// Finnhub's WebSocket frames.
pub fn finnhub_frames(data: &[u8]) {
    frames(&mut FinnhubDecoder::new(Validator::with_now(NOW_US)), data);
}

/// Pages of one Alpaca history request (`kind`), as `ingest history` reads
/// them.
pub fn alpaca_rest(kind: AlpacaHistory, data: &[u8]) {
    let mut d = AlpacaHistoryDecoder::new(kind, Validator::with_now(NOW_US));
    for page in data.split(|&b| b == SEP) {
        let _ = d.decode_page(page);
    }
    let _ = d.finish();
}

/// Pages of one Polygon aggregates request.
pub fn polygon_rest(data: &[u8]) {
    let mut d = PolygonAggsDecoder::new(Validator::with_now(NOW_US));
    for page in data.split(|&b| b == SEP) {
        let _ = d.decode_page(page);
    }
    let _ = d.finish();
}

/// A `market` topic message (an Arrow IPC stream).
pub fn market_ipc(data: &[u8]) {
    let _ = decode_market(data);
}

/// Where CSV inputs are written: `CsvSource` opens files by path (to tell a
/// zip from a CSV and to stream), so each input is written to a file first.
/// One file per process and thread (the stable test runs drivers on
/// several threads), on tmpfs when there is one.
fn csv_path() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let thread: String = format!("{:?}", std::thread::current().id())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    dir.join(format!(
        "stockanomaly-fuzz-{}-{thread}.csv",
        std::process::id()
    ))
}

/// A file (CSV, or a zip holding one) read to its end in `format`, in small
/// batches so that batch boundaries are crossed too.
pub fn csv(format: CsvFormat, data: &[u8]) {
    let path = csv_path();
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(data));
    if written.is_ok() {
        if let Ok(source) = CsvSource::open(&path, format, Validator::with_now(NOW_US)) {
            let mut source = source.with_batch_rows(16);
            // Every call consumes at least one record or ends the file.
            while let Ok(Some(_)) = source.read_batch() {}
        }
    }
    // A failed write is not the decoder's fault: nothing to test.
    let _ = std::fs::remove_file(&path);
}
