//! `--max-future`, shared by the streaming commands (`detect`,
//! `market-context`, `ingest live`): how far ahead of its arrival a tick's
//! timestamp may be.

use std::time::Duration;

use clap::Args;

use crate::tick::Validator;

/// The validation flags of a streaming command.
#[derive(Debug, Clone, Args)]
pub struct FutureArgs {
    /// How far a tick's timestamp may be ahead of its arrival (the Kafka
    /// message's timestamp, or the wall clock when the message has none or
    /// for a live feed): `5s`, `500ms`, `2m`, `1h` or seconds. A tick beyond
    /// is refused as `timestamp_in_future` (dead-lettered and counted), so
    /// one tick stamped hours ahead cannot make every later real tick of
    /// its symbol `late`. Allow for the clock skew between the producers
    /// and this host.
    #[arg(
        long,
        env = "STOCKANOMALY_MAX_FUTURE",
        default_value = "5s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub max_future: Duration,
}

impl FutureArgs {
    /// A validator on the system clock with this bound.
    pub fn validator(&self) -> Validator {
        Validator::new().with_max_future(self.max_future)
    }
}

/// Parses `1.5`, `1.5s`, `250ms`, `2m` or `1h` into a duration; no negative,
/// NaN or unit-less garbage.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use ms, s, m or h (e.g. 5s)"
            ))
        }
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5s, 500ms, 2m)"))?;
    let secs = v * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is not a duration of 0 or more (e.g. 5s)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        future: FutureArgs,
    }

    #[test]
    fn durations_parse_with_and_without_units() {
        for (s, want) in [
            ("5", 5_000),
            ("5s", 5_000),
            ("0.5", 500),
            ("250ms", 250),
            ("2m", 120_000),
            ("1h", 3_600_000),
            (" 3 s ", 3_000),
            ("0", 0),
        ] {
            assert_eq!(parse_duration(s).map(|d| d.as_millis()), Ok(want), "{s}");
        }
        for bad in ["", "s", "-1s", "5d", "NaNs", "inf", "1e300h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_flag_defaults_to_five_seconds() {
        let c = Cmd::try_parse_from(["x"]).unwrap();
        assert_eq!(c.future.max_future, Duration::from_secs(5));
        let c = Cmd::try_parse_from(["x", "--max-future", "90s"]).unwrap();
        assert_eq!(c.future.max_future, Duration::from_secs(90));
        assert!(Cmd::try_parse_from(["x", "--max-future", "soon"]).is_err());
    }

    /// Every streaming command takes the flag (and its variable).
    #[test]
    fn the_streaming_commands_take_it() {
        use crate::cli::{Cli, Command, IngestCommand};
        let parse =
            |args: &[&str]| Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let c = parse(&[
            "stockanomaly",
            "detect",
            "--rules",
            "--source",
            "kafka://b/t",
            "--database-url",
            "postgres://x/y",
            "--max-future",
            "2s",
        ]);
        let Command::Detect(d) = c.command else {
            panic!("not detect")
        };
        assert_eq!(d.future.max_future, Duration::from_secs(2));
        let c = parse(&[
            "stockanomaly",
            "market-context",
            "--source",
            "kafka://b/t",
            "--max-future",
            "250ms",
        ]);
        let Command::MarketContext(m) = c.command else {
            panic!("not market-context")
        };
        assert_eq!(m.future.max_future, Duration::from_millis(250));
        let c = parse(&[
            "stockanomaly",
            "ingest",
            "live",
            "alpaca",
            "--symbols",
            "AAPL",
            "--max-future",
            "1m",
        ]);
        let Command::Ingest(i) = c.command else {
            panic!("not ingest")
        };
        let IngestCommand::Live(l) = i.command else {
            panic!("not ingest live")
        };
        assert_eq!(l.future.max_future, Duration::from_secs(60));
        assert_eq!(
            l.future.validator().max_future(),
            Duration::from_secs(60),
            "the validator gets it"
        );
    }
}
