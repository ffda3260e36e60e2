//! Alpaca frames and pages in the documented shapes (feeds.md §1; the
//! frames are ILLUSTRATIVE, written from the documentation, not captured).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type, UInt64Type};

use super::rest::{AlpacaHistory, AlpacaHistoryDecoder};
use super::*;
use crate::sources::feed::{amend_col, PageError};
use crate::tick::{col, RejectReason};

/// 2025-03-03T14:30:01Z.
const T0: i64 = 1_741_012_201_000_000;

fn decoder() -> AlpacaDecoder {
    AlpacaDecoder::new(Validator::with_now(T0))
}

fn decode(d: &mut AlpacaDecoder, frame: &str) -> Vec<FeedEvent> {
    let mut ev = Vec::new();
    d.decode(frame.as_bytes(), &mut ev);
    ev
}

fn f64s(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}

fn strs(b: &RecordBatch, name: &str) -> Vec<String> {
    b.column_by_name(name)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or("").to_owned())
        .collect()
}

fn ts(b: &RecordBatch) -> Vec<i64> {
    b.column_by_name(col::TS)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec()
}

#[test]
fn illustrative_trade_and_cancel_in_one_frame() {
    let mut d = decoder();
    let ev = decode(
        &mut d,
        r#"[{"T":"t","S":"AAPL","i":4211,"x":"V","p":189.42,"s":100,"c":["@"],"z":"C","t":"2025-03-03T14:30:01.123456789Z"},{"T":"x","S":"AAPL","i":4209,"x":"V","p":189.4,"s":50,"a":"C","z":"C","t":"2025-03-03T14:30:01.2Z"}]"#,
    );
    assert!(ev.is_empty());
    let b = d.finish();
    assert!(b.rejects.is_empty(), "{:?}", b.rejects);
    assert_eq!(ts(&b.ticks), [T0 + 123_456], "ns truncated to µs");
    assert_eq!(f64s(&b.ticks, col::PRICE), [Some(189.42)]);
    assert_eq!(f64s(&b.ticks, col::VOLUME), [Some(100.0)]);
    assert_eq!(strs(&b.ticks, col::SOURCE), ["alpaca"]);
    let a = &b.amendments;
    assert_eq!(a.num_rows(), 1);
    assert_eq!(strs(a, amend_col::KIND), ["cancel"]);
    assert_eq!(strs(a, amend_col::EXCHANGE), ["V"]);
    assert_eq!(f64s(a, amend_col::PRICE), [Some(189.4)]);
    assert_eq!(f64s(a, amend_col::VOLUME), [Some(50.0)]);
    let id = a
        .column_by_name(amend_col::TRADE_ID)
        .unwrap()
        .as_primitive::<UInt64Type>();
    assert_eq!(id.value(0), 4209);
    assert_eq!(ts(a), [T0 + 200_000]);
    assert_eq!(d.counters().trades, 1);
    assert_eq!(d.counters().amendments, 1);
}

#[test]
fn handshake_and_subscription_events() {
    let mut d = decoder();
    assert_eq!(
        decode(&mut d, r#"[{"T":"success","msg":"connected"}]"#),
        [FeedEvent::Connected]
    );
    assert_eq!(
        decode(&mut d, r#"[{"T":"success","msg":"authenticated"}]"#),
        [FeedEvent::Authenticated]
    );
    let sub = r#"{"T":"subscription","trades":["AAPL"],"quotes":["AMD","CLDR"],"bars":["*"],"updatedBars":[],"dailyBars":["VOO"],"statuses":["*"],"lulds":[],"corrections":["AAPL"],"cancelErrors":["AAPL"]}"#;
    assert_eq!(
        decode(&mut d, &format!("[{sub}]")),
        [FeedEvent::Subscribed {
            detail: sub.to_owned()
        }]
    );
    assert_eq!(d.counters().controls, 3);
    let b = d.finish();
    assert_eq!(b.ticks.num_rows(), 0);
    assert!(b.rejects.is_empty());
}

#[test]
fn error_codes_are_classified_with_their_cause() {
    let mut d = decoder();
    let fault = |d: &mut AlpacaDecoder, code: i64, msg: &str| -> FeedFault {
        let ev = decode(
            d,
            &format!(r#"[{{"T":"error","code":{code},"msg":"{msg}"}}]"#),
        );
        match ev.as_slice() {
            [FeedEvent::Fault(f)] => f.clone(),
            other => panic!("{code}: {other:?}"),
        }
    };
    for (code, msg) in [
        (400, "invalid syntax"),
        (401, "not authenticated"),
        (402, "auth failed"),
        (405, "symbol limit exceeded"),
        (409, "insufficient subscription"),
        (410, "invalid subscribe action for this feed"),
        (411, "invalid subscription"),
    ] {
        let f = fault(&mut d, code, msg);
        assert_eq!(f.action, FaultAction::Fatal, "{code}");
        assert_eq!(f.code, Some(code));
        let text = f.to_string();
        assert!(
            text.contains(msg) && text.contains(&code.to_string()),
            "{text}"
        );
    }
    let auth = fault(&mut d, 402, "auth failed").to_string();
    assert!(
        auth.contains("APCA_API_KEY_ID") && auth.contains("APCA_API_SECRET_KEY"),
        "{auth}"
    );
    assert!(fault(&mut d, 409, "insufficient subscription")
        .to_string()
        .contains("--feed iex"));
    for code in [404, 406, 407, 429, 500, 599] {
        let f = fault(&mut d, code, "x");
        assert!(
            matches!(f.action, FaultAction::Reconnect { .. }),
            "{code}: {f:?}"
        );
    }
    match fault(&mut d, 406, "connection limit exceeded").action {
        FaultAction::Reconnect { min_delay } => assert!(min_delay >= Duration::from_secs(10)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fault(&mut d, 403, "already authenticated").action,
        FaultAction::Continue
    );
    // No code at all still classifies (as a retry), never panics.
    let ev = decode(&mut d, r#"[{"T":"error","msg":"odd"}]"#);
    assert_eq!(
        ev[0].action(),
        FaultAction::Reconnect {
            min_delay: Duration::from_secs(5)
        }
    );
}

#[test]
fn mixed_array_quotes_bars_and_updated_bars() {
    let mut d = decoder();
    decode(
        &mut d,
        r#"[
        {"T":"t","S":"AAPL","i":1,"x":"V","p":189.40,"s":10,"c":["@"],"z":"C","t":"2025-03-03T14:29:00Z"},
        {"T":"q","S":"AAPL","ax":"V","ap":189.45,"as":3,"bx":"V","bp":189.41,"bs":2,"c":["R"],"t":"2025-03-03T14:29:00.5Z","z":"C"},
        {"T":"t","S":"AAPL","i":2,"x":"V","p":189.44,"s":5,"c":["@"],"z":"C","t":"2025-03-03T14:29:01Z"},
        {"T":"t","S":"MSFT","i":3,"x":"V","p":412.0,"s":1,"c":["@"],"z":"C","t":"2025-03-03T14:29:01Z"},
        {"T":"b","S":"AAPL","o":189.3,"h":189.5,"l":189.2,"c":189.44,"v":15,"t":"2025-03-03T14:28:00Z","n":2,"vw":189.42},
        {"T":"u","S":"AAPL","o":189.3,"h":189.6,"l":189.2,"c":189.45,"v":17,"t":"2025-03-03T14:28:00Z","n":3,"vw":189.43},
        {"T":"d","S":"AAPL","o":180,"h":190,"l":179,"c":189,"v":1e6,"t":"2025-03-03T05:00:00Z","n":9,"vw":185},
        {"T":"s","S":"AAPL","sc":"T","sm":"Trading","rc":"","rm":"","t":"2025-03-03T14:29:00Z","z":"C"},
        {"T":"newthing","S":"AAPL"}
    ]"#,
    );
    let b = d.finish();
    assert!(b.rejects.is_empty(), "{:?}", b.rejects);
    let t = &b.ticks;
    // Three trades, then the bar (released at finish) with the `u` values.
    assert_eq!(strs(t, col::SYMBOL), ["AAPL", "AAPL", "MSFT", "AAPL"]);
    assert_eq!(f64s(t, col::BID), [None, Some(189.41), None, None]);
    assert_eq!(f64s(t, col::ASK_SIZE), [None, Some(3.0), None, None]);
    assert_eq!(f64s(t, col::PRICE)[3], Some(189.45));
    assert_eq!(f64s(t, col::HIGH), [None, None, None, Some(189.6)]);
    assert_eq!(f64s(t, col::VOLUME)[3], Some(17.0));
    assert_eq!(
        ts(t)[3],
        T0 - 121_000_000,
        "bars are stamped at their start"
    );
    assert_eq!(b.amendments.num_rows(), 0, "replaced while pending");
    let c = d.counters();
    assert_eq!((c.trades, c.quotes, c.bars, c.bars_replaced), (3, 1, 1, 1));
    assert_eq!(c.skipped.get("d") + c.skipped.get("s"), 2);
    assert_eq!(c.unknown.get("newthing"), 1);
    assert_eq!(c.messages, 9);

    // A later `u` for the emitted minute is an amendment, not a second tick.
    decode(
        &mut d,
        r#"[{"T":"u","S":"AAPL","o":189.3,"h":189.7,"l":189.2,"c":189.5,"v":20,"t":"2025-03-03T14:28:00Z","n":4,"vw":189.44}]"#,
    );
    let b = d.finish();
    assert_eq!(b.ticks.num_rows(), 0);
    let a = &b.amendments;
    assert_eq!(strs(a, amend_col::KIND), ["bar_revision"]);
    assert_eq!(
        f64s(a, amend_col::PRICE),
        [Some(189.45)],
        "the bar as emitted"
    );
    assert_eq!(f64s(a, amend_col::NEW_PRICE), [Some(189.5)]);
    assert_eq!(f64s(a, amend_col::NEW_VOLUME), [Some(20.0)]);
    assert_eq!(f64s(a, amend_col::NEW_HIGH), [Some(189.7)]);
    assert_eq!(ts(a), [T0 - 121_000_000]);
}

#[test]
fn corrections_keep_both_trades() {
    let mut d = decoder();
    decode(
        &mut d,
        r#"[{"T":"c","S":"AAPL","x":"V","oi":9007199254740993,"op":189.42,"os":100,"oc":["@"],"ci":18446744073709551615,"cp":189.24,"cs":100,"cc":["@"],"z":"C","t":"2025-03-03T14:30:00.83915973Z"}]"#,
    );
    let b = d.finish();
    assert!(b.rejects.is_empty(), "{:?}", b.rejects);
    let a = &b.amendments;
    assert_eq!(strs(a, amend_col::KIND), ["correction"]);
    let ids = |name| {
        a.column_by_name(name)
            .unwrap()
            .as_primitive::<UInt64Type>()
            .value(0)
    };
    assert_eq!(
        ids(amend_col::TRADE_ID),
        9_007_199_254_740_993,
        "2^53 + 1, exact"
    );
    assert_eq!(ids(amend_col::NEW_TRADE_ID), u64::MAX);
    assert_eq!(f64s(a, amend_col::PRICE), [Some(189.42)]);
    assert_eq!(f64s(a, amend_col::NEW_PRICE), [Some(189.24)]);
    assert_eq!(ts(a), [T0 - 1_000_000 + 839_159]);
    assert!(a.column_by_name(amend_col::NEW_OPEN).unwrap().is_null(0));
}

#[test]
fn timestamps_with_0_to_9_fractional_digits_and_big_ids() {
    let mut d = decoder();
    let frame: Vec<String> = [
        "2025-03-03T14:30:01Z",
        "2025-03-03T14:30:01.2Z",
        "2025-03-03T14:30:01.208Z",
        "2025-03-03T14:30:01.83915973Z",
        "2025-03-03T14:30:01.999999999Z",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| {
        format!(
            r#"{{"T":"t","S":"BTC/USD","i":{},"x":"CBSE","p":64000.5,"s":0.0012,"tks":"B","t":"{t}"}}"#,
            u64::MAX - i as u64
        )
    })
    .collect();
    decode(&mut d, &format!("[{}]", frame.join(",")));
    let b = d.finish();
    assert!(b.rejects.is_empty(), "{:?}", b.rejects);
    assert_eq!(
        ts(&b.ticks),
        [T0, T0 + 200_000, T0 + 208_000, T0 + 839_159, T0 + 999_999]
    );
    assert_eq!(f64s(&b.ticks, col::VOLUME)[0], Some(0.0012));
}

#[test]
fn bad_frames_and_records_are_rejected_with_record_and_reason() {
    use RejectReason::*;
    let mut d = decoder();
    let good = r#"{"T":"t","S":"AAPL","i":1,"x":"V","p":1.5,"s":1,"t":"2025-03-03T14:30:01Z"}"#;
    let frames = [
        // 1: broken JSON: the whole frame, once.
        format!(r#"[{good},{{"T":"t","S":"AA"#),
        // 2: not an array of objects.
        "42".to_owned(),
        // 3: a good trade beside bad ones.
        format!(
            r#"[{good},17,{{"S":"AAPL"}},{{"T":"t","S":"AAPL","p":"1.5","s":1,"t":"2025-03-03T14:30:01Z"}},{{"T":"t","S":"AAPL","p":-1,"s":1,"t":"2025-03-03T14:30:01Z"}},{{"T":"t","S":"AAPL","p":1,"s":1,"t":"03/03/2025"}},{{"T":"t","S":"AAPL","i":-4,"p":1,"s":1,"t":"2025-03-03T14:30:01Z"}},{{"T":"t","S":"AA PL","p":1,"s":1,"t":"2025-03-03T14:30:01Z"}}]"#
        ),
        // 4: crossed quote, cancel with an unknown action, bar high < low.
        r#"[{"T":"q","S":"AAPL","ap":1.0,"as":1,"bp":1.1,"bs":1,"t":"2025-03-03T14:30:01Z"},{"T":"x","S":"AAPL","i":1,"p":1,"s":1,"a":"Z","t":"2025-03-03T14:30:01Z"},{"T":"b","S":"AAPL","o":1,"h":1,"l":2,"c":1,"v":1,"t":"2025-03-03T14:30:00Z"}]"#.to_owned(),
        // 5: a trade in the far future.
        r#"[{"T":"t","S":"AAPL","p":1,"s":1,"t":"2999-01-01T00:00:00Z"}]"#.to_owned(),
    ];
    for f in &frames {
        assert!(decode(&mut d, f).is_empty());
    }
    let b = d.finish();
    assert_eq!(b.ticks.num_rows(), 1, "only the good trade of frame 3");
    let got: Vec<(u64, RejectReason)> = b.rejects.iter().map(|r| (r.line, r.reason)).collect();
    assert_eq!(
        got,
        [
            (1, Malformed),
            (2, Malformed),
            (3, Malformed),
            (3, Malformed),
            (3, Malformed),
            (3, NonPositivePrice),
            (3, Malformed),
            (3, Malformed),
            (3, InvalidSymbol),
            (4, BidAboveAsk),
            (4, Malformed),
            (4, HighBelowLow),
            (5, TimestampInFuture),
        ]
    );
    let r = &b.rejects;
    assert_eq!(r[0].record, frames[0], "the broken frame as read");
    assert!(r[0].detail.contains("line 1 column"), "{}", r[0]);
    assert_eq!(r[0].origin, "alpaca");
    assert_eq!(r[2].record, "17");
    assert!(r[3].detail.contains("`T`"), "{}", r[3]);
    assert!(
        r[4].detail.contains("`p`") && r[4].detail.contains("\"1.5\""),
        "{}",
        r[4]
    );
    assert!(r[6].detail.contains("03/03/2025"), "{}", r[6]);
    assert!(r[7].detail.contains("`i`"), "{}", r[7]);
    assert!(r[10].detail.contains("\"Z\""), "{}", r[10]);
    assert_eq!(d.counters().rejects, 13);
}

#[test]
fn no_input_panics() {
    use rand::{Rng, SeedableRng};
    let frame = br#"[{"T":"t","S":"AAPL","i":4211,"x":"V","p":189.42,"s":100,"c":["@"],"z":"C","t":"2025-03-03T14:30:01.123456789Z"},{"T":"c","S":"AAPL","x":"V","oi":1,"op":1,"os":1,"ci":2,"cp":2,"cs":2,"t":"2025-03-03T14:30:01Z"},{"T":"u","S":"AAPL","o":1,"h":2,"l":0.5,"c":1,"v":1,"t":"2025-03-03T14:30:00Z"},{"T":"error","code":402,"msg":"auth failed"}]"#;
    let mut d = decoder();
    let mut ev = Vec::new();
    for cut in 0..frame.len() {
        d.decode(&frame[..cut], &mut ev);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..3000 {
        let mut f = frame.to_vec();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..f.len());
            f[i] = rng.random();
        }
        d.decode(&f, &mut ev);
        if rng.random_range(0..50) == 0 {
            d.finish();
        }
    }
    let b = d.finish();
    // Every frame was accounted for: ticks, amendments, events or rejects.
    assert!(d.counters().frames == (frame.len() + 3000) as u64);
    let _ = b;
}

#[test]
fn seq_counts_ticks_sharing_symbol_and_ts() {
    let mut d = decoder();
    let t = r#"{"T":"t","S":"AAPL","p":1,"s":1,"t":"2025-03-03T14:30:01Z"}"#;
    decode(&mut d, &format!("[{t},{t}]"));
    d.finish();
    decode(&mut d, &format!("[{t}]"));
    let b = d.finish();
    let seq = b.ticks.column(2).as_primitive::<UInt32Type>();
    assert_eq!(seq.value(0), 2, "keys continue across batches");
}

#[test]
fn rest_bars_pages_follow_the_token() {
    let mut d = AlpacaHistoryDecoder::new(AlpacaHistory::Bars, Validator::with_now(T0));
    let next = d
        .decode_page(
            br#"{"bars":{"AAPL":[{"t":"2025-03-03T14:28:00Z","o":189.3,"h":189.5,"l":189.2,"c":189.44,"v":15,"n":2,"vw":189.42},{"t":"2025-03-03T14:29:00Z","o":189.44,"h":189.6,"l":189.4,"c":189.5,"v":20,"n":3,"vw":189.5}],"MSFT":[{"t":"2025-03-03T14:28:00Z","o":412,"h":413,"l":411,"c":412.5,"v":7,"n":1,"vw":412.5}]},"next_page_token":"TVNGVHxNfDIwMjUtMDMtMDNUMTQ6Mjg6MDAuMDAwMDAwMDAwWg=="}"#,
        )
        .unwrap();
    assert_eq!(
        next.as_deref(),
        Some("TVNGVHxNfDIwMjUtMDMtMDNUMTQ6Mjg6MDAuMDAwMDAwMDAwWg==")
    );
    let last = d
        .decode_page(
            br#"{"bars":{"MSFT":[{"t":"2025-03-03T14:29:00Z","o":412.5,"h":412.5,"l":0,"c":412.4,"v":3,"n":1,"vw":412.4}]},"next_page_token":null}"#,
        )
        .unwrap();
    assert_eq!(last, None);
    let b = d.finish();
    assert_eq!(strs(&b.ticks, col::SYMBOL), ["AAPL", "AAPL", "MSFT"]);
    assert_eq!(
        f64s(&b.ticks, col::OPEN),
        [Some(189.3), Some(189.44), Some(412.0)]
    );
    assert_eq!(ts(&b.ticks)[0], T0 - 121_000_000);
    assert_eq!(b.rejects.len(), 1);
    assert_eq!(b.rejects[0].reason, RejectReason::InvalidBar);
    assert_eq!(b.rejects[0].line, 4, "record number across pages");
    assert!(
        b.rejects[0].record.starts_with("MSFT: {"),
        "{}",
        b.rejects[0].record
    );
    assert_eq!(d.counters().frames, 2);
}

#[test]
fn rest_trades_pages_and_errors() {
    let mut d = AlpacaHistoryDecoder::new(AlpacaHistory::Trades, Validator::with_now(T0));
    let next = d
        .decode_page(
            br#"{"trades":{"AAPL":[{"t":"2025-03-03T14:30:00.123456789Z","x":"V","p":189.42,"s":100,"c":["@"],"i":9007199254740993,"z":"C"}]},"next_page_token":"QUFQTA=="}"#,
        )
        .unwrap();
    assert_eq!(next.as_deref(), Some("QUFQTA=="));
    assert_eq!(
        d.decode_page(br#"{"trades":{},"next_page_token":null}"#)
            .unwrap(),
        None
    );
    let err = d.decode_page(br#"{"message":"forbidden."}"#).unwrap_err();
    assert!(matches!(err, PageError::Api { .. }), "{err}");
    assert!(err.to_string().contains("forbidden."));
    let err = d
        .decode_page(br#"{"bars":{},"next_page_token":null}"#)
        .unwrap_err();
    assert!(err.to_string().contains("no `trades`"), "{err}");
    let err = d.decode_page(br#"{"trades":{"AAPL":[{"t":"#).unwrap_err();
    assert!(matches!(err, PageError::Malformed { .. }), "{err}");
    let b = d.finish();
    assert_eq!(ts(&b.ticks), [T0 - 1_000_000 + 123_456]);
    assert!(b.rejects.is_empty());
}

#[test]
fn rest_pages_unescape_symbols_and_never_panic() {
    use rand::{Rng, SeedableRng};
    let page = br#"{"bars":{"M\u0026M":[{"t":"2025-03-03T14:28:00Z","o":1,"h":2,"l":0.5,"c":1.5,"v":10,"n":1,"vw":1.2}],"AAPL":[]},"next_page_token":null}"#;
    let mut d = AlpacaHistoryDecoder::new(AlpacaHistory::Bars, Validator::with_now(T0));
    assert_eq!(d.decode_page(page).unwrap(), None);
    let b = d.finish();
    assert_eq!(strs(&b.ticks, col::SYMBOL), ["M&M"]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    for round in 0..4000 {
        let p = if round < page.len() {
            page[..round].to_vec()
        } else {
            let mut p = page.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..p.len());
                p[i] = rng.random();
            }
            p
        };
        let _ = d.decode_page(&p);
    }
    d.finish();
}
