//! The Grafana provisioning under `grafana/`: the data source files parse
//! and take their credentials from the environment, and every panel and
//! template variable query of every dashboard, expanded the way Grafana's
//! PostgreSQL data source expands it, runs against a database filled by a
//! real detector run and returns rows.
//!
//! Grafana expands a panel's SQL in two steps, reproduced here:
//! 1. the browser replaces template variables (`$symbol`, `${review_url}`,
//!    `$__interval`); a multi-value or include-All variable becomes a list of
//!    quoted literals (`'A','B'`), see `interpolateVariable` in
//!    grafana-sql's `SqlDatasource.ts`;
//! 2. the server replaces `$__interval`/`$__unixEpochFrom()` left over, then
//!    every `$name(args)` macro (pkg/tsdb/grafana-postgresql-datasource/
//!    macros.go): `$__timeFilter(c)` → `c BETWEEN '<from>' AND '<to>'`
//!    (RFC 3339, UTC), `$__timeGroupAlias(c, 1m)` →
//!    `floor(extract(epoch from c)/60)*60 AS "time"`, and so on; an unknown
//!    macro is an error.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

/// The uid every panel must use: the provisioned data source's.
const DATASOURCE_UID: &str = "stockanomaly-pg";
/// The data source type of Grafana's built-in PostgreSQL plugin.
const DATASOURCE_TYPE: &str = "grafana-postgresql-datasource";
/// The environment variables the data source file reads.
const PG_ENV: [&str; 4] = [
    "GRAFANA_PG_HOST",
    "GRAFANA_PG_DATABASE",
    "GRAFANA_PG_USER",
    "GRAFANA_PG_PASSWORD",
];

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}

fn yaml(path: &Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `$VAR` and `${VAR}` with `env`'s values, as Grafana does in the
/// string values of provisioning files; panics on a variable `env` lacks
/// (Grafana would put an empty string).
fn expand_env(text: &str, env: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("unclosed ${");
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        out.push_str(
            env.get(name)
                .unwrap_or_else(|| panic!("${name} has no value")),
        );
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Checks the data source file and returns a connection URL built from its
/// fields, with the variables set to `db_url`'s parts as docker-compose
/// would set them.
fn provisioned_datasource_url(db_url: &str) -> String {
    let path = grafana_dir().join("provisioning/datasources/postgres.yaml");
    let doc = yaml(&path);
    assert_eq!(doc["apiVersion"].as_u64(), Some(1));
    let sources = doc["datasources"].as_sequence().unwrap();
    assert_eq!(sources.len(), 1, "one data source");
    let ds = &sources[0];
    assert_eq!(ds["uid"].as_str(), Some(DATASOURCE_UID));
    assert_eq!(ds["type"].as_str(), Some(DATASOURCE_TYPE));
    // Credentials only from the environment: each field is one variable.
    let fields = [
        (&ds["url"], "GRAFANA_PG_HOST"),
        (&ds["jsonData"]["database"], "GRAFANA_PG_DATABASE"),
        (&ds["user"], "GRAFANA_PG_USER"),
        (&ds["secureJsonData"]["password"], "GRAFANA_PG_PASSWORD"),
    ];
    for (field, var) in fields {
        assert_eq!(
            field.as_str(),
            Some(format!("${{{var}}}").as_str()),
            "{}: a field reads ${var}",
            path.display()
        );
    }
    let readme = std::fs::read_to_string(grafana_dir().join("README.md")).unwrap();
    for var in PG_ENV {
        assert!(readme.contains(var), "grafana/README.md documents {var}");
    }
    // Expand the file as Grafana would with compose's values, then connect
    // with what it says.
    let url = url::Url::parse(db_url).unwrap();
    let env = BTreeMap::from([
        (
            "GRAFANA_PG_HOST",
            format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432)),
        ),
        (
            "GRAFANA_PG_DATABASE",
            url.path().trim_start_matches('/').to_owned(),
        ),
        ("GRAFANA_PG_USER", url.username().to_owned()),
        (
            "GRAFANA_PG_PASSWORD",
            url.password().unwrap_or("").to_owned(),
        ),
    ]);
    // Grafana expands each string value after parsing (comments are not
    // values).
    let value = |v: &serde_yaml::Value| expand_env(v.as_str().unwrap(), &env);
    let mut out = url::Url::parse(&format!("postgres://{}/", value(&ds["url"]))).unwrap();
    out.set_path(&value(&ds["jsonData"]["database"]));
    out.set_username(&value(&ds["user"])).unwrap();
    let password = value(&ds["secureJsonData"]["password"]);
    if !password.is_empty() {
        out.set_password(Some(&password)).unwrap();
    }
    out.to_string()
}

/// Checks the dashboard provider file: it loads the folder docker-compose
/// mounts `grafana/dashboards` on.
fn check_dashboard_provider() {
    let path = grafana_dir().join("provisioning/dashboards/stockanomaly.yaml");
    let doc = yaml(&path);
    assert_eq!(doc["apiVersion"].as_u64(), Some(1));
    let provider = &doc["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert_eq!(
        provider["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
}

/// Every dashboard under `grafana/dashboards/`, by file name.
fn dashboards() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(grafana_dir().join("dashboards")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) == Some("json") {
            let d: Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.insert(path.file_name().unwrap().to_string_lossy().into_owned(), d);
        }
    }
    assert!(!out.is_empty(), "no dashboard in grafana/dashboards");
    out
}

/// The panels of a dashboard, those inside rows included (a collapsed row
/// keeps its panels in its own `panels`).
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A template variable's value while a query is expanded.
#[derive(Clone, Debug)]
enum VarValue {
    /// A single-value variable (textbox, constant, built-ins).
    Text(String),
    /// A multi-value or include-All variable's selection.
    Multi(Vec<String>),
    /// A custom All value, inserted as it is (Grafana never quotes it).
    Raw(String),
}

/// A time range as Grafana's time picker sends it, and the interval it
/// derives for a panel.
#[derive(Clone, Copy, Debug)]
struct TimeRange {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// Grafana's text for a duration (`rangeutil.secondsToHms`): the largest
/// whole unit, e.g. `1d`, `12h`, `1m`, `500ms`.
fn interval_text(d: Duration) -> String {
    let ms = d.num_milliseconds();
    for (unit, len) in [
        ("y", 31_536_000_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= len {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{}ms", ms.max(1))
}

/// `$__interval` for a panel: the range over the panel's data points
/// (`maxDataPoints`, about its width in pixels; 1000 if unset), at least
/// the panel's minimum `interval`, rounded to a round duration as
/// `rangeutil.roundInterval` does (approximately: the exact table only
/// changes how many buckets a query returns).
fn panel_interval(range: TimeRange, panel: &Value) -> Duration {
    let points = panel["maxDataPoints"].as_i64().unwrap_or(1000).max(1);
    let mut ms = (range.to - range.from).num_milliseconds() / points;
    if let Some(min) = panel["interval"].as_str() {
        ms = ms.max(parse_interval(min).unwrap().num_milliseconds());
    }
    let round = [
        1,
        10,
        20,
        50,
        100,
        200,
        500,
        1_000,
        2_000,
        5_000,
        10_000,
        15_000,
        20_000,
        30_000,
        60_000,
        120_000,
        300_000,
        600_000,
        900_000,
        1_200_000,
        1_800_000,
        3_600_000,
        7_200_000,
        10_800_000,
        21_600_000,
        43_200_000,
        86_400_000,
        604_800_000,
        2_592_000_000,
        31_536_000_000,
    ];
    let ms = round
        .iter()
        .copied()
        .find(|r| ms * 2 <= r * 3)
        .unwrap_or(31_536_000_000);
    Duration::milliseconds(ms)
}

/// `gtime.ParseInterval`: `500ms`, `30s`, `1m`, `1h`, `1d`, `1w`, `1y`.
fn parse_interval(s: &str) -> Option<Duration> {
    let s = s.trim().trim_matches('\'');
    let digits = s.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = s[..digits].parse().ok()?;
    Some(match &s[digits..] {
        "ms" => Duration::milliseconds(n),
        "s" => Duration::seconds(n),
        "m" => Duration::minutes(n),
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        "w" => Duration::weeks(n),
        "y" => Duration::days(365 * n),
        _ => return None,
    })
}

/// Step 1, the browser: template variables and the panel's built-ins.
/// Unknown names (the server's macros among them) are left as they are.
fn interpolate_variables(sql: &str, vars: &BTreeMap<String, VarValue>) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match vars.get(name) {
            Some(VarValue::Text(v)) => out.push_str(&v.replace('\'', "''")),
            Some(VarValue::Raw(v)) => out.push_str(v),
            Some(VarValue::Multi(vs)) => out.push_str(
                &vs.iter()
                    .map(|v| format!("'{}'", v.replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            None => {
                out.push('$');
                rest = after;
                continue;
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Go's `time.RFC3339Nano` in UTC.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Go's `%v` of a float64 number of seconds (`60`, `0.5`).
fn seconds(d: Duration) -> String {
    format!("{}", d.num_milliseconds() as f64 / 1000.0)
}

/// One macro of macros.go's `evaluateMacro`.
fn evaluate_macro(name: &str, args: &[&str], range: TimeRange) -> Result<String, String> {
    let col = || {
        args.first()
            .filter(|a| !a.is_empty())
            .copied()
            .ok_or_else(|| format!("missing time column argument for macro {name}"))
    };
    let group = |args: &[&str]| -> Result<String, String> {
        if args.len() < 2 {
            return Err(format!("macro {name} needs time column and interval"));
        }
        // A third argument sets the fill mode, which changes the frame
        // Grafana builds, not the SQL.
        parse_interval(args[1])
            .map(|i| (args[0], seconds(i)))
            .ok_or_else(|| format!("error parsing interval {}", args[1]))
            .map(|(c, s)| format!("floor(extract(epoch from {c})/{s})*{s}"))
    };
    let (from, to) = (range.from, range.to);
    Ok(match name {
        "__time" => format!("{} AS \"time\"", col()?),
        "__timeEpoch" => format!("extract(epoch from {}) as \"time\"", col()?),
        "__timeFilter" => format!(
            "{} BETWEEN '{}' AND '{}'",
            col()?,
            rfc3339(from),
            rfc3339(to)
        ),
        "__timeFrom" => format!("'{}'", rfc3339(from)),
        "__timeTo" => format!("'{}'", rfc3339(to)),
        "__timeGroup" => group(args)?,
        "__timeGroupAlias" => format!("{} AS \"time\"", group(args)?),
        "__unixEpochFilter" => {
            let c = col()?;
            format!("{c} >= {} AND {c} <= {}", from.timestamp(), to.timestamp())
        }
        "__unixEpochGroup" | "__unixEpochGroupAlias" => {
            let i = args
                .get(1)
                .and_then(|a| parse_interval(a))
                .ok_or_else(|| format!("macro {name} needs time column and interval"))?;
            let s = seconds(i);
            let g = format!("floor(({})/{s})*{s}", col()?);
            if name == "__unixEpochGroupAlias" {
                format!("{g} AS \"time\"")
            } else {
                g
            }
        }
        other => return Err(format!("unknown macro \"{other}\"")),
    })
}

/// Step 2, the server: global substitutions, then every `$name(args)`
/// (macros.go's pattern `\$([_a-zA-Z0-9]+)\(([^\)]*)\)`).
fn interpolate_macros(sql: &str, range: TimeRange, interval: Duration) -> Result<String, String> {
    let sql = sql
        .replace("$__interval_ms", &interval.num_milliseconds().to_string())
        .replace("$__interval", &interval_text(interval))
        .replace("$__unixEpochFrom()", &range.from.timestamp().to_string())
        .replace("$__unixEpochTo()", &range.to.timestamp().to_string());
    let mut out = String::new();
    let mut rest = sql.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let call = after[name_len..]
            .strip_prefix('(')
            .and_then(|a| a.find(')').map(|end| &a[..end]));
        let (Some(args), true) = (call, name_len > 0) else {
            out.push('$');
            rest = after;
            continue;
        };
        let mut name = &after[..name_len];
        let consumed = name_len + args.len() + 2;
        // macros.go: `$__timeGroup(..)` directly followed by a comma is
        // the pre-5.3 form, which aliases the column.
        if name == "__timeGroup" && after[consumed..].starts_with(',') {
            name = "__timeGroupAlias";
        }
        let args: Vec<&str> = args.split(',').map(str::trim).collect();
        out.push_str(&evaluate_macro(name, &args, range)?);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Both steps for a query of `panel` (a template variable's query has no
/// panel: pass `Value::Null`).
fn expand(
    sql: &str,
    panel: &Value,
    range: TimeRange,
    vars: &BTreeMap<String, VarValue>,
) -> Result<String, String> {
    let interval = panel_interval(range, panel);
    let mut vars = vars.clone();
    vars.insert("__interval".into(), VarValue::Text(interval_text(interval)));
    vars.insert(
        "__interval_ms".into(),
        VarValue::Text(interval.num_milliseconds().to_string()),
    );
    vars.insert(
        "__from".into(),
        VarValue::Text(range.from.timestamp_millis().to_string()),
    );
    vars.insert(
        "__to".into(),
        VarValue::Text(range.to.timestamp_millis().to_string()),
    );
    interpolate_macros(&interpolate_variables(sql, &vars), range, interval)
}

/// The rows of `sql` as text (NULL as `None`), with the column names.
async fn run(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), tokio_postgres::Error> {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
            _ => {}
        }
    }
    Ok((columns, rows))
}

/// A template variable's SQL: a string, or (newer dashboards) an object
/// with `rawSql`.
fn variable_sql(v: &Value) -> &str {
    v["query"]
        .as_str()
        .or_else(|| v["query"]["rawSql"].as_str())
        .unwrap_or_else(|| panic!("variable {}: no query", v["name"]))
}

/// A dashboard's variables as Grafana resolves them on load over `range`
/// (query variables run their query and select All), and each query
/// variable's values, to pick from.
struct Variables {
    selected: BTreeMap<String, VarValue>,
    options: BTreeMap<String, Vec<String>>,
}

/// Resolves and checks a dashboard's variables over `range`; with
/// `expect_values`, each query variable must find a value.
async fn resolve_variables(
    client: &tokio_postgres::Client,
    dashboard: &Value,
    range: TimeRange,
    expect_values: bool,
) -> Variables {
    let title = dashboard["title"].as_str().unwrap();
    let mut vars = Variables {
        selected: BTreeMap::new(),
        options: BTreeMap::new(),
    };
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap().to_owned();
        let value = match v["type"].as_str().unwrap() {
            "query" => {
                assert_eq!(
                    v["datasource"]["uid"], DATASOURCE_UID,
                    "{title}: variable {name}: data source"
                );
                assert!(
                    v["multi"] == true && v["includeAll"] == true,
                    "{title}: variable {name}: multi-value with All, used as `IN (${name})`"
                );
                let sql = expand(variable_sql(v), &Value::Null, range, &vars.selected)
                    .unwrap_or_else(|e| panic!("{title}: variable {name}: {e}"));
                assert!(
                    !sql.contains('$'),
                    "{title}: variable {name}: unexpanded `$` in\n{sql}"
                );
                let (_, rows) = run(client, &sql)
                    .await
                    .unwrap_or_else(|e| panic!("{title}: variable {name}: {e}\n{sql}"));
                let values: Vec<String> = rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .collect();
                assert!(
                    !expect_values || !values.is_empty(),
                    "{title}: variable {name} has no value:\n{sql}"
                );
                vars.options.insert(name.clone(), values.clone());
                match v["allValue"].as_str().filter(|a| !a.is_empty()) {
                    Some(all) => VarValue::Raw(all.to_owned()),
                    None => VarValue::Multi(values),
                }
            }
            "textbox" | "constant" | "custom" => {
                VarValue::Text(v["query"].as_str().unwrap_or("").to_owned())
            }
            other => panic!("{title}: variable {name}: type {other} not expected"),
        };
        vars.selected.insert(name, value);
    }
    vars
}

/// What one dashboard's queries returned: panel title → per target
/// (columns, rows).
type Results = BTreeMap<String, Vec<(Vec<String>, Vec<Vec<Option<String>>>)>>;

/// Checks and runs every target of every panel of `dashboard` over `range`
/// with `vars`. Errors and unexpanded `$` fail with the panel's title.
async fn run_panels(
    client: &tokio_postgres::Client,
    dashboard: &Value,
    range: TimeRange,
    vars: &BTreeMap<String, VarValue>,
) -> Results {
    let title = dashboard["title"].as_str().unwrap();
    let mut out = Results::new();
    for p in panels(dashboard) {
        let panel = p["title"].as_str().unwrap();
        assert_eq!(
            p["datasource"]["uid"], DATASOURCE_UID,
            "{title} / {panel}: data source uid"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} / {panel}: no query");
        assert!(
            !out.contains_key(panel),
            "{title}: two panels titled {panel}"
        );
        for t in targets {
            let at = format!("{title} / {panel} / {}", t["refId"]);
            if !t["datasource"].is_null() {
                assert_eq!(
                    t["datasource"]["uid"], DATASOURCE_UID,
                    "{at}: data source uid"
                );
            }
            assert_eq!(t["rawQuery"], true, "{at}: raw SQL");
            assert_eq!(t["editorMode"], "code", "{at}: code editor");
            let format = t["format"].as_str().unwrap();
            assert!(
                format == "time_series" || format == "table",
                "{at}: format {format}"
            );
            let sql = expand(t["rawSql"].as_str().unwrap(), p, range, vars)
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            assert!(!sql.contains('$'), "{at}: unexpanded `$` in\n{sql}");
            let (columns, rows) = run(client, &sql)
                .await
                .unwrap_or_else(|e| panic!("{at}: {e}\n{sql}"));
            if format == "time_series" {
                assert!(
                    columns.iter().any(|c| c == "time"),
                    "{at}: a time series needs a `time` column, got {columns:?}"
                );
            }
            out.entry(panel.to_owned())
                .or_default()
                .push((columns, rows));
        }
    }
    out
}

/// Asserts every panel returned rows, and that a time series has a value
/// in some series (not only NULLs, which Grafana draws as nothing).
fn assert_data(dashboard: &Value, results: &Results, range: TimeRange) {
    let title = dashboard["title"].as_str().unwrap();
    for (panel, (columns, rows)) in results
        .iter()
        .flat_map(|(p, ts)| ts.iter().map(move |t| (p, t)))
    {
        assert!(
            !rows.is_empty(),
            "{title} / {panel}: no row over {} .. {}",
            rfc3339(range.from),
            rfc3339(range.to)
        );
        let valued = rows.iter().any(|r| {
            r.iter()
                .zip(columns)
                .any(|(v, c)| c != "time" && c != "metric" && v.is_some())
        });
        assert!(valued, "{title} / {panel}: only NULL values: {rows:?}");
    }
}

/// A dashboard's default range (`now-24h` .. `now`), which must be relative
/// to now so a live deployment sees its latest data.
fn default_range(dashboard: &Value, now: DateTime<Utc>) -> TimeRange {
    let title = dashboard["title"].as_str().unwrap();
    assert_eq!(dashboard["time"]["to"], "now", "{title}: time.to");
    let from = dashboard["time"]["from"].as_str().unwrap();
    let back = from
        .strip_prefix("now-")
        .and_then(parse_interval)
        .unwrap_or_else(|| panic!("{title}: time.from {from} is not now-<duration>"));
    TimeRange {
        from: now - back,
        to: now,
    }
}

/// Checks the data links of every panel: each `${name}` is a dashboard
/// variable or `__data.fields.<column>` of the panel's result; returns the
/// links expanded with the first row, by panel title.
fn data_links(
    dashboard: &Value,
    results: &Results,
    vars: &BTreeMap<String, VarValue>,
) -> BTreeMap<String, Vec<String>> {
    let title = dashboard["title"].as_str().unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in panels(dashboard) {
        let panel = p["title"].as_str().unwrap();
        let mut links: Vec<&Value> = Vec::new();
        links.extend(
            p["fieldConfig"]["defaults"]["links"]
                .as_array()
                .into_iter()
                .flatten(),
        );
        for o in p["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for prop in o["properties"].as_array().into_iter().flatten() {
                if prop["id"] == "links" {
                    links.extend(prop["value"].as_array().into_iter().flatten());
                }
            }
        }
        let (columns, rows) = &results[panel][0];
        for link in links {
            let url = link["url"].as_str().unwrap();
            let mut expanded = String::new();
            let mut rest = url;
            while let Some(i) = rest.find("${") {
                expanded.push_str(&rest[..i]);
                let end = rest[i..].find('}').unwrap() + i;
                let name = &rest[i + 2..end];
                let value = if let Some(field) = name.strip_prefix("__data.fields.") {
                    let c = columns.iter().position(|c| c == field).unwrap_or_else(|| {
                        panic!("{title} / {panel}: link field {field} not in {columns:?}")
                    });
                    rows[0][c].clone().unwrap()
                } else {
                    match vars.get(name) {
                        Some(VarValue::Text(v)) => v.clone(),
                        _ => {
                            panic!("{title} / {panel}: link variable {name} is not a text variable")
                        }
                    }
                };
                expanded.push_str(&value);
                rest = &rest[end + 1..];
            }
            expanded.push_str(rest);
            assert!(!expanded.contains('$'), "{title} / {panel}: {expanded}");
            out.entry(panel.to_owned()).or_default().push(expanded);
        }
    }
    out
}

#[tokio::test]
async fn every_dashboard_query_runs_on_a_detector_run_and_shows_data() {
    let started = std::time::Instant::now();
    check_dashboard_provider();
    let dir = tempfile::tempdir().unwrap();
    let detector = common::detector_run::detector_run(dir.path(), "grafana").await;
    let detected = started.elapsed();
    // Analysts' verdicts on the first two opened cases, as the review page
    // records them, for the review panels (verdicts by kind, time to one).
    let owner = detector.db.client().await;
    let judged = owner
        .execute(
            "INSERT INTO case_dispositions (case_ref, status, kind, analyst) \
             SELECT id, CASE WHEN row_number() OVER (ORDER BY id) = 1 THEN 'confirmed' \
             ELSE 'dismissed' END, CASE WHEN row_number() OVER (ORDER BY id) = 1 \
             THEN 'spoofing' END, 'grafana-test' \
             FROM cases WHERE opened_ts IS NOT NULL ORDER BY id LIMIT 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(judged, 2, "the detector run opened two cases");
    // Connect as the provisioned data source would.
    let client =
        stockanomaly::sinks::postgres::connect(&provisioned_datasource_url(&detector.db.url))
            .await
            .unwrap();
    let now = Utc::now();
    // The simulator's ticks are from January 2024, and the alert panels
    // filter on tick time (alerts.ts, indexed); a live deployment's ticks are
    // current. Here the range reaches back to the first alert, as an analyst
    // looking at a replay would set it.
    let first: f64 = client
        .query_one(
            "SELECT extract(epoch FROM min(ts))::float8 FROM alerts",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let first = DateTime::from_timestamp_micros((first * 1e6) as i64).unwrap();
    let replay = TimeRange {
        from: first - Duration::hours(1),
        to: now + Duration::minutes(1),
    };

    let mut links = BTreeMap::new();
    let mut queries = 0;
    for (file, d) in dashboards() {
        let title = d["title"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no title"));
        assert!(d["uid"].is_string(), "{file}: no uid");
        assert!(
            d["schemaVersion"].as_u64().unwrap() >= 36,
            "{file}: schemaVersion (data sources by uid)"
        );
        // Every query runs under the default range, where the alerts (of
        // January 2024) are out of range: a quiet day must not break a
        // panel. Only the detector health panels, filtered on when rows were
        // written (now), must show data there.
        let default = default_range(&d, now);
        let vars = resolve_variables(&client, &d, default, false).await;
        let in_default = run_panels(&client, &d, default, &vars.selected).await;
        if d["uid"] == "stockanomaly-detectors" {
            assert_data(&d, &in_default, default);
        }
        let vars = resolve_variables(&client, &d, replay, true).await;
        let results = run_panels(&client, &d, replay, &vars.selected).await;
        assert_data(&d, &results, replay);
        queries += results.len();
        // One value of each query variable, as a user picks one: a quoted
        // list of one. (A panel may be empty then: the first version may be
        // a rule's, which has no model scores.)
        let mut one = vars.selected.clone();
        for (name, values) in &vars.options {
            one.insert(name.clone(), VarValue::Multi(values[..1].to_vec()));
        }
        run_panels(&client, &d, replay, &one).await;
        for (panel, urls) in data_links(&d, &results, &vars.selected) {
            links.insert(format!("{title} / {panel}"), urls);
        }
    }

    // The latest alerts link to the review page, by alert id.
    let review: Vec<&String> = links.values().flatten().collect();
    assert!(
        review
            .iter()
            .any(|u| u.starts_with("http://127.0.0.1:8080/alerts/")),
        "a link to the review page: {links:?}"
    );
    assert!(
        review
            .iter()
            .any(|u| u.starts_with("http://127.0.0.1:8080/cases/")),
        "a link to a case's review page: {links:?}"
    );
    for u in &review {
        if let Some(id) = u.strip_prefix("http://127.0.0.1:8080/cases/") {
            let id: i64 = id.parse().unwrap_or_else(|e| panic!("{u}: {e}"));
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM cases WHERE id = $1 AND opened_ts IS NOT NULL",
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 1, "{u} names an opened case");
        }
    }
    for u in review {
        if let Some(id) = u.strip_prefix("http://127.0.0.1:8080/alerts/") {
            let id: i64 = id.parse().unwrap_or_else(|e| panic!("{u}: {e}"));
            let n: i64 = client
                .query_one("SELECT count(*) FROM alerts WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 1, "{u} names an alert");
        }
    }
    eprintln!(
        "grafana: {queries} panels checked; detector run {:.1} s, all {:.1} s",
        detected.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The expansion above against examples of Grafana's own macro tests
/// (macros_test.go) and of its variable formatting, so the big test
/// checks what Grafana would run.
#[test]
fn expansion_matches_grafana() {
    let from = DateTime::parse_from_rfc3339("2018-04-12T18:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let range = TimeRange {
        from,
        to: from + Duration::minutes(5),
    };
    let macros = |sql: &str| interpolate_macros(sql, range, Duration::minutes(1));
    assert_eq!(
        macros("WHERE $__timeFilter(time_column)").unwrap(),
        "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    );
    assert_eq!(
        macros("SELECT $__timeGroup(time_column,'5m')").unwrap(),
        "SELECT floor(extract(epoch from time_column)/300)*300"
    );
    assert_eq!(
        macros("SELECT $__timeGroupAlias(time_column , '5m')").unwrap(),
        "SELECT floor(extract(epoch from time_column)/300)*300 AS \"time\""
    );
    // The pre-5.3 form: followed by a comma, the group is aliased.
    assert_eq!(
        macros("SELECT $__timeGroup(time_column,'5m'), value").unwrap(),
        "SELECT floor(extract(epoch from time_column)/300)*300 AS \"time\", value"
    );
    assert_eq!(
        macros("select $__timeFrom(), $__timeTo()").unwrap(),
        "select '2018-04-12T18:00:00Z', '2018-04-12T18:05:00Z'"
    );
    assert_eq!(
        macros("select $__unixEpochFilter(time)").unwrap(),
        "select time >= 1523556000 AND time <= 1523556300"
    );
    assert_eq!(
        macros("SELECT $__unixEpochGroupAlias(time_column+time_adjustment,'5m')").unwrap(),
        "SELECT floor((time_column+time_adjustment)/300)*300 AS \"time\""
    );
    assert!(macros("SELECT $__nope(ts)")
        .unwrap_err()
        .contains("unknown macro"));
    assert_eq!(
        rfc3339(from + Duration::milliseconds(500)),
        "2018-04-12T18:00:00.500Z",
        "sub-second times keep their digits (Go trims trailing zeros; same instant)"
    );

    // The browser: lists quoted, a custom All as it is, unknown names kept.
    let vars = BTreeMap::from([
        (
            "symbol".to_owned(),
            VarValue::Multi(vec!["A".into(), "O'B".into()]),
        ),
        (
            "model_version".to_owned(),
            VarValue::Raw("model_version".into()),
        ),
        ("url".to_owned(), VarValue::Text("http://x".into())),
    ]);
    assert_eq!(
        interpolate_variables(
            "symbol IN ($symbol) AND model_version IN (${model_version}) AND $__timeFilter(ts) -- $url $symbl",
            &vars
        ),
        "symbol IN ('A','O''B') AND model_version IN (model_version) AND $__timeFilter(ts) -- http://x $symbl"
    );
    let panel = serde_json::json!({});
    let sql = expand(
        "SELECT $__timeGroupAlias(ts, $__interval) FROM t WHERE $__timeFilter(ts)",
        &panel,
        range,
        &vars,
    )
    .unwrap();
    // 5 minutes over 1000 points is 300 ms: rounded to 200 ms.
    assert_eq!(
        sql,
        "SELECT floor(extract(epoch from ts)/0.2)*0.2 AS \"time\" FROM t \
         WHERE ts BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    );
}
