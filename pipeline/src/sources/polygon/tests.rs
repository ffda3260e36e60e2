//! Polygon/Massive frames and pages in the documented shapes (feeds.md §2;
//! ILLUSTRATIVE, written from the documentation, not captured).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};

use super::rest::PolygonAggsDecoder;
use super::*;
use crate::sources::feed::{amend_col, PageError};
use crate::tick::{col, RejectReason};

/// 2025-03-03T14:30:01.123Z.
const T0: i64 = 1_741_012_201_123_000;

fn decoder() -> PolygonDecoder {
    PolygonDecoder::new(Validator::with_now(T0))
}

fn decode(d: &mut PolygonDecoder, frame: &str) -> Vec<FeedEvent> {
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

fn ts(b: &RecordBatch) -> Vec<i64> {
    b.column_by_name(col::TS)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec()
}

fn am(start_ms: i64, close: f64, volume: f64) -> String {
    format!(
        r#"{{"ev":"AM","sym":"MSFT","v":{volume},"av":1000000,"op":410.0,"vw":411.9,"o":411.5,"c":{close},"h":412.5,"l":411.2,"a":120,"z":85,"s":{start_ms},"e":{},"otc":false}}"#,
        start_ms + 60_000
    )
}

#[test]
fn illustrative_trade_with_millisecond_time() {
    let mut d = decoder();
    let ev = decode(
        &mut d,
        r#"[{"ev":"T","sym":"MSFT","x":12,"i":"71675","z":3,"p":412.07,"s":100,"c":[37],"t":1741012201123,"q":1298811}]"#,
    );
    assert!(ev.is_empty());
    let b = d.finish();
    assert!(b.rejects.is_empty(), "{:?}", b.rejects);
    assert_eq!(ts(&b.ticks), [T0]);
    assert_eq!(f64s(&b.ticks, col::PRICE), [Some(412.07)]);
    assert_eq!(f64s(&b.ticks, col::VOLUME), [Some(100.0)]);
}

#[test]
fn quotes_ride_on_the_next_trades() {
    let mut d = decoder();
    decode(
        &mut d,
        r#"[{"ev":"Q","sym":"MSFT","bx":4,"bp":412.05,"bs":2,"ax":7,"ap":412.09,"as":3,"c":0,"i":[604],"t":1741012201000,"q":50385480,"z":3},{"ev":"T","sym":"MSFT","x":12,"i":"1","z":3,"p":412.07,"s":100,"t":1741012201100,"q":1},{"ev":"T","sym":"AAPL","x":12,"i":"2","z":3,"p":189.0,"s":1,"t":1741012201100,"q":2}]"#,
    );
    let b = d.finish();
    assert_eq!(f64s(&b.ticks, col::BID), [Some(412.05), None]);
    assert_eq!(f64s(&b.ticks, col::ASK), [Some(412.09), None]);
    assert_eq!(f64s(&b.ticks, col::BID_SIZE), [Some(2.0), None]);
}

#[test]
fn resent_minute_bars_replace_the_earlier_one() {
    let m = 1_741_012_080_000; // 14:28:00
    let mut d = decoder();
    decode(&mut d, &format!("[{}]", am(m, 412.0, 1000.0)));
    decode(
        &mut d,
        &format!("[{},{}]", am(m, 412.2, 1100.0), am(m + 60_000, 412.3, 10.0)),
    );
    let b = d.finish();
    assert_eq!(ts(&b.ticks), [m * 1000, (m + 60_000) * 1000]);
    assert_eq!(f64s(&b.ticks, col::PRICE), [Some(412.2), Some(412.3)]);
    assert_eq!(f64s(&b.ticks, col::VOLUME), [Some(1100.0), Some(10.0)]);
    assert_eq!(f64s(&b.ticks, col::OPEN), [Some(411.5), Some(411.5)]);
    assert_eq!(b.amendments.num_rows(), 0);
    assert_eq!(d.counters().bars_replaced, 1);

    // Re-sent after the batch went out: recorded as a revision.
    decode(&mut d, &format!("[{}]", am(m, 412.4, 1200.0)));
    let b = d.finish();
    assert_eq!(b.ticks.num_rows(), 0);
    let a = &b.amendments;
    assert_eq!(a.num_rows(), 1);
    assert_eq!(f64s(a, amend_col::PRICE), [Some(412.2)]);
    assert_eq!(f64s(a, amend_col::VOLUME), [Some(1100.0)]);
    assert_eq!(f64s(a, amend_col::NEW_PRICE), [Some(412.4)]);
    assert_eq!(f64s(a, amend_col::NEW_VOLUME), [Some(1200.0)]);
    assert_eq!(ts(a), [m * 1000]);
}

#[test]
fn statuses_are_classified() {
    let status = |s: &str, m: &str| {
        let mut d = decoder();
        let ev = decode(
            &mut d,
            &format!(r#"[{{"ev":"status","status":"{s}","message":"{m}"}}]"#),
        );
        assert_eq!(ev.len(), 1, "{s}");
        ev.into_iter().next().unwrap()
    };
    assert_eq!(
        status("connected", "Connected Successfully"),
        FeedEvent::Connected
    );
    assert_eq!(
        status("success", "Connected Successfully"),
        FeedEvent::Connected
    );
    assert_eq!(
        status("auth_success", "authenticated"),
        FeedEvent::Authenticated
    );
    assert_eq!(
        status("success", "subscribed to: T.MSFT"),
        FeedEvent::Subscribed {
            detail: "subscribed to: T.MSFT".into()
        }
    );
    let failed = status("auth_failed", "authentication failed");
    assert_eq!(failed.action(), FaultAction::Fatal);
    let FeedEvent::Fault(f) = &failed else {
        panic!("{failed:?}")
    };
    assert!(f.to_string().contains("POLYGON_API_KEY"), "{f}");
    for s in [
        "max_connections",
        "slow_consumer",
        "force_disconnect",
        "auth_timeout",
    ] {
        assert!(
            matches!(status(s, "x").action(), FaultAction::Reconnect { .. }),
            "{s}"
        );
    }
    assert!(matches!(
        status("something_new", "hello"),
        FeedEvent::Notice { .. }
    ));
}

#[test]
fn unknown_events_second_bars_and_bad_messages() {
    use RejectReason::*;
    let mut d = decoder();
    decode(
        &mut d,
        r#"[{"ev":"LULD","T":"MSFT"},{"ev":"A","sym":"MSFT","o":1,"c":1,"h":1,"l":1,"v":1,"s":1741012200000,"e":1741012201000},{"ev":"T","sym":"MSFT","p":412.07,"s":100,"t":"1741012201123"},{"ev":"T","sym":"MSFT","p":412.07,"s":100,"t":1741012201123000000000},{"ev":"T","sym":"MSFT","p":0,"s":100,"t":1741012201123},{"sym":"MSFT"},{"ev":"status","status":5}]"#,
    );
    decode(&mut d, r#"[{"ev":"T","#);
    let b = d.finish();
    assert_eq!(b.ticks.num_rows(), 0);
    let got: Vec<(u64, RejectReason)> = b.rejects.iter().map(|r| (r.line, r.reason)).collect();
    assert_eq!(
        got,
        [
            (1, Malformed),
            (1, Malformed),
            (1, NonPositivePrice),
            (1, Malformed),
            (1, Malformed),
            (2, Malformed),
        ]
    );
    assert!(
        b.rejects[0].detail.contains("epoch milliseconds"),
        "{}",
        b.rejects[0]
    );
    assert_eq!(d.counters().unknown.get("LULD"), 1);
    assert_eq!(d.counters().skipped.get("A"), 1);
}

#[test]
fn aggregates_pages_follow_next_url() {
    let mut d = PolygonAggsDecoder::new(Validator::with_now(T0));
    let next = d
        .decode_page(
            br#"{"ticker":"MSFT","queryCount":2,"resultsCount":2,"adjusted":true,"results":[{"v":1000,"vw":411.9,"o":411.5,"c":412.0,"h":412.5,"l":411.2,"t":1741012080000,"n":20},{"v":900,"vw":412.1,"o":412.0,"c":412.2,"h":412.4,"l":-1,"t":1741012140000,"n":18}],"status":"OK","request_id":"r1","next_url":"https://api.massive.com/v2/aggs/ticker/MSFT/range/1/minute/1741012200000/2025-03-04?cursor=bGltaXQ9Mg"}"#,
        )
        .unwrap();
    assert!(next.unwrap().contains("cursor="));
    let last = d
        .decode_page(
            br#"{"ticker":"MSFT","queryCount":1,"resultsCount":1,"adjusted":true,"results":[{"v":10,"vw":412.3,"o":412.3,"c":412.3,"h":412.3,"l":412.3,"t":1741012200000,"n":1}],"status":"DELAYED","request_id":"r2"}"#,
        )
        .unwrap();
    assert_eq!(last, None);
    assert_eq!(
        d.decode_page(br#"{"ticker":"MSFT","resultsCount":0,"status":"OK"}"#)
            .unwrap(),
        None
    );
    let err = d
        .decode_page(br#"{"status":"NOT_AUTHORIZED","request_id":"r3","message":"You are not entitled to this data."}"#)
        .unwrap_err();
    assert!(matches!(err, PageError::Api { .. }));
    assert!(err.to_string().contains("NOT_AUTHORIZED"), "{err}");
    let err = d
        .decode_page(br#"{"status":"ERROR","error":"Unknown API Key"}"#)
        .unwrap_err();
    assert!(err.to_string().contains("Unknown API Key"), "{err}");
    assert!(d.decode_page(b"<html>").is_err());
    let b = d.finish();
    assert_eq!(ts(&b.ticks), [1_741_012_080_000_000, 1_741_012_200_000_000]);
    assert_eq!(f64s(&b.ticks, col::PRICE), [Some(412.0), Some(412.3)]);
    assert_eq!(b.rejects.len(), 1);
    assert_eq!(
        (b.rejects[0].line, b.rejects[0].reason),
        (2, RejectReason::InvalidBar)
    );
}

#[test]
fn no_frame_or_page_panics() {
    use rand::{Rng, SeedableRng};
    let frame = format!(
        r#"[{{"ev":"T","sym":"MSFT","x":12,"i":"71675","z":3,"p":412.07,"s":100,"c":[37],"t":1741012201123,"q":1298811}},{},{{"ev":"status","status":"auth_failed","message":"x"}}]"#,
        am(1_741_012_080_000, 412.0, 10.0)
    );
    let page = br#"{"ticker":"MSFT","resultsCount":1,"results":[{"v":1000,"vw":411.9,"o":411.5,"c":412.0,"h":412.5,"l":411.2,"t":1741012080000,"n":20}],"status":"OK","next_url":"https://x/y?cursor=z"}"#;
    let mut d = decoder();
    let mut p = PolygonAggsDecoder::new(Validator::with_now(T0));
    let mut ev = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for round in 0..4000 {
        let (f, pg) = if round < frame.len().min(page.len()) {
            (frame.as_bytes()[..round].to_vec(), page[..round].to_vec())
        } else {
            let mut f = frame.as_bytes().to_vec();
            let mut pg = page.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..f.len());
                f[i] = rng.random();
                let j = rng.random_range(0..pg.len());
                pg[j] = rng.random();
            }
            (f, pg)
        };
        d.decode(&f, &mut ev);
        let _ = p.decode_page(&pg);
        if round % 97 == 0 {
            d.finish();
            p.finish();
        }
    }
    assert_eq!(d.counters().frames, 4000);
}
