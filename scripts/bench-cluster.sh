#!/usr/bin/env bash
# `make bench`, the cluster part: the same backfill in one process and on a
# cluster of two local executors (`stockanomaly cluster`), on one machine:
# the overhead of distribution, since both share its cores, with the CPU
# seconds of each side; then a scaling estimate on paper from them.
#
#   scripts/bench-cluster.sh            release build; 1.56M minute bars, 3M trades
#   scripts/bench-cluster.sh --quick    ~100k bars and trades (a smoke run)
#
# Environment:
#   STOCKANOMALY_BIN   binary to run; when set, nothing is built
#   TMPDIR             where the scratch lakes go (removed at exit)
#
# Both backfills run with --force on copies of one simulated lake (context
# tables and features); the context tables they write are compared byte for
# byte and the features row for row (executors write a file per block of
# symbols), and the run fails if they differ.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'bench-cluster: %s\n' "$*" >&2; }
die() {
  printf 'bench-cluster: error: %s\n' "$*" >&2
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
  *) die "unknown argument '$arg' (usage: scripts/bench-cluster.sh [--quick])" ;;
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

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/stockanomaly-bench-cluster.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$SCRATCH"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# CPU seconds (user + system) a running process has used.
cpu_of() { awk -v tck="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / tck }' "/proc/$1/stat"; }
# CPU seconds of the children a subshell ran, from `times`' second line.
children_cpu() { tail -n 1 | LC_ALL=C awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); t += p[1] * 60 + p[2] } printf "%.2f", t }'; }

if [ "$QUICK" = 1 ]; then
  DATASETS=(
    "minute bars|--kind bars --symbols 16 --days 16"
    "trades|--kind trades --symbols 8 --days 3 --trades-per-day 4000"
  )
else
  DATASETS=(
    "minute bars|--kind bars --symbols 200 --days 20"
    "trades|--kind trades --symbols 40 --days 3"
  )
fi

# "  20 dates computed, 0 already done; 1,560,000 rows in 6.07s, 257.0k/s"
rows_secs() { grep -E '[0-9,]+ rows in [0-9.]+s' | tail -n 1 | sed -E 's/.* ([0-9,]+) rows in ([0-9.]+)s.*/\1 \2/' | tr -d ,; }

export STOCKANOMALY_CLUSTER_TOKEN="bench-$$-$RANDOM"
port="$(free_port)"
"$BIN" cluster scheduler --listen "127.0.0.1:$port" 2>"$SCRATCH/scheduler.log" &
PIDS+=($!)
EXECUTORS=()
for i in 1 2; do
  "$BIN" cluster executor --scheduler "df://127.0.0.1:$port" --listen "127.0.0.1:$(free_port)" \
    --lake "$SCRATCH/cluster" 2>"$SCRATCH/executor-$i.log" &
  PIDS+=($!)
  EXECUTORS+=($!)
done
for _ in $(seq 1 100); do
  n="$(curl -fsS "http://127.0.0.1:$port/v1/executors" 2>/dev/null | grep -o '"url"' | wc -l || true)"
  [ "$n" = 2 ] && break
  sleep 0.2
done
[ "$n" = 2 ] || die "the scheduler never listed both executors"

TABLE=""
for ds in "${DATASETS[@]}"; do
  IFS='|' read -r name flags <<<"$ds"
  rm -rf "$SCRATCH/local" "$SCRATCH/cluster"
  say "== $name: simulate $flags"
  # shellcheck disable=SC2086
  "$BIN" simulate --lake "$SCRATCH/local" $flags --seed 1 | sed -n 1p >&2
  # Context tables made once, so both runs below do the same work.
  "$BIN" backfill --lake "$SCRATCH/local" --queries "$ROOT/queries" >/dev/null
  cp -r "$SCRATCH/local" "$SCRATCH/cluster"

  say "== $name: one process: backfill --force"
  out="$( ("$BIN" backfill --lake "$SCRATCH/local" --queries "$ROOT/queries" --force; times) )"
  printf '%s\n' "$out" | grep -v '^[0-9]*m' >&2
  read -r rows local_secs <<<"$(printf '%s\n' "$out" | rows_secs)"
  local_cpu="$(printf '%s\n' "$out" | children_cpu)"

  say "== $name: cluster of two local executors: backfill --force --cluster"
  before=0
  for p in "${EXECUTORS[@]}"; do before="$(LC_ALL=C awk -v a="$before" -v b="$(cpu_of "$p")" 'BEGIN { print a + b }')"; done
  out="$( ("$BIN" backfill --lake "$SCRATCH/cluster" --queries "$ROOT/queries" --force \
    --cluster "df://127.0.0.1:$port"; times) )"
  printf '%s\n' "$out" | grep -v '^[0-9]*m' >&2
  read -r crows cluster_secs <<<"$(printf '%s\n' "$out" | rows_secs)"
  coord_cpu="$(printf '%s\n' "$out" | children_cpu)"
  after=0
  for p in "${EXECUTORS[@]}"; do after="$(LC_ALL=C awk -v a="$after" -v b="$(cpu_of "$p")" 'BEGIN { print a + b }')"; done
  exec_cpu="$(LC_ALL=C awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a - b }')"
  [ "$crows" = "$rows" ] || die "$name: the cluster wrote $crows rows, one process $rows"
  for t in minute_stats profiles market betas; do
    diff -r "$SCRATCH/local/$t" "$SCRATCH/cluster/$t" >/dev/null ||
      die "$name: the cluster's $t files differ from the local backfill's"
  done
  for lake in local cluster; do
    "$BIN" sql --lake "$SCRATCH/$lake" --queries "$ROOT/queries" --format csv \
      "SELECT * FROM features ORDER BY symbol, ts, seq" >"$SCRATCH/$lake.csv"
  done
  cmp -s "$SCRATCH/local.csv" "$SCRATCH/cluster.csv" ||
    die "$name: the cluster's features differ from the local backfill's"
  rm -f "$SCRATCH/local.csv" "$SCRATCH/cluster.csv"
  say "$name: context tables identical byte for byte, features row for row"
  TABLE+="$name|$rows|$local_secs|$local_cpu|$cluster_secs|$coord_cpu|$exec_cpu"$'\n'
done

cores="$(nproc)"
printf '%s' "$TABLE" | LC_ALL=C awk -F'|' -v cores="$cores" '
BEGIN {
  printf "\n| backfill --force, %d cores | rows | one process: s (rows/s, CPU s) | 2 local executors: s (rows/s) | CPU s: coordinator + executors | rows per executor CPU-s | rows per coordinator CPU-s |\n", cores
  print "| --- | --- | --- | --- | --- | --- | --- |"
}
{
  printf "| %s | %d | %.2f (%.0f, %.1f) | %.2f (%.0f, %.2fx) | %.1f + %.1f | %.0f | %.0f |\n", $1, $2, $3, $2 / $3, $4, $5, $2 / $5, $3 / $5, $6, $7, $2 / $7, $2 / $6
  last_exec = $2 / $7; last_coord = $2 / $6
}
END {
  # A year of consolidated US trades: ~30M trades a day, 252 days. The
  # executors scale with machines; the coordinator (planning, the symbols
  # of each run, markers) does not.
  year = 30e6 * 252
  printf "\na year of consolidated US trades (%.1fG rows), at the trades row above:\n", year / 1e9
  printf "  coordinator alone (one core: planning, symbols, markers): %.1f hours\n", year / last_coord / 3600
  n = split("4 16 64", machines, " ")
  for (i = 1; i <= n; i++) {
    m = machines[i]
    printf "  executors on %2d machines x 16 cores: %.0f minutes\n", m, year / (last_exec * 16 * m) / 60
  }
}'
