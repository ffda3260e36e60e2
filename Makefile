# The two commands of the README, and a few helpers.
#   make demo   builds and runs the demo (no servers needed)
#   make test   installs and starts what the tests need, then runs them all
#   make soak   crash soak of detect: 1M ticks, 100 SIGKILLs, 10 cut PostgreSQL
#               connections, alerts compared with an uninterrupted run (long;
#               not in CI; scripts/soak.sh --help for a smaller try)

CARGO_TARGET_DIR ?= /var/tmp/stockanomaly-target
export CARGO_TARGET_DIR

# XGBoost's C library (3.4.1, from PyPI's xgboost-cpu wheel), downloaded once
# into /var/tmp/stockanomaly; xgboost_lib-sys links it and pipeline/build.rs
# bakes the folder into the binaries' rpath.
export XGBOOST_LIB_DIR := $(shell scripts/xgboost-lib.sh)

.PHONY: demo test bench fuzz soak build fmt lint

demo:
	cargo run --locked -p stockanomaly -- demo

test:
	scripts/test.sh

# Backfill rows/s against DuckDB on the same SQL, then `stockanomaly bench`,
# then the streaming detector, then backfill on a local cluster against one
# process (scripts/bench.sh --quick, scripts/bench-detect.sh --quick and
# scripts/bench-cluster.sh --quick for smoke runs).
bench:
	scripts/bench.sh
	scripts/bench-detect.sh
	scripts/bench-cluster.sh

# Every decoder of outside input under libFuzzer, 10^6 runs each (nightly and
# cargo-fuzz; see README, "Fuzzing"). `scripts/fuzz.sh --runs 10000` is short.
fuzz:
	scripts/fuzz.sh

# Crash soak of detect (long; not in CI).
soak:
	scripts/soak.sh

build:
	cargo build --locked

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings
