#!/usr/bin/env bash
# What one admin route change costs as the table grows (issue 35): for each table size, a
# fresh release daemon (real SQLite file in a temp dir, listener on port 0) is filled with N
# L4 routes, half exact and half wildcard, then `mc-bench routes` times single changes (add,
# update, remove in turn) through one admin client, so no process start is in the figure.
# Prints mc-bench's RESULT line per size (docs/BENCHMARKS.md).
#
# Knobs (environment): SIZES ("10 1000 10000"), CHANGES (300), BATCH (1000, routes per change
# set of the fill), FILL (api: through the admin API in change sets; toml: seeded from the
# config file at first start, for builds whose change sets are slow to fill), RATE (0: changes
# back to back; R: R changes a second, a fleet's stream). MC_PROXY and BENCH name the binaries
# (else the release builds of this tree, built first).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"10 1000 10000"} CHANGES=${CHANGES:-300} BATCH=${BATCH:-1000} FILL=${FILL:-api}
RATE=${RATE:-0}
TARGET=${CARGO_TARGET_DIR:-target}/release
if [ -z "${MC_PROXY:-}" ] || [ -z "${BENCH:-}" ]; then
    cargo build --release -q -p mc-proxy -p mc-proxy-tests --bin mc-proxy --bin mc-bench
fi
MC_PROXY=${MC_PROXY:-$TARGET/mc-proxy} BENCH=${BENCH:-$TARGET/mc-bench}

TMP=$(mktemp -d /tmp/mc-routes-bench.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

for n in $SIZES; do
    dir="$TMP/$n"
    mkdir -p "$dir"
    cat >"$dir/mc.toml" <<TOML
[database]
path = "$dir/mc.db"
[admin]
socket = "$dir/mc.sock"
[proxy]
workers = 1
[[listeners]]
addr = "127.0.0.1:0"
name = "edge"
TOML
    if [ "$FILL" = toml ]; then
        # The names mc-bench's fill gives (`route_name`): even exact, odd wildcard.
        awk -v n="$n" 'BEGIN {
            for (i = 0; i < n; i++) {
                h = (i % 2 == 0) ? "r" i ".fill.test" : "*.r" i ".fill.test"
                printf "[[listeners.routes]]\nhostname = \"%s\"\nbackends = [{ address = \"127.0.0.1:9\" }]\n", h
            }
        }' >>"$dir/mc.toml"
    fi
    RUST_LOG=warn "$MC_PROXY" --config "$dir/mc.toml" >"$dir/log" 2>&1 &
    PID=$!
    for _ in $(seq 600); do [ -S "$dir/mc.sock" ] && break; sleep 0.05; done
    [ -S "$dir/mc.sock" ] || { echo "the daemon did not start:" >&2; cat "$dir/log" >&2; exit 1; }
    fill=api
    [ "$FILL" = toml ] && fill=none
    "$BENCH" routes --socket "$dir/mc.sock" --listener edge --routes "$n" --changes "$CHANGES" \
        --batch "$BATCH" --fill "$fill" --rate "$RATE"
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=
done
