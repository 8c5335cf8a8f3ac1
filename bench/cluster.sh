#!/usr/bin/env bash
# The fleet's cost to traffic: L4 new TLS connections/s through node B of a two-node fleet
# (one etcd member), quiet, then while 10 route changes a second are made through node A and
# applied by B from its watch, and while the same CLI calls only read (the harness's own cost
# on a 2-core machine). Prints the medians and their ratios (docs/BENCHMARKS.md).
#
# Knobs (environment): ROUNDS (3), CONC (32), SECS (6), RATE (changes/s, 10), PORT_BASE
# (24200: ports PORT_BASE+1..+9 on 127.0.0.1 must be free). MC_PROXY, MCPROXYCTL and BENCH
# name the binaries (else the release builds of this tree, built first). Needs `etcd`.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3} CONC=${CONC:-32} SECS=${SECS:-6} RATE=${RATE:-10}
PORT_BASE=${PORT_BASE:-24200}
TARGET=${CARGO_TARGET_DIR:-target}/release
if [ -z "${MC_PROXY:-}" ] || [ -z "${MCPROXYCTL:-}" ] || [ -z "${BENCH:-}" ]; then
    cargo build --release -q -p mc-proxy -p mcproxyctl -p mc-proxy-tests --bin mc-proxy --bin mcproxyctl --bin mc-bench
fi
MC_PROXY=${MC_PROXY:-$TARGET/mc-proxy} MCPROXYCTL=${MCPROXYCTL:-$TARGET/mcproxyctl}
BENCH=${BENCH:-$TARGET/mc-bench}
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 1; }

ETCD=$((PORT_BASE + 1)) PEER=$((PORT_BASE + 2)) BE=$((PORT_BASE + 3))
A=$((PORT_BASE + 4)) B=$((PORT_BASE + 5))
TMP=$(mktemp -d /tmp/mc-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

etcd --name b --data-dir "$TMP/etcd" --listen-client-urls "http://127.0.0.1:$ETCD" \
    --advertise-client-urls "http://127.0.0.1:$ETCD" --listen-peer-urls "http://127.0.0.1:$PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
    --initial-cluster "b=http://127.0.0.1:$PEER" >"$TMP/etcd.log" 2>&1 &
PIDS+=($!)
"$BENCH" certs "$TMP/certs" >/dev/null
"$BENCH" tls-backend --addr "127.0.0.1:$BE" --cert "$TMP/certs/a.test.pem" \
    --key "$TMP/certs/a.test.key" --max-secs 1800 >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
wait_port "$ETCD"
wait_port "$BE"
for node in a b; do
    port=$([ $node = a ] && echo $A || echo $B)
    mkdir -p "$TMP/$node"
    cat >"$TMP/$node/mc.toml" <<EOF
[database]
path = "$TMP/$node/mc.db"
[admin]
socket = "$TMP/$node/mc.sock"
[proxy]
workers = 1
[cluster]
endpoints = ["http://127.0.0.1:$ETCD"]
prefix = "/bench"
name = "$node"
[[listeners]]
addr = "127.0.0.1:$port"
name = "edge"
[[listeners.routes]]
hostname = "a.test"
backends = [{ address = "127.0.0.1:$BE" }]
EOF
    RUST_LOG=warn "$MC_PROXY" --config "$TMP/$node/mc.toml" >"$TMP/$node/log" 2>&1 &
    PIDS+=($!)
    wait_port "$port"
    sleep 1
done

measure() { # -> conn/s through B
    "$BENCH" connrate --target "127.0.0.1:$B" --sni a.test --ca "$TMP/certs/ca.pem" \
        --concurrency "$CONC" --seconds "$SECS" | sed -n 's/.*conn_per_sec=\([0-9.]*\).*/\1/p'
}
changes() { # RATE weight changes (or, with "read", status reads) a second through A
    local w=1
    while :; do
        w=$((w % 256 + 1))
        if [ "${1:-}" = read ]; then
            "$MCPROXYCTL" --socket "$TMP/a/mc.sock" status >/dev/null
        else
            "$MCPROXYCTL" --socket "$TMP/a/mc.sock" routes backend weight a.test \
                "127.0.0.1:$BE" "$w" --listener edge >/dev/null
        fi
        sleep "$(awk -v r="$RATE" 'BEGIN {printf "%.3f", 1 / r}')"
    done
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

quiet=() busy=() reads=()
for r in $(seq "$ROUNDS"); do
    quiet+=("$(measure)")
    changes &
    CH=$!
    busy+=("$(measure)")
    kill $CH 2>/dev/null || true
    wait $CH 2>/dev/null || true
    # The harness's own share: the same CLI calls a second, reading instead of changing.
    changes read &
    CH=$!
    reads+=("$(measure)")
    kill $CH 2>/dev/null || true
    wait $CH 2>/dev/null || true
done
applied=$("$MCPROXYCTL" --socket "$TMP/b/mc.sock" routes show a.test --listener edge --json |
    sed -n 's/.*"weight": *\([0-9]*\).*/\1/p' | head -1)
q=$(printf '%s\n' "${quiet[@]}" | median) b=$(printf '%s\n' "${busy[@]}" | median)
rd=$(printf '%s\n' "${reads[@]}" | median)
echo "L4 new TLS connections/s through node B, $CONC clients, ${SECS}s, $ROUNDS rounds (medians)"
echo "  quiet fleet:                   $q   (rounds: ${quiet[*]})"
echo "  $RATE changes/s through node A: $b   (rounds: ${busy[*]})"
echo "  $RATE status reads/s through A:  $rd   (rounds: ${reads[*]}; the harness's own share)"
awk -v q="$q" -v b="$b" -v r="$rd" 'BEGIN {printf "  ratio busy / quiet:            %.3f (reads / quiet: %.3f)\n", b / q, r / q}'
echo "  (node B's member weight at the end: $applied, the changes reached it)"
