#!/usr/bin/env bash
# Streaming benchmark, figures not a pass/fail test:
# - the executor's own ticks/s and step p50/p99 in process (no broker, no
#   database) at micro-batches of 1k, 10k and 100k ticks, on 40 symbols x 3
#   days of trades and on a wide universe (2,000 symbols x 1 day);
# - the broker's consumer ceiling (one consumer reading the topic, nothing
#   else) and end-to-end ticks/s from that topic to committed alerts
#   (Kafka -> detect -> PostgreSQL);
# - latency at a fixed offered rate, split: arrival to final (what the pack
#   declares: delayed confirmation, market bucket close) and final to alerts
#   committed (processing), plus arrival to commit, at micro-batches of
#   at most 10k and 1k ticks.
#
#   scripts/bench-detect.sh            release build; ~3M ticks, 100k ticks/s offered
#   scripts/bench-detect.sh --quick    ~60k ticks, 5k ticks/s offered (a smoke run)
#
# Environment: STOCKANOMALY_BIN (binary to run; when set, nothing is built),
# TMPDIR (scratch lake, removed at exit), BENCH_LATENCY_RUNS (latency runs
# per micro-batch size, 3 or with --quick 1; the median run is reported).
# PostgreSQL and the tansu broker are started as for the tests
# (scripts/test-env.sh).
#
# Read the end-to-end figure knowing that one consumer gets ~150k messages/s
# out of tansu on this machine whatever the detector does (TOOLING.md): the
# in-process figure is the executor's own.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf 'bench-detect: %s\n' "$*" >&2; }
die() {
  printf 'bench-detect: error: %s\n' "$*" >&2
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
  *) die "unknown argument '$arg' (usage: scripts/bench-detect.sh [--quick])" ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stockanomaly-target}"
if [ -n "${STOCKANOMALY_BIN:-}" ]; then
  BIN="$STOCKANOMALY_BIN"
  [ -x "$BIN" ] || die "STOCKANOMALY_BIN=$BIN is not an executable file"
else
  if [ -z "${XGBOOST_LIB_DIR:-}" ]; then
    XGBOOST_LIB_DIR="$("$ROOT/scripts/xgboost-lib.sh")" || die "scripts/xgboost-lib.sh failed"
    export XGBOOST_LIB_DIR
  fi
  say "building the release binary"
  cargo build --release --locked -p stockanomaly || die "the release build failed"
  BIN="$CARGO_TARGET_DIR/release/stockanomaly"
fi

# shellcheck source=scripts/test-env.sh
. "$ROOT/scripts/test-env.sh"
SCRATCH=""
DETECT_PID=""
cleanup() {
  local rc=$?
  [ -n "$DETECT_PID" ] && kill "$DETECT_PID" 2>/dev/null || true
  [ -n "$SCRATCH" ] && rm -rf "$SCRATCH"
  test_env_stop >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
test_env_start >&2 || die "could not start PostgreSQL and the broker"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/stockanomaly-bench-detect.XXXXXX")"
LAKE="$SCRATCH/lake"

if [ "$QUICK" = 1 ]; then
  SIM=(--symbols 12 --days 3 --trades-per-day 1700)
  WIDE=(--symbols 200 --days 1 --trades-per-day 100)
  BATCHES=(1000 10000)
  RATE=5000
  LAT_RUNS="${BENCH_LATENCY_RUNS:-1}"
else
  SIM=(--symbols 40 --days 3)
  WIDE=(--symbols 2000 --days 1 --trades-per-day 500)
  BATCHES=(1000 10000 100000)
  RATE=100000
  LAT_RUNS="${BENCH_LATENCY_RUNS:-3}"
fi

say "simulate ${SIM[*]}, backfill, train"
"$BIN" simulate --lake "$LAKE" "${SIM[@]}" --seed 7 >&2
"$BIN" backfill --lake "$LAKE" --queries "$ROOT/queries" >&2
"$BIN" train --lake "$LAKE" --queries "$ROOT/queries" --rounds 30 --out "$SCRATCH/model" >&2
TICKS="$("$BIN" sql --lake "$LAKE" --format csv "SELECT count(*) AS n FROM ticks" | tail -n 1)"

WIDE_LAKE="$SCRATCH/wide"
say "wide universe: simulate ${WIDE[*]}"
"$BIN" simulate --lake "$WIDE_LAKE" "${WIDE[@]}" --seed 11 >&2
"$BIN" backfill --lake "$WIDE_LAKE" --queries "$ROOT/queries" >&2

# One line per lake and micro-batch: ticks/s, step p50/p99, and the first
# run's memory per held symbol.
INPROC_LINES=()
for lake in "$LAKE" "$WIDE_LAKE"; do
  for rows in "${BATCHES[@]}"; do
    say "in process: $(basename "$lake"), micro-batches of $rows"
    out="$("$BIN" bench --stream "$lake" --model "$SCRATCH/model" --batch-rows "$rows")"
    printf '%s\n' "$out" >&2
    line="$(printf '%s\n' "$out" | sed -n 's/^streaming executor: //p')"
    mem="$(printf '%s\n' "$out" | sed -n 's/^streaming executor memory: //p')"
    INPROC_LINES+=("$(basename "$lake") x $rows: $line; $mem")
  done
done

# The same with each alert's row built as detect builds it for PostgreSQL
# (features and explanation as JSON): the per-alert work before the
# database, which the latency tail is made of.
say "in process: $(basename "$LAKE"), micro-batches of 10000, alert rows built"
out="$("$BIN" bench --stream "$LAKE" --model "$SCRATCH/model" --batch-rows 10000 --alert-rows)"
printf '%s\n' "$out" >&2
INPROC_LINES+=("$(basename "$LAKE") x 10000, alert rows built: $(printf '%s\n' "$out" | sed -n 's/^streaming executor: //p')")

psql_url="$STOCKANOMALY_TEST_DATABASE_URL"
db="bench_detect_$$"
psql "$psql_url" -qc "CREATE DATABASE $db" >/dev/null
DB_URL="${psql_url%/*}/$db"

say "end to end: $TICKS ticks on a 6-partition topic, then detect until idle"
TOPIC="bench-$$"
"$BIN" produce "kafka://$STOCKANOMALY_TEST_KAFKA/$TOPIC" --lake "$LAKE" --partitions 6 >&2
CEILING="$("$BIN" bench --consume "kafka://$STOCKANOMALY_TEST_KAFKA/$TOPIC" --batch-rows 10000)"
printf '%s\n' "$CEILING" >&2
start=$(date +%s.%N)
E2E="$("$BIN" detect --lake "$LAKE" --queries "$ROOT/queries" --model "$SCRATCH/model" \
  --source "kafka://$STOCKANOMALY_TEST_KAFKA/$TOPIC" --group bench --database-url "$DB_URL" \
  --exit-when-idle 3 --batch-rows 10000)"
end=$(date +%s.%N)
printf '%s\n' "$E2E" >&2
E2E_RATE="$(LC_ALL=C awk -v n="$TICKS" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a - 3) }')"

# One latency run: the ticks offered at $RATE ticks/s to a detector with
# micro-batches of at most $1 ticks (run $2 of that size); adds to LAT_LINES
# (what to print) and sets LAST_P99 (the run's processing p99, ms).
latency_run() {
  local rows="$1" n="$2" group="bench-latency-$1-$2"
  say "latency: the same ticks offered at $RATE ticks/s to a live detector, --batch-rows $rows (run $n of $LAT_RUNS)"
  local topic="bench-latency-$rows-$n-$$"
  # The topic first (no ticks), and the detector in the group before the
  # first tick: a group join takes seconds, and a detector that joins late
  # starts with a backlog that says nothing about its latency.
  "$BIN" produce "kafka://$STOCKANOMALY_TEST_KAFKA/$topic" --lake "$LAKE" --partitions 6 \
    --from 2100-01-01 --to 2100-01-01 >&2
  "$BIN" detect --lake "$LAKE" --queries "$ROOT/queries" --model "$SCRATCH/model" \
    --source "kafka://$STOCKANOMALY_TEST_KAFKA/$topic" --group "$group" --database-url "$DB_URL" \
    --exit-when-idle 5 --batch-rows "$rows" --batch-ms 20 --stats-every 1 \
    --log 'warn,stockanomaly::sources::kafka::context=info' >"$SCRATCH/latency.out" 2>"$SCRATCH/latency.err" &
  DETECT_PID=$!
  for _ in $(seq 1 240); do
    grep -q 'Rebalance\.' "$SCRATCH/latency.err" && break
    kill -0 "$DETECT_PID" 2>/dev/null || break
    sleep 0.5
  done
  grep -q 'Rebalance\.' "$SCRATCH/latency.err" || say "the latency detector has no partitions yet; producing anyway"
  "$BIN" produce "kafka://$STOCKANOMALY_TEST_KAFKA/$topic" --lake "$LAKE" --partitions 6 \
    --rate "$RATE" >&2
  wait "$DETECT_PID" || die "the latency detector failed: $(tail -n 20 "$SCRATCH/latency.err")"
  DETECT_PID=""
  local lat p50 p99 pp50 pp99 w50 w99 run
  lat="$(psql "$DB_URL" -Atc "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY e2e_p50_ms)::numeric, 1), \
    round(max(e2e_p99_ms)::numeric, 1), \
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY processing_p50_ms)::numeric, 1), \
    round(max(processing_p99_ms)::numeric, 1), \
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_p50_ms)::numeric, 1), \
    round(max(wait_p99_ms)::numeric, 1) \
    FROM detector_stats WHERE e2e_p50_ms IS NOT NULL AND consumer_group = '$group'")"
  IFS='|' read -r p50 p99 pp50 pp99 w50 w99 <<<"$lat"
  # The whole run's quantiles, from the detector's summary.
  run="$(sed -n 's/^  latency over the run: //p' "$SCRATCH/latency.out")"
  LAT_LINES+=(
    "latency at $RATE ticks/s offered, --batch-rows $rows, run $n, over the run: ${run:-?}"
    "  per 1 s window (p50: median window's, p99: worst window's):"
    "    processing (final -> alerts committed): p50 ${pp50:-?} ms, p99 ${pp99:-?} ms"
    "    declared by the pack (arrival -> final: delay, bucket close): p50 ${w50:-?} ms, p99 ${w99:-?} ms"
    "    arrival -> alerts committed: p50 ${p50:-?} ms, p99 ${p99:-?} ms"
  )
  LAST_P99="$(printf '%s\n' "$run" | sed -n 's/^final -> committed p50 [0-9.]* ms, p99 \([0-9.]*\) ms.*/\1/p')"
}

# Processing latency is a batch's own step and transaction, so smaller
# micro-batches lower it (and catch up more slowly): both are shown. One
# run's p99 moves a lot on a machine shared with the broker, PostgreSQL and
# the producer (68-107 ms over eight runs of one binary at 1,000 rows), so
# each size runs $LAT_RUNS times and the median run is the figure.
LAT_LINES=()
for rows in 10000 1000; do
  p99s=()
  for n in $(seq 1 "$LAT_RUNS"); do
    LAST_P99=""
    latency_run "$rows" "$n"
    p99s+=("${LAST_P99:-?}")
  done
  LAT_LINES+=("processing p99 over the run, --batch-rows $rows, $LAT_RUNS runs: $(printf '%s\n' "${p99s[@]}" | sort -g | tr '\n' ' ')ms; median $(printf '%s\n' "${p99s[@]}" | sort -g | sed -n "$(((LAT_RUNS + 1) / 2))p") ms")
done

echo
echo "Streaming detector, $(basename "$BIN") ($TICKS ticks, model + default feature pack)"
echo "in process (executor only, lake x micro-batch):"
for l in "${INPROC_LINES[@]}"; do echo "  $l"; done
printf '%s\n' "$CEILING" | grep '^broker consumer ceiling:' || echo 'broker consumer ceiling: ?'
echo "end to end (tansu -> detect -> PostgreSQL): $E2E_RATE ticks/s (wall time minus the 3 s idle exit)"
for l in "${LAT_LINES[@]}"; do echo "$l"; done
case "$BIN" in
*/debug/*) echo "(debug binary: these figures say nothing about performance)" ;;
esac
