#!/usr/bin/env bash
# Runs the two parser fuzzers on the stable toolchain (no cargo-fuzz, no nightly): libFuzzer
# from libfuzzer-sys, with SanitizerCoverage switched on through rustc's LLVM flags. The
# explicit --target keeps those flags off build scripts and proc macros.
#   bash fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
target=x86_64-unknown-linux-gnu
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$target" --bins
for t in proxyproto sni; do
    mkdir -p "corpus/$t" artifacts
    echo "== $t: $secs s"
    "target/$target/release/$t" "corpus/$t" -max_total_time="$secs" -artifact_prefix=artifacts/ \
        -print_final_stats=1 2>&1 | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|INFO: Running|==.*ERROR|SUMMARY)|Done " || true
done
