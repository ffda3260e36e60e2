//! The analyst's loop against real parts: alerts written by a real detector
//! run into PostgreSQL, `stockanomaly serve` over HTTP, its JSON API, headless
//! Chromium driving the pages, `labels export` into the lake, and `train`
//! learning from the exported verdicts. Then who may do what (accounts made
//! by `stockanomaly users`, sessions, roles, cross-site posts, an SSO proxy,
//! the server's database role) and the load a stranger can cause (idle
//! connections, bursts), each against a real server over raw HTTP.

mod common;
mod review_support;

use std::path::Path;

use common::ok;
use review_support::{
    cookie_value, csrf_in, csrf_of_form, get, post_form, post_json, sign_in, sign_in_with, Fixture,
    Server,
};
use serde_json::{json, Value};

/// The analyst account the API checks sign in as (HTTP Basic), and its
/// password.
const RUST: (&str, &str) = ("rust", "rust's long password");
/// The account the browser signs in as.
const PLAYWRIGHT: (&str, &str) = ("playwright", "playwright's password");

/// A server and who asks it: the API with HTTP Basic as [`RUST`], pages
/// with a session of the same account.
struct Who {
    base: String,
    session: String,
}

impl Who {
    async fn new(base: &str) -> Who {
        Who {
            base: base.to_owned(),
            session: sign_in(base, RUST.0, RUST.1).await,
        }
    }

    /// GET `path`: (status, body); the API with Basic, pages with the session.
    async fn get(&self, path: &str) -> (u16, String) {
        let req = get(path);
        let req = if path.starts_with("/api") {
            req.basic(RUST.0, RUST.1)
        } else {
            req.cookie(&self.session)
        };
        let r = req.send(&self.base).await;
        (r.status, r.body)
    }

    async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// POST a JSON body as a script would (Basic): (status, parsed answer).
    async fn post_json(&self, path: &str, body: &Value, origin: Option<&str>) -> (u16, Value) {
        let mut req = post_json(path, body).basic(RUST.0, RUST.1);
        if let Some(o) = origin {
            req = req.origin(o);
        }
        let r = req.send(&self.base).await;
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::String(r.body)),
        )
    }

    async fn verdict(&self, id: i64, status: &str, kind: Option<&str>) -> Value {
        let (code, body) = self
            .post_json(
                &format!("/api/alerts/{id}/dispositions"),
                &json!({"status": status, "kind": kind, "note": "from the test"}),
                None,
            )
            .await;
        assert_eq!(code, 201, "{body}");
        body
    }
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
async fn api_checks(who: &Who, client: &tokio_postgres::Client) {
    let all = who.get_json("/api/alerts?per_page=500").await;
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
    let got = who
        .get_json(&format!("/api/alerts?symbol={sym}&per_page=500"))
        .await;
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
    let got = who.get_json(&format!("/api/alerts?min_score={min}")).await;
    assert_eq!(
        total_of(&got),
        count_where(client, "score >= $1", &min).await
    );
    let day = alerts[0]["ts"].as_str().unwrap()[..10].to_owned();
    let got = who
        .get_json(&format!("/api/alerts?from={day}&to={day}"))
        .await;
    let want = count_where(client, "(ts AT TIME ZONE 'UTC')::date::text = $1", &day).await;
    assert_eq!(total_of(&got), want);
    assert!(want > 0 && want < total as u64, "one day of several");
    for kind in ["model", "rule"] {
        let got = who.get_json(&format!("/api/alerts?kind={kind}")).await;
        assert_eq!(
            total_of(&got),
            count_where(client, "detector = $1", &kind).await
        );
    }
    let version = alerts[0]["model_version"].as_str().unwrap().to_owned();
    let got = who
        .get_json(&format!("/api/alerts?model_version={version}"))
        .await;
    assert_eq!(
        total_of(&got),
        count_where(client, "model_version = $1", &version).await
    );
    // Paging: two pages of one alert each are the first two alerts.
    let p2 = who.get_json("/api/alerts?per_page=1&page=2").await;
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
        let (status, body) = who.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(word), "{path}: {body}");
    }
    let (status, _) = who.get("/api/alerts/999999999").await;
    assert_eq!(status, 404);
    let (status, _) = who.get("/alerts/999999999").await;
    assert_eq!(status, 404);

    // A verdict with markup: stored as typed, escaped on the page.
    let id = alerts.last().unwrap()["id"].as_i64().unwrap();
    let (code, body) = who
        .post_json(
            &format!("/api/alerts/{id}/dispositions"),
            &json!({"status": "escalated", "note": "<img src=x onerror=alert(1)>"}),
            None,
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["note"], "<img src=x onerror=alert(1)>");
    assert_eq!(body["analyst"], RUST.0, "the signed-in user");
    let (_, page) = who.get(&format!("/alerts/{id}")).await;
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "escaped"
    );
    assert!(!page.contains("<img src=x"), "never rendered as markup");
    // Invalid verdicts and foreign origins are refused and store nothing.
    for bad in [
        json!({"status": "approved"}),
        json!({"status": "confirmed", "analyst": "eve"}),
        json!({"status": "dismissed", "kind": "spoofing"}),
        json!({"status": "confirmed", "kind": "DROP TABLE"}),
        json!({"note": "no status"}),
    ] {
        let (code, body) = who
            .post_json(&format!("/api/alerts/{id}/dispositions"), &bad, None)
            .await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (code, _) = who
        .post_json(
            &format!("/api/alerts/{id}/dispositions"),
            &json!({"status": "dismissed"}),
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(code, 403);
    // A second verdict supersedes the first; both are kept.
    who.verdict(id, "dismissed", None).await;
    let history = who
        .get_json(&format!("/api/alerts/{id}/dispositions"))
        .await;
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["escalated", "dismissed"]);
    let detail = who.get_json(&format!("/api/alerts/{id}")).await;
    assert_eq!(detail["status"], "dismissed");
    // The shipped pack confirms over 5 later ticks (confirm.sql).
    assert_eq!(detail["delay_ticks"], 5, "{detail}");
    let open = who
        .get_json("/api/alerts?status=dismissed&per_page=500")
        .await;
    assert_eq!(open["total"], 1);

    // The evidence: ticks of the alert's symbol around it, in order.
    let ev = who.get_json(&format!("/api/alerts/{id}/evidence")).await;
    let ts: Vec<i64> = ev["ts_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert!(!ts.is_empty(), "evidence ticks from the lake");
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(ev["price"].as_array().unwrap().len(), ts.len());
    let (status, doc) = who.get("/api").await;
    assert_eq!(status, 200);
    assert!(doc.contains("POST /api/alerts/{id}/dispositions"));
}

/// The case API: the queue of opened cases (sorts, filters), one case with
/// exactly its alerts, its evidence, verdicts. Dismisses the last case of
/// the queue and returns it.
async fn case_api_checks(who: &Who, client: &tokio_postgres::Client) -> Value {
    let all = who.get_json("/api/cases?per_page=500").await;
    let cases = all["cases"].as_array().unwrap();
    let opened: i64 = client
        .query_one(
            "SELECT count(*) FROM cases WHERE opened_ts IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(opened >= 2, "the detector run opened cases: {opened}");
    assert_eq!(all["total"].as_i64().unwrap(), opened, "only opened cases");
    assert_eq!(cases.len() as i64, opened.min(500));
    let field = |v: &Value, k: &str| -> Vec<f64> {
        v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[k].as_f64().unwrap_or(f64::NEG_INFINITY))
            .collect()
    };
    let descending = |xs: &[f64]| xs.windows(2).all(|w| w[0] >= w[1]);
    assert_eq!(all["sort"], "case_score");
    assert!(descending(&field(&all, "case_score")), "by case score");
    for (sort, key) in [("alerts", "alerts"), ("peak_score", "peak_score")] {
        let got = who
            .get_json(&format!("/api/cases?per_page=500&sort={sort}"))
            .await;
        assert_eq!(got["total"], all["total"]);
        assert!(descending(&field(&got, key)), "sorted by {sort}: {got}");
    }
    let (status, body) = who.get("/api/cases?sort=score").await;
    assert_eq!(status, 400);
    assert!(body.contains("sort must be one of case_score"), "{body}");
    for (path, word) in [("/api/cases/abc", "case id"), ("/cases/-1", "case id")] {
        let (status, body) = who.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(word), "{path}: {body}");
    }
    let (status, body) = who.get("/api/cases/999999999").await;
    assert_eq!(
        (status, body.contains("no case with id")),
        (404, true),
        "{body}"
    );

    // Filters, each against PostgreSQL's own count.
    let count = |cond: String| async move {
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM cases WHERE opened_ts IS NOT NULL AND {cond}"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let sym = cases[0]["symbol"].as_str().unwrap().to_owned();
    let got = who.get_json(&format!("/api/cases?symbol={sym}")).await;
    assert_eq!(got["total"], count(format!("symbol = '{sym}'")).await);
    let min = cases[cases.len() / 2]["case_score"].as_f64().unwrap();
    let got = who.get_json(&format!("/api/cases?min_score={min:?}")).await;
    assert_eq!(got["total"], count(format!("case_score >= {min:?}")).await);
    for (kind, cond) in [
        ("model", "model_alerts > 0"),
        ("rule", "alerts > model_alerts"),
    ] {
        let got = who.get_json(&format!("/api/cases?kind={kind}")).await;
        assert_eq!(got["total"], count(cond.to_owned()).await, "{kind}");
    }

    // One case: its alerts are exactly its alerting ticks, in its span.
    for c in cases.iter().take(5) {
        let id = c["id"].as_i64().unwrap();
        let d = who.get_json(&format!("/api/cases/{id}")).await;
        let alerts = d["case_alerts"].as_array().unwrap();
        let ticks: std::collections::BTreeSet<(String, i64)> = alerts
            .iter()
            .map(|a| {
                (
                    a["ts"].as_str().unwrap().to_owned(),
                    a["seq"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ticks.len() as i64, d["alerts"].as_i64().unwrap(), "{d}");
        let model = alerts.iter().filter(|a| a["kind"] == "model").count();
        assert_eq!(model as i64, d["model_alerts"].as_i64().unwrap(), "{d}");
        assert!(alerts.iter().all(|a| a["symbol"] == d["symbol"]));
        assert_eq!(alerts[0]["ts"], d["start_ts"]);
        assert_eq!(alerts.last().unwrap()["ts"], d["end_ts"]);
        assert!(d["opened_at"].is_string(), "the detector stored when: {d}");
        let ev = who.get_json(&format!("/api/cases/{id}/evidence")).await;
        let start = chrono::DateTime::parse_from_rfc3339(d["start_ts"].as_str().unwrap())
            .unwrap()
            .timestamp_micros();
        assert!(ev["start_us"].as_i64().unwrap() <= start - 300_000_000);
        assert!(!ev["ts_us"].as_array().unwrap().is_empty(), "{ev}");
        let (status, page) = who.get(&format!("/cases/{id}")).await;
        assert_eq!(status, 200);
        let lines = page.matches("class=\"alert-marker ").count();
        assert!(lines >= 1 && lines <= ticks.len(), "{lines} markers");
    }
    // A case that has not opened is nobody's work: no page, no verdict.
    let unopened: Option<i64> = client
        .query_opt("SELECT id FROM cases WHERE opened_ts IS NULL LIMIT 1", &[])
        .await
        .unwrap()
        .map(|r| r.get(0));
    if let Some(id) = unopened {
        let (status, _) = who.get(&format!("/api/cases/{id}")).await;
        assert_eq!(status, 404);
        let (code, _) = who
            .post_json(
                &format!("/api/cases/{id}/dispositions"),
                &json!({"status": "dismissed"}),
                None,
            )
            .await;
        assert_eq!(code, 404);
    }

    // A verdict on a case, kept with its history.
    let last = cases.last().unwrap().clone();
    let id = last["id"].as_i64().unwrap();
    for status in ["escalated", "dismissed"] {
        let (code, body) = who
            .post_json(
                &format!("/api/cases/{id}/dispositions"),
                &json!({"status": status, "note": "<b>not</b> an episode"}),
                None,
            )
            .await;
        assert_eq!(code, 201, "{body}");
        assert_eq!(
            (body["case"].as_i64(), &body["analyst"]),
            (Some(id), &json!(RUST.0))
        );
    }
    let (code, _) = who
        .post_json(
            &format!("/api/cases/{id}/dispositions"),
            &json!({"status": "confirmed", "kind": "Bad Kind"}),
            None,
        )
        .await;
    assert_eq!(code, 400);
    let history = who.get_json(&format!("/api/cases/{id}/dispositions")).await;
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    let d = who.get_json(&format!("/api/cases/{id}")).await;
    assert_eq!(d["status"], "dismissed");
    let got = who.get_json("/api/cases?status=dismissed").await;
    assert_eq!(got["total"], 1);
    assert_eq!(got["cases"][0]["id"], id);
    let (_, page) = who.get(&format!("/cases/{id}")).await;
    assert!(
        page.contains("&lt;b&gt;not&lt;/b&gt; an episode"),
        "escaped"
    );
    let e = client
        .execute("DELETE FROM case_dispositions", &[])
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("append-only"), "{e:?}");
    d
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
fn browser(base: &str, out: &Path, (user, password): (&str, &str)) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/review.mjs");
    let output = std::process::Command::new("node")
        .arg(&script)
        .arg(base)
        .arg(out)
        .env(
            "CHROMIUM",
            std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        )
        .env("REVIEW_USER", user)
        .env("REVIEW_PASSWORD", password)
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
    // The accounts: one for the API's script, one for the browser, each
    // made as an administrator would.
    for (name, pw) in [RUST, PLAYWRIGHT] {
        let out = common::bin()
            .current_dir(dir.path())
            .env("STOCKANOMALY_PASSWORD", pw)
            .args(["users", "add", name, "--role", "analyst", "--database-url"])
            .arg(&run.db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = Server::start(dir.path(), &run.db.url, &["--lake", lake]);
    let base = server.base.as_str();
    let who = Who::new(base).await;

    let client = run.db.client().await;
    api_checks(&who, &client).await;
    let dismissed_case = case_api_checks(&who, &client).await;

    // The evidence from PostgreSQL's tick store equals the lake's: the
    // lake's window copied into `ticks`, read by a server told to use it.
    let id = who.get_json("/api/alerts?kind=model&per_page=1").await["alerts"][0]["id"]
        .as_i64()
        .unwrap();
    let from_lake = who.get_json(&format!("/api/alerts/{id}/evidence")).await;
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
        &["--lake", "/nonexistent-lake", "--ticks-from", "postgres"],
    );
    let pg_who = Who::new(&pg_server.base).await;
    let from_pg = pg_who.get_json(&format!("/api/alerts/{id}/evidence")).await;
    assert_eq!(
        from_pg, from_lake,
        "PostgreSQL's evidence equals the lake's"
    );
    let (status, page) = pg_who.get(&format!("/alerts/{id}")).await;
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
    let seen = browser(base, &shots, PLAYWRIGHT);
    for f in ["cases.png", "case.png", "queue.png", "alert.png"] {
        let len = std::fs::metadata(shots.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "{f} is a real screenshot ({len} bytes)");
    }
    eprintln!("screenshots in {}", shots.display());
    let confirmed_id = seen["alert_id"].as_i64().unwrap();
    let detail = who.get_json(&format!("/api/alerts/{confirmed_id}")).await;
    assert_eq!(detail["status"], "confirmed");
    assert_eq!(detail["dispositions"][0]["kind"], "spoofing");
    assert_eq!(detail["dispositions"][0]["analyst"], "playwright");
    let case = who
        .get_json(&format!("/api/cases/{}", seen["case_id"]))
        .await;
    assert_eq!(case["status"], "confirmed", "{case}");
    assert_eq!(case["symbol"], seen["case_symbol"]);
    assert_eq!(case["dispositions"][0]["kind"], "spoofing");
    assert_eq!(case["dispositions"][0]["analyst"], "playwright");
    assert_ne!(case["id"], dismissed_case["id"]);

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
        let open = who
            .get_json(&format!(
                "/api/alerts?kind=model&status=open&from={day}&to={day}&per_page=3"
            ))
            .await;
        let open = open["alerts"].as_array().unwrap();
        assert!(open.len() == 3, "open model alerts on {day}: {open:?}");
        for a in &open[..2] {
            who.verdict(a["id"].as_i64().unwrap(), "confirmed", Some("wash_trading"))
                .await;
            confirmed.push((
                a["symbol"].as_str().unwrap().to_owned(),
                a["ts"].as_str().unwrap().to_owned(),
            ));
        }
        if i == 0 {
            who.verdict(open[2]["id"].as_i64().unwrap(), "dismissed", None)
                .await;
        }
    }
    // The API checks dismissed one alert too.
    let dismissed_total = who.get_json("/api/alerts?status=dismissed").await["total"]
        .as_u64()
        .unwrap();

    let url = run.db.url.as_str();
    let out = ok(
        dir.path(),
        &["labels", "export", "--database-url", url, "--lake", lake],
    );
    assert!(
        out.contains(&format!(
            "exported {} confirmed and {dismissed_total} dismissed alerts, \
             1 confirmed and 1 dismissed cases",
            confirmed.len()
        )),
        "{out}"
    );
    // Exporting again changes nothing; the labels are the verdicts.
    ok(
        dir.path(),
        &["labels", "export", "--database-url", url, "--lake", lake],
    );
    let mut labels = common::sql_json(
        dir.path(),
        lake,
        "SELECT symbol, CAST(start_ts AS VARCHAR) AS s, CAST(end_ts AS VARCHAR) AS e, \
         CAST(start_ts AS BIGINT) AS s_us, CAST(end_ts AS BIGINT) AS e_us, kind, source \
         FROM labels ORDER BY symbol, start_ts, kind",
    );
    assert_eq!(
        labels.len() as u64,
        confirmed.len() as u64 + dismissed_total + 2,
        "{labels:?}"
    );
    // Each case is a label over its span: the confirmed one of its kind,
    // the dismissed one a reviewed negative.
    let us = |c: &Value, k: &str| {
        chrono::DateTime::parse_from_rfc3339(c[k].as_str().unwrap())
            .unwrap()
            .timestamp_micros()
    };
    for (c, kind) in [(&case, "spoofing"), (&dismissed_case, "reviewed_negative")] {
        let at = labels
            .iter()
            .position(|l| {
                l["symbol"] == c["symbol"]
                    && l["kind"] == kind
                    && l["s_us"].as_i64() == Some(us(c, "start_ts"))
                    && l["e_us"].as_i64() == Some(us(c, "end_ts"))
            })
            .unwrap_or_else(|| panic!("a {kind} label over case {c}: {labels:?}"));
        labels.remove(at);
    }
    // The alerts' labels are their ticks.
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

    // `train` learns from exactly the confirmed ticks: the confirmed
    // alerts' and those over the confirmed case.
    let out = ok(dir.path(), &train_args);
    let splits = split_positives(&out);
    let mut positive: Vec<String> = confirmed
        .iter()
        .map(|(sym, ts)| format!("(symbol = '{sym}' AND ts = CAST('{ts}' AS TIMESTAMP))"))
        .collect();
    positive.push(format!(
        "(symbol = '{}' AND ts BETWEEN CAST('{}' AS TIMESTAMP) AND CAST('{}' AS TIMESTAMP))",
        case["symbol"].as_str().unwrap(),
        case["start_ts"].as_str().unwrap(),
        case["end_ts"].as_str().unwrap()
    ));
    for split in ["train", "valid"] {
        let (dates, pos) = &splits[split];
        let in_split: Vec<String> = days
            .iter()
            .filter(|d| dates.contains(d.as_str()))
            .map(|d| format!("'{d}'"))
            .collect();
        let want = common::sql_number(
            dir.path(),
            lake,
            &format!(
                "SELECT count(*) FROM ticks WHERE CAST(date AS VARCHAR) IN ({}) AND ({})",
                in_split.join(", "),
                positive.join(" OR ")
            ),
        );
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

// ---------------------------------------------------------------------------
// Who may do what, and the load a stranger can cause: a migrated database
// with a handful of alerts, accounts made by `stockanomaly users`, a real
// `serve`, raw HTTP.

const ANA_PW: &str = "ana's long password";
const VIC_PW: &str = "vic's long password";

#[tokio::test(flavor = "multi_thread")]
async fn strangers_get_401_or_the_login_page_and_viewers_cannot_give_verdicts() {
    let f = Fixture::new("authz").await;
    f.add_user("ana", "analyst", ANA_PW);
    f.add_user("vic", "viewer", VIC_PW);
    let server = f.serve(&[]);
    let base = server.base.as_str();
    let id = f.alerts[0];

    // Nobody: 401 for the API (with a Basic challenge), the login page for
    // pages, for every route but the health check.
    for path in ["/api/alerts", &format!("/api/alerts/{id}"), "/api"] {
        let r = get(path).send(base).await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        assert!(r.json()["error"].as_str().unwrap().contains("sign in"));
    }
    let r = get(&format!("/alerts/{id}")).send(base).await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some(format!("/login?next=%2Falerts%2F{id}").as_str())
    );
    assert_eq!(get("/").send(base).await.header("location"), Some("/login"));
    assert_eq!(get("/healthz").send(base).await.status, 200);
    let verdict = json!({"status": "confirmed", "kind": "spoofing"});
    let path = format!("/api/alerts/{id}/dispositions");
    let r = post_json(&path, &verdict).send(base).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Wrong credentials are wrong, whichever part is.
    for (user, pw) in [("ana", "not her password"), ("nobody", ANA_PW), ("ana", "")] {
        let r = get("/api/alerts").basic(user, pw).send(base).await;
        assert_eq!(r.status, 401, "{user}");
    }
    // A viewer reads, and cannot give a verdict: 403, nothing stored.
    let r = get("/api/alerts").basic("vic", VIC_PW).send(base).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["total"], 6);
    let r = post_json(&path, &verdict)
        .basic("vic", VIC_PW)
        .send(base)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("analyst role"), "{}", r.body);
    assert_eq!(f.verdicts().await, 0);
    // Nor on a case (refused before the case is even looked up), and a
    // stranger gets nothing of the case queue.
    let r = post_json("/api/cases/1/dispositions", &verdict)
        .basic("vic", VIC_PW)
        .send(base)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(get("/api/cases").send(base).await.status, 401);
    let r = get("/api/cases").basic("vic", VIC_PW).send(base).await;
    assert_eq!(
        (r.status, &r.json()["total"]),
        (200, &json!(0)),
        "{}",
        r.body
    );

    // An analyst's script (HTTP Basic, no browser headers) gives one; the
    // verdict records who signed in, not what the body claims.
    let r = post_json(&path, &verdict)
        .basic("ana", ANA_PW)
        .send(base)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["analyst"], "ana");
    let spoofed = json!({"status": "dismissed", "analyst": "mallory"});
    let r = post_json(&path, &spoofed)
        .basic("ana", ANA_PW)
        .send(base)
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("signed-in user (ana)"), "{}", r.body);
    let row = f
        .db
        .client()
        .await
        .query_one(
            "SELECT d.analyst, u.name FROM dispositions d JOIN review_users u ON u.id = d.user_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("ana".into(), "ana".into())
    );
    // A script's post from a page elsewhere (a browser with cached Basic
    // credentials says so in its headers) is refused.
    for bad in [
        post_json(&path, &verdict).origin("https://evil.example"),
        post_json(&path, &verdict).header("Sec-Fetch-Site", "cross-site"),
    ] {
        let r = bad.basic("ana", ANA_PW).send(base).await;
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert_eq!(f.verdicts().await, 1);

    // Paging stops at 10 000 alerts deep.
    let r = get("/api/alerts?page=21&per_page=500")
        .basic("vic", VIC_PW)
        .send(base)
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("page × per_page"), "{}", r.body);
}

/// The login form posted as a browser at `from` would: (status, answer).
async fn login_from(base: &str, name: &str, password: &str, from: &str) -> review_support::Reply {
    let page = get("/login").from(from).send(base).await;
    let cookie = format!(
        "sa_login={}",
        cookie_value(page.set_cookie("sa_login").unwrap())
    );
    post_form(
        "/login",
        &[
            ("name", name),
            ("password", password),
            ("csrf", &csrf_in(&page.body)),
            ("next", "/"),
        ],
    )
    .origin(base)
    .cookie(&cookie)
    .from(from)
    .send(base)
    .await
}

/// The review server had no limit on failed sign-ins: a stranger could try
/// passwords against an account, or one password against every account,
/// as fast as Argon2 allowed. Now five failures (login form and HTTP Basic
/// alike) lock the account out from anywhere, and apart the address for
/// any account, with 429 and Retry-After, the right password included;
/// the lockout ends on its own and a success starts the counts over.
#[tokio::test(flavor = "multi_thread")]
async fn failed_sign_ins_lock_the_account_and_the_address_out() {
    let f = Fixture::new("throttle").await;
    f.add_user("ana", "analyst", ANA_PW);
    f.add_user("vic", "viewer", VIC_PW);
    let server = f.serve(&["--login-lockout-minutes", "0.05"]);
    let base = server.base.as_str();

    // Four wrong passwords on the form from one address, a fifth by Basic
    // from another: each a plain 401.
    for _ in 0..4 {
        let r = login_from(base, "ana", "not her password", "127.0.0.2").await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = get("/api/alerts")
        .basic("ana", "not her password")
        .from("127.0.0.3")
        .send(base)
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // The account is locked out, from a third address, right password and
    // all, on the form and the API.
    let r = login_from(base, "ana", ANA_PW, "127.0.0.4").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.set_cookie("sa_session").is_none());
    assert!(r.body.contains("too many failed sign-ins"), "{}", r.body);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&wait), "{wait}");
    let r = get("/api/alerts")
        .basic("ana", ANA_PW)
        .from("127.0.0.4")
        .send(base)
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert!(r.json()["error"].as_str().unwrap().contains("try again"));
    // Another account from that address is not.
    let r = get("/api/alerts")
        .basic("vic", VIC_PW)
        .from("127.0.0.4")
        .send(base)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // One address trying five names is locked out for every name.
    for name in ["a1", "a2", "a3", "a4", "a5"] {
        let r = login_from(base, name, "guess", "127.0.0.5").await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = login_from(base, "vic", VIC_PW, "127.0.0.5").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert!(login_from(base, "vic", VIC_PW, "127.0.0.6").await.status == 303);

    // The lockout ends by itself; a success then clears the count, so one
    // more mistake is a 401 again, not a lockout.
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let r = login_from(base, "ana", ANA_PW, "127.0.0.2").await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = login_from(base, "ana", "not her password", "127.0.0.2").await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = login_from(base, "ana", ANA_PW, "127.0.0.2").await;
    assert_eq!(r.status, 303, "{}", r.body);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("too many failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_rotates_the_session_and_cross_site_form_posts_are_refused() {
    let f = Fixture::new("session").await;
    f.add_user("ana", "analyst", ANA_PW);
    f.add_user("vic", "viewer", VIC_PW);
    let server = f.serve(&[]);
    let base = server.base.as_str();
    let id = f.alerts[1];

    // The login form: a token in the page and in an HttpOnly cookie.
    let page = get("/login?next=/alerts/3").send(base).await;
    assert_eq!(page.status, 200);
    let login_cookie = page.set_cookie("sa_login").unwrap().to_owned();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let token = csrf_in(&page.body);
    let cookie = format!("sa_login={}", cookie_value(&login_cookie));
    // Another login page (a second tab, a browser's icon request sent to
    // sign in) keeps the token, or the first page's form would be stale.
    let again = get("/login").cookie(&cookie).send(base).await;
    assert_eq!(csrf_in(&again.body), token);
    let fields = |pw: &'static str, csrf: &str| -> Vec<(String, String)> {
        vec![
            ("name".into(), "ana".into()),
            ("password".into(), pw.into()),
            ("csrf".into(), csrf.into()),
            ("next".into(), "/alerts/3".into()),
        ]
    };
    let form = |v: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        post_form("/login", &pairs)
    };
    // Refused: no Origin, another site's, a token that is not the cookie's,
    // a wrong password.
    let ok = fields(ANA_PW, &token);
    let r = form(&ok).cookie(&cookie).send(base).await;
    assert_eq!(r.status, 403, "no Origin: {}", r.body);
    let r = form(&ok)
        .cookie(&cookie)
        .origin("https://evil.example")
        .send(base)
        .await;
    assert_eq!(r.status, 403, "foreign Origin: {}", r.body);
    let r = form(&fields(ANA_PW, &"0".repeat(64)))
        .cookie(&cookie)
        .origin(base)
        .send(base)
        .await;
    assert_eq!(r.status, 403, "forged token: {}", r.body);
    let r = form(&fields("not her password", &token))
        .cookie(&cookie)
        .origin(base)
        .send(base)
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.set_cookie("sa_session").is_none());
    // Signed in: an HttpOnly, SameSite session cookie (not Secure over
    // plain http), back to where the user was going.
    let r = form(&ok).cookie(&cookie).origin(base).send(base).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/alerts/3"));
    let set = r.set_cookie("sa_session").unwrap();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let first = format!("sa_session={}", cookie_value(set));

    // Rotated at sign-in: signing in again with the old cookie gives a new
    // token, and the old one is dead.
    let second = sign_in_with(base, "ana", ANA_PW, Some(&first))
        .await
        .unwrap();
    assert_ne!(first, second);
    let r = get("/").cookie(&first).send(base).await;
    assert_eq!(r.status, 303, "the old session still works");
    let r = get("/").cookie(&second).send(base).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("ana (analyst)"), "{}", r.body);

    // The verdict form carries the session's CSRF token; posting it is
    // refused from another site (foreign or absent Origin) and without the
    // token, and stores nothing; from this site with it, it is stored.
    let page = get(&format!("/alerts/{id}"))
        .cookie(&second)
        .send(base)
        .await;
    assert_eq!(page.status, 200);
    let csrf = csrf_of_form(&page.body, "verdict");
    let action = format!("/alerts/{id}/disposition");
    let verdict = |csrf: &str| {
        post_form(
            &action,
            &[
                ("status", "confirmed"),
                ("kind", "spoofing"),
                ("note", "x"),
                ("csrf", csrf),
            ],
        )
    };
    let r = verdict(&csrf).cookie(&second).send(base).await;
    assert_eq!(r.status, 403, "a form without Origin: {}", r.body);
    let r = verdict(&csrf)
        .cookie(&second)
        .origin("https://evil.example")
        .send(base)
        .await;
    assert_eq!(r.status, 403, "a form from another site: {}", r.body);
    let r = verdict(&csrf)
        .cookie(&second)
        .origin("null")
        .send(base)
        .await;
    assert_eq!(r.status, 403, "a form from a sandboxed page: {}", r.body);
    let r = verdict("").cookie(&second).origin(base).send(base).await;
    assert_eq!(r.status, 403, "a form without its token: {}", r.body);
    // (the token another session's pages carry, computed as the server does)
    let other = stockanomaly::review::auth::CsrfKey::for_session(cookie_value(&first));
    let r = verdict(&other)
        .cookie(&second)
        .origin(base)
        .send(base)
        .await;
    assert_eq!(r.status, 403, "another session's token: {}", r.body);
    assert_eq!(f.verdicts().await, 0, "nothing stored by refused posts");
    let r = verdict(&csrf).cookie(&second).origin(base).send(base).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let stored = get(&format!("/api/alerts/{id}"))
        .cookie(&second)
        .send(base)
        .await;
    assert_eq!(stored.json()["dispositions"][0]["analyst"], "ana");
    // The JSON API with the session cookie needs this site's Origin too.
    let body = json!({"status": "dismissed"});
    let api = format!("/api/alerts/{id}/dispositions");
    let r = post_json(&api, &body).cookie(&second).send(base).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post_json(&api, &body)
        .cookie(&second)
        .origin(base)
        .send(base)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(f.verdicts().await, 2);

    // A viewer's page has no verdict form, and their post is refused.
    let vic = sign_in(base, "vic", VIC_PW).await;
    let page = get(&format!("/alerts/{id}")).cookie(&vic).send(base).await;
    assert!(page.body.contains("id=\"viewer-only\""));
    assert!(!page.body.contains("id=\"verdict\""));
    let vic_csrf = csrf_in(&page.body);
    let r = verdict(&vic_csrf)
        .cookie(&vic)
        .origin(base)
        .send(base)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(f.verdicts().await, 2);

    // DNS rebinding: another name for this address is not served, even
    // with a valid session.
    let r = get("/")
        .cookie(&second)
        .host(&format!("evil.example:{}", server.addr.port()))
        .send(base)
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = get("/")
        .cookie(&second)
        .host(&format!("localhost:{}", server.addr.port()))
        .send(base)
        .await;
    assert_eq!(r.status, 200);

    // Signing out ends the session.
    let r = post_form("/logout", &[("csrf", &csrf)])
        .cookie(&second)
        .origin(base)
        .send(base)
        .await;
    assert_eq!(r.status, 303);
    assert!(r.set_cookie("sa_session").unwrap().contains("Max-Age=0"));
    assert_eq!(get("/").cookie(&second).send(base).await.status, 303);

    // `users disable` and `users passwd` end sessions at once.
    let s = sign_in(base, "ana", ANA_PW).await;
    f.users(&["disable", "ana"], None);
    assert_eq!(get("/").cookie(&s).send(base).await.status, 303);
    assert_eq!(
        get("/api/alerts")
            .basic("ana", ANA_PW)
            .send(base)
            .await
            .status,
        401
    );
    assert!(sign_in_with(base, "ana", ANA_PW, None).await.is_err());
    f.users(&["enable", "ana"], None);
    let s = sign_in(base, "ana", ANA_PW).await;
    f.users(&["passwd", "ana"], Some("a brand new password"));
    assert_eq!(get("/").cookie(&s).send(base).await.status, 303);
    assert!(sign_in_with(base, "ana", ANA_PW, None).await.is_err());
    sign_in(base, "ana", "a brand new password").await;
    let list = f.users(&["list"], None);
    assert!(
        list.contains("ana") && list.contains("analyst") && list.contains("vic"),
        "{list}"
    );
    assert!(!list.contains("argon2"), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_when_idle_or_old_and_https_cookies_are_secure() {
    let f = Fixture::new("expiry").await;
    f.add_user("ana", "analyst", ANA_PW);
    // Idle limit 2 s, lifetime 6 s.
    let server = f.serve(&[
        "--session-idle-minutes",
        "0.0334",
        "--session-hours",
        "0.00167",
    ]);
    let base = server.base.as_str();
    let s = sign_in(base, "ana", ANA_PW).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        get("/").cookie(&s).send(base).await.status,
        303,
        "idle too long"
    );
    let s = sign_in(base, "ana", ANA_PW).await;
    let started = std::time::Instant::now();
    let mut alive = std::time::Duration::ZERO;
    for _ in 0..10 {
        // Active (a request every 0.8 s) keeps it past the idle limit, up
        // to its lifetime.
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        if get("/").cookie(&s).send(base).await.status != 200 {
            break;
        }
        alive = started.elapsed();
    }
    assert!(
        alive > std::time::Duration::from_secs(4),
        "in use, it outlived the idle limit: {alive:?}"
    );
    assert_eq!(
        get("/").cookie(&s).send(base).await.status,
        303,
        "past its lifetime"
    );
    drop(server);

    // Behind a TLS proxy (--public-url https://...): cookies are Secure and
    // __Host- prefixed, and only that host and origin are accepted.
    let server = f.serve(&["--public-url", "https://review.example.test"]);
    let base = server.base.as_str();
    let host = "review.example.test";
    let origin = "https://review.example.test";
    assert_eq!(
        get("/login").send(base).await.status,
        400,
        "its own address is not the Host"
    );
    let page = get("/login").host(host).send(base).await;
    let login = page
        .set_cookie("__Host-sa_login")
        .expect("a __Host- login cookie");
    assert!(login.ends_with("; Secure"), "{login}");
    let r = post_form(
        "/login",
        &[
            ("name", "ana"),
            ("password", ANA_PW),
            ("csrf", &csrf_in(&page.body)),
            ("next", "/"),
        ],
    )
    .host(host)
    .origin(origin)
    .cookie(&format!("__Host-sa_login={}", cookie_value(login)))
    .send(base)
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let session = r
        .set_cookie("__Host-sa_session")
        .expect("a __Host- session cookie");
    assert!(
        session.contains("; Secure") && session.contains("HttpOnly"),
        "{session}"
    );
    let cookie = format!("__Host-sa_session={}", cookie_value(session));
    assert_eq!(
        get("/").host(host).cookie(&cookie).send(base).await.status,
        200
    );
    let page = get(&format!("/alerts/{}", f.alerts[0]))
        .host(host)
        .cookie(&cookie)
        .send(base)
        .await;
    let csrf = csrf_of_form(&page.body, "verdict");
    let form = post_form(
        &format!("/alerts/{}/disposition", f.alerts[0]),
        &[("status", "dismissed"), ("csrf", &csrf)],
    )
    .host(host)
    .cookie(&cookie);
    let r = form
        .clone()
        .origin("http://review.example.test")
        .send(base)
        .await;
    assert_eq!(r.status, 403, "plain http is another origin");
    assert_eq!(form.origin(origin).send(base).await.status, 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_named_user_is_believed_only_from_the_proxy() {
    let f = Fixture::new("proxy").await;
    f.add_user("ana", "analyst", ANA_PW);
    f.add_user("old", "analyst", ANA_PW);
    f.users(&["disable", "old"], None);
    // The proxy is 127.0.0.2; the test connects from 127.0.0.1 unless told.
    let server = f.serve(&[
        "--auth",
        "trusted-header",
        "X-Forwarded-User",
        "--trusted-proxy",
        "127.0.0.2",
    ]);
    let base = server.base.as_str();
    let path = format!("/api/alerts/{}/dispositions", f.alerts[0]);
    let verdict = json!({"status": "escalated"});

    // The header from anyone else is ignored.
    let r = get("/api/alerts")
        .header("X-Forwarded-User", "ana")
        .send(base)
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = get("/").header("X-Forwarded-User", "ana").send(base).await;
    assert_eq!(r.status, 401, "pages too (no login page behind a proxy)");
    let r = get("/api/alerts").from("127.0.0.2").send(base).await;
    assert_eq!(r.status, 401, "the proxy without a user");
    // Through the proxy: an account's role, or the default (viewer).
    let r = post_json(&path, &verdict)
        .header("X-Forwarded-User", "guest")
        .origin(base)
        .from("127.0.0.2")
        .send(base)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post_json(&path, &verdict)
        .header("X-Forwarded-User", "old")
        .origin(base)
        .from("127.0.0.2")
        .send(base)
        .await;
    assert_eq!(r.status, 403, "a disabled account: {}", r.body);
    let r = post_json(&path, &verdict)
        .header("X-Forwarded-User", "ana")
        .from("127.0.0.2")
        .send(base)
        .await;
    assert_eq!(r.status, 403, "no Origin: {}", r.body);
    let r = post_json(&path, &verdict)
        .header("X-Forwarded-User", "ana")
        .origin(base)
        .from("127.0.0.2")
        .send(base)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["analyst"], "ana");
    // The page's forms carry a token for the named user.
    let page = get(&format!("/alerts/{}", f.alerts[0]))
        .header("X-Forwarded-User", "ana")
        .from("127.0.0.2")
        .send(base)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of_form(&page.body, "verdict");
    let form = post_form(
        &format!("/alerts/{}/disposition", f.alerts[0]),
        &[("status", "dismissed"), ("csrf", &csrf)],
    )
    .header("X-Forwarded-User", "ana")
    .from("127.0.0.2");
    assert_eq!(form.clone().send(base).await.status, 403, "no Origin");
    assert_eq!(form.origin(base).send(base).await.status, 303);
    assert_eq!(f.verdicts().await, 2);
    assert_eq!(get("/login").send(base).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_auth_is_for_loopback_only_and_public_addresses_need_a_public_url() {
    let f = Fixture::new("noauth").await;
    let server = f.serve(&["--auth", "none"]);
    let base = server.base.as_str();
    let r = get("/api/alerts").send(base).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let path = format!("/api/alerts/{}/dispositions", f.alerts[0]);
    let verdict = json!({"status": "dismissed"});
    // Still no cross-site posts: a loopback server is what a page on the
    // internet would aim at.
    let r = post_json(&path, &verdict).send(base).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = post_json(&path, &verdict).origin(base).send(base).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["analyst"], "anonymous");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("WARNING: --auth none"), "{log}");

    for (args, says) in [
        (
            vec!["--auth", "none", "--listen", "0.0.0.0:0"],
            "only allowed on a loopback",
        ),
        (vec!["--listen", "0.0.0.0:0"], "--public-url"),
        (vec!["--auth", "trusted-header"], "--trusted-proxy"),
    ] {
        let mut full = vec!["serve", "--database-url", &f.db.url];
        full.extend(args);
        let out = common::run(f.dir.path(), &full);
        assert_eq!(out.status.code(), Some(2), "{full:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{full:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_idle_connections_do_not_stop_a_signed_in_request() {
    let f = Fixture::new("idle").await;
    f.add_user("ana", "analyst", ANA_PW);
    // A small descriptor budget, as a container's default ulimit might be:
    // the connections a stranger leaves open must not use it up.
    let server = Server::start_under(
        f.dir.path(),
        &f.db.url,
        &["--ticks-from", "postgres", "--header-timeout-ms", "1500"],
        &["prlimit", "--nofile=256:256", "--"],
    );
    let base = server.base.clone();
    let session = sign_in(&base, "ana", ANA_PW).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        get("/api/alerts?per_page=1").cookie(&session).send(&base),
    )
    .await
    .expect("a signed-in request was stuck behind idle connections");
    assert_eq!(r.status, 200, "{}", r.body);
    eprintln!(
        "answered after {:?} with 300 idle connections open",
        started.elapsed()
    );
    // Idle ones were closed by the server, not kept.
    let mut closed = 0;
    for mut c in idle {
        let mut buf = [0u8; 1];
        use tokio::io::AsyncReadExt as _;
        if let Ok(Ok(0)) =
            tokio::time::timeout(std::time::Duration::from_secs(10), c.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 300,
        "the server closes connections that send nothing"
    );
    assert_eq!(get("/healthz").send(&base).await.status, 200);
}

/// Runs `sql` as the superuser of the test server.
async fn admin_execute(sql: &str) {
    let url = common::service_env("STOCKANOMALY_TEST_DATABASE_URL");
    let c = stockanomaly::sinks::postgres::connect(&url).await.unwrap();
    c.batch_execute(sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_as_its_own_role_and_a_burst_holds_at_most_the_pool() {
    let f = Fixture::new("pool").await;
    f.add_user("ana", "analyst", ANA_PW);
    // A login role for the server, in the migration's group: what
    // deploy/postgres-init/20-review-role.sh makes in docker-compose.yml.
    let role = format!("sa_review_{}", std::process::id());
    admin_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN IN ROLE stockanomaly_review"
    ))
    .await;
    let mut url = url::Url::parse(&f.db.url).unwrap();
    url.set_username(&role).unwrap();
    let url = url.to_string();

    // The role reads and adds verdicts and sessions, nothing more.
    let c = stockanomaly::sinks::postgres::connect(&url).await.unwrap();
    for denied in [
        "INSERT INTO alerts (model_version, detector, symbol, ts, seq, score, threshold, source) \
         VALUES ('x', 'rule', 'X', now(), 0, 1, 0, 'x')",
        "UPDATE alerts SET score = 0",
        "DELETE FROM dispositions",
        "UPDATE review_users SET role = 'admin'",
        "INSERT INTO review_users (name, role) VALUES ('eve', 'admin')",
        "SELECT * FROM detector_offsets",
        "SELECT * FROM dead_letters",
        "INSERT INTO models (version, kind, manifest) VALUES ('x', 'rule', '{}')",
    ] {
        let e = c.batch_execute(denied).await.unwrap_err();
        assert!(
            format!("{e:?}").contains("permission denied"),
            "{denied}: {e:?}"
        );
    }
    drop(c);

    let server = Server::start(
        f.dir.path(),
        &url,
        &[
            "--ticks-from",
            "postgres",
            "--db-pool-size",
            "3",
            "--db-acquire-timeout-ms",
            "20000",
        ],
    );
    let base = server.base.clone();
    let session = sign_in(&base, "ana", ANA_PW).await;
    let r = post_json(
        &format!("/api/alerts/{}/dispositions", f.alerts[0]),
        &json!({"status": "dismissed"}),
    )
    .cookie(&session)
    .origin(&base)
    .send(&base)
    .await;
    assert_eq!(r.status, 201, "the server's role adds verdicts: {}", r.body);

    // A burst while every query waits on a lock: the old pool opened a
    // connection per waiting request.
    let admin = f.db.client().await;
    admin
        .batch_execute("BEGIN; LOCK TABLE alerts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut burst = Vec::new();
    for _ in 0..30 {
        let (base, session) = (base.clone(), session.clone());
        burst.push(tokio::spawn(async move {
            get("/api/alerts?per_page=1")
                .cookie(&session)
                .send(&base)
                .await
                .status
        }));
    }
    let mut most = 0;
    for _ in 0..15 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        most = most.max(n);
    }
    admin.batch_execute("COMMIT").await.unwrap();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    eprintln!("at most {most} server connections during a burst of 30 requests");
    assert!(most >= 1, "the burst was seen waiting");
    assert!(most <= 3, "{most} connections for a pool of 3");
    // The role goes once its database has (it holds privileges there).
    drop(server);
    drop(admin);
    drop(f);
    admin_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_menus_are_index_lookups_and_errors_keep_database_internals_in() {
    let f = Fixture::new("menus").await;
    f.add_user("vic", "viewer", VIC_PW);
    let c = f.db.client().await;
    // 60 000 alerts over three symbols and two versions.
    c.batch_execute(
        "INSERT INTO alerts (model_version, detector, symbol, ts, seq, score, threshold, source) \
         SELECT 'm-' || (i % 2), 'model', 'S' || (i % 3), \
                '2024-01-02'::timestamptz + i * interval '1 second', 0, 0.6, 0.5, 'bulk' \
         FROM generate_series(1, 60000) i; ANALYZE alerts",
    )
    .await
    .unwrap();
    // Rows the plan reads from `alerts` (every scan node, every loop).
    async fn rows_read(c: &tokio_postgres::Client, sql: &str) -> f64 {
        let plan: Value = c
            .query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), &[])
            .await
            .unwrap()
            .get(0);
        fn walk(n: &Value) -> f64 {
            let own = if n["Relation Name"] == "alerts" {
                (n["Actual Rows"].as_f64().unwrap_or(0.0)
                    + n["Rows Removed by Filter"].as_f64().unwrap_or(0.0))
                    * n["Actual Loops"].as_f64().unwrap_or(1.0)
            } else {
                0.0
            };
            own + n["Plans"]
                .as_array()
                .map_or(0.0, |ps| ps.iter().map(walk).sum())
        }
        walk(&plan[0]["Plan"])
    }
    use stockanomaly::review::{MODEL_VERSION_CHOICES_SQL, SYMBOL_CHOICES_SQL};
    let distinct = rows_read(
        &c,
        "SELECT DISTINCT symbol FROM alerts ORDER BY 1 LIMIT 1000",
    )
    .await;
    assert!(
        distinct > 50_000.0,
        "the measure sees a full scan: {distinct}"
    );
    for sql in [SYMBOL_CHOICES_SQL, MODEL_VERSION_CHOICES_SQL] {
        let read = rows_read(&c, &sql.replace("$1", "1000")).await;
        assert!(read < 50.0, "{read} rows read for the menu: {sql}");
    }
    let server = f.serve(&[]);
    let base = server.base.as_str();
    let vic = sign_in(base, "vic", VIC_PW).await;
    let page = get("/alerts").cookie(&vic).send(base).await;
    assert_eq!(page.status, 200);
    for s in ["S0", "S1", "S2", "AAA", "m-0", "m-1", "rules-1"] {
        assert!(page.body.contains(&format!("<option value=\"{s}\"")), "{s}");
    }
    assert!(
        page.body.contains("10000+ alerts"),
        "the count stops at the depth"
    );
    let r = get("/api/alerts").basic("vic", VIC_PW).send(base).await;
    assert_eq!(
        (
            r.json()["total"].as_i64(),
            r.json()["total_exact"].as_bool()
        ),
        (Some(10_000), Some(false))
    );

    // Our failures answer without database internals (they go to the log).
    c.batch_execute("ALTER TABLE alerts RENAME TO alerts_gone")
        .await
        .unwrap();
    let api = get("/api/alerts").basic("vic", VIC_PW).send(base).await;
    let html = get("/alerts").cookie(&vic).send(base).await;
    c.batch_execute("ALTER TABLE alerts_gone RENAME TO alerts")
        .await
        .unwrap();
    for r in [&api, &html] {
        assert_eq!(r.status, 500, "{}", r.body);
        for leak in [
            "alerts_gone",
            "relation",
            "does not exist",
            "db error",
            "SQLSTATE",
        ] {
            assert!(!r.body.contains(leak), "{leak} in {}", r.body);
        }
    }
    assert!(api.json()["error"]
        .as_str()
        .unwrap()
        .contains("server's log"));
    assert_eq!(
        get("/api/alerts")
            .basic("vic", VIC_PW)
            .send(base)
            .await
            .status,
        200
    );
}
