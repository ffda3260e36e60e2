#!/usr/bin/env bash
# Fuzzes every decoder that reads the outside world (fuzz/fuzz_targets/*.rs)
# with cargo-fuzz and libFuzzer, one target after the other, one job each.
#
#   scripts/fuzz.sh                      every target, 1,000,000 runs each
#   scripts/fuzz.sh --runs 10000         a short pass
#   scripts/fuzz.sh kafka_json csv_auto  only these targets
#   scripts/fuzz.sh --corpus-only        only (re)write fuzz/corpus from the seeds
#   scripts/fuzz.sh --no-build           run the targets as last built
#   scripts/fuzz.sh --list               the targets
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# The corpus starts from fuzz/seeds (frames and pages from the unit tests)
# and pipeline/tests/fixtures (the CSV layouts), copied into fuzz/corpus,
# which libFuzzer then grows; fuzz/corpus and fuzz/artifacts are git-ignored.
# A crash, a hang (over 10 s) or an allocation over 2 GB stops that target,
# leaves the input in fuzz/artifacts/<target>/, and makes the script exit 1
# after the others have run. Reproduce one with
#   /var/tmp/sa-fuzz-target/x86_64-unknown-linux-gnu/release/<target> <artifact>
# and keep it as a unit test next to the decoder.
#
# Environment: FUZZ_TARGET_DIR (default /var/tmp/sa-fuzz-target),
# FUZZ_SANITIZER (default none: the decoders are safe Rust, and libFuzzer
# catches panics, hangs and allocations without a sanitizer; `address`
# adds AddressSanitizer for the unsafe code below them, at a cost in
# speed; it needs its own build), XGBOOST_LIB_DIR
# (default: scripts/xgboost-lib.sh, which the library links against).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=1000000
corpus_only=0
build=1
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
        --runs=*) runs="${1#--runs=}"; shift ;;
        --corpus-only) corpus_only=1; shift ;;
        --no-build) build=0; shift ;;
        --list) ls fuzz/fuzz_targets | sed 's/\.rs$//'; exit 0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi
for t in "${targets[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target $t (see --list)" >&2; exit 2; }
done

# The seed corpus of one target: its committed seeds, and for the CSV
# targets every fixture file (each layout's target also meets the others).
write_corpus() {
    local t="$1" dir="fuzz/corpus/$1"
    mkdir -p "$dir"
    if [ -d "fuzz/seeds/$t" ]; then cp fuzz/seeds/"$t"/* "$dir"/; fi
    case "$t" in
        csv_*)
            cp pipeline/tests/fixtures/*.csv "$dir"/
            cp fuzz/seeds/csv_nse_udiff/* "$dir"/
            ;;
    esac
    if [ "$t" = csv_auto ]; then cp fuzz/seeds/nse_zip/* "$dir"/; fi
}
for t in "${targets[@]}"; do write_corpus "$t"; done
if [ "$corpus_only" = 1 ]; then
    echo "corpus written to fuzz/corpus/"
    exit 0
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs the nightly toolchain and cargo-fuzz:" >&2
    echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi
XGBOOST_LIB_DIR="${XGBOOST_LIB_DIR:-$(scripts/xgboost-lib.sh)}"
export XGBOOST_LIB_DIR
# Release with debug assertions and overflow checks (an overflow is a bug
# even where release builds would wrap); 16 codegen units build the big
# dependency tree far faster for a small loss of speed.
build_flags=(-O -a -s "${FUZZ_SANITIZER:-none}" --codegen-units 16
    --target-dir "${FUZZ_TARGET_DIR:-/var/tmp/sa-fuzz-target}")
# cargo-fuzz's own output directory under the target dir.
bin_dir="${FUZZ_TARGET_DIR:-/var/tmp/sa-fuzz-target}/x86_64-unknown-linux-gnu/release"

if [ "$build" = 1 ]; then
    echo "==> cargo fuzz build (${#targets[@]} targets)"
    nice -n 10 cargo +nightly fuzz build "${build_flags[@]}"
fi

mkdir -p fuzz/artifacts
summary=fuzz/artifacts/summary.txt
: >"$summary"
failed=()
for t in "${targets[@]}"; do
    echo "==> $t: $runs runs"
    mkdir -p "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t.log"
    start=$(date +%s)
    status=ok
    # The binary cargo fuzz built, run directly (one job, one worker: the
    # machine is shared); `cargo fuzz run` would rebuild on any change.
    if ! nice -n 10 "$bin_dir/$t" "$PWD/fuzz/corpus/$t" \
        -runs="$runs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$PWD/fuzz/artifacts/$t/" >"$log" 2>&1; then
        status=FAILED
        failed+=("$t")
        grep -m1 -E "panicked|ERROR: libFuzzer|SUMMARY" "$log" >&2 || true
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    line=$(printf '%-20s %-6s %12s execs %6ss  corpus %s' "$t" "$status" "${execs:-?}" \
        "$(($(date +%s) - start))" "$(ls "fuzz/corpus/$t" | wc -l)")
    echo "$line" | tee -a "$summary"
done
echo "==> summary (also in $summary)"
cat "$summary"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: ${failed[*]} failed; the inputs are in fuzz/artifacts/<target>/" >&2
    exit 1
fi
