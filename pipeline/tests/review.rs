//! The analyst's loop against real parts: alerts written by a real detector
//! run into PostgreSQL, `stockanomaly serve` over HTTP, its JSON API, headless
//! Chromium driving the pages, `labels export` into the lake, and `train`
//! learning from the exported verdicts.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use common::ok;
use serde_json::{json, Value};

/// A running `stockanomaly serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(dir: &Path, url: &str, lake: &str, extra: &[&str]) -> Server {
        let mut child = common::bin()
            .current_dir(dir)
            .args([
                "serve",
                "--database-url",
                url,
                "--lake",
                lake,
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next().unwrap().unwrap();
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .trim_end_matches('/')
            .to_owned();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `path`: (status, body).
fn get(base: &str, path: &str) -> (u16, String) {
    let mut r = agent().get(&format!("{base}{path}")).call().unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap())
}

fn get_json(base: &str, path: &str) -> Value {
    let (status, body) = get(base, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// POST a JSON body: (status, parsed answer).
fn post_json(base: &str, path: &str, body: &Value, origin: Option<&str>) -> (u16, Value) {
    let mut req = agent()
        .post(&format!("{base}{path}"))
        .header("Content-Type", "application/json");
    if let Some(o) = origin {
        req = req.header("Origin", o);
    }
    let mut r = req.send(body.to_string()).unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn verdict(base: &str, id: i64, status: &str, kind: Option<&str>) -> Value {
    let (code, body) = post_json(
        base,
        &format!("/api/alerts/{id}/dispositions"),
        &json!({"status": status, "kind": kind, "note": "from the test", "analyst": "rust"}),
        None,
    );
    assert_eq!(code, 201, "{body}");
    body
}

/// `SELECT count(*) FROM alerts WHERE <cond>` with one parameter.
async fn count_where(
    client: &tokio_postgres::Client,
    cond: &str,
    param: &(dyn tokio_postgres::types::ToSql + Sync),
) -> u64 {
    let n: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM alerts WHERE {cond}"),
            &[param],
        )
        .await
        .unwrap()
        .get(0);
    n as u64
}

/// The JSON API: filters, paging, validation, escaping, history.
async fn api_checks(base: &str, client: &tokio_postgres::Client) {
    let all = get_json(base, "/api/alerts?per_page=500");
    let total = all["total"].as_i64().unwrap();
    let alerts = all["alerts"].as_array().unwrap();
    assert!(total > 2, "the detector run raised alerts: {total}");
    assert_eq!(alerts.len() as i64, total.min(500));
    let scores: Vec<f64> = alerts
        .iter()
        .map(|a| a["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted by score");

    // Filters narrow the queue to exactly the matching alerts.
    let total_of = |v: &Value| v["total"].as_u64().unwrap();
    let sym = alerts[0]["symbol"].as_str().unwrap().to_owned();
    let got = get_json(base, &format!("/api/alerts?symbol={sym}&per_page=500"));
    assert_eq!(
        total_of(&got),
        count_where(client, "symbol = $1", &sym).await
    );
    assert!(got["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["symbol"] == sym.as_str()));
    let min = scores[scores.len() / 2];
    let got = get_json(base, &format!("/api/alerts?min_score={min}"));
    assert_eq!(
        total_of(&got),
        count_where(client, "score >= $1", &min).await
    );
    let day = alerts[0]["ts"].as_str().unwrap()[..10].to_owned();
    let got = get_json(base, &format!("/api/alerts?from={day}&to={day}"));
    let want = count_where(client, "(ts AT TIME ZONE 'UTC')::date::text = $1", &day).await;
    assert_eq!(total_of(&got), want);
    assert!(want > 0 && want < total as u64, "one day of several");
    for kind in ["model", "rule"] {
        let got = get_json(base, &format!("/api/alerts?kind={kind}"));
        assert_eq!(
            total_of(&got),
            count_where(client, "detector = $1", &kind).await
        );
    }
    let version = alerts[0]["model_version"].as_str().unwrap().to_owned();
    let got = get_json(base, &format!("/api/alerts?model_version={version}"));
    assert_eq!(
        total_of(&got),
        count_where(client, "model_version = $1", &version).await
    );
    // Paging: two pages of one alert each are the first two alerts.
    let p2 = get_json(base, "/api/alerts?per_page=1&page=2");
    assert_eq!(p2["alerts"][0]["id"], alerts[1]["id"]);

    // Bad input: 400 with the parameter named, never a 500.
    for (path, word) in [
        ("/api/alerts?min_score=abc", "min_score"),
        ("/api/alerts?kind=robot", "kind"),
        ("/api/alerts?status=done", "status"),
        ("/api/alerts?per_page=0", "per_page"),
        ("/api/alerts?from=yesterday", "from"),
        ("/api/alerts/abc", "alert id"),
        ("/api/alerts/-3", "alert id"),
        ("/alerts/1%27%20OR%201=1", "alert id"),
    ] {
        let (status, body) = get(base, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(word), "{path}: {body}");
    }
    let (status, _) = get(base, "/api/alerts/999999999");
    assert_eq!(status, 404);
    let (status, _) = get(base, "/alerts/999999999");
    assert_eq!(status, 404);

    // A verdict with markup: stored as typed, escaped on the page.
    let id = alerts.last().unwrap()["id"].as_i64().unwrap();
    let (code, body) = post_json(
        base,
        &format!("/api/alerts/{id}/dispositions"),
        &json!({"status": "escalated", "note": "<img src=x onerror=alert(1)>", "analyst": "eve"}),
        None,
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["note"], "<img src=x onerror=alert(1)>");
    let (_, page) = get(base, &format!("/alerts/{id}"));
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "escaped"
    );
    assert!(!page.contains("<img src=x"), "never rendered as markup");
    // Invalid verdicts and foreign origins are refused and store nothing.
    for bad in [
        json!({"status": "approved", "analyst": "eve"}),
        json!({"status": "confirmed", "analyst": ""}),
        json!({"status": "dismissed", "kind": "spoofing", "analyst": "eve"}),
        json!({"status": "confirmed", "kind": "DROP TABLE", "analyst": "eve"}),
        json!({"analyst": "eve"}),
    ] {
        let (code, body) = post_json(base, &format!("/api/alerts/{id}/dispositions"), &bad, None);
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (code, _) = post_json(
        base,
        &format!("/api/alerts/{id}/dispositions"),
        &json!({"status": "dismissed", "analyst": "mallory"}),
        Some("https://evil.example"),
    );
    assert_eq!(code, 403);
    // A second verdict supersedes the first; both are kept.
    verdict(base, id, "dismissed", None);
    let history = get_json(base, &format!("/api/alerts/{id}/dispositions"));
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["escalated", "dismissed"]);
    let detail = get_json(base, &format!("/api/alerts/{id}"));
    assert_eq!(detail["status"], "dismissed");
    // The shipped pack confirms over 5 later ticks (confirm.sql).
    assert_eq!(detail["delay_ticks"], 5, "{detail}");
    let open = get_json(base, "/api/alerts?status=dismissed&per_page=500");
    assert_eq!(open["total"], 1);

    // The evidence: ticks of the alert's symbol around it, in order.
    let ev = get_json(base, &format!("/api/alerts/{id}/evidence"));
    let ts: Vec<i64> = ev["ts_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert!(!ts.is_empty(), "evidence ticks from the lake");
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(ev["price"].as_array().unwrap().len(), ts.len());
    let (status, doc) = get(base, "/api");
    assert_eq!(status, 200);
    assert!(doc.contains("POST /api/alerts/{id}/dispositions"));
}

/// `pos` of each split in `train`'s metrics table.
fn split_positives(train_out: &str) -> std::collections::BTreeMap<String, (String, u64)> {
    train_out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name @ ("train" | "valid" | "test"), dates, _rows, pos, ..] => {
                    Some(((*name).to_owned(), ((*dates).to_owned(), pos.parse().ok()?)))
                }
                _ => None,
            }
        })
        .collect()
}

/// Runs the browser script; returns its JSON line.
fn browser(base: &str, out: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/review.mjs");
    let output = std::process::Command::new("node")
        .arg(&script)
        .arg(base)
        .arg(out)
        .env(
            "CHROMIUM",
            std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        )
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run node (the test command installs Node.js packages and Chromium): {e}")
        });
    assert!(
        output.status.success(),
        "the browser test failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("browser script printed {stdout:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn analysts_review_alerts_in_a_browser_and_their_verdicts_train_the_next_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = common::detector_run::detector_run_days(dir.path(), "review", 3).await;
    let lake = run.lake.to_str().unwrap();
    let server = Server::start(dir.path(), &run.db.url, lake, &[]);
    let base = server.base.as_str();

    let client = run.db.client().await;
    api_checks(base, &client).await;

    // The evidence from PostgreSQL's tick store equals the lake's: the
    // lake's window copied into `ticks`, read by a server told to use it.
    let id = get_json(base, "/api/alerts?kind=model&per_page=1")["alerts"][0]["id"]
        .as_i64()
        .unwrap();
    let from_lake = get_json(base, &format!("/api/alerts/{id}/evidence"));
    let symbol = from_lake["symbol"].as_str().unwrap();
    let ts = from_lake["ts_us"].as_array().unwrap();
    assert!(ts.len() > 10, "{from_lake}");
    for (i, t) in ts.iter().enumerate() {
        let at = chrono::DateTime::from_timestamp_micros(t.as_i64().unwrap()).unwrap();
        let (price, volume) = (
            from_lake["price"][i].as_f64().unwrap(),
            from_lake["volume"][i].as_f64().unwrap(),
        );
        client
            .execute(
                "INSERT INTO ticks (symbol, ts, seq, price, volume, source) \
                 VALUES ($1, $2, $3, $4, $5, 'test')",
                &[&symbol, &at, &(i as i32), &price, &volume],
            )
            .await
            .unwrap();
    }
    let pg_server = Server::start(
        dir.path(),
        &run.db.url,
        "/nonexistent-lake",
        &["--ticks-from", "postgres"],
    );
    let from_pg = get_json(&pg_server.base, &format!("/api/alerts/{id}/evidence"));
    assert_eq!(
        from_pg, from_lake,
        "PostgreSQL's evidence equals the lake's"
    );
    let (status, page) = get(&pg_server.base, &format!("/alerts/{id}"));
    assert_eq!(status, 200);
    assert!(
        page.contains("polyline class=\"price\""),
        "the chart is drawn"
    );
    drop(pg_server);

    // History is never overwritten, whoever asks.
    let e = client
        .execute("UPDATE dispositions SET status = 'confirmed'", &[])
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("append-only"), "{e:?}");

    // The analyst in Chromium: queue, filter, alert page, verdict.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("review-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let seen = browser(base, &shots);
    for f in ["queue.png", "alert.png"] {
        let len = std::fs::metadata(shots.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "{f} is a real screenshot ({len} bytes)");
    }
    eprintln!("screenshots in {}", shots.display());
    let confirmed_id = seen["alert_id"].as_i64().unwrap();
    let detail = get_json(base, &format!("/api/alerts/{confirmed_id}"));
    assert_eq!(detail["status"], "confirmed");
    assert_eq!(detail["dispositions"][0]["kind"], "spoofing");
    assert_eq!(detail["dispositions"][0]["analyst"], "playwright");

    // Only the analysts' labels from here on: without them training has
    // nothing to learn from.
    for entry in walk(&Path::new(lake).join("labels")) {
        std::fs::remove_file(entry).unwrap();
    }
    let q = common::queries();
    let q = q.to_str().unwrap();
    let train_args = [
        "train",
        "--lake",
        lake,
        "--queries",
        q,
        "--rounds",
        "5",
        "--valid-days",
        "1",
        "--test-days",
        "1",
        "--out",
        "m2",
    ];
    let out = common::run(dir.path(), &train_args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no positive labels"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Verdicts on the first two days (train and valid splits): two more
    // confirmations a day, and one dismissal, beside the browser's.
    let days: Vec<String> = common::sql_json(
        dir.path(),
        lake,
        "SELECT DISTINCT date FROM ticks ORDER BY date",
    )
    .iter()
    .map(|d| d["date"].as_str().unwrap().to_owned())
    .collect();
    assert!(days.len() >= 3, "train, valid and test days: {days:?}");
    let mut confirmed: Vec<(String, String)> = vec![(
        detail["symbol"].as_str().unwrap().to_owned(),
        detail["ts"].as_str().unwrap().to_owned(),
    )];
    for (i, day) in days[..2].iter().enumerate() {
        let open = get_json(
            base,
            &format!("/api/alerts?kind=model&status=open&from={day}&to={day}&per_page=3"),
        );
        let open = open["alerts"].as_array().unwrap();
        assert!(open.len() == 3, "open model alerts on {day}: {open:?}");
        for a in &open[..2] {
            verdict(
                base,
                a["id"].as_i64().unwrap(),
                "confirmed",
                Some("wash_trading"),
            );
            confirmed.push((
                a["symbol"].as_str().unwrap().to_owned(),
                a["ts"].as_str().unwrap().to_owned(),
            ));
        }
        if i == 0 {
            verdict(base, open[2]["id"].as_i64().unwrap(), "dismissed", None);
        }
    }
    // The API checks dismissed one alert too.
    let dismissed_total = get_json(base, "/api/alerts?status=dismissed")["total"]
        .as_u64()
        .unwrap();

    let url = run.db.url.as_str();
    let out = ok(
        dir.path(),
        &["labels", "export", "--database-url", url, "--lake", lake],
    );
    assert!(
        out.contains(&format!(
            "exported {} confirmed and {dismissed_total} dismissed",
            confirmed.len()
        )),
        "{out}"
    );
    // Exporting again changes nothing; the labels are the verdicts.
    ok(
        dir.path(),
        &["labels", "export", "--database-url", url, "--lake", lake],
    );
    let labels = common::sql_json(
        dir.path(),
        lake,
        "SELECT symbol, CAST(start_ts AS VARCHAR) AS s, CAST(end_ts AS VARCHAR) AS e, kind, source \
         FROM labels ORDER BY symbol, start_ts, kind",
    );
    assert_eq!(
        labels.len() as u64,
        confirmed.len() as u64 + dismissed_total,
        "{labels:?}"
    );
    assert!(labels
        .iter()
        .all(|l| l["source"] == "review" && l["s"] == l["e"]));
    assert!(
        labels
            .iter()
            .any(|l| l["symbol"] == seen["symbol"] && l["kind"] == "spoofing"),
        "the browser's verdict is a label: {labels:?}"
    );
    assert_eq!(
        labels
            .iter()
            .filter(|l| l["kind"] == "reviewed_negative")
            .count() as u64,
        dismissed_total
    );

    // `train` learns from exactly the confirmed ticks.
    let out = ok(dir.path(), &train_args);
    let splits = split_positives(&out);
    for split in ["train", "valid"] {
        let (dates, pos) = &splits[split];
        let mut want = 0;
        for (sym, ts) in &confirmed {
            if dates.contains(&ts[..10]) {
                want += common::sql_number(
                    dir.path(),
                    lake,
                    &format!(
                        "SELECT count(*) FROM ticks WHERE symbol = '{sym}' \
                         AND ts = CAST('{ts}' AS TIMESTAMP)"
                    ),
                );
            }
        }
        assert!(want > 0, "{split} ({dates}) has confirmed ticks");
        assert_eq!(*pos, want as u64, "{split} positives:\n{out}");
    }
    drop(server);
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
