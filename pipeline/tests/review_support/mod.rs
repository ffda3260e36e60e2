//! What the review tests share: a migrated database with a few alerts and
//! accounts made by `stockanomaly users`, a running `stockanomaly serve`, and
//! a raw HTTP/1.1 client (every header, the source address and redirects are
//! the test's to choose, as an attacker's would be).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::{self, TestDb};

/// A running `stockanomaly serve`, killed on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The stderr lines after the first, as they come.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// `stockanomaly serve --database-url URL --listen 127.0.0.1:0 EXTRA...`
    /// in `dir`.
    pub fn start(dir: &Path, url: &str, extra: &[&str]) -> Server {
        Server::start_under(dir, url, extra, &[])
    }

    /// [`Server::start`] run through `wrapper` (e.g. `prlimit --nofile=256 --`).
    pub fn start_under(dir: &Path, url: &str, extra: &[&str], wrapper: &[&str]) -> Server {
        let bin = common::bin();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin.get_program());
                for (k, v) in bin.get_envs() {
                    match v {
                        Some(v) => c.env(k, v),
                        None => c.env_remove(k),
                    };
                }
                c
            }
            None => bin,
        };
        let mut child = cmd
            .current_dir(dir)
            .args(["serve", "--database-url", url, "--listen", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let first = lines
            .next()
            .unwrap_or_else(|| Ok(String::new()))
            .unwrap_or_default();
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .trim_end_matches('/')
            .to_owned();
        let addr = base.trim_start_matches("http://").parse().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Server {
            child,
            base,
            addr,
            log,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A migrated database with alerts, for servers of one test.
pub struct Fixture {
    /// The database.
    pub db: TestDb,
    /// A folder for the test's files.
    pub dir: tempfile::TempDir,
    /// The alerts' ids, highest score first.
    pub alerts: Vec<i64>,
}

impl Fixture {
    /// A fresh database (named after `tag`), migrated by `stockanomaly db
    /// migrate`, with six alerts over two symbols and two model versions.
    pub async fn new(tag: &str) -> Fixture {
        let db = TestDb::new(tag).await;
        let dir = tempfile::tempdir().unwrap();
        common::ok(dir.path(), &["db", "migrate", "--database-url", &db.url]);
        let client = db.client().await;
        let rows = client
            .query(
                "INSERT INTO alerts (model_version, detector, symbol, ts, seq, score, threshold, \
                 source, top_features, features) \
                 SELECT CASE WHEN i % 2 = 0 THEN 'm-1' ELSE 'rules-1' END, \
                        CASE WHEN i % 2 = 0 THEN 'model' ELSE 'rule' END, \
                        CASE WHEN i < 3 THEN 'AAA' ELSE 'BBB' END, \
                        '2024-03-04 15:00:00+00'::timestamptz + i * interval '1 minute', 0, \
                        1.0 - i / 10.0, 0.5, 'test', NULL, '{\"f\": 1.5}' \
                 FROM generate_series(0, 5) i RETURNING id",
                &[],
            )
            .await
            .unwrap();
        let alerts = rows.iter().map(|r| r.get(0)).collect();
        Fixture { db, dir, alerts }
    }

    /// `stockanomaly users ARGS --database-url URL` with `password` in
    /// `STOCKANOMALY_PASSWORD`; asserts success.
    pub fn users(&self, args: &[&str], password: Option<&str>) -> String {
        let mut c = common::bin();
        c.current_dir(self.dir.path())
            .arg("users")
            .args(args)
            .args(["--database-url", &self.db.url])
            .env_remove("STOCKANOMALY_PASSWORD")
            .stdin(Stdio::null());
        if let Some(p) = password {
            c.env("STOCKANOMALY_PASSWORD", p);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "users {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds a user with `role` and `password`.
    pub fn add_user(&self, name: &str, role: &str, password: &str) {
        self.users(&["add", name, "--role", role], Some(password));
    }

    /// `serve` over this database, evidence from PostgreSQL.
    pub fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec!["--ticks-from", "postgres"];
        args.extend_from_slice(extra);
        Server::start(self.dir.path(), &self.db.url, &args)
    }

    /// The number of dispositions stored.
    pub async fn verdicts(&self) -> i64 {
        self.db
            .client()
            .await
            .query_one("SELECT count(*) FROM dispositions", &[])
            .await
            .unwrap()
            .get(0)
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// Body, as text.
    pub body: String,
}

impl Reply {
    /// The first header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every `Set-Cookie`.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `Set-Cookie` of cookie `name`, whole.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A request, built up and then sent.
#[derive(Debug, Clone)]
pub struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<(&'static str, String)>,
    from: Option<IpAddr>,
    host: Option<String>,
}

/// `GET path`.
pub fn get(path: &str) -> Req {
    Req {
        method: "GET",
        path: path.to_owned(),
        headers: Vec::new(),
        body: None,
        from: None,
        host: None,
    }
}

/// `POST path` of an urlencoded form.
pub fn post_form(path: &str, fields: &[(&str, &str)]) -> Req {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    Req {
        method: "POST",
        body: Some(("application/x-www-form-urlencoded", body)),
        ..get(path)
    }
}

/// `POST path` of a JSON body.
pub fn post_json(path: &str, body: &Value) -> Req {
    Req {
        method: "POST",
        body: Some(("application/json", body.to_string())),
        ..get(path)
    }
}

impl Req {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds `Cookie: cookie` (`name=value`).
    pub fn cookie(self, cookie: &str) -> Req {
        self.header("Cookie", cookie)
    }

    /// Adds HTTP Basic credentials.
    pub fn basic(self, user: &str, password: &str) -> Req {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("Authorization", &format!("Basic {b64}"))
    }

    /// Adds `Origin: origin`.
    pub fn origin(self, origin: &str) -> Req {
        self.header("Origin", origin)
    }

    /// Connects from `ip` (a loopback address other than 127.0.0.1, say).
    pub fn from(mut self, ip: &str) -> Req {
        self.from = Some(ip.parse().unwrap());
        self
    }

    /// Sends `Host: host` instead of the server's address.
    pub fn host(mut self, host: &str) -> Req {
        self.host = Some(host.to_owned());
        self
    }

    /// Sends it to the server at `base` (`http://host:port`) on a new
    /// connection (`Connection: close`) and reads the whole answer.
    pub async fn send(self, base: &str) -> Reply {
        let hostport = base.trim_start_matches("http://").trim_end_matches('/');
        let addr: SocketAddr = hostport.parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(ip) = self.from {
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let mut text = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.method,
            self.path,
            self.host.as_deref().unwrap_or(hostport)
        );
        for (k, v) in &self.headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        match &self.body {
            Some((ctype, body)) => text.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => text.push_str("\r\n"),
        }
        stream.write_all(text.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        parse_reply(&raw)
    }
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The CSRF token of the first form in `html` carrying one (the header's
/// sign-out form, or the login form).
pub fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {html}"));
    html[at + 19..at + 19 + 64].to_owned()
}

/// The CSRF token of the form with id `form` in `html`.
pub fn csrf_of_form(html: &str, form: &str) -> String {
    let at = html
        .find(&format!("id=\"{form}\""))
        .unwrap_or_else(|| panic!("no form #{form} in {html}"));
    csrf_in(&html[at..])
}

/// The value of `name=value` in a `Set-Cookie`.
pub fn cookie_value(set_cookie: &str) -> &str {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map_or("", |(_, v)| v)
}

/// Signs in on the login page as a browser would (the form's token, its
/// cookie, this site's `Origin`); returns the session cookie (`name=value`).
pub async fn sign_in(base: &str, name: &str, password: &str) -> String {
    sign_in_with(base, name, password, None).await.unwrap()
}

/// [`sign_in`] sending `old` (a session cookie) along; `Err(reply)` when it
/// is refused.
pub async fn sign_in_with(
    base: &str,
    name: &str,
    password: &str,
    old: Option<&str>,
) -> Result<String, Reply> {
    let page = get("/login").send(base).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let login_cookie = page
        .set_cookie("sa_login")
        .expect("the login form's cookie");
    let token = csrf_in(&page.body);
    let mut cookie = format!("sa_login={}", cookie_value(login_cookie));
    if let Some(old) = old {
        cookie = format!("{cookie}; {old}");
    }
    let reply = post_form(
        "/login",
        &[
            ("name", name),
            ("password", password),
            ("csrf", &token),
            ("next", "/"),
        ],
    )
    .origin(base)
    .cookie(&cookie)
    .send(base)
    .await;
    match reply.set_cookie("sa_session") {
        Some(c) if reply.status == 303 => Ok(format!("sa_session={}", cookie_value(c))),
        _ => Err(reply),
    }
}
