#!/usr/bin/env bash
# The whole test suite, as CI runs it (`make test` and `.ci/run` call this):
# installs and starts the services the tests need on loopback, then runs
# rustfmt, clippy, rustdoc (warnings denied) and every test, and stops what
# it started.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stockanomaly-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# XGBoost's C library, linked by xgboost_lib-sys (see scripts/xgboost-lib.sh).
XGBOOST_LIB_DIR="$(scripts/xgboost-lib.sh)"
export XGBOOST_LIB_DIR

. scripts/test-env.sh
trap test_env_stop EXIT
test_env_start

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo doc --no-deps (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "==> cargo test"
cargo test --workspace --locked --no-fail-fast "$@"
