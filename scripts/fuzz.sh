#!/bin/bash
# Runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS each,
# default 30) and fails on any crash. libFuzzer's instrumentation needs
# nightly compiler flags: RUSTC_BOOTSTRAP=1 enables them on the stable
# toolchain (no other toolchain can be fetched here). Prints each target's
# executions and the total.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_cargo
secs=${FUZZ_SECONDS:-30}
if ! command -v cargo-fuzz >/dev/null; then
    echo "== installing cargo-fuzz"
    cargo install -q --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
echo "== fuzz: building targets"
cargo fuzz build -s none --release >/dev/null 2>&1 || cargo fuzz build -s none --release
total=0
for t in $(cargo fuzz list); do
    log=$(mktemp)
    mkdir -p "corpus/$t"
    if ! cargo fuzz run -s none --release "$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -max_len=65536 >"$log" 2>&1; then
        echo "FUZZ FAILURE in target '$t' (artifacts in fuzz/artifacts/$t):" >&2
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" >&2 || tail -30 "$log" >&2
        exit 1
    fi
    n=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    echo "fuzz $t: ${n:-0} executions in ${secs} s, no crash"
    total=$((total + ${n:-0}))
    rm -f "$log"
done
echo "fuzz: $total executions in all, no crash"
