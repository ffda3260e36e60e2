//! The CSV layouts StockAnomaly reads, how to recognise each, and where each
//! tick field sits in it.

use std::fmt;

use crate::sources::SourceError;

/// A CSV layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CsvFormat {
    /// Recognise the layout from the first line.
    Auto,
    /// A header naming tick-schema columns: `ts,symbol,price,volume` and
    /// optionally `open,high,low,bid,ask,bid_size,ask_size` (aliases:
    /// `timestamp`/`time`, `ticker`, `close`/`last`, `size`/`qty`).
    /// Timestamps are RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (UTC), or epoch
    /// seconds/ms/µs/ns told apart by magnitude.
    Canonical,
    /// The prototype's `raw_history.csv`: no header,
    /// `symbol,open,high,low,close,volume,timestamp_ms`.
    SeedHistory,
    /// The prototype's annotated file: header
    /// `symbol,open,high,low,close,volume,timestamp,anomaly`; rows with
    /// `anomaly` = 1 also become zero-length label intervals.
    SeedAnnotated,
    /// NSE's legacy daily equity bhavcopy (`SYMBOL,SERIES,OPEN,...,TIMESTAMP,
    /// TOTALTRADES,ISIN`), each row stamped at the 15:30 Asia/Kolkata close.
    NseBhavcopy,
    /// NSE's UDiFF common bhavcopy, which replaced the legacy file in July
    /// 2024 (34 columns: `TradDt,BizDt,Sgmt,Src,FinInstrmTp,FinInstrmId,ISIN,
    /// TckrSymb,SctySrs,...,OpnPric,HghPric,LwPric,ClsPric,...,TtlTradgVol,...`),
    /// each row stamped at the 15:30 Asia/Kolkata close of its `TradDt`.
    NseUdiff,
}

impl CsvFormat {
    /// Whether files of this layout list NSE instruments (their symbols are
    /// recorded as listed on XNSE unless `--exchange` says otherwise).
    pub fn is_nse(self) -> bool {
        matches!(self, Self::NseBhavcopy | Self::NseUdiff)
    }
}

impl fmt::Display for CsvFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Canonical => "canonical",
            Self::SeedHistory => "seed-history",
            Self::SeedAnnotated => "seed-annotated",
            Self::NseBhavcopy => "nse-bhavcopy",
            Self::NseUdiff => "nse-udiff",
        })
    }
}

/// How a layout writes time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TsFormat {
    /// Epoch numbers of any unit, or date-time strings.
    Auto,
    /// Epoch milliseconds.
    EpochMs,
    /// `01-JAN-2024`, stamped at the NSE close.
    NseDate,
}

/// Where each field of a tick sits in a record of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnMap {
    pub has_header: bool,
    pub ts: usize,
    pub ts_format: TsFormat,
    pub symbol: usize,
    pub price: usize,
    pub volume: usize,
    pub open: Option<usize>,
    pub high: Option<usize>,
    pub low: Option<usize>,
    pub bid: Option<usize>,
    pub ask: Option<usize>,
    pub bid_size: Option<usize>,
    pub ask_size: Option<usize>,
    /// The annotated layout's 0/1 anomaly flag.
    pub anomaly: Option<usize>,
    /// NSE's series (`EQ`, `BE`, ...): symbols of other series than `EQ`
    /// become `SYMBOL.SERIES` so that they stay distinct instruments.
    pub series: Option<usize>,
    /// Fields a record must have at least.
    pub min_fields: usize,
}

impl ColumnMap {
    fn fixed(
        has_header: bool,
        ts: usize,
        ts_format: TsFormat,
        symbol: usize,
        price: usize,
        volume: usize,
    ) -> Self {
        Self {
            has_header,
            ts,
            ts_format,
            symbol,
            price,
            volume,
            open: None,
            high: None,
            low: None,
            bid: None,
            ask: None,
            bid_size: None,
            ask_size: None,
            anomaly: None,
            series: None,
            min_fields: 0,
        }
    }

    fn finish(mut self) -> Self {
        self.min_fields = [self.ts, self.symbol, self.price, self.volume]
            .into_iter()
            .chain(self.open)
            .chain(self.high)
            .chain(self.low)
            .chain(self.anomaly)
            .chain(self.series)
            .max()
            .unwrap_or(0)
            + 1;
        self
    }
}

/// Normalised header cells: trimmed, lower case, BOM removed.
fn normalise(header: &[&str]) -> Vec<String> {
    header
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect()
}

/// Recognises the layout of a file from its first record.
pub(crate) fn detect(origin: &str, first: &[&str]) -> Result<CsvFormat, SourceError> {
    let h = normalise(first);
    let has = |name: &str| h.iter().any(|c| c == name);
    if has("symbol") && has("series") && has("tottrdqty") {
        return Ok(CsvFormat::NseBhavcopy);
    }
    // UDiFF headers are CamelCase ISO 20022-style names; these three are
    // specific to it (the legacy file says SYMBOL, SERIES, TIMESTAMP).
    if has("tckrsymb") && has("sctysrs") && has("traddt") {
        return Ok(CsvFormat::NseUdiff);
    }
    if has("anomaly") && has("close") && has("symbol") {
        return Ok(CsvFormat::SeedAnnotated);
    }
    if (has("ts") || has("timestamp") || has("time"))
        && (has("price") || has("close") || has("last"))
        && (has("symbol") || has("ticker"))
    {
        return Ok(CsvFormat::Canonical);
    }
    if first.len() == 7 && first[1..].iter().all(|f| f.trim().parse::<f64>().is_ok()) {
        return Ok(CsvFormat::SeedHistory);
    }
    Err(SourceError::Format {
        origin: origin.to_owned(),
        reason: format!(
            "cannot tell the CSV layout from its first line {:?}; pass --format \
             canonical|seed-history|seed-annotated|nse-bhavcopy|nse-udiff (a canonical file needs a header \
             with ts, symbol, price and volume)",
            first.join(",")
        ),
    })
}

/// The column map of `format` given the file's first record (its header for
/// layouts that have one).
pub(crate) fn column_map(
    origin: &str,
    format: CsvFormat,
    first: &[&str],
) -> Result<ColumnMap, SourceError> {
    let h = normalise(first);
    let find = |names: &[&str]| h.iter().position(|c| names.contains(&c.as_str()));
    let missing = |what: &[&str]| SourceError::Format {
        origin: origin.to_owned(),
        reason: format!(
            "{format} header has no column {} (header: {:?})",
            what.iter()
                .map(|w| format!("`{w}`"))
                .collect::<Vec<_>>()
                .join(" or "),
            first.join(",")
        ),
    };
    let need = |names: &[&str]| find(names).ok_or_else(|| missing(names));
    let map = match format {
        CsvFormat::Auto => {
            let detected = detect(origin, first)?;
            return column_map(origin, detected, first);
        }
        CsvFormat::SeedHistory => ColumnMap {
            open: Some(1),
            high: Some(2),
            low: Some(3),
            ..ColumnMap::fixed(false, 6, TsFormat::EpochMs, 0, 4, 5)
        },
        CsvFormat::SeedAnnotated => ColumnMap {
            open: Some(need(&["open"])?),
            high: Some(need(&["high"])?),
            low: Some(need(&["low"])?),
            anomaly: Some(need(&["anomaly"])?),
            ..ColumnMap::fixed(
                true,
                need(&["timestamp"])?,
                TsFormat::EpochMs,
                need(&["symbol"])?,
                need(&["close"])?,
                need(&["volume"])?,
            )
        },
        CsvFormat::NseBhavcopy => ColumnMap {
            open: Some(need(&["open"])?),
            high: Some(need(&["high"])?),
            low: Some(need(&["low"])?),
            series: Some(need(&["series"])?),
            ..ColumnMap::fixed(
                true,
                need(&["timestamp"])?,
                TsFormat::NseDate,
                need(&["symbol"])?,
                need(&["close"])?,
                need(&["tottrdqty"])?,
            )
        },
        CsvFormat::NseUdiff => ColumnMap {
            open: Some(need(&["opnpric"])?),
            high: Some(need(&["hghpric"])?),
            low: Some(need(&["lwpric"])?),
            series: Some(need(&["sctysrs"])?),
            ..ColumnMap::fixed(
                true,
                need(&["traddt"])?,
                TsFormat::NseDate,
                need(&["tckrsymb"])?,
                need(&["clspric"])?,
                need(&["ttltradgvol"])?,
            )
        },
        CsvFormat::Canonical => ColumnMap {
            open: find(&["open"]),
            high: find(&["high"]),
            low: find(&["low"]),
            bid: find(&["bid"]),
            ask: find(&["ask"]),
            bid_size: find(&["bid_size", "bidsize"]),
            ask_size: find(&["ask_size", "asksize"]),
            ..ColumnMap::fixed(
                true,
                need(&["ts", "timestamp", "time"])?,
                TsFormat::Auto,
                need(&["symbol", "ticker"])?,
                need(&["price", "close", "last"])?,
                need(&["volume", "size", "qty"])?,
            )
        },
    };
    Ok(map.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_line(line: &str) -> Result<CsvFormat, SourceError> {
        let fields: Vec<&str> = line.split(',').collect();
        detect("t.csv", &fields)
    }

    #[test]
    fn recognises_each_layout() {
        assert_eq!(
            detect_line("ts,symbol,price,volume").unwrap(),
            CsvFormat::Canonical
        );
        assert_eq!(
            detect_line("\u{feff}Timestamp,Ticker,Close,Size").unwrap(),
            CsvFormat::Canonical
        );
        assert_eq!(
            detect_line("MSFT,478.74,478.75,478.585,478.66,466.0,1765998360000").unwrap(),
            CsvFormat::SeedHistory
        );
        assert_eq!(
            detect_line("symbol,open,high,low,close,volume,timestamp,anomaly").unwrap(),
            CsvFormat::SeedAnnotated
        );
        assert_eq!(
            detect_line("SYMBOL,SERIES,OPEN,HIGH,LOW,CLOSE,LAST,PREVCLOSE,TOTTRDQTY,TOTTRDVAL,TIMESTAMP,TOTALTRADES,ISIN,")
                .unwrap(),
            CsvFormat::NseBhavcopy
        );
        assert_eq!(detect_line(UDIFF_HEADER).unwrap(), CsvFormat::NseUdiff);
        let err = detect_line("a,b,c").unwrap_err().to_string();
        assert!(err.contains("--format"), "{err}");
    }

    /// The 34 UDiFF columns in order (feeds.md §4).
    const UDIFF_HEADER: &str =
        "TradDt,BizDt,Sgmt,Src,FinInstrmTp,FinInstrmId,ISIN,TckrSymb,SctySrs,\
        XpryDt,FininstrmActlXpryDt,StrkPric,OptnTp,FinInstrmNm,OpnPric,HghPric,LwPric,ClsPric,\
        LastPric,PrvsClsgPric,UndrlygPric,SttlmPric,OpnIntrst,ChngInOpnIntrst,TtlTradgVol,\
        TtlTrfVal,TtlNbOfTxsExctd,SsnId,NewBrdLotQty,Rmks,Rsvd1,Rsvd2,Rsvd3,Rsvd4";

    #[test]
    fn udiff_columns_map_to_the_tick() {
        let cells: Vec<&str> = UDIFF_HEADER.split(',').collect();
        assert_eq!(cells.len(), 34);
        let m = column_map("u.csv", CsvFormat::NseUdiff, &cells).unwrap();
        assert_eq!((m.ts, m.symbol, m.series), (0, 7, Some(8)));
        assert_eq!(
            (m.open, m.high, m.low, m.price),
            (Some(14), Some(15), Some(16), 17)
        );
        assert_eq!(m.volume, 24);
        assert_eq!(m.ts_format, TsFormat::NseDate);
        let err = column_map("u.csv", CsvFormat::NseUdiff, &cells[..20]).unwrap_err();
        assert!(err.to_string().contains("`ttltradgvol`"), "{err}");
    }

    #[test]
    fn canonical_without_price_names_the_column() {
        let err =
            column_map("t.csv", CsvFormat::Canonical, &["ts", "symbol", "volume"]).unwrap_err();
        assert!(
            err.to_string().contains("`price` or `close` or `last`"),
            "{err}"
        );
    }
}
