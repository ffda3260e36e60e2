#!/usr/bin/env bash
# `make bench`: feature backfill throughput of stockanomaly against DuckDB
# running the same SQL, then `stockanomaly bench` (simulation and ingestion),
# then `stockanomaly bench --feeds` (feed JSON decoding into Arrow; with
# DATABASE_URL also the PostgreSQL tick load, COPY against row-by-row INSERT).
#
#   scripts/bench.sh            release build; >= 1.56M minute bars and
#                               >= 10M trade ticks; a year of 500 symbols'
#                               bars (peak memory); 1M ticks per feed
#   scripts/bench.sh --quick    ~100k rows per dataset, no `stockanomaly bench`,
#                               --feeds on 100k ticks (a smoke run; fine with
#                               a debug build)
#
# Environment:
#   STOCKANOMALY_BIN       binary to run; when set, nothing is built
#                          (e.g. $CARGO_TARGET_DIR/debug/stockanomaly)
#   DATABASE_URL           PostgreSQL for the tick load of --feeds (its rows
#                          go into `ticks` on 2000-01-03 and are deleted
#                          afterwards); unset: that part is skipped
#   BENCH_DUCKDB_THREADS   DuckDB threads (default: nproc, as DataFusion uses)
#   TMPDIR                 where the scratch lakes go (removed at exit)
#
# For each dataset: simulate into a scratch lake, `stockanomaly backfill
# --force` of queries/ (its own timing: the context tables profiles, market
# and betas, then the features), then `stockanomaly backfill` again after
# deleting the features (the feature files alone, over the stored context
# tables), then scripts/bench-duckdb.py over the same lake and tables
# (DuckDB from the project venv, scripts/test-env.sh setup_python), and a
# table of rows/s and the ratios stockanomaly / duckdb (> 1: faster).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'bench: %s\n' "$*" >&2; }
die() {
  printf 'bench: error: %s\n' "$*" >&2
  exit 1
}

QUICK=0
for arg in "$@"; do
  case "$arg" in
  --quick) QUICK=1 ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument '$arg' (usage: scripts/bench.sh [--quick])" ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stockanomaly-target}"
THREADS="${BENCH_DUCKDB_THREADS:-$(nproc)}"

# --- binary ------------------------------------------------------------------
if [ -n "${STOCKANOMALY_BIN:-}" ]; then
  BIN="$STOCKANOMALY_BIN"
  [ -x "$BIN" ] || die "STOCKANOMALY_BIN=$BIN is not an executable file"
  say "using $BIN (STOCKANOMALY_BIN; not building)"
else
  command -v cargo >/dev/null || die "cargo not found (or set STOCKANOMALY_BIN to a built binary)"
  # The Makefile exports XGBOOST_LIB_DIR for builds; do the same when run directly.
  if [ -z "${XGBOOST_LIB_DIR:-}" ] && [ -x "$ROOT/scripts/xgboost-lib.sh" ]; then
    XGBOOST_LIB_DIR="$("$ROOT/scripts/xgboost-lib.sh")" || die "scripts/xgboost-lib.sh failed"
    export XGBOOST_LIB_DIR
  fi
  say "building the release binary (cargo build --release --locked -p stockanomaly)"
  cargo build --release --locked -p stockanomaly || die "the release build failed"
  BIN="$CARGO_TARGET_DIR/release/stockanomaly"
  [ -x "$BIN" ] || die "no binary at $BIN after the build"
fi

# --- Python venv with DuckDB ---------------------------------------------------
# test-env.sh makes a scratch folder (SA_RUN) when sourced; test_env_stop
# removes it, and the trap below calls it.
# shellcheck source=scripts/test-env.sh
. "$ROOT/scripts/test-env.sh"
SCRATCH=""
cleanup() {
  local rc=$?
  [ -n "$SCRATCH" ] && rm -rf "$SCRATCH"
  test_env_stop >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v python3 >/dev/null || die "python3 not found (needed for the DuckDB venv)"
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv ||
  die "python3-venv is missing and could not be installed"
setup_python || die "could not set up the Python venv in $SA_VENV (see pip's output above)"
PY="$SA_VENV/bin/python"
"$PY" -c 'import duckdb' 2>/dev/null || die "duckdb does not import in $SA_VENV; remove $SA_VENV and rerun"

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/stockanomaly-bench.XXXXXX")"

# --- datasets -------------------------------------------------------------------
# name|simulate flags|minimum rows. Minute bars: 390 per symbol and XNYS day.
if [ "$QUICK" = 1 ]; then
  DATASETS=(
    "minute bars|--kind bars --symbols 16 --days 16|90000"
    "trade ticks|--kind trades --symbols 10 --days 5 --trades-per-day 2000|80000"
  )
else
  DATASETS=(
    "minute bars|--kind bars --symbols 200 --days 20|1560000"
    "trade ticks|--kind trades --symbols 100 --days 5 --trades-per-day 20000|10000000"
  )
fi

# Thousands separators for an integer or a float (rounded).
fmt_int() { LC_ALL=C awk -v n="$1" 'BEGIN { s = sprintf("%.0f", n); o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) } print s o }'; }

# Runs `backfill` of queries/ over $lake with extra flags "$@" (after the
# dataset name) and sets sa_rows and sa_rate from its summary line.
backfill_rate() {
  local name="$1" out line secs
  shift
  out="$("$BIN" backfill --lake "$lake" --queries "$ROOT/queries" "$@")" ||
    die "$name: stockanomaly backfill $* failed"
  printf '%s\n' "$out" >&2
  # "  5 dates computed, 0 already done; 10,012,345 rows in 12.34s, 811.2k/s"
  line="$(printf '%s\n' "$out" | grep -E '[0-9,]+ rows in [0-9.]+s' | tail -n 1)" ||
    die "$name: cannot find 'N rows in S s' in the backfill's output"
  sa_rows="$(printf '%s\n' "$line" | sed -E 's/.* ([0-9,]+) rows in ([0-9.]+)s.*/\1/' | tr -d ,)"
  secs="$(printf '%s\n' "$line" | sed -E 's/.* ([0-9,]+) rows in ([0-9.]+)s.*/\2/')"
  sa_rate="$(LC_ALL=C awk -v r="$sa_rows" -v s="$secs" 'BEGIN { if (s <= 0) s = 0.005; printf "%.1f", r / s }')"
  # "  peak memory 1.23 GB (resident)"
  sa_peak="$(printf '%s\n' "$out" | sed -n 's/^  peak memory \(.*\) (resident)$/\1/p' | tail -n 1)"
  sa_peak="${sa_peak:--}"
  [ "$sa_rows" = "$ticks" ] || say "note: backfill wrote $(fmt_int "$sa_rows") rows for $(fmt_int "$ticks") ticks"
}

RESULTS=()
NOT_COMPUTED=""
XGB_DONE=""
XGB_LINES=""
XGB_ROWS=""
if [ "$QUICK" = 1 ]; then XGB_ROUNDS=10; else XGB_ROUNDS=50; fi
xgb_val() { printf '%s\n' "$XGB_LINES" | sed -n "s/^$1=//p" | tail -n 1; }
for ds in "${DATASETS[@]}"; do
  IFS='|' read -r name flags min_rows <<<"$ds"
  lake="$SCRATCH/lake"
  rm -rf "$lake"
  say "== $name: simulate $flags"
  # shellcheck disable=SC2086
  sim_out="$("$BIN" simulate --lake "$lake" $flags --seed 1)" || die "$name: simulate failed"
  printf '%s\n' "$sim_out" | sed -n 1p >&2
  ticks="$(printf '%s\n' "$sim_out" | sed -n 's/.*: \([0-9,]*\) ticks,.*/\1/p' | head -n 1 | tr -d ,)"
  [ -n "$ticks" ] || die "$name: cannot read the tick count from simulate's output"
  if [ "$ticks" -lt "$min_rows" ]; then
    say "WARNING: $name: only $(fmt_int "$ticks") ticks simulated, below the $(fmt_int "$min_rows") aimed at"
  fi

  # Twice: first everything (--force: the context tables `profiles`,
  # `market` and `betas` too, which the feature files join), then, with
  # those stored, the feature files alone: what DuckDB runs below, over the
  # same stored tables.
  say "== $name: stockanomaly backfill --force (context tables and features)"
  backfill_rate "$name" --force
  full_rate="$sa_rate"
  full_peak="$sa_peak"
  rm -rf "$lake/features"
  say "== $name: stockanomaly backfill (the feature files alone; context tables as stored)"
  backfill_rate "$name"

  say "== $name: DuckDB, same SQL ($THREADS threads)"
  duck_log="$SCRATCH/duckdb.log"
  TMPDIR="$SCRATCH" "$PY" "$ROOT/scripts/bench-duckdb.py" "$lake" "$ROOT/queries" --threads "$THREADS" \
    >"$duck_log" 2>&1 || {
    cat "$duck_log" >&2
    die "$name: scripts/bench-duckdb.py failed"
  }
  grep -v '^DUCKDB_ROWS_PER_SEC=' "$duck_log" >&2 || true
  duck_rate="$(sed -n 's/^DUCKDB_ROWS_PER_SEC=//p' "$duck_log" | tail -n 1)"
  [ -n "$duck_rate" ] || die "$name: no DUCKDB_ROWS_PER_SEC line from scripts/bench-duckdb.py"
  say "== $name: DuckDB, the whole job: context tables from the same SQL, then the features"
  TMPDIR="$SCRATCH" "$PY" "$ROOT/scripts/bench-duckdb.py" "$lake" "$ROOT/queries" --threads "$THREADS" \
    --whole-job >"$duck_log" 2>&1 || {
    cat "$duck_log" >&2
    die "$name: scripts/bench-duckdb.py --whole-job failed"
  }
  grep -v '^DUCKDB_ROWS_PER_SEC=' "$duck_log" >&2 || true
  duck_whole="$(sed -n 's/^DUCKDB_ROWS_PER_SEC=//p' "$duck_log" | tail -n 1)"
  [ -n "$duck_whole" ] || die "$name: no DUCKDB_ROWS_PER_SEC line from scripts/bench-duckdb.py --whole-job"
  ratio="$(LC_ALL=C awk -v a="$sa_rate" -v b="$duck_rate" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
  full_ratio="$(LC_ALL=C awk -v a="$full_rate" -v b="$duck_whole" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
  RESULTS+=("$name|$sa_rows|$sa_rate|$duck_rate|$ratio|$full_rate|$duck_whole|$full_ratio|$full_peak")
  NOT_COMPUTED="$(sed -n 's/^bench-duckdb: note: \([A-Za-z0-9_]*\) .*NOT computed.*/\1/p' "$duck_log" | paste -sd, -)"

  # XGBoost on the first dataset's training view (features x labels).
  if [ -z "$XGB_DONE" ]; then
    XGB_DONE=1
    say "== $name: XGBoost, stockanomaly vs Python's xgboost.train on the same matrix ($XGB_ROUNDS rounds)"
    xgb_rs="$("$BIN" bench --xgboost "$lake" --rounds "$XGB_ROUNDS" --export "$SCRATCH/matrix.parquet")" ||
      die "$name: stockanomaly bench --xgboost failed"
    printf '%s\n' "$xgb_rs" | grep -v '^XGB_' >&2 || true
    xgb_py="$("$PY" "$ROOT/scripts/bench-xgboost.py" "$SCRATCH/matrix.parquet" "$XGB_ROUNDS")" ||
      die "$name: scripts/bench-xgboost.py failed"
    XGB_LINES="$xgb_rs"$'\n'"$xgb_py"
    XGB_ROWS="$(printf '%s\n' "$xgb_rs" | sed -n 's/^xgboost benchmark: \([0-9,]*\) rows.*/\1/p')"
    rm -f "$SCRATCH/matrix.parquet"
  fi
  rm -rf "$lake"
done

# --- memory: a year of minute bars --------------------------------------------
# Peak memory must be bounded by a run of dates (--chunk-ticks), not by the
# lake: a year of 500 symbols' bars backfills in under 4 GB.
if [ "$QUICK" = 1 ]; then YEAR=(--symbols 20 --days 30); else YEAR=(--symbols 500 --days 252); fi
lake="$SCRATCH/year"
say "== a year of minute bars: simulate ${YEAR[*]}, then backfill"
"$BIN" simulate --lake "$lake" --kind bars "${YEAR[@]}" --seed 3 >&2 || die "year of bars: simulate failed"
ticks="$("$BIN" sql --lake "$lake" --format csv "SELECT count(*) AS n FROM ticks" | tail -n 1)"
backfill_rate "year of bars"
YEAR_LINE="$(fmt_int "$sa_rows") rows (${YEAR[*]}): backfill $(fmt_int "$sa_rate") rows/s, peak memory $sa_peak (target: under 4 GB)"
rm -rf "$lake"

echo
echo "Feature backfill, default pack (queries/features), $(basename "$BIN") $("$BIN" --version 2>/dev/null | awk '{print $NF}') vs DuckDB $("$PY" -c 'import duckdb; print(duckdb.__version__)') ($THREADS threads)"
[ -z "$NOT_COMPUTED" ] || echo "(not computed by DuckDB, no equivalent of ewm_zscore: $NOT_COMPUTED)"
printf '%-12s %12s | %14s %14s %7s | %14s %14s %7s %12s\n' dataset rows "features rows/s" "duckdb rows/s" ratio \
  "whole rows/s" "duckdb whole" ratio "peak memory"
for r in "${RESULTS[@]}"; do
  IFS='|' read -r name rows sa duck ratio full duck_whole full_ratio peak <<<"$r"
  printf '%-12s %12s | %14s %14s %7s | %14s %14s %7s %12s\n' "$name" "$(fmt_int "$rows")" "$(fmt_int "$sa")" \
    "$(fmt_int "$duck")" "$ratio" "$(fmt_int "$full")" "$(fmt_int "$duck_whole")" "$full_ratio" "$peak"
done
echo "ratio = stockanomaly rows/s / duckdb rows/s (> 1: stockanomaly is faster); both write zstd Parquet."
echo "features: both run the feature files over the lake's stored context tables (profiles, market, betas)."
echo "whole: the whole job: stockanomaly's backfill --force makes the context tables and the features; DuckDB"
echo "makes the same tables from the same SQL (scripts/bench-duckdb.py --whole-job), then the features."
echo "peak memory: the resident peak of stockanomaly's backfill --force."
echo "stockanomaly computes runs of dates (up to --chunk-ticks ticks) with the lookback before each run; DuckDB the whole lake in one query."
echo "a year of minute bars: $YEAR_LINE"
case "$BIN" in
*/debug/*) echo "(debug binary: these figures say nothing about performance; use make bench)" ;;
esac
[ "$QUICK" = 0 ] || echo "(--quick: a smoke run on ~100k rows, not a measurement)"

if [ -n "$XGB_LINES" ]; then
  echo
  echo "XGBoost 3.4.1, $XGB_ROWS rows of the first dataset's training view, $XGB_ROUNDS rounds, same parameters (hist, depth 6)"
  printf '%-34s %14s %14s %8s\n' measure stockanomaly "python xgboost" ratio
  ratio_of() { LC_ALL=C awk -v a="$1" -v b="$2" -v inv="$3" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", (inv ? b / a : a / b); else print "-" }'; }
  printf '%-34s %14s %14s %8s\n' "DMatrix build (s)" "$(xgb_val XGB_RUST_DMATRIX_SECS)" "$(xgb_val XGB_PY_DMATRIX_SECS)" \
    "$(ratio_of "$(xgb_val XGB_RUST_DMATRIX_SECS)" "$(xgb_val XGB_PY_DMATRIX_SECS)" 1)"
  printf '%-34s %14s %14s %8s\n' "training (s)" "$(xgb_val XGB_RUST_TRAIN_SECS)" "$(xgb_val XGB_PY_TRAIN_SECS)" \
    "$(ratio_of "$(xgb_val XGB_RUST_TRAIN_SECS)" "$(xgb_val XGB_PY_TRAIN_SECS)" 1)"
  printf '%-34s %14s %14s %8s\n' "scoring rows/s" "$(fmt_int "$(xgb_val XGB_RUST_PREDICT_ROWS_PER_SEC)")" \
    "$(fmt_int "$(xgb_val XGB_PY_PREDICT_ROWS_PER_SEC)")" \
    "$(ratio_of "$(xgb_val XGB_RUST_PREDICT_ROWS_PER_SEC)" "$(xgb_val XGB_PY_PREDICT_ROWS_PER_SEC)" 0)"
  echo "scoring: stockanomaly builds a DMatrix from the Arrow columns and predicts; Python calls inplace_predict on a NumPy array."
  echo "mean score: stockanomaly $(xgb_val XGB_RUST_MEAN_SCORE), python $(xgb_val XGB_PY_MEAN_SCORE) (same data and seed: equal)"
  echo "ratio > 1: stockanomaly is faster."
fi

if [ "$QUICK" = 0 ]; then
  echo
  say "== stockanomaly bench (simulation, backfill, CSV ingestion)"
  TMPDIR="$SCRATCH" "$BIN" bench || die "stockanomaly bench failed"
fi

echo
if [ -n "${DATABASE_URL:-}" ]; then
  say "== stockanomaly bench --feeds (feed decoding; PostgreSQL load, COPY vs INSERT, into DATABASE_URL)"
else
  say "== stockanomaly bench --feeds (feed decoding; no DATABASE_URL, so no PostgreSQL load)"
fi
if [ "$QUICK" = 1 ]; then
  "$BIN" bench --feeds --ticks 100000 --insert-rows 2000 || die "stockanomaly bench --feeds failed"
else
  "$BIN" bench --feeds || die "stockanomaly bench --feeds failed"
fi
