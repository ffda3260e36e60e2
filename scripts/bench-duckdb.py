#!/usr/bin/env python3
"""Runs the feature pack's SQL in DuckDB over a StockAnomaly lake, for the
side-by-side benchmark of `scripts/bench.sh` (`make bench`).

    bench-duckdb.py LAKE QUERIES_DIR [--threads N]

What it does, to do the same work as `stockanomaly backfill`:
  * the project's scalar UDFs as DuckDB macros with the same semantics
    (`log_return`, `day_fraction`, `session_minute`, `signed_volume`; see
    MACROS and udfs/src/);
  * `ticks` = read_parquet('LAKE/ticks/**/*.parquet', hive_partitioning=true);
  * `symbols`, and `profiles`, `market` and `betas` as the backfill wrote
    them (read, not recomputed, as the timed backfill of the feature files
    alone reads them too); with --whole-job, DuckDB makes them itself first
    (timed with the features, as `backfill --force` makes them): the
    per-day minute statistics and the profiles' medians over the 20 trailing
    dates (the SQL the backfill runs, features/profiles.rs), the market
    buckets from QUERIES_DIR/market/buckets.sql (the same file; the
    project's aggregates `exact_sum`, `exact_mean`, `first_value(x ORDER BY
    ...)` as DuckDB's `sum`, `avg`, `first(x ORDER BY ...)`) and the betas
    (`regr_slope` over the trailing dates' buckets traded by two symbols or
    more), each written to zstd Parquet;
  * every `QUERIES_DIR/features/*.sql` (file-name order) as a temp view, with
    `ewm_zscore(...) OVER (...)` replaced by NULL::DOUBLE (no DuckDB
    equivalent: that one column is not computed here);
  * one SELECT joining the views on (symbol, ts, seq), features cast to
    DOUBLE, written to zstd Parquet in a scratch folder (the backfill writes
    zstd Parquet to the lake); that statement is what is timed.

Differences that remain: DuckDB computes the whole lake in one query, the
backfill runs of dates (up to --chunk-ticks ticks) with the lookback (30 min
+ 201 ticks) of history re-read before each run, so it reads somewhat more
rows.

Then, when the backfill's output exists (LAKE/features/<hash>/), compares a
few features computed by both (max abs/rel difference; informational:
DuckDB's sliding-window sums are not exact, so small differences are
expected).

The last line printed is machine-readable: DUCKDB_ROWS_PER_SEC=<float> (with
--whole-job: the context tables and the features, over the feature rows).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import sys
import tempfile
import time

KEY = ("symbol", "ts", "seq")

# The project's scalar UDFs (udfs/src/*.rs) as DuckDB macros, same semantics.
MACROS = [
    # ln(a / b), NULL unless both are finite and > 0 (NaN > 0 is true in
    # DuckDB, hence isfinite).
    (
        "log_return(a, b)",
        "CASE WHEN a > 0 AND b > 0 AND isfinite(a) AND isfinite(b) THEN ln(a / b) END",
    ),
    # Seconds since local midnight / 86400, daylight saving time included.
    ("day_fraction(ts, tz)", "(epoch_us(timezone(tz, ts)) % 86400000000) / 86400000000.0"),
    # Minutes since the local 'HH:MM' open on the tick's local day.
    (
        "session_minute(ts, tz, open)",
        "((epoch_us(timezone(tz, ts)) % 86400000000) - epoch_us(CAST(open AS TIME))) / 60000000.0",
    ),
    # Tick rule: +volume on an uptick, -volume on a downtick, else 0; NULL
    # when an input is NULL (NaN compares false in Rust, greatest in DuckDB).
    (
        "signed_volume(p, q, v)",
        "CASE WHEN p IS NULL OR q IS NULL OR v IS NULL THEN NULL "
        "WHEN isnan(p) OR isnan(q) THEN 0.0 "
        "WHEN p > q THEN v WHEN p < q THEN -v ELSE 0.0 END",
    ),
]
DEFAULT_CHECK = "vol_5m,price_z_30m,tick_rate_1m"


def die(msg: str, code: int = 2) -> None:
    print(f"bench-duckdb: error: {msg}", file=sys.stderr)
    sys.exit(code)


def note(msg: str) -> None:
    print(f"bench-duckdb: {msg}", flush=True)


# --- SQL text helpers -------------------------------------------------------


def strip_comments(sql: str) -> str:
    """Removes `-- ...` and `/* ... */` comments outside quotes."""
    out = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            out.append(sql[i : j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j  # keep the newline
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def balanced_end(sql: str, open_at: int) -> int:
    """Index just past the `)` matching the `(` at `open_at` (quote-aware)."""
    if sql[open_at] != "(":
        raise ValueError(f"expected '(' at offset {open_at}")
    depth = 0
    i, n = open_at, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"'):
            j = sql.find(c, i + 1)
            if j < 0:
                break
            i = j + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced parentheses from offset {open_at}")


EWM_CALL = re.compile(r"\bewm_zscore\s*\(", re.IGNORECASE)
OVER_PAREN = re.compile(r"\s*OVER\s*(?=\()", re.IGNORECASE)
OVER_NAME = re.compile(r"\s*OVER\s+[A-Za-z_][A-Za-z0-9_]*", re.IGNORECASE)


def drop_ewm_zscore(sql: str) -> tuple[str, int]:
    """Replaces every `ewm_zscore(...) OVER (...)` (or `OVER name`) with
    NULL::DOUBLE; returns the new text and the number of replacements."""
    count = 0
    while True:
        m = EWM_CALL.search(sql)
        if not m:
            return sql, count
        args_end = balanced_end(sql, m.end() - 1)
        end = args_end
        over = OVER_PAREN.match(sql, args_end)
        if over:
            end = balanced_end(sql, over.end())
        else:
            over = OVER_NAME.match(sql, args_end)
            if over:
                end = over.end()
        sql = sql[: m.start()] + "NULL::DOUBLE" + sql[end:]
        count += 1


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


# --- main -------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lake", help="lake folder (holds ticks/date=.../*.parquet)")
    ap.add_argument("queries", help="queries folder (holds features/*.sql)")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")
    ap.add_argument(
        "--check",
        default=DEFAULT_CHECK,
        help=f"features to compare with the backfill's output (default {DEFAULT_CHECK}; '' to skip)",
    )
    ap.add_argument("--scratch", help="scratch folder (default: a temporary one, removed)")
    ap.add_argument(
        "--whole-job",
        action="store_true",
        help="make the context tables (profiles, market, betas) too, timed with the features",
    )
    args = ap.parse_args()

    try:
        import duckdb
    except ImportError:
        die("the duckdb module is missing: run with the bench venv (scripts/test-env.sh setup_python)")

    lake = os.path.abspath(args.lake)
    tick_glob = os.path.join(lake, "ticks", "**", "*.parquet")
    if not glob.glob(os.path.join(lake, "ticks", "*", "*.parquet")):
        die(f"no tick files under {lake}/ticks/date=*/ (simulate or ingest first)")
    feature_dir = os.path.join(args.queries, "features")
    files = sorted(glob.glob(os.path.join(feature_dir, "*.sql")))
    if not files:
        die(f"no feature files in {feature_dir}")
    if args.threads < 1:
        die("--threads must be at least 1")

    scratch = args.scratch or tempfile.mkdtemp(prefix="bench-duckdb.")
    own_scratch = args.scratch is None
    os.makedirs(scratch, exist_ok=True)
    try:
        run(duckdb, lake, tick_glob, files, scratch, args)
    finally:
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def run(duckdb, lake, tick_glob, files, scratch, args) -> None:
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(args.threads)}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = {sql_str(os.path.join(scratch, 'spill'))}")
    # Row order of the output does not matter (the backfill's does not either).
    con.execute("SET preserve_insertion_order = false")
    for name, body in MACROS:
        con.execute(f"CREATE MACRO {name} AS {body}")
    con.execute(
        f"CREATE VIEW ticks AS SELECT * FROM read_parquet({sql_str(tick_glob)}, hive_partitioning = true)"
    )
    # The `symbols` reference table (exchange zone and session per symbol),
    # empty when the lake has none, as the project's session registers it.
    symbols_glob = os.path.join(lake, "symbols", "**", "*.parquet")
    if glob.glob(os.path.join(lake, "symbols", "*", "*.parquet")):
        con.execute(
            f"CREATE VIEW symbols AS SELECT * FROM read_parquet({sql_str(symbols_glob)}, hive_partitioning = true)"
        )
    else:
        con.execute(
            "CREATE TABLE symbols (listed TIMESTAMPTZ, symbol VARCHAR, exchange VARCHAR, "
            "timezone VARCHAR, session_open VARCHAR, session_close VARCHAR, date VARCHAR)"
        )

    # The lake tables feature files join besides `ticks` and `symbols`
    # (intraday profiles, market buckets, betas), as the backfill that ran
    # before this wrote them: read, not recomputed, so DuckDB does a little
    # less work here than the backfill, which makes them.
    context_seconds = 0.0
    if args.whole_job:
        context_seconds = make_context_tables(con, args.queries, scratch)
    else:
        for table in ("profiles", "market", "betas"):
            pattern = os.path.join(lake, table, "*", "*.parquet")
            if glob.glob(pattern):
                con.execute(
                    f"CREATE VIEW {table} AS SELECT * FROM read_parquet({sql_str(pattern)}, hive_partitioning = true)"
                )

    selects = [f"f0.{k}" for k in KEY]
    joins = []
    features: list[str] = []
    not_computed: list[str] = []
    for i, path in enumerate(files):
        name = os.path.basename(path)
        with open(path, encoding="utf-8") as fh:
            sql = strip_comments(fh.read()).strip().rstrip(";").strip()
        try:
            sql, dropped = drop_ewm_zscore(sql)
        except ValueError as e:
            die(f"{name}: cannot rewrite ewm_zscore(...) OVER (...): {e}")
        try:
            con.execute(f"CREATE TEMP VIEW f{i} AS\n{sql}\n")
            cols = [r[0] for r in con.execute(f"DESCRIBE f{i}").fetchall()]
        except duckdb.Error as e:
            hint = ""
            if "Function with name" in str(e):
                hint = (
                    "\n(a project UDF without a DuckDB macro: add one to MACROS in "
                    "scripts/bench-duckdb.py, or to drop_ewm_zscore for a window UDF)"
                )
            die(f"{name}: DuckDB cannot run it: {e}{hint}")
        missing = [k for k in KEY if k not in cols]
        if missing:
            die(f"{name}: missing key column(s) {', '.join(missing)}")
        for c in cols:
            if c in KEY:
                continue
            if c in features:
                die(f"{name}: feature {c} is defined twice")
            features.append(c)
            selects.append(f"CAST(f{i}.{ident(c)} AS DOUBLE) AS {ident(c)}")
        if dropped:
            # Which columns became NULL: those whose text now reads NULL::DOUBLE AS name.
            for m in re.finditer(r"NULL::DOUBLE\s+(?:AS\s+)?\"?([A-Za-z_][A-Za-z0-9_]*)", sql, re.I):
                not_computed.append(m.group(1))
        if i > 0:
            joins.append(
                f"JOIN f{i} ON f{i}.symbol = f0.symbol AND f{i}.ts = f0.ts AND f{i}.seq = f0.seq"
            )
    for c in not_computed:
        note(f"note: {c} (ewm_zscore, no DuckDB equivalent) is NOT computed by DuckDB: it is NULL::DOUBLE")

    query = f"SELECT {', '.join(selects)} FROM f0 {' '.join(joins)}"
    out = os.path.join(scratch, "features.parquet")
    copy = (
        f"COPY ({query}) TO {sql_str(out)} "
        "(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
    )
    note(
        f"{len(files)} feature files, {len(features)} features, threads={args.threads}, "
        f"duckdb {duckdb.__version__}; writing zstd Parquet to {scratch}"
    )
    started = time.perf_counter()
    try:
        con.execute(copy)
    except duckdb.Error as e:
        die(f"the feature query failed: {e}")
    seconds = time.perf_counter() - started
    rows = con.execute(f"SELECT count(*) FROM read_parquet({sql_str(out)})").fetchone()[0]
    if args.whole_job:
        note(f"features {seconds:.2f} s after the context tables' {context_seconds:.2f} s")
        seconds += context_seconds
    rate = rows / max(seconds, 1e-9)
    print(f"duckdb: {rows:,} rows in {seconds:.2f} s, {rate:,.0f} rows/s", flush=True)

    wanted = [c for c in args.check.split(",") if c.strip()]
    check(con, lake, out, features, wanted if not args.whole_job else [], not_computed)
    con.close()
    print(f"DUCKDB_ROWS_PER_SEC={rate:.1f}", flush=True)


# The backfill's per-day minute statistics (features/profiles.rs,
# compute_minute_stats), over every date at once.
MINUTE_STATS_SQL = """
WITH z AS (SELECT symbol, min(timezone) AS timezone FROM symbols GROUP BY symbol)
SELECT CAST(k.date AS DATE) AS d, k.symbol,
       CAST(floor(session_minute(k.ts, coalesce(z.timezone, 'America/New_York'), '00:00')) AS INT) AS minute,
       sum(k.volume) AS volume, CAST(count(*) AS DOUBLE) AS ticks,
       abs(ln(last(k.price ORDER BY k.ts, k.seq) / first(k.price ORDER BY k.ts, k.seq))) AS abs_return
FROM ticks k LEFT JOIN z ON z.symbol = k.symbol
GROUP BY ALL
"""

# Each date with ticks and the (at most 20) latest dates with ticks before
# it within 60 days: what its profiles and betas are made from
# (features/profiles.rs, trailing_dates).
TRAILING_SQL = """
WITH d AS (SELECT DISTINCT CAST(date AS DATE) AS d FROM ticks),
     n AS (SELECT d, row_number() OVER (ORDER BY d) AS n FROM d)
SELECT a.d AS for_d, b.d AS from_d
FROM n a JOIN n b ON b.n < a.n AND b.n >= a.n - 20 AND b.d >= a.d - INTERVAL 60 DAY
"""

PROFILES_SQL = """
SELECT CAST(t.for_d AS TIMESTAMPTZ) AS ts, m.symbol, m.minute, count(*) AS days,
       median(m.volume) AS median_volume, median(m.ticks) AS median_ticks,
       median(m.abs_return) AS median_abs_return, CAST(t.for_d AS VARCHAR) AS date
FROM trailing_dates t JOIN minute_stats m ON m.d = t.from_d
GROUP BY ALL
"""

BETAS_SQL = """
SELECT CAST(t.for_d AS TIMESTAMPTZ) AS ts, m.symbol, count(*) AS buckets,
       regr_slope(m.ret, m.ret_mean) AS beta, CAST(t.for_d AS VARCHAR) AS date
FROM trailing_dates t JOIN market m ON CAST(m.ts AS DATE) = t.from_d
WHERE m.symbols >= 2 AND isfinite(m.ret) AND isfinite(m.ret_mean)
GROUP BY ALL
"""


def duckdb_bucket_sql(sql: str) -> str:
    """The bucket file in DuckDB's words: its aggregates `exact_sum`,
    `exact_mean` and `first_value`/`last_value(x ORDER BY ...)` (ordered
    aggregates, not windows, in that file) as `sum`, `avg`, `first`/`last`."""
    sql = strip_comments(sql).strip().rstrip(";")
    sql = re.sub(r"\bexact_sum\s*\(", "sum(", sql, flags=re.I)
    sql = re.sub(r"\bexact_mean\s*\(", "avg(", sql, flags=re.I)
    sql = re.sub(r"\bfirst_value\s*\(", "first(", sql, flags=re.I)
    sql = re.sub(r"\blast_value\s*\(", "last(", sql, flags=re.I)
    return sql


def make_context_tables(con, queries: str, scratch: str) -> float:
    """Makes `profiles`, `market` and `betas` (each written to Parquet and
    read back as the feature files' tables); returns the seconds taken."""
    bucket_file = os.path.join(queries, "market", "buckets.sql")
    try:
        with open(bucket_file, encoding="utf-8") as fh:
            buckets = duckdb_bucket_sql(fh.read())
    except OSError as e:
        die(f"{bucket_file}: {e}")
    started = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE minute_stats AS {MINUTE_STATS_SQL}")
    con.execute(f"CREATE TEMP TABLE trailing_dates AS {TRAILING_SQL}")
    for table, sql in (("profiles", PROFILES_SQL), ("market", buckets), ("betas", BETAS_SQL)):
        out = os.path.join(scratch, f"{table}.parquet")
        try:
            con.execute(
                f"COPY ({sql}) TO {sql_str(out)} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
            )
        except Exception as e:  # duckdb.Error: the module is imported by main
            die(f"the {table} table failed in DuckDB: {e}")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({sql_str(out)})")
        note(f"{table}: {con.execute(f'SELECT count(*) FROM {table}').fetchone()[0]:,} rows")
    return time.perf_counter() - started


def check(con, lake, out, features, wanted, not_computed) -> None:
    """Compares features against the backfill's newest snapshot, if any."""
    if not wanted:
        return
    snaps = [d for d in glob.glob(os.path.join(lake, "features", "*")) if os.path.isdir(d)]
    snaps = [d for d in snaps if glob.glob(os.path.join(d, "*", "*.parquet"))]
    if not snaps:
        note("check: no backfill output under LAKE/features/ (run `stockanomaly backfill` first); skipped")
        return
    snap = max(snaps, key=os.path.getmtime)
    wanted = [c.strip() for c in wanted]
    unknown = [c for c in wanted if c not in features or c in not_computed]
    if unknown:
        note(f"check: not computed by DuckDB here, skipped: {', '.join(unknown)}")
    wanted = [c for c in wanted if c not in unknown]
    rust_glob = os.path.join(snap, "**", "*.parquet")
    rust_cols = [
        r[0]
        for r in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet({sql_str(rust_glob)}, hive_partitioning = true)"
        ).fetchall()
    ]
    absent = [c for c in wanted if c not in rust_cols]
    if absent:
        note(f"check: not in the backfill output, skipped: {', '.join(absent)}")
    wanted = [c for c in wanted if c not in absent]
    if not wanted:
        return
    con.execute(
        f"CREATE TEMP VIEW rust AS SELECT * FROM read_parquet({sql_str(rust_glob)}, hive_partitioning = true)"
    )
    con.execute(f"CREATE TEMP VIEW duck AS SELECT * FROM read_parquet({sql_str(out)})")
    rust_rows, duck_rows, matched = con.execute(
        "SELECT (SELECT count(*) FROM rust), (SELECT count(*) FROM duck), "
        "(SELECT count(*) FROM rust r JOIN duck d USING (symbol, ts, seq))"
    ).fetchone()
    note(
        f"check against {os.path.relpath(snap, lake)}: backfill {rust_rows:,} rows, "
        f"duckdb {duck_rows:,} rows, {matched:,} matched on (symbol, ts, seq)"
    )
    aggs = []
    for c in wanted:
        r, d = f"r.{ident(c)}", f"d.{ident(c)}"
        diff = f"abs({r} - {d})"
        rel = f"{diff} / greatest(abs({r}), abs({d}), 1e-6)"
        both = f"{r} IS NOT NULL AND {d} IS NOT NULL AND isfinite({r}) AND isfinite({d})"
        aggs += [
            f"max(CASE WHEN {both} THEN {diff} END)",
            f"max(CASE WHEN {both} THEN {rel} END)",
            f"quantile_cont(CASE WHEN {both} THEN {rel} END, 0.99)",
            f"count(*) FILTER (WHERE ({r} IS NULL) <> ({d} IS NULL))",
        ]
    res = con.execute(
        f"SELECT {', '.join(aggs)} FROM rust r JOIN duck d USING (symbol, ts, seq)"
    ).fetchone()
    print(f"  {'feature':<18} {'max abs diff':>13} {'max rel diff':>13} {'p99 rel diff':>13} {'NULL mismatches':>16}")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    for k, c in enumerate(wanted):
        a, rl, p99, nulls = res[4 * k : 4 * k + 4]
        print(f"  {c:<18} {fmt(a):>13} {fmt(rl):>13} {fmt(p99):>13} {nulls:>16,}")
    print(
        "  (rel diff = |a - b| / max(|a|, |b|, 1e-6); informational: DuckDB's sliding-window"
        " sums are not exact, small differences are expected)"
    )


if __name__ == "__main__":
    main()
