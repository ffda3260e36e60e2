#!/usr/bin/env bash
# Crash soak of the streaming detector (`make soak`; not in CI: it runs for
# tens of minutes). Streams simulated ticks through the Kafka-protocol
# broker into `detect` with PostgreSQL, SIGKILLs the detector at random
# points and cuts its PostgreSQL connections (pg_terminate_backend) at a
# few more, restarting it after each kill, then compares PostgreSQL's
# alerts with those of one uninterrupted run of the same ticks:
#
#   kills survived X/N, alerts lost L, alerts duplicated D
#
# and exits 1 unless every kill and cut was survived and the alerts are
# exactly those of the uninterrupted run (same keys, same scores).
#
#   scripts/soak.sh                      1M ticks, 100 kills, 10 cuts
#   scripts/soak.sh --ticks 100000 --kills 10 --cuts 2    a small try
#
# Options: --ticks N (about; the simulator decides the exact count),
# --kills N, --cuts N, --partitions N (of the tick topic, default 4),
# --seed N (ticks and kill points), --batch-rows N (detect's micro-batch,
# default 1000: small batches commit often, so the kill points spread over
# the stream instead of falling after its end), --keep (leave the scratch
# folder).
# Environment: STOCKANOMALY_BIN (binary to run; when unset, the release
# binary is built in CARGO_TARGET_DIR), TMPDIR (scratch). PostgreSQL and
# the tansu broker are started as for the tests (scripts/test-env.sh),
# unless STOCKANOMALY_TEST_DATABASE_URL and STOCKANOMALY_TEST_KAFKA already
# name running ones (a shell that sourced test-env.sh): those are used.
#
# A kill counts as survived when the restarted detector commits past the
# offsets stored at the kill (or finishes the stream); a cut when the
# running detector does so without exiting. Alerts are keyed
# (model_version, symbol, ts, seq) with a unique constraint, so a duplicate
# cannot be a second row: "duplicated" counts rows beyond one per key, and
# alerts the uninterrupted run does not have, or whose score differs, are
# reported too (and fail the soak).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf 'soak: %s\n' "$*" >&2; }
die() {
  printf 'soak: error: %s\n' "$*" >&2
  exit 1
}

TICKS=1000000
KILLS=100
CUTS=10
PARTITIONS=4
SEED=1
BATCH_ROWS=1000
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
  --ticks) TICKS="${2:?--ticks needs a number}"; shift 2 ;;
  --kills) KILLS="${2:?--kills needs a number}"; shift 2 ;;
  --cuts) CUTS="${2:?--cuts needs a number}"; shift 2 ;;
  --partitions) PARTITIONS="${2:?--partitions needs a number}"; shift 2 ;;
  --seed) SEED="${2:?--seed needs a number}"; shift 2 ;;
  --batch-rows) BATCH_ROWS="${2:?--batch-rows needs a number}"; shift 2 ;;
  --keep) KEEP=1; shift ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument '$1' (see scripts/soak.sh --help)" ;;
  esac
done
for v in TICKS KILLS CUTS PARTITIONS SEED BATCH_ROWS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "--${v,,} must be a whole number, not '${!v}'"
done
[ "$TICKS" -ge 1000 ] || die "--ticks must be at least 1000"
[ "$PARTITIONS" -ge 1 ] || die "--partitions must be at least 1"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stockanomaly-target}"
if [ -n "${STOCKANOMALY_BIN:-}" ]; then
  BIN="$STOCKANOMALY_BIN"
  [ -x "$BIN" ] || die "STOCKANOMALY_BIN=$BIN is not an executable file"
else
  if [ -z "${XGBOOST_LIB_DIR:-}" ]; then
    XGBOOST_LIB_DIR="$("$ROOT/scripts/xgboost-lib.sh")" || die "scripts/xgboost-lib.sh failed"
    export XGBOOST_LIB_DIR
  fi
  say "building the release binary (nice'd)"
  nice -n 10 cargo build --release --locked -p stockanomaly || die "the release build failed"
  BIN="$CARGO_TARGET_DIR/release/stockanomaly"
fi

STARTED_ENV=0
if [ -z "${STOCKANOMALY_TEST_DATABASE_URL:-}" ] || [ -z "${STOCKANOMALY_TEST_KAFKA:-}" ]; then
  # shellcheck source=scripts/test-env.sh
  . "$ROOT/scripts/test-env.sh"
  STARTED_ENV=1
fi
SCRATCH=""
DETECT_PID=""
DBS=()
cleanup() {
  local rc=$?
  if [ -n "$DETECT_PID" ]; then kill -KILL "$DETECT_PID" 2>/dev/null || true; fi
  for db in "${DBS[@]}"; do
    psql "$STOCKANOMALY_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
      >/dev/null 2>&1 || true
  done
  if [ -n "$SCRATCH" ]; then
    if [ "$KEEP" = 1 ]; then say "scratch kept in $SCRATCH"; else rm -rf "$SCRATCH"; fi
  fi
  if [ "$STARTED_ENV" = 1 ]; then test_env_stop >/dev/null 2>&1 || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$STARTED_ENV" = 1 ]; then
  test_env_start >&2 || die "could not start PostgreSQL and the broker"
else
  say "using PostgreSQL and the broker of the environment ($STOCKANOMALY_TEST_KAFKA)"
fi
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/stockanomaly-soak.XXXXXX")"
LAKE="$SCRATCH/lake"
BROKERS="$STOCKANOMALY_TEST_KAFKA"

# ~TICKS ticks: 40 symbols over 3 days. The simulator's volume per day
# depends on each symbol's liquidity and its events, so the first guess is
# corrected once from the count it gave.
SYMBOLS=40
DAYS=3
simulate() { # trades per day
  rm -rf "$LAKE"
  "$BIN" simulate --lake "$LAKE" --symbols "$SYMBOLS" --days "$DAYS" \
    --trades-per-day "$1" --seed "$SEED" >"$SCRATCH/simulate.log" 2>&1 ||
    die "simulate failed: $(tail -n 5 "$SCRATCH/simulate.log")"
  "$BIN" sql --lake "$LAKE" --format csv "SELECT count(*) AS n FROM ticks" | tail -n 1
}
PER_DAY=$((TICKS * 10 / (SYMBOLS * DAYS * 24) + 1))
TOTAL="$(simulate "$PER_DAY")"
if [ $((TOTAL * 5)) -lt $((TICKS * 4)) ] || [ $((TOTAL * 4)) -gt $((TICKS * 5)) ]; then
  PER_DAY=$((PER_DAY * TICKS / TOTAL + 1))
  TOTAL="$(simulate "$PER_DAY")"
fi
say "simulated $SYMBOLS symbols x $DAYS days x $PER_DAY trades: $TOTAL ticks; backfill"
"$BIN" backfill --lake "$LAKE" --queries "$ROOT/queries" >"$SCRATCH/backfill.log" 2>&1 ||
  die "backfill failed: $(tail -n 5 "$SCRATCH/backfill.log")"

PG="$STOCKANOMALY_TEST_DATABASE_URL"
REF_DB="soak_ref_$$"
SOAK_DB="soak_run_$$"
for db in "$REF_DB" "$SOAK_DB"; do
  psql "$PG" -qc "CREATE DATABASE $db" >/dev/null || die "cannot create database $db"
  DBS+=("$db")
done
REF_URL="${PG%/*}/$REF_DB"
SOAK_URL="${PG%/*}/$SOAK_DB"

TOPIC="soak-$$"
say "produce $TOTAL ticks to $TOPIC ($PARTITIONS partitions)"
"$BIN" produce "kafka://$BROKERS/$TOPIC" --lake "$LAKE" \
  --partitions "$PARTITIONS" >"$SCRATCH/produce.log" 2>&1 ||
  die "produce failed: $(tail -n 5 "$SCRATCH/produce.log")"

detect_args() { # group url
  printf '%s\n' detect --lake "$LAKE" --queries "$ROOT/queries" --rules \
    --source "kafka://$BROKERS/$TOPIC" --group "$1" --database-url "$2" \
    --idle-timeout-ms 300 --exit-when-idle 5 --batch-rows "$BATCH_ROWS"
}

say "the uninterrupted run"
mapfile -t ARGS < <(detect_args ref "$REF_URL")
started=$(date +%s)
"$BIN" "${ARGS[@]}" >"$SCRATCH/ref.out" 2>"$SCRATCH/ref.err" ||
  die "the uninterrupted run failed: $(tail -n 20 "$SCRATCH/ref.err")"
say "$(grep '^detect: ' "$SCRATCH/ref.out" | tail -n 1) ($(($(date +%s) - started)) s)"

# Committed progress of the soaked group: the sum of its next offsets, in
# PROGRESS. Read over one psql kept open (the cuts spare it by its
# application name): a new psql per poll took tens of ms on a loaded
# machine, while the detector ran thousands of ticks past the kill point.
# A one-off psql stands in when that connection is gone.
"$BIN" db migrate --database-url "$SOAK_URL" >/dev/null || die "cannot migrate $SOAK_DB"
PROGRESS_SQL="SELECT coalesce(sum(next_offset), 0) FROM detector_offsets \
  WHERE consumer_group = 'soak';"
coproc MONITOR { PGAPPNAME=soak-monitor exec psql "$SOAK_URL" -Atq 2>/dev/null; }
MONITOR_OUT="${MONITOR[0]}"
MONITOR_IN="${MONITOR[1]}"
PROGRESS=0
poll_progress() {
  local v=""
  # (a psql that died must not take the script with it by SIGPIPE)
  trap '' PIPE
  if ! { printf '%s\n' "$PROGRESS_SQL" >&"$MONITOR_IN" && read -r -t 5 -u "$MONITOR_OUT" v; } \
    2>/dev/null || ! [[ "$v" =~ ^[0-9]+$ ]]; then
    v="$(psql "$SOAK_URL" -Atc "$PROGRESS_SQL" 2>/dev/null)" || v=0
  fi
  trap - PIPE
  PROGRESS="${v:-0}"
}
progress() {
  poll_progress
  echo "$PROGRESS"
}
mapfile -t ARGS < <(detect_args soak "$SOAK_URL")
RUNS=0
start_detect() {
  RUNS=$((RUNS + 1))
  "$BIN" "${ARGS[@]}" >>"$SCRATCH/soak.out" 2>>"$SCRATCH/soak.err" &
  DETECT_PID=$!
}
# The detector's exit status once it has exited ("" while it runs).
STATUS=""
exited() {
  if kill -0 "$DETECT_PID" 2>/dev/null; then return 1; fi
  set +e
  wait "$DETECT_PID"
  STATUS=$?
  set -e
  return 0
}
# Waits until committed progress passes $1 or the detector exits;
# returns 0 on progress (or a clean finish), 1 if it exited with an error.
wait_progress() { # above timeout_s
  local deadline=$((SECONDS + $2))
  poll_progress
  while [ "$PROGRESS" -le "$1" ]; do
    if exited; then
      poll_progress
      [ "$STATUS" = 0 ] && [ "$PROGRESS" -ge "$TOTAL" ] && return 0
      say "detect exited with status $STATUS (run $RUNS); restarting"
      start_detect
    fi
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.02
    poll_progress
  done
  return 0
}

# The events: KILLS SIGKILLs and CUTS connection cuts at random committed
# offsets in the first 95% of the stream, in order, each a random 0-100 ms
# after its offset is committed (a random point in the next batches: a
# 1000-row batch takes a few tens of ms; with 0-500 ms the detector ran tens
# of thousands of ticks past the point, and in a 100k-tick try 6 of 10
# kills came after the stream's end).
EVENTS="$(awk -v k="$KILLS" -v c="$CUTS" -v n="$TOTAL" -v s="$SEED" 'BEGIN {
  srand(s);
  for (i = 0; i < k + c; i++) printf "%d %s %.3f\n", int(rand() * n * 0.95), (i < k ? "kill" : "cut"), rand() * 0.1;
}' | sort -n)"

say "soak: $KILLS kills and $CUTS connection cuts over $TOTAL ticks"
KILLED=0
KILLS_OK=0
# Kills that hit a detector with ticks still to read (not after the end).
MID=0
CUT=0
CUTS_OK=0
started=$(date +%s)
start_detect
while read -r at kind pause; do
  if ! wait_progress "$at" 300; then
    say "no progress past offset $at within 300 s"
  fi
  sleep "$pause"
  if [ "$kind" = kill ]; then
    if exited; then
      # Finished (or failed) before the kill: start it again to kill it.
      say "kill $((KILLED + 1)): the detector had exited (status $STATUS); restarted to be killed"
      start_detect
      sleep "$pause"
    fi
    kill -KILL "$DETECT_PID" 2>/dev/null || true
    set +e
    wait "$DETECT_PID" 2>/dev/null
    set -e
    # The offsets stored when it died: read after the kill (read before
    # it, a commit in between made the restart's "progress" already there).
    poll_progress
    before=$PROGRESS
    [ "$before" -lt "$TOTAL" ] && MID=$((MID + 1))
    KILLED=$((KILLED + 1))
    say "kill $KILLED: point $at (+${pause} s), offsets stored at the kill $before/$TOTAL"
    start_detect
    if wait_progress "$before" 300; then KILLS_OK=$((KILLS_OK + 1)); else
      say "kill $KILLED at offset $before: no progress after the restart"
    fi
  else
    psql "$SOAK_URL" -Atc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
      WHERE datname = current_database() AND pid <> pg_backend_pid() \
      AND application_name <> 'soak-monitor'" >/dev/null || true
    # Progress past what was stored at the cut needs a new connection.
    poll_progress
    before=$PROGRESS
    CUT=$((CUT + 1))
    runs=$RUNS
    if wait_progress "$before" 300 && [ "$RUNS" = "$runs" ]; then CUTS_OK=$((CUTS_OK + 1)); else
      say "cut $CUT at offset $before: the detector did not ride it out"
    fi
  fi
  if [ $(((KILLED + CUT) % 10)) = 0 ]; then
    say "$KILLED kills, $CUT cuts; committed $(progress)/$TOTAL ($(($(date +%s) - started)) s)"
  fi
done <<<"$EVENTS"

# The rest of the stream, to the end.
say "events done; letting the detector finish"
wait_progress $((TOTAL - 1)) 600 || say "the detector did not reach the end"
deadline=$(($(date +%s) + 120))
until exited; do
  [ "$(date +%s)" -lt "$deadline" ] || {
    kill -TERM "$DETECT_PID" 2>/dev/null || true
    break
  }
  sleep 0.2
done
DETECT_PID=""
say "soak done in $(($(date +%s) - started)) s, $RUNS detector runs, committed $(progress)/$TOTAL"

alerts() { # url
  psql "$1" -Atc "SELECT model_version || '|' || symbol || '|' || \
    (extract(epoch FROM ts) * 1000000)::bigint || '|' || seq || ' ' || score FROM alerts" | sort
}
alerts "$REF_URL" >"$SCRATCH/ref.alerts"
alerts "$SOAK_URL" >"$SCRATCH/soak.alerts"
cut -d' ' -f1 "$SCRATCH/ref.alerts" | sort -u >"$SCRATCH/ref.keys"
cut -d' ' -f1 "$SCRATCH/soak.alerts" | sort >"$SCRATCH/soak.keys.all"
sort -u "$SCRATCH/soak.keys.all" >"$SCRATCH/soak.keys"
REF_N=$(wc -l <"$SCRATCH/ref.keys")
LOST=$(comm -23 "$SCRATCH/ref.keys" "$SCRATCH/soak.keys" | wc -l)
EXTRA=$(comm -13 "$SCRATCH/ref.keys" "$SCRATCH/soak.keys" | wc -l)
DUP=$(($(wc -l <"$SCRATCH/soak.keys.all") - $(wc -l <"$SCRATCH/soak.keys")))
DIFFER=$(comm -3 "$SCRATCH/ref.alerts" "$SCRATCH/soak.alerts" | tr -d '\t' | cut -d' ' -f1 |
  sort | uniq -d | wc -l)
DEAD=$(psql "$SOAK_URL" -Atc "SELECT count(*) FROM dead_letters")
# Dead letters by reason in each run: a tick refused in one run and taken
# in the other changes its symbol's windows for their span.
dead_reasons() { # url
  psql "$1" -Atc "SELECT coalesce(string_agg(reason || ' ' || n, ', ' ORDER BY reason), 'none') \
    FROM (SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason) d"
}
say "dead letters: uninterrupted run $(dead_reasons "$REF_URL"); soaked run $(dead_reasons "$SOAK_URL")"

echo
echo "soak: $TOTAL ticks, $PARTITIONS partitions, $RUNS detector runs, $REF_N alerts in the uninterrupted run"
echo "kills before the end of the stream $MID/$KILLED; connection cuts survived $CUTS_OK/$CUT; alerts not in the uninterrupted run $EXTRA, with another score $DIFFER; dead letters $DEAD"
echo "kills survived $KILLS_OK/$KILLED, alerts lost $LOST, alerts duplicated $DUP"
if [ "$KILLS_OK" = "$KILLS" ] && [ "$KILLED" = "$KILLS" ] && [ "$CUTS_OK" = "$CUTS" ] &&
  [ "$LOST" = 0 ] && [ "$DUP" = 0 ] && [ "$EXTRA" = 0 ] && [ "$DIFFER" = 0 ] &&
  [ "$REF_N" -gt 0 ]; then
  exit 0
fi
[ "$REF_N" -gt 0 ] || say "the uninterrupted run raised no alert: nothing was compared"
exit 1
