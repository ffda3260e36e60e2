//! Alpaca's REST history pages: `GET /v2/stocks/bars` and
//! `GET /v2/stocks/trades` (multi-symbol form), decoded into ticks.
//!
//! A page is `{"bars": {"AAPL": [{t,o,h,l,c,v,n,vw}, ...], ...},
//! "next_page_token": "..." | null}` (`trades` holds `{t,x,p,s,c,i,z}`).
//! The caller asks again with `page_token` set to the token until it is
//! `null`. History is final, so bars go straight to ticks, without the
//! stream's re-send book.

use serde::Deserialize;

use super::{bar_fields, key_index, N};
use crate::sources::feed::json::{field, spans_of, walk_object, ArraysByKey, Slots};
use crate::sources::feed::{Feed, FeedBatch, FeedCore, FeedCounters, PageError};
use crate::tick::{Rejection, TickRecord, Validator};

/// Which history endpoint a page came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlpacaHistory {
    /// `/v2/stocks/bars`: bars, stamped at their start.
    Bars,
    /// `/v2/stocks/trades`: trades.
    Trades,
}

impl AlpacaHistory {
    /// The endpoint's path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Bars => "/v2/stocks/bars",
            Self::Trades => "/v2/stocks/trades",
        }
    }
}

/// A page, read in one pass: its scalar fields, and its records as raw
/// JSON per symbol (under `bars` or `trades`), so that each record can be
/// decoded (and quoted in a reject) on its own.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(default, borrow)]
    bars: Option<ArraysByKey<'a>>,
    #[serde(default, borrow)]
    trades: Option<ArraysByKey<'a>>,
    #[serde(default)]
    next_page_token: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Decodes pages of one history request into tick batches.
///
/// Rejects carry the record's number across all pages decoded so far.
///
/// ```
/// use stockanomaly::sources::alpaca::rest::{AlpacaHistory, AlpacaHistoryDecoder};
/// use stockanomaly::tick::Validator;
///
/// let mut d = AlpacaHistoryDecoder::new(AlpacaHistory::Bars, Validator::new());
/// let next = d
///     .decode_page(br#"{"bars":{"AAPL":[{"t":"2024-01-03T14:30:00Z","o":1,"h":2,"l":0.5,"c":1.5,"v":100,"n":3,"vw":1.4}]},"next_page_token":"QUFQTHw="}"#)
///     .unwrap();
/// assert_eq!(next.as_deref(), Some("QUFQTHw="));
/// assert_eq!(d.finish().ticks.num_rows(), 1);
/// ```
#[derive(Debug)]
pub struct AlpacaHistoryDecoder {
    kind: AlpacaHistory,
    core: FeedCore,
}

impl AlpacaHistoryDecoder {
    /// A decoder of `kind` pages.
    pub fn new(kind: AlpacaHistory, validator: Validator) -> Self {
        Self {
            kind,
            core: FeedCore::new(Feed::Alpaca, validator),
        }
    }

    /// Decodes one page body; returns the `next_page_token` (`None` on the
    /// last page). A body that is not a page at all is an error and adds
    /// nothing; bad records inside a page are rejects.
    pub fn decode_page(&mut self, body: &[u8]) -> Result<Option<String>, PageError> {
        let endpoint = self.kind.path();
        let malformed = |reason: String| PageError::Malformed {
            feed: Feed::Alpaca,
            endpoint,
            reason,
        };
        let page: Page = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        let (key, records) = match self.kind {
            AlpacaHistory::Bars => ("bars", page.bars),
            AlpacaHistory::Trades => ("trades", page.trades),
        };
        let Some(records) = records else {
            // An error body (`{"message": "..."}`) or another endpoint's page.
            return Err(match page.message {
                Some(message) => PageError::Api {
                    feed: Feed::Alpaca,
                    endpoint,
                    status: String::new(),
                    message,
                },
                None => malformed(format!("no `{key}` object")),
            });
        };
        self.core.counters.frames += 1;
        let mut slots: Slots<'_, N> = Default::default();
        let mut spans = std::mem::take(&mut self.core.spans);
        for (symbol, array) in &records.0 {
            let symbol: &str = &symbol.0;
            spans.clear();
            spans_of(body, array, &mut spans);
            for &(a, b) in &spans {
                self.core.counters.messages += 1;
                let line = self.core.counters.messages;
                let text = std::str::from_utf8(&body[a..b]).unwrap_or("");
                let result = walk_object(text, key_index, &mut slots)
                    .map_err(Rejection::malformed)
                    .and_then(|()| match self.kind {
                        AlpacaHistory::Bars => bar_fields(&slots).and_then(|(start, _, b)| {
                            self.core.ticks.push(&TickRecord {
                                open: Some(b.open),
                                high: Some(b.high),
                                low: Some(b.low),
                                ..TickRecord::trade(start, symbol, b.close, b.volume)
                            })
                        }),
                        AlpacaHistory::Trades => {
                            field::opt_u64(&slots[super::ID], "i").and_then(|_| {
                                let rec = TickRecord::trade(
                                    field::rfc3339(&slots[super::TIME], "t")?,
                                    symbol,
                                    field::num(&slots[super::PRICE], "p")?,
                                    field::num(&slots[super::SIZE], "s")?,
                                );
                                self.core.trade(rec)
                            })
                        }
                    });
                match result {
                    Ok(()) if self.kind == AlpacaHistory::Bars => self.core.counters.bars += 1,
                    Ok(()) => {}
                    Err(e) => {
                        // The symbol is the map's key, not in the record: name it.
                        let record = format!("{symbol}: {text}");
                        self.core.reject_at(line, e, record.as_bytes());
                    }
                }
            }
        }
        self.core.spans = spans;
        Ok(page.next_page_token.filter(|t| !t.is_empty()))
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
