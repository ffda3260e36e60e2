//! Polygon/Massive aggregates history:
//! `GET /v2/aggs/ticker/{T}/range/{mult}/{span}/{from}/{to}`, decoded into
//! bar ticks.
//!
//! A page is `{"ticker","resultsCount","adjusted","results":[{v,vw,o,c,h,l,t,n}],
//! "status","next_url"}` with `t` the window's start in epoch milliseconds.
//! The caller follows `next_url` until it is absent (it carries no
//! credentials: add the key again, as a Bearer header or `apiKey=`).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{key_index, CLOSE, HIGH, LOW, N, OPEN, TIME, VOLUME};
use crate::sources::feed::json::{field, spans_of, walk_object, Slots};
use crate::sources::feed::{Feed, FeedBatch, FeedCore, FeedCounters, PageError};
use crate::tick::{Rejection, TickRecord, Validator};

const ENDPOINT: &str = "/v2/aggs";

/// A page, read in one pass: its scalar fields and its `results` as raw
/// JSON, so that each record can be decoded (and quoted in a reject) on its
/// own.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(default, borrow)]
    results: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    ticker: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    next_url: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Decodes aggregates pages into bar ticks.
///
/// ```
/// use stockanomaly::sources::polygon::rest::PolygonAggsDecoder;
/// use stockanomaly::tick::Validator;
///
/// let mut d = PolygonAggsDecoder::new(Validator::new());
/// let next = d
///     .decode_page(br#"{"ticker":"MSFT","resultsCount":1,"adjusted":true,"results":[{"v":100,"vw":1.2,"o":1,"c":1.5,"h":2,"l":0.5,"t":1704205800000,"n":3}],"status":"OK"}"#)
///     .unwrap();
/// assert_eq!(next, None);
/// assert_eq!(d.finish().ticks.num_rows(), 1);
/// ```
#[derive(Debug)]
pub struct PolygonAggsDecoder {
    core: FeedCore,
}

impl PolygonAggsDecoder {
    /// A decoder judging times against `validator`'s clock.
    pub fn new(validator: Validator) -> Self {
        Self {
            core: FeedCore::new(Feed::Polygon, validator),
        }
    }

    /// Decodes one page body; returns its `next_url` (`None` on the last
    /// page). An error body or a body that is not a page adds nothing.
    pub fn decode_page(&mut self, body: &[u8]) -> Result<Option<String>, PageError> {
        let page: Page = serde_json::from_slice(body).map_err(|e| PageError::Malformed {
            feed: Feed::Polygon,
            endpoint: ENDPOINT,
            reason: e.to_string(),
        })?;
        let status = page.status.as_deref().unwrap_or("");
        if !matches!(status, "OK" | "DELAYED") || page.error.is_some() {
            return Err(PageError::Api {
                feed: Feed::Polygon,
                endpoint: ENDPOINT,
                status: status.to_owned(),
                message: page
                    .error
                    .or(page.message)
                    .unwrap_or_else(|| "no message".into()),
            });
        }
        let malformed = |reason: String| PageError::Malformed {
            feed: Feed::Polygon,
            endpoint: ENDPOINT,
            reason,
        };
        // Valid JSON (parsed above), so the text is UTF-8.
        let text = std::str::from_utf8(body).map_err(|e| malformed(e.to_string()))?;
        let mut results = std::mem::take(&mut self.core.spans);
        results.clear();
        spans_of(
            body,
            page.results.as_deref().unwrap_or_default(),
            &mut results,
        );
        let ticker = match (&page.ticker, results.is_empty()) {
            (Some(t), _) => t.as_str(),
            (None, true) => "",
            (None, false) => {
                self.core.spans = results;
                return Err(malformed("results without a `ticker`".into()));
            }
        };
        self.core.counters.frames += 1;
        let mut slots: Slots<'_, N> = Default::default();
        for &(a, b) in &results {
            self.core.counters.messages += 1;
            let line = self.core.counters.messages;
            let text = &text[a..b];
            let result = walk_object(text, key_index, &mut slots)
                .map_err(Rejection::malformed)
                .and_then(|()| {
                    let rec = TickRecord {
                        open: Some(field::num(&slots[OPEN], "o")?),
                        high: Some(field::num(&slots[HIGH], "h")?),
                        low: Some(field::num(&slots[LOW], "l")?),
                        ..TickRecord::trade(
                            field::epoch_ms(&slots[TIME], "t")?,
                            ticker,
                            field::num(&slots[CLOSE], "c")?,
                            field::num(&slots[VOLUME], "v")?,
                        )
                    };
                    self.core.ticks.push(&rec)
                });
            match result {
                Ok(()) => self.core.counters.bars += 1,
                Err(e) => {
                    let record = format!("{ticker}: {text}");
                    self.core.reject_at(line, e, record.as_bytes());
                }
            }
        }
        self.core.spans = results;
        Ok(page.next_url.filter(|u| !u.is_empty()))
    }

    /// Takes the ticks and rejects decoded so far.
    pub fn finish(&mut self) -> FeedBatch {
        self.core.finish()
    }

    /// Totals so far (`frames` counts pages, `messages` records).
    pub fn counters(&self) -> &FeedCounters {
        &self.core.counters
    }
}
