//! The deployment's wiring: `docker-compose.yml` as `docker-compose config`
//! resolves it (Debian's `docker-compose`, which needs no Docker engine for
//! that), checked against the binary it runs.
//!
//! For every service running our image: its command is a real subcommand,
//! every `--flag` it passes and every variable of ours it sets appear in
//! that subcommand's `--help`, and the whole command line parses with the
//! variables set. Then what a deployment relies on: who waits for whom, no
//! host port open beyond loopback, a detector that scales, the same lake,
//! model and topics on both ends, and every `${VAR}` documented in
//! `.env.example` with no secret in it. The `Dockerfile` is read for what
//! the compose file assumes of the image.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use clap::Parser;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// The repository's top folder.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("pipeline/ has a parent")
        .to_owned()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Variables the binary reads itself without a flag, so no `[env: ...]` in
/// any help: libpq's (pipeline/src/sinks/postgres/connect.rs) for commands
/// that connect to PostgreSQL, and the AWS SDK's for the lake's s3:// roots
/// (object_store's `AmazonS3Builder::from_env`).
const LIBPQ_VARS: &[&str] = &["PGPASSWORD", "PGSSLMODE", "PGSSLROOTCERT"];
const AWS_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
];

/// A variable whose meaning is ours to check: read by the binary, not by
/// the image's entrypoint or a third-party service.
fn looks_ours(var: &str) -> bool {
    var.starts_with("STOCKANOMALY_")
        || var == "DATABASE_URL"
        || var.starts_with("PG")
        || var.starts_with("AWS_")
}

/// The `${NAME...}` references of a compose file (`$${...}` is an escaped
/// dollar, not a reference), with whether they are required (`:?`).
fn compose_vars(text: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'$' && b[i + 1] == b'$' {
            i += 2;
            continue;
        }
        if b[i] == b'$' && b[i + 1] == b'{' {
            let rest = &text[i + 2..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = rest[..end].to_owned();
            let required = rest[end..].starts_with(":?") || rest[end..].starts_with('?');
            *out.entry(name).or_insert(false) |= required;
            i += 2 + end;
            continue;
        }
        i += 1;
    }
    out
}

/// The environment `docker-compose config` runs with: every required
/// variable set to a recognisable test value (no `.env` is read).
fn test_env(compose: &str) -> BTreeMap<String, String> {
    compose_vars(compose)
        .into_iter()
        .filter(|(_, required)| *required)
        .map(|(name, _)| {
            let value = match name.as_str() {
                "DETECTOR_MODEL" => "/var/lib/stockanomaly/models/test".to_owned(),
                _ => format!("test-{}", name.to_lowercase().replace('_', "-")),
            };
            (name, value)
        })
        .collect()
}

/// Runs `docker-compose config` on the repository's file with `env` only
/// (plus PATH), an empty env file instead of a `.env`, and returns (exit
/// success, stdout, stderr).
fn compose_config(env: &BTreeMap<String, String>) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("empty.env");
    std::fs::write(&env_file, "").unwrap();
    let mut cmd = Command::new("docker-compose");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .envs(env)
        .current_dir(repo())
        .arg("--env-file")
        .arg(&env_file)
        .arg("--file")
        .arg(repo().join("docker-compose.yml"))
        .arg("config");
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run docker-compose ({e}): install Debian's docker-compose package \
             (scripts/test-env.sh does, through `make test`)"
        )
    });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The resolved compose file, parsed.
fn resolved() -> (Value, BTreeMap<String, String>) {
    let compose = read("docker-compose.yml");
    let env = test_env(&compose);
    let (ok, stdout, stderr) = compose_config(&env);
    assert!(
        ok,
        "docker-compose config refused docker-compose.yml:\n{stderr}"
    );
    let doc: Value = serde_yaml::from_str(&stdout)
        .unwrap_or_else(|e| panic!("docker-compose config printed no YAML ({e}):\n{stdout}"));
    (doc, env)
}

/// A published port: (host address, host port, container port).
#[derive(Debug, Clone, PartialEq)]
struct Port {
    host_ip: String,
    published: String,
    target: String,
}

/// What the checks need of one service, in either output format of
/// `docker-compose config` (1.x keeps short strings, 2.x long maps).
#[derive(Debug, Default)]
struct Service {
    name: String,
    ours: bool,
    image: String,
    command: Vec<String>,
    entrypoint: bool,
    env: BTreeMap<String, String>,
    depends_on: BTreeMap<String, String>,
    ports: Vec<Port>,
    expose: Vec<String>,
    container_name: bool,
    volumes: Vec<(String, String)>,
    profiles: Vec<String>,
    restart: String,
    /// The healthcheck's test, words joined by spaces.
    healthcheck: Option<String>,
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other).unwrap_or_default(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(s)) => s.iter().map(scalar).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(other) => vec![scalar(other)],
        None => Vec::new(),
    }
}

fn parse_port(v: &Value) -> Port {
    if let Value::Mapping(m) = v {
        let get = |k: &str| m.get(k).map(scalar).unwrap_or_default();
        let host_ip = get("host_ip");
        return Port {
            host_ip: if host_ip.is_empty() {
                "0.0.0.0".into()
            } else {
                host_ip
            },
            published: get("published"),
            target: get("target"),
        };
    }
    let s = scalar(v);
    let s = s.split('/').next().unwrap_or_default();
    let parts: Vec<&str> = s.split(':').collect();
    let (ip, published, target) = match parts.as_slice() {
        [ip, p, t] => (*ip, *p, *t),
        [p, t] => ("0.0.0.0", *p, *t),
        [t] => ("0.0.0.0", "", *t),
        _ => ("?", "?", s),
    };
    Port {
        host_ip: if ip.is_empty() { "0.0.0.0" } else { ip }.to_owned(),
        published: published.to_owned(),
        target: target.to_owned(),
    }
}

fn parse_volume(v: &Value) -> (String, String) {
    if let Value::Mapping(m) = v {
        let get = |k: &str| m.get(k).map(scalar).unwrap_or_default();
        return (get("source"), get("target"));
    }
    let s = scalar(v);
    let mut parts = s.split(':');
    let source = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    (source, target)
}

fn services(doc: &Value) -> BTreeMap<String, Service> {
    let Some(Value::Mapping(map)) = doc.get("services") else {
        panic!("no services in the resolved file");
    };
    let mut out = BTreeMap::new();
    for (name, def) in map {
        let name = scalar(name);
        let get = |k: &str| def.get(k);
        let image = get("image").map(scalar).unwrap_or_default();
        let mut env = BTreeMap::new();
        match get("environment") {
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    env.insert(scalar(k), scalar(v));
                }
            }
            Some(Value::Sequence(s)) => {
                for kv in s.iter().map(scalar) {
                    let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
            _ => {}
        }
        let mut depends_on = BTreeMap::new();
        match get("depends_on") {
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    let cond = v.get("condition").map(scalar).unwrap_or_default();
                    depends_on.insert(scalar(k), cond);
                }
            }
            Some(Value::Sequence(s)) => {
                for k in s {
                    depends_on.insert(scalar(k), "service_started".into());
                }
            }
            _ => {}
        }
        let seq = |k: &str| match get(k) {
            Some(Value::Sequence(s)) => s.clone(),
            _ => Vec::new(),
        };
        let s = Service {
            ours: get("build").is_some() || image.starts_with("stockanomaly"),
            image,
            command: strings(get("command")),
            entrypoint: get("entrypoint").is_some(),
            env,
            depends_on,
            ports: seq("ports").iter().map(parse_port).collect(),
            expose: seq("expose").iter().map(scalar).collect(),
            container_name: get("container_name").is_some(),
            volumes: seq("volumes").iter().map(parse_volume).collect(),
            profiles: strings(get("profiles")),
            restart: get("restart").map(scalar).unwrap_or_default(),
            healthcheck: get("healthcheck").map(|h| strings(h.get("test")).join(" ")),
            name: name.clone(),
        };
        out.insert(name, s);
    }
    out
}

/// `stockanomaly <path> --help`, cached; `None` when it fails (no such
/// subcommand).
struct Helps(BTreeMap<Vec<String>, Option<String>>);

impl Helps {
    fn new() -> Self {
        Helps(BTreeMap::new())
    }

    fn get(&mut self, path: &[String]) -> Option<String> {
        self.0
            .entry(path.to_vec())
            .or_insert_with(|| {
                let out = Command::new(env!("CARGO_BIN_EXE_stockanomaly"))
                    .args(path)
                    .arg("--help")
                    .env_remove("STOCKANOMALY_LAKE")
                    .env("COLUMNS", "100")
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run stockanomaly: {e}"));
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .clone()
    }
}

/// The subcommands a help text lists under `Commands:`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// `help` mentions `--flag` as a whole word.
fn has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '-')
            && !matches!(after, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// `help` shows `var` as a flag's variable (`[env: NAME=...]` or, for
/// hidden values, `[env: NAME]`), however the line was wrapped.
fn has_env(help: &str, var: &str) -> bool {
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.contains(&format!("[env: {var}=")) || flat.contains(&format!("[env: {var}]"))
}

/// Environment changes of the command-line parse below are process-wide.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Parses `stockanomaly <args>` with `env` as the only variables of ours
/// set, as the container would; the error when clap refuses it.
fn parses(args: &[String], env: &BTreeMap<String, String>) -> Result<(), String> {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let saved: Vec<(String, std::ffi::OsString)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, _)| looks_ours(k))
        .collect();
    for (k, _) in &saved {
        std::env::remove_var(k);
    }
    for (k, v) in env.iter().filter(|(k, _)| looks_ours(k)) {
        std::env::set_var(k, v);
    }
    let result = stockanomaly::cli::Cli::try_parse_from(
        std::iter::once("stockanomaly".to_owned()).chain(args.iter().cloned()),
    )
    .map(|_| ())
    .map_err(|e| e.to_string());
    for (k, _) in env.iter().filter(|(k, _)| looks_ours(k)) {
        std::env::remove_var(k);
    }
    for (k, v) in saved {
        std::env::set_var(k, v);
    }
    result
}

/// Every problem with the wiring of one of our services to the binary.
fn check_command(s: &Service, helps: &mut Helps, problems: &mut Vec<String>) {
    let name = &s.name;
    if s.entrypoint {
        problems.push(format!(
            "{name}: overrides the entrypoint; our services run `stockanomaly <command>`"
        ));
        return;
    }
    // The subcommand path: leading words that the help at each level lists.
    let mut path: Vec<String> = Vec::new();
    let mut help = helps.get(&path).expect("`stockanomaly --help` works");
    for word in s.command.iter().take_while(|w| !w.starts_with('-')) {
        if !subcommands(&help).contains(word) {
            break;
        }
        path.push(word.clone());
        help = helps
            .get(&path)
            .unwrap_or_else(|| panic!("`stockanomaly {} --help` failed", path.join(" ")));
    }
    if path.is_empty() {
        problems.push(format!(
            "{name}: command {:?} does not start with a stockanomaly subcommand",
            s.command
        ));
        return;
    }
    if !subcommands(&help).is_empty() {
        problems.push(format!(
            "{name}: `stockanomaly {}` needs a subcommand ({})",
            path.join(" "),
            subcommands(&help).join(", ")
        ));
        return;
    }
    let shown = format!("stockanomaly {}", path.join(" "));
    for word in &s.command[path.len()..] {
        if let Some(flag) = word.strip_prefix("--") {
            let flag = format!("--{}", flag.split('=').next().unwrap_or_default());
            if !has_flag(&help, &flag) {
                problems.push(format!("{name}: `{shown} --help` has no {flag}"));
            }
        }
    }
    let connects = has_env(&help, "DATABASE_URL");
    for var in s.env.keys().filter(|v| looks_ours(v)) {
        let documented = has_env(&help, var)
            || (connects && LIBPQ_VARS.contains(&var.as_str()))
            || AWS_VARS.contains(&var.as_str());
        if !documented {
            problems.push(format!(
                "{name}: sets {var}, which `{shown}` does not read (not in its --help{})",
                if var.starts_with("PG") && !connects {
                    "; it does not connect to PostgreSQL"
                } else {
                    ""
                }
            ));
        }
    }
    if let Err(e) = parses(&s.command, &s.env) {
        problems.push(format!(
            "{name}: `stockanomaly {}` with its environment does not parse: {e}",
            s.command.join(" ")
        ));
    }
}

/// The value of `--flag` in a command (`--flag value` or `--flag=value`).
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command.iter().enumerate().find_map(|(i, w)| {
        if w == flag {
            command.get(i + 1).map(String::as_str)
        } else {
            w.strip_prefix(flag).and_then(|rest| rest.strip_prefix('='))
        }
    })
}

/// Every problem with the resolved file; empty when the wiring is right.
fn problems(doc: &Value, helps: &mut Helps) -> Vec<String> {
    let services = services(doc);
    let mut problems = Vec::new();
    let need = |p: &mut Vec<String>, name: &str| -> bool {
        let ok = services.contains_key(name);
        if !ok {
            p.push(format!("no `{name}` service"));
        }
        ok
    };
    for name in [
        "postgres",
        "kafka",
        "kafka-init",
        "grafana",
        "migrate",
        "detector",
        "market-context",
        "review",
        "bootstrap",
        "producer",
    ] {
        need(&mut problems, name);
    }
    if !problems.is_empty() {
        return problems;
    }
    let svc = |n: &str| &services[n];

    // Our services against the binary.
    for s in services.values().filter(|s| s.ours) {
        check_command(s, helps, &mut problems);
    }

    // Who waits for whom. A one-shot is waited for until it exited 0, a
    // server until its healthcheck passes; a service outside a profile
    // cannot wait for one inside it (compose would refuse to start it).
    for s in services.values() {
        for (dep, cond) in &s.depends_on {
            let Some(d) = services.get(dep) else {
                problems.push(format!("{}: depends on unknown service {dep}", s.name));
                continue;
            };
            let one_shot = d.restart.is_empty() || d.restart == "no";
            let want = if one_shot {
                "service_completed_successfully"
            } else if d.healthcheck.is_some() {
                "service_healthy"
            } else {
                "service_started"
            };
            if cond != want {
                problems.push(format!(
                    "{}: waits for {dep} with `{cond}`, expected `{want}`",
                    s.name
                ));
            }
            if !d.profiles.is_empty() && d.profiles.iter().any(|p| !s.profiles.contains(p)) {
                problems.push(format!(
                    "{}: depends on {dep}, which only runs in profile(s) {:?}",
                    s.name, d.profiles
                ));
            }
        }
    }
    for (server, probe) in [
        ("postgres", "pg_isready"),
        ("kafka", "--bootstrap-server"),
        ("grafana", "/api/health"),
    ] {
        if !svc(server)
            .healthcheck
            .as_deref()
            .is_some_and(|t| t.contains(probe))
        {
            problems.push(format!("{server}: no healthcheck running {probe}"));
        }
    }
    let expected = [
        ("detector", "migrate", "service_completed_successfully"),
        ("detector", "kafka-init", "service_completed_successfully"),
        ("detector", "postgres", "service_healthy"),
        ("detector", "kafka", "service_healthy"),
        (
            "market-context",
            "kafka-init",
            "service_completed_successfully",
        ),
        ("review", "migrate", "service_completed_successfully"),
        ("review", "postgres", "service_healthy"),
        ("migrate", "postgres", "service_healthy"),
        ("producer", "kafka-init", "service_completed_successfully"),
        ("producer", "bootstrap", "service_completed_successfully"),
    ];
    for (who, dep, cond) in expected {
        match svc(who).depends_on.get(dep) {
            Some(c) if c == cond => {}
            other => problems.push(format!(
                "{who}: must wait for {dep} with `{cond}`, has {other:?}"
            )),
        }
    }
    if svc("detector").restart != "unless-stopped" {
        problems.push(format!(
            "detector: restart `{}`, expected `unless-stopped`",
            svc("detector").restart
        ));
    }
    for name in [
        "detector", "review", "migrate", "postgres", "kafka", "grafana",
    ] {
        if !svc(name).profiles.is_empty() {
            problems.push(format!("{name}: must run without a profile"));
        }
    }
    for name in ["bootstrap", "producer"] {
        if !svc(name).profiles.contains(&"demo".to_owned()) {
            problems.push(format!("{name}: must run in the demo profile only"));
        }
    }

    // Nothing published beyond loopback.
    for s in services.values() {
        for p in &s.ports {
            if p.host_ip != "127.0.0.1" {
                problems.push(format!(
                    "{}: port {} published on {} (bind it to 127.0.0.1)",
                    s.name, p.target, p.host_ip
                ));
            }
        }
    }
    for (name, port) in [("postgres", "5432"), ("grafana", "3000")] {
        if !svc(name).ports.iter().any(|p| p.target == port) {
            problems.push(format!("{name}: port {port} not published on 127.0.0.1"));
        }
    }

    // The detector scales: no fixed name, no host port; metrics on the
    // container's own loopback, out of reach of the other containers.
    let det = svc("detector");
    if det.container_name {
        problems.push("detector: container_name stops `--scale detector=N`".into());
    }
    if !det.ports.is_empty() {
        problems.push("detector: a host port stops `--scale detector=N`".into());
    }
    match flag_value(&det.command, "--metrics-addr").and_then(|a| a.rsplit_once(':')) {
        Some(("127.0.0.1", _)) => {}
        other => problems.push(format!(
            "detector: --metrics-addr {other:?} is not on the container's loopback"
        )),
    }
    if !det.expose.is_empty() {
        problems.push(format!(
            "detector: exposes {:?} to the network, where nothing listens",
            det.expose
        ));
    }
    // The review page listens on the port published for it, answers only
    // for its public address, and connects as its own role.
    let review = svc("review");
    match flag_value(&review.command, "--listen").and_then(|a| a.rsplit_once(':')) {
        Some((host, port))
            if host == "0.0.0.0" && review.ports.iter().any(|p| p.target == port) => {}
        other => problems.push(format!(
            "review: --listen {other:?} is not 0.0.0.0 on a published port {:?}",
            review.ports
        )),
    }
    if review
        .env
        .get("STOCKANOMALY_PUBLIC_URL")
        .is_none_or(String::is_empty)
    {
        problems.push(
            "review: listens on all interfaces without STOCKANOMALY_PUBLIC_URL (its Host)".into(),
        );
    }
    let user_of = |url: &str| -> String {
        url.split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(u, _)| u.to_owned())
            .unwrap_or_default()
    };
    let pg = svc("postgres");
    let review_user = user_of(review.env.get("DATABASE_URL").map_or("", String::as_str));
    if Some(&review_user) == pg.env.get("POSTGRES_USER") {
        problems.push("review: connects as the database owner; give it REVIEW_PG_USER".into());
    }
    if pg.env.get("REVIEW_PG_USER") != Some(&review_user)
        || pg.env.get("REVIEW_PG_PASSWORD") != review.env.get("PGPASSWORD")
    {
        problems.push(format!(
            "review: connects as {review_user:?}, not the role postgres creates for it \
             (REVIEW_PG_USER / REVIEW_PG_PASSWORD)"
        ));
    }

    // One lake, one model, one set of topics.
    for s in services.values().filter(|s| s.ours) {
        let lake = s.env.get("STOCKANOMALY_LAKE").cloned().unwrap_or_default();
        let mounted = s
            .volumes
            .iter()
            .any(|(_, target)| !target.is_empty() && lake.starts_with(target.as_str()));
        // The cluster profile's lake is a bucket (checked below), and its
        // scheduler reads no lake.
        let lakeless =
            lake.starts_with("s3://") || s.command.starts_with(&cluster_role("scheduler"));
        if !mounted && !lakeless {
            problems.push(format!(
                "{}: STOCKANOMALY_LAKE `{lake}` is not on a mounted volume",
                s.name
            ));
        }
        if let Some(url) = s.env.get("DATABASE_URL") {
            let userinfo = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .map(|(u, _)| u)
                .unwrap_or_default();
            if userinfo.contains(':') {
                problems.push(format!(
                    "{}: DATABASE_URL carries a password; pass it as PGPASSWORD",
                    s.name
                ));
            }
            if !s.env.contains_key("PGPASSWORD") {
                problems.push(format!("{}: DATABASE_URL without PGPASSWORD", s.name));
            }
        }
    }
    let model = det.env.get("STOCKANOMALY_MODEL").cloned();
    let trained = svc("bootstrap").env.get("STOCKANOMALY_OUT").cloned();
    if model.is_none() || model != trained {
        problems.push(format!(
            "bootstrap trains into {trained:?} but the detector reads {model:?}"
        ));
    }
    let source = flag_value(&det.command, "--source").unwrap_or_default();
    let ticks = source.rsplit('/').next().unwrap_or_default().to_owned();
    let init = svc("kafka-init").command.join(" ");
    let topics: Vec<String> = init
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--topic")
        .map(|w| w[1].to_owned())
        .collect();
    if !source.starts_with("kafka://kafka:9092/") {
        problems.push(format!(
            "detector: --source {source} is not the kafka service"
        ));
    }
    let alerts = flag_value(&det.command, "--alerts-topic").unwrap_or_default();
    let produced = flag_value(&svc("producer").command, "--topic").unwrap_or_default();
    for (what, topic) in [
        ("the detector's --source", ticks.as_str()),
        ("the detector's --alerts-topic", alerts),
        ("the producer's --topic", produced),
        ("the market topic", "market"),
    ] {
        if !topics.iter().any(|t| t == topic) {
            problems.push(format!(
                "kafka-init does not create {what} `{topic}` (creates {topics:?})"
            ));
        }
    }
    let kafka = svc("kafka");
    if !kafka
        .env
        .get("KAFKA_PROCESS_ROLES")
        .is_some_and(|r| r.contains("controller") && r.contains("broker"))
    {
        problems.push("kafka: not a KRaft broker+controller (KAFKA_PROCESS_ROLES)".into());
    }

    cluster_problems(&services, &mut problems);

    // Named volumes for the servers' data; Grafana's provisioning mounted.
    let named: BTreeSet<String> = match doc.get("volumes") {
        Some(Value::Mapping(m)) => m.keys().map(scalar).collect(),
        _ => BTreeSet::new(),
    };
    for (name, target) in [
        ("postgres", "/var/lib/postgresql/data"),
        ("kafka", "/var/lib/kafka/data"),
        ("grafana", "/var/lib/grafana"),
    ] {
        if !svc(name)
            .volumes
            .iter()
            .any(|(src, t)| t == target && named.contains(src))
        {
            problems.push(format!("{name}: no named volume on {target}"));
        }
    }
    for (dir, target) in [
        ("grafana/provisioning", "/etc/grafana/provisioning"),
        ("grafana/dashboards", "/var/lib/grafana/dashboards"),
    ] {
        if !svc("grafana")
            .volumes
            .iter()
            .any(|(src, t)| t == target && src.ends_with(dir))
        {
            problems.push(format!("grafana: ./{dir} is not mounted on {target}"));
        }
    }
    if !svc("grafana").image.starts_with("grafana/grafana-oss") {
        problems.push("grafana: not the grafana/grafana-oss image".into());
    }
    for var in [
        "GRAFANA_PG_HOST",
        "GRAFANA_PG_DATABASE",
        "GRAFANA_PG_USER",
        "GRAFANA_PG_PASSWORD",
    ] {
        if svc("grafana").env.get(var).is_none_or(String::is_empty) {
            problems.push(format!(
                "grafana: {var} (read by its datasource) is not set"
            ));
        }
    }
    problems
}

/// `["cluster", role]`, a cluster command's first words.
fn cluster_role(role: &str) -> [String; 2] {
    ["cluster".to_owned(), role.to_owned()]
}

/// The backfill cluster (profile `cluster`): MinIO holds the lake, the
/// executors find the scheduler, scale, and share its token and the bucket
/// MinIO's init creates, with MinIO's credentials.
fn cluster_problems(services: &BTreeMap<String, Service>, problems: &mut Vec<String>) {
    for name in ["minio", "minio-init", "scheduler", "executor"] {
        match services.get(name) {
            None => problems.push(format!("no `{name}` service")),
            Some(s) if s.profiles != ["cluster"] => {
                problems.push(format!("{name}: must run in the cluster profile only"))
            }
            _ => {}
        }
    }
    let (Some(sch), Some(ex), Some(minio), Some(init)) = (
        services.get("scheduler"),
        services.get("executor"),
        services.get("minio"),
        services.get("minio-init"),
    ) else {
        return;
    };
    if !sch.command.starts_with(&cluster_role("scheduler"))
        || !ex.command.starts_with(&cluster_role("executor"))
    {
        problems.push("scheduler/executor: not `cluster scheduler` / `cluster executor`".into());
    }
    let port = flag_value(&sch.command, "--listen").and_then(|a| a.rsplit_once(':'));
    let want = port.map(|(_, p)| format!("df://scheduler:{p}"));
    let got = flag_value(&ex.command, "--scheduler").map(str::to_owned);
    if want.is_none() || got != want {
        problems.push(format!(
            "executor: --scheduler {got:?}, but the scheduler listens as {want:?}"
        ));
    }
    if ex.container_name || !ex.ports.is_empty() {
        problems.push("executor: a container_name or host port stops `--scale executor=N`".into());
    }
    let env = |s: &Service, k: &str| s.env.get(k).cloned().unwrap_or_default();
    let lake = env(ex, "STOCKANOMALY_LAKE");
    let bucket = lake
        .strip_prefix("s3://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default();
    if bucket.is_empty() || bucket != env(init, "LAKE_BUCKET") {
        problems.push(format!(
            "executor: lake {lake:?} is not in the bucket minio-init creates ({:?})",
            env(init, "LAKE_BUCKET")
        ));
    }
    if env(ex, "AWS_ENDPOINT_URL") != "http://minio:9000" {
        problems.push("executor: AWS_ENDPOINT_URL is not the minio service".into());
    }
    if env(ex, "AWS_ACCESS_KEY_ID") != env(minio, "MINIO_ROOT_USER")
        || env(ex, "AWS_SECRET_ACCESS_KEY") != env(minio, "MINIO_ROOT_PASSWORD")
    {
        problems.push("executor: its S3 credentials are not MinIO's".into());
    }
    let token = env(ex, "STOCKANOMALY_CLUSTER_TOKEN");
    if token.is_empty() || token != env(sch, "STOCKANOMALY_CLUSTER_TOKEN") {
        problems.push("executor and scheduler: not the same cluster token".into());
    }
    match ex.depends_on.get("minio-init").map(String::as_str) {
        Some("service_completed_successfully") => {}
        other => problems.push(format!(
            "executor: must wait for minio-init to complete, has {other:?}"
        )),
    }
}

/// The Kubernetes manifests (`deploy/kubernetes/*.yaml`), each document.
fn manifests() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/kubernetes");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            out.push((path.display().to_string(), v));
        }
    }
    out
}

/// Every problem with the Kubernetes manifests: each container of ours as
/// a compose service (its args against the binary, its variables against
/// the subcommand's help, with the ConfigMap's values and the secret's keys
/// its header documents), the executors and the backfill naming the
/// scheduler's Service at its port, executors announcing their pod IP on
/// the port they listen on, one lake for both, and no Secret values.
fn manifest_problems(
    docs: &[(String, Value)],
    secret_keys: &[String],
    helps: &mut Helps,
) -> Vec<String> {
    let mut problems = Vec::new();
    let kind = |v: &Value| v.get("kind").map(scalar).unwrap_or_default();
    let name = |v: &Value| {
        v.get("metadata")
            .and_then(|m| m.get("name"))
            .map(scalar)
            .unwrap_or_default()
    };
    let mut config: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (file, d) in docs {
        match kind(d).as_str() {
            "ConfigMap" => {
                if let Some(Value::Mapping(m)) = d.get("data") {
                    let data = m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect();
                    config.insert(name(d), data);
                }
            }
            "Secret" if d.get("data").is_some() || d.get("stringData").is_some() => {
                problems.push(format!("{file}: Secret {} carries values", name(d)))
            }
            _ => {}
        }
    }
    // Containers of ours, by workload name.
    let mut containers: BTreeMap<String, Service> = BTreeMap::new();
    let mut pod_ip_vars: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, d) in docs {
        let spec = match kind(d).as_str() {
            "Deployment" | "Job" => d.get("spec"),
            "CronJob" => d
                .get("spec")
                .and_then(|s| s.get("jobTemplate"))
                .and_then(|j| j.get("spec")),
            _ => continue,
        };
        let Some(Value::Sequence(cs)) = spec
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .and_then(|s| s.get("containers"))
        else {
            continue;
        };
        for c in cs {
            let image = c.get("image").map(scalar).unwrap_or_default();
            if !image.starts_with("stockanomaly") {
                continue;
            }
            let mut env = BTreeMap::new();
            let mut from_pod_ip = Vec::new();
            if let Some(Value::Sequence(vars)) = c.get("env") {
                for v in vars {
                    let k = v.get("name").map(scalar).unwrap_or_default();
                    let field = v
                        .get("valueFrom")
                        .and_then(|f| f.get("fieldRef"))
                        .and_then(|f| f.get("fieldPath"))
                        .map(scalar);
                    if field.as_deref() == Some("status.podIP") {
                        from_pod_ip.push(k.clone());
                    }
                    let value = v
                        .get("value")
                        .map(scalar)
                        .unwrap_or_else(|| "from-k8s".into());
                    env.insert(k, value);
                }
            }
            if let Some(Value::Sequence(froms)) = c.get("envFrom") {
                for f in froms {
                    if let Some(cm) = f.get("configMapRef").and_then(|r| r.get("name")) {
                        match config.get(&scalar(cm)) {
                            Some(data) => env.extend(data.clone()),
                            None => {
                                problems.push(format!("{}: no ConfigMap {}", name(d), scalar(cm)))
                            }
                        }
                    }
                    if f.get("secretRef").is_some() {
                        for k in secret_keys {
                            env.insert(k.clone(), "from-secret".into());
                        }
                    }
                }
            }
            // Kubernetes expands $(VAR) in args from the container's env.
            let mut command = strings(c.get("args"));
            for w in &mut command {
                for var in &from_pod_ip {
                    *w = w.replace(&format!("$({var})"), "10.0.0.7");
                }
            }
            if c.get("command").is_some() {
                problems.push(format!("{}: overrides the image's entrypoint", name(d)));
            }
            let s = Service {
                name: name(d),
                ours: true,
                image,
                command,
                env,
                ..Service::default()
            };
            pod_ip_vars.insert(name(d), from_pod_ip);
            containers.insert(name(d), s);
        }
    }
    for s in containers.values() {
        check_command(s, helps, &mut problems);
    }
    let by_role = |role: &str| {
        containers.values().find(|s| {
            s.command.starts_with(&cluster_role(role))
                || (role == "backfill" && s.command.first().is_some_and(|w| w == "backfill"))
        })
    };
    let (Some(sch), Some(ex), Some(job)) = (
        by_role("scheduler"),
        by_role("executor"),
        by_role("backfill"),
    ) else {
        problems.push("no scheduler, executor and backfill containers".into());
        return problems;
    };
    // The scheduler's Service: selects its pods, forwards to its port.
    let listen_port = flag_value(&sch.command, "--listen")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap_or_default();
    let scheduler_pods = docs
        .iter()
        .find(|(_, d)| name(d) == sch.name)
        .and_then(|(_, d)| {
            d.get("spec")?
                .get("template")?
                .get("metadata")?
                .get("labels")
                .cloned()
        });
    let service = docs.iter().find(|(_, d)| {
        kind(d) == "Service"
            && d.get("spec").and_then(|s| s.get("selector")).cloned() == scheduler_pods
    });
    let target = match service {
        Some((_, svc)) => {
            let port = match svc.get("spec").and_then(|s| s.get("ports")) {
                Some(Value::Sequence(ps)) => ps.first().cloned(),
                _ => None,
            };
            let (p, t) = port.map_or((String::new(), String::new()), |p| {
                (
                    p.get("port").map(scalar).unwrap_or_default(),
                    p.get("targetPort").map(scalar).unwrap_or_default(),
                )
            });
            if t != listen_port {
                problems.push(format!(
                    "the scheduler's Service forwards to {t}, it listens on {listen_port}"
                ));
            }
            format!("df://{}:{p}", name(svc))
        }
        None => {
            problems.push("no Service selects the scheduler's pods".into());
            String::new()
        }
    };
    for (who, flag, s) in [
        ("executor", "--scheduler", ex),
        ("backfill", "--cluster", job),
    ] {
        let got = flag_value(&s.command, flag).unwrap_or_default();
        if got != target {
            problems.push(format!(
                "{who}: {flag} {got}, the scheduler's Service is {target}"
            ));
        }
    }
    let listen = flag_value(&ex.command, "--listen")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p);
    let advertised = flag_value(&ex.command, "--advertise")
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p);
    if listen.is_none() || listen != advertised {
        problems.push(format!(
            "executor: announces port {advertised:?}, listens on {listen:?}"
        ));
    }
    if pod_ip_vars.get(&ex.name).is_none_or(Vec::is_empty) {
        problems.push("executor: does not announce its pod IP (status.podIP)".into());
    }
    for var in ["STOCKANOMALY_LAKE", "STOCKANOMALY_CLUSTER_TOKEN"] {
        if !ex.env.contains_key(var)
            || ex.env.get(var) != job.env.get(var)
            || !sch.env.contains_key("STOCKANOMALY_CLUSTER_TOKEN")
        {
            problems.push(format!(
                "{var}: not the same for the executors, the backfill and the scheduler"
            ));
        }
    }
    if !ex
        .env
        .get("STOCKANOMALY_LAKE")
        .is_some_and(|l| l.starts_with("s3://"))
    {
        problems.push("executor: the lake is not an s3:// root every pod reaches".into());
    }
    problems
}

/// The keys of the secret the manifests' header says to create
/// (`--from-literal=KEY=...`).
fn secret_keys(docs_text: &str) -> Vec<String> {
    docs_text
        .split("--from-literal=")
        .skip(1)
        .filter_map(|rest| rest.split_once('=').map(|(k, _)| k.to_owned()))
        .collect()
}

#[test]
fn kubernetes_manifests_are_wired_to_the_binary() {
    let docs = manifests();
    let keys = secret_keys(&read("deploy/kubernetes/cluster.yaml"));
    assert!(
        keys.contains(&"STOCKANOMALY_CLUSTER_TOKEN".to_owned()),
        "{keys:?}"
    );
    let mut helps = Helps::new();
    let problems = manifest_problems(&docs, &keys, &mut helps);
    assert!(
        problems.is_empty(),
        "deploy/kubernetes is miswired:\n  {}",
        problems.join("\n  ")
    );
    // The checks catch what they are for.
    let mut mutated = |from: &str, to: &str| -> Vec<String> {
        let text = read("deploy/kubernetes/cluster.yaml").replace(from, to);
        assert_ne!(
            text,
            read("deploy/kubernetes/cluster.yaml"),
            "{from} not found"
        );
        let docs: Vec<(String, Value)> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| ("mutated".to_owned(), Value::deserialize(d).unwrap()))
            .collect();
        manifest_problems(&docs, &keys, &mut helps)
    };
    for (from, to, expect) in [
        (
            "df://stockanomaly-scheduler:7070\n",
            "df://stockanomaly-scheduler:7071\n",
            "--scheduler",
        ),
        (
            "http://$(POD_IP):7071",
            "http://$(POD_IP):7072",
            "announces port",
        ),
        (
            "--listen\", \"0.0.0.0:7070",
            "--lisen\", \"0.0.0.0:7070",
            "has no --lisen",
        ),
        (
            "fieldPath: status.podIP",
            "fieldPath: status.hostIP",
            "pod IP",
        ),
        (
            "STOCKANOMALY_LAKE: s3://lake/lake",
            "STOCKANOMALY_LAKE: /var/lib/lake",
            "s3://",
        ),
    ] {
        let found = mutated(from, to);
        assert!(
            found.iter().any(|p| p.contains(expect)),
            "{from} -> {to}: expected a problem with {expect:?}, got {found:?}"
        );
    }
}

#[test]
fn compose_file_is_wired_to_the_binary() {
    let (doc, _) = resolved();
    let problems = problems(&doc, &mut Helps::new());
    assert!(
        problems.is_empty(),
        "docker-compose.yml is miswired:\n  {}",
        problems.join("\n  ")
    );
}

/// The checks above fail on the mistakes they are meant to catch.
#[test]
fn wiring_checks_catch_miswiring() {
    let (doc, _) = resolved();
    let mut helps = Helps::new();
    let mutate = |f: &dyn Fn(&mut Mapping)| {
        let mut d = doc.clone();
        let Some(Value::Mapping(services)) = d.get_mut("services") else {
            panic!("no services");
        };
        f(services);
        d
    };
    let svc = |m: &mut Mapping, name: &str| -> Mapping {
        match m.get(name) {
            Some(Value::Mapping(s)) => s.clone(),
            _ => panic!("no {name}"),
        }
    };
    let set = |m: &mut Mapping, name: &str, key: &str, v: Value| {
        let mut s = svc(m, name);
        s.insert(key.into(), v);
        m.insert(name.into(), Value::Mapping(s));
    };
    let cmd = |words: &[&str]| Value::Sequence(words.iter().map(|w| (*w).into()).collect());
    let cases: Vec<(&str, Value)> = vec![
        (
            "has no --sorce",
            mutate(&|m| {
                set(
                    m,
                    "detector",
                    "command",
                    cmd(&["detect", "--sorce", "kafka://kafka:9092/ticks"]),
                )
            }),
        ),
        (
            "does not start with a stockanomaly subcommand",
            mutate(&|m| set(m, "migrate", "command", cmd(&["migrate"]))),
        ),
        (
            "needs a subcommand",
            mutate(&|m| set(m, "migrate", "command", cmd(&["db"]))),
        ),
        (
            "sets DATABASE_URL, which `stockanomaly simulate` does not read",
            mutate(&|m| {
                let mut s = svc(m, "bootstrap-simulate");
                let mut env = match s.get("environment") {
                    Some(Value::Mapping(e)) => e.clone(),
                    _ => Mapping::new(),
                };
                env.insert("DATABASE_URL".into(), "postgres://x@postgres/db".into());
                s.insert("environment".into(), Value::Mapping(env));
                m.insert("bootstrap-simulate".into(), Value::Mapping(s));
            }),
        ),
        (
            "does not parse",
            mutate(&|m| {
                set(
                    m,
                    "producer",
                    "command",
                    cmd(&["produce", "--topic", "ticks", "--partitions", "many"]),
                )
            }),
        ),
        (
            "is not on the container's loopback",
            mutate(&|m| {
                let mut s = svc(m, "detector");
                if let Some(Value::Sequence(c)) = s.get_mut("command") {
                    for w in c.iter_mut() {
                        if w.as_str() == Some("127.0.0.1:9187") {
                            *w = "0.0.0.0:9187".into();
                        }
                    }
                }
                m.insert("detector".into(), Value::Mapping(s));
            }),
        ),
        (
            "connects as the database owner",
            mutate(&|m| {
                let owner = match svc(m, "postgres").get("environment") {
                    Some(Value::Mapping(e)) => e.get("POSTGRES_USER").cloned(),
                    _ => None,
                };
                let mut s = svc(m, "review");
                if let (Some(Value::Mapping(env)), Some(owner)) = (s.get_mut("environment"), owner)
                {
                    let url = format!("postgres://{}@postgres:5432/db", scalar(&owner));
                    env.insert("DATABASE_URL".into(), url.into());
                }
                m.insert("review".into(), Value::Mapping(s));
            }),
        ),
        (
            "without STOCKANOMALY_PUBLIC_URL",
            mutate(&|m| {
                let mut s = svc(m, "review");
                if let Some(Value::Mapping(env)) = s.get_mut("environment") {
                    env.remove("STOCKANOMALY_PUBLIC_URL");
                }
                m.insert("review".into(), Value::Mapping(s));
            }),
        ),
        (
            "container_name stops",
            mutate(&|m| set(m, "detector", "container_name", "detector".into())),
        ),
        (
            "published on 0.0.0.0",
            mutate(&|m| set(m, "postgres", "ports", cmd(&["5432:5432/tcp"]))),
        ),
        (
            "must wait for migrate with `service_completed_successfully`",
            mutate(&|m| {
                let mut dep = Mapping::new();
                let mut cond = Mapping::new();
                cond.insert("condition".into(), "service_started".into());
                dep.insert("migrate".into(), Value::Mapping(cond));
                set(m, "detector", "depends_on", Value::Mapping(dep))
            }),
        ),
        (
            "which only runs in profile(s)",
            mutate(&|m| {
                let mut s = svc(m, "detector");
                if let Some(Value::Mapping(deps)) = s.get_mut("depends_on") {
                    let mut cond = Mapping::new();
                    cond.insert("condition".into(), "service_completed_successfully".into());
                    deps.insert("bootstrap".into(), Value::Mapping(cond));
                }
                m.insert("detector".into(), Value::Mapping(s));
            }),
        ),
        (
            "but the scheduler listens as",
            mutate(&|m| {
                set(
                    m,
                    "executor",
                    "command",
                    cmd(&["cluster", "executor", "--scheduler", "df://scheduler:7071"]),
                )
            }),
        ),
        (
            "not in the bucket minio-init creates",
            mutate(&|m| {
                let mut s = svc(m, "executor");
                if let Some(Value::Mapping(env)) = s.get_mut("environment") {
                    env.insert("STOCKANOMALY_LAKE".into(), "s3://other/lake".into());
                }
                m.insert("executor".into(), Value::Mapping(s));
            }),
        ),
        (
            "not the same cluster token",
            mutate(&|m| {
                let mut s = svc(m, "scheduler");
                if let Some(Value::Mapping(env)) = s.get_mut("environment") {
                    env.insert("STOCKANOMALY_CLUSTER_TOKEN".into(), "other".into());
                }
                m.insert("scheduler".into(), Value::Mapping(s));
            }),
        ),
    ];
    for (expect, d) in cases {
        let found = problems(&d, &mut helps);
        assert!(
            found.iter().any(|p| p.contains(expect)),
            "a miswiring went unnoticed: expected a problem containing {expect:?}, got {found:#?}"
        );
    }
}

/// Every required variable must be given: no secret has a default.
#[test]
fn compose_refuses_to_run_without_its_env() {
    let compose = read("docker-compose.yml");
    let env = test_env(&compose);
    for secret in [
        "PGPASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "GRAFANA_PG_PASSWORD",
        "REVIEW_PG_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "CLUSTER_TOKEN",
    ] {
        assert!(
            env.contains_key(secret),
            "{secret} must be required (`${{{secret}:?message}}`), never defaulted"
        );
        let mut without = env.clone();
        without.remove(secret);
        let (ok, _, stderr) = compose_config(&without);
        assert!(
            !ok && stderr.contains(secret),
            "docker-compose config accepted the file without {secret}:\n{stderr}"
        );
    }
    // The secrets reach the services that need them, and only as set.
    let (doc, env) = resolved();
    let services = services(&doc);
    assert_eq!(
        services["postgres"].env.get("POSTGRES_PASSWORD"),
        env.get("PGPASSWORD")
    );
    assert_eq!(
        services["grafana"].env.get("GF_SECURITY_ADMIN_PASSWORD"),
        env.get("GRAFANA_ADMIN_PASSWORD")
    );
    assert_eq!(
        services["review"].env.get("PGPASSWORD"),
        env.get("REVIEW_PG_PASSWORD"),
        "the review page logs in with its own role's password"
    );
}

#[test]
fn env_example_documents_every_compose_variable_without_secrets() {
    let compose = read("docker-compose.yml");
    let example = read(".env.example");
    let documented: BTreeMap<String, String> = example
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    let missing: Vec<_> = compose_vars(&compose)
        .into_keys()
        .filter(|v| !documented.contains_key(v))
        .collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml uses variables .env.example does not list: {missing:?}"
    );
    for (k, v) in &documented {
        let secret = ["PASSWORD", "SECRET", "API_KEY", "TOKEN"]
            .iter()
            .any(|s| k.contains(s));
        assert!(
            !secret || v.is_empty(),
            ".env.example gives {k} a value; secrets stay empty there"
        );
    }
    let ignored = read(".gitignore");
    assert!(
        ignored
            .lines()
            .any(|l| l.trim() == "/.env" || l.trim() == ".env"),
        ".env must be git-ignored"
    );
}

/// What docker-compose.yml assumes of the image: the Dockerfile builds the
/// binary with the toolchain, puts XGBoost's library where the binary's
/// rpath points, ships the default queries and runs as `stockanomaly`.
#[test]
fn dockerfile_builds_what_compose_runs() {
    let dockerfile = read("Dockerfile");
    let arg = |name: &str| -> String {
        dockerfile
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("Dockerfile: no `ARG {name}=`"))
            .trim()
            .to_owned()
    };
    let version = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    let rust = arg("RUST_VERSION");
    let workspace = read("Cargo.toml");
    let minimum = workspace
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("Cargo.toml has a rust-version");
    assert!(
        version(&rust) >= version(&minimum),
        "Dockerfile builds with Rust {rust}, older than rust-version {minimum}"
    );
    for needed in [
        "FROM rust:${RUST_VERSION}",
        "scripts/xgboost-lib.sh",
        "cargo build --release --locked -p stockanomaly",
        "FROM debian:${DEBIAN_RELEASE}-slim",
        "COPY queries /opt/stockanomaly/queries",
        "WORKDIR /opt/stockanomaly",
        "USER stockanomaly",
        "ENTRYPOINT [\"stockanomaly\"]",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile: no `{needed}`");
    }
    // The builder's XGBOOST_LIB_DIR (baked into the rpath by
    // pipeline/build.rs) is where the runtime stage copies the library.
    let lib_dir = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENV XGBOOST_LIB_DIR="))
        .expect("Dockerfile sets XGBOOST_LIB_DIR")
        .trim()
        .to_owned();
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("COPY --from=builder")
                && l.trim().ends_with(&format!(" {lib_dir}"))),
        "Dockerfile: the runtime stage must copy {lib_dir} to the same path (the binary's rpath)"
    );
    let ignore = read(".dockerignore");
    for pattern in ["target", ".git", ".env", "parquet/*"] {
        assert!(
            ignore.lines().any(|l| l.trim() == pattern),
            ".dockerignore: no `{pattern}`"
        );
    }
}
