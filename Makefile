# The two commands of the README, and a few helpers.
#   make demo   builds and runs the demo (no servers needed)
#   make test   installs and starts what the tests need, then runs them all

CARGO_TARGET_DIR ?= /var/tmp/stockanomaly-target
export CARGO_TARGET_DIR

.PHONY: demo test bench build fmt lint

demo:
	cargo run --locked -p stockanomaly -- demo

test:
	scripts/test.sh

bench:
	cargo run --locked --release -p stockanomaly -- bench

build:
	cargo build --locked

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets --locked -- -D warnings
