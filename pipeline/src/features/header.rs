//! Header comments of a feature or rule file: `-- name:`,
//! `-- description:`, `-- lookback:`, `-- delay:`, and for rules
//! `-- threshold:` and `-- kinds:`.

use std::time::Duration;

use super::Lookback;

/// Metadata from a feature file's leading `--` comments.
///
/// ```sql
/// -- name: returns
/// -- description: Log returns over the last tick and the trailing 5 minutes.
/// -- lookback: 5 minutes
/// SELECT ...
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// Short name (defaults to the file stem).
    pub name: Option<String>,
    /// What the features mean; continuation lines are joined.
    pub description: Option<String>,
    /// A lookback that replaces the derived one (for history the plan cannot
    /// show, such as a join to another table).
    pub lookback: Option<Lookback>,
    /// A rule file's alert threshold: a tick alerts when its score is at
    /// least this.
    pub threshold: Option<f64>,
    /// Delayed confirmation: the file may read up to this many later ticks
    /// of the symbol (`lead(x, k)`, `ROWS ... k FOLLOWING`), and a tick's
    /// features are final, so it is scored, once they have arrived.
    pub delay: Option<u64>,
    /// A rule file's manipulation kinds (`-- kinds: spoofing, layering`):
    /// what a case it fires in likely is. Each of `a-z`, `0-9` and `_`.
    pub kinds: Vec<String>,
}

impl Header {
    /// Parses the leading comment block; `Err((line, message))` on a bad
    /// value.
    pub fn parse(sql: &str) -> Result<Self, (usize, String)> {
        let mut h = Header::default();
        let mut last_key: Option<&str> = None;
        for (i, raw) in sql.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let Some(comment) = line.strip_prefix("--") else {
                break;
            };
            let comment = comment.trim();
            let (key, value) = match comment.split_once(':') {
                Some((k, v)) if is_key(k.trim()) => (k.trim(), v.trim()),
                _ => {
                    if last_key == Some("description") && !comment.is_empty() {
                        if let Some(d) = h.description.as_mut() {
                            d.push(' ');
                            d.push_str(comment);
                        }
                    }
                    continue;
                }
            };
            last_key = Some(match key {
                "name" => {
                    h.name = Some(value.to_owned());
                    "name"
                }
                "description" => {
                    h.description = Some(value.to_owned());
                    "description"
                }
                "delay" => {
                    h.delay = Some(parse_delay(value).map_err(|m| (i + 1, m))?);
                    "delay"
                }
                "kinds" => {
                    h.kinds = parse_kinds(value).map_err(|m| (i + 1, m))?;
                    "kinds"
                }
                "threshold" => {
                    let t: f64 = value
                        .parse()
                        .ok()
                        .filter(|t: &f64| t.is_finite())
                        .ok_or_else(|| {
                            (i + 1, format!("threshold {value:?}: expected a number"))
                        })?;
                    h.threshold = Some(t);
                    "threshold"
                }
                _ => {
                    h.lookback = Some(parse_lookback(value).map_err(|m| (i + 1, m))?);
                    "lookback"
                }
            });
        }
        Ok(h)
    }
}

fn is_key(k: &str) -> bool {
    matches!(
        k,
        "name" | "description" | "lookback" | "delay" | "threshold" | "kinds"
    )
}

/// Parses `spoofing, layering`: kinds as labels name them (1 to 40 of
/// `a-z`, `0-9`, `_`), sorted, without repeats.
pub fn parse_kinds(s: &str) -> Result<Vec<String>, String> {
    let mut kinds = Vec::new();
    for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let plain = k.len() <= 40
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(format!(
                "kinds {s:?}: {k:?} is not a kind (1 to 40 of a-z, 0-9 and _), \
                 e.g. `-- kinds: spoofing, layering`"
            ));
        }
        kinds.push(k.to_owned());
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// Parses `5 ticks` (a delay is counted in ticks: the streaming executor
/// waits for that many later ticks of the symbol).
pub fn parse_delay(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.trim().parse().map_err(|_| {
        format!("delay {s:?}: expected a whole number of ticks, e.g. `-- delay: 5 ticks`")
    })?;
    match unit.trim().to_ascii_lowercase().as_str() {
        "ticks" | "tick" | "rows" | "row" => Ok(n),
        other => Err(format!(
            "delay {s:?}: unit {other:?}; a delay is a number of ticks (`-- delay: 5 ticks`)"
        )),
    }
}

/// Parses `30 minutes`, `5m`, `200 ticks`, `1h, 50 ticks`.
pub fn parse_lookback(s: &str) -> Result<Lookback, String> {
    let mut lb = Lookback::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let split = part
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(part.len());
        let (num, unit) = part.split_at(split);
        let n: f64 = num.trim().parse().map_err(|_| {
            format!(
                "lookback {part:?}: expected a number and a unit, e.g. `30 minutes` or `200 ticks`"
            )
        })?;
        let secs = match unit.trim().to_ascii_lowercase().as_str() {
            "ticks" | "tick" | "rows" | "row" => {
                lb.rows = lb.rows.max(n.ceil() as u64);
                continue;
            }
            "ms" | "millisecond" | "milliseconds" => n / 1e3,
            "s" | "sec" | "secs" | "second" | "seconds" => n,
            "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
            "h" | "hour" | "hours" => n * 3600.0,
            "d" | "day" | "days" => n * 86_400.0,
            other => {
                return Err(format!(
                "lookback {part:?}: unknown unit {other:?} (ms, s, minutes, hours, days or ticks)"
            ))
            }
        };
        lb.time = lb.time.max(Duration::from_secs_f64(secs));
    }
    Ok(lb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_names_its_kinds() {
        let h = Header::parse("-- kinds: spoofing, layering,spoofing\nSELECT 1").unwrap();
        assert_eq!(h.kinds, ["layering", "spoofing"]);
        assert!(Header::parse("SELECT 1").unwrap().kinds.is_empty());
        let (line, e) = Header::parse("-- name: r\n-- kinds: Spoofing!\nSELECT 1").unwrap_err();
        assert_eq!(line, 2);
        assert!(e.contains("\"Spoofing!\" is not a kind"), "{e}");
    }

    #[test]
    fn reads_the_leading_comments_only() {
        let h = Header::parse(
            "-- name: returns\n-- description: Log returns\n--   over two horizons.\n-- lookback: 5 minutes, 3 ticks\n\nSELECT 1 -- name: ignored\n",
        )
        .unwrap();
        assert_eq!(h.name.as_deref(), Some("returns"));
        assert_eq!(
            h.description.as_deref(),
            Some("Log returns over two horizons.")
        );
        assert_eq!(
            h.lookback,
            Some(Lookback {
                time: Duration::from_secs(300),
                rows: 3
            })
        );
        assert_eq!(Header::parse("SELECT 1").unwrap(), Header::default());
    }

    #[test]
    fn delays_are_tick_counts() {
        let h = Header::parse("-- name: confirm\n-- delay: 5 ticks\nSELECT 1").unwrap();
        assert_eq!(h.delay, Some(5));
        let err = Header::parse("-- name: x\n-- delay: 2 minutes\nSELECT 1").unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("number of ticks"), "{}", err.1);
        assert!(parse_delay("many").is_err());
    }

    #[test]
    fn bad_lookbacks_name_the_line() {
        let err = Header::parse("-- name: x\n-- lookback: 5 fortnights\nSELECT 1").unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("fortnights"), "{}", err.1);
        assert!(parse_lookback("soon").is_err());
        assert_eq!(parse_lookback("90s").unwrap().time, Duration::from_secs(90));
        assert_eq!(
            parse_lookback("1.5h").unwrap().time,
            Duration::from_secs(5400)
        );
    }
}
