#!/usr/bin/env bash
# bench/run.sh: mc-proxy against HAProxy on loopback, the same jobs, measured in the same run.
#
# Both proxies run side by side with the same backends; each measurement alternates between
# them (mc-proxy, HAProxy, then HAProxy, mc-proxy, ...) for $ROUNDS rounds and the table shows
# the median. The load generator and backends are `mc-bench` (tests/src/bin/mc-bench.rs).
# See docs/BENCHMARKS.md for what the figures mean and what limits them.
#
# Knobs (environment): ROUNDS (3), CONC (32) and SECS (6) for new connections/s, BYTES (1 GiB)
# for throughput, H2_CONNS (64), H2_STREAMS (10), H2_SECS (6) for L7 HTTP/2, H1_CONNS (32) for
# L7 HTTP/1.1, IDLE_N (5000) for L4 idle memory, IDLE_L7_N (2000) for L7 idle memory, HOLD_N
# (10000, capped by the open file limit) for connections held, LOGS (0: mc-proxy logs at
# `warn` and HAProxy not at all, like the issue's harness; 1: as deployed, both to a file: a
# line per L4 connection (mc-proxy's connection line, HAProxy `option tcplog`) and a line per
# L7 request (the route's `access_log`, HAProxy `option httplog`), and the bytes per line of
# each reported), PORT_BASE (24100: ports PORT_BASE+1..+21 on 127.0.0.1 must be free),
# ROUTES_N (10000) for `routes`: L4 CPU per connection through a second mc-proxy whose
# listener holds ROUTES_N more routes (half exact, half wildcard), against the two-route one.
# WS_CONNS (64) WebSockets and GRPC_CONNS (16) x GRPC_STREAMS (4) gRPC bidi streams, MSG_SIZE
# (64) bytes a message, H2_SECS each, for `stream`.
# CARGO_TARGET_DIR is honoured (the binaries are taken from its release directory); MC_PROXY
# names another mc-proxy binary to measure (and BENCH another mc-bench; with both set nothing is
# built). ONLY (all): a subset of
# "connrate routes tput l7hs h2 h1 tlsbe stream idle l7idle hold", for a quick A/B of one lever.
# `tlsbe` is L7 re-encryption: the same HTTP/2 client load to a backend over TLS, speaking
# HTTP/2 (ALPN h2) and HTTP/1.1, mc-proxy's `backend_tls` against HAProxy's `server ... ssl alpn`.
# `stream` is long-lived streams through L7: WebSocket messages (HTTP/1.1 upgrade, an HTTP/1.1
# echo backend) and gRPC bidi stream messages (h2c echo backend), each echoed one at a time.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
CONC=${CONC:-32}
SECS=${SECS:-6}
BYTES=${BYTES:-1073741824}
H2_CONNS=${H2_CONNS:-64}
H2_STREAMS=${H2_STREAMS:-10}
H2_SECS=${H2_SECS:-6}
H1_CONNS=${H1_CONNS:-32}
IDLE_N=${IDLE_N:-5000}
IDLE_L7_N=${IDLE_L7_N:-2000}
IDLE_HOLD=${IDLE_HOLD:-3}
HOLD_N=${HOLD_N:-10000}
ROUTES_N=${ROUTES_N:-10000}
WS_CONNS=${WS_CONNS:-64}
GRPC_CONNS=${GRPC_CONNS:-16}
GRPC_STREAMS=${GRPC_STREAMS:-4}
MSG_SIZE=${MSG_SIZE:-64}
LOGS=${LOGS:-0}
PORT_BASE=${PORT_BASE:-24100}
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf '== %s\n' "$*" >&2; }

# --- what we need --------------------------------------------------------------------------------
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
if ((${#missing[@]})); then
    say "installing ${missing[*]} from Debian's packages"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Idle connections: the client holds N sockets, the proxy 2N, the backend N. Raise the soft
# limit as far as the hard one allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * IDLE_N + 500)) ]; then
    echo "open file limit $(ulimit -n) is too low for IDLE_N=$IDLE_N" >&2
    exit 1
fi
# HAProxy refuses to start when maxconn needs more descriptors than the limit (2 per connection).
NOFILE=$(ulimit -n)
MAXCONN=20000
[ "$NOFILE" = unlimited ] || MAXCONN=$(((NOFILE - 200) / 2))
((MAXCONN <= 20000)) || MAXCONN=20000
# Connections held: a proxy needs two descriptors per relayed connection plus its own few, so
# with a hard limit of 20 000 (this sandbox) it can hold about 9 900, not 10 000.
HOLD_CAP=$((MAXCONN - 50))
((HOLD_N <= HOLD_CAP)) || HOLD_N=$HOLD_CAP

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${MC_PROXY:-}" ] && [ -n "${BENCH:-}" ]; then
    say "measuring $MC_PROXY with $BENCH (nothing built)"
elif [ -n "${MC_PROXY:-}" ]; then
    say "building mc-bench (release); measuring $MC_PROXY"
    cargo build --release -q -p mc-proxy-tests --bin mc-bench
    BENCH=$TARGET_DIR/release/mc-bench
else
    BENCH=$TARGET_DIR/release/mc-bench
    say "building mc-proxy and mc-bench (release)"
    cargo build --release -q -p mc-proxy -p mc-proxy-tests --bin mc-proxy --bin mc-bench
    MC_PROXY=$TARGET_DIR/release/mc-proxy
fi

# --- processes -----------------------------------------------------------------------------------
TLS_BE=$((PORT_BASE + 1)) RAW_BE=$((PORT_BASE + 2)) H2C_BE=$((PORT_BASE + 3))
TLSH_BE=$((PORT_BASE + 4)) WS_BE=$((PORT_BASE + 5)) GRPC_BE=$((PORT_BASE + 6))
MC=$((PORT_BASE + 10)) MC_BIG=$((PORT_BASE + 11)) HA_L4=$((PORT_BASE + 20)) HA_L7=$((PORT_BASE + 21))
for p in $TLS_BE $RAW_BE $H2C_BE $TLSH_BE $WS_BE $GRPC_BE $MC $MC_BIG $HA_L4 $HA_L7; do
    if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
        echo "127.0.0.1:$p is in use; set PORT_BASE to a free range" >&2
        exit 1
    fi
done

TMP=$(mktemp -d /tmp/mc-bench.XXXXXX)
PIDS=()
MC_PID= HA_PID= BIG_PID=
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}" $MC_PID $HA_PID $BIG_PID; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$rc" = 0 ]; then rm -rf "$TMP"; else echo "failed; logs kept in $TMP" >&2; fi
}
trap cleanup EXIT

wait_port() { # port: up to 10 s
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1 after 10 s" >&2
    return 1
}

"$BENCH" certs "$TMP/certs" >/dev/null
C=$TMP/certs
"$BENCH" tls-backend --addr 127.0.0.1:$TLS_BE --cert "$C/a.test.pem" --key "$C/a.test.key" \
    --max-secs 1800 >"$TMP/tls-backend.log" 2>&1 &
PIDS+=($!)
"$BENCH" raw-backend --addr 127.0.0.1:$RAW_BE --max-secs 1800 >"$TMP/raw-backend.log" 2>&1 &
PIDS+=($!)
"$BENCH" h2c-backend --addr 127.0.0.1:$H2C_BE --max-secs 1800 >"$TMP/h2c-backend.log" 2>&1 &
PIDS+=($!)
"$BENCH" tls-http-backend --addr 127.0.0.1:$TLSH_BE --cert "$C/tlsbe.test.pem" \
    --key "$C/tlsbe.test.key" --max-secs 1800 >"$TMP/tls-http-backend.log" 2>&1 &
PIDS+=($!)
"$BENCH" ws-backend --addr 127.0.0.1:$WS_BE --max-secs 1800 >"$TMP/ws-backend.log" 2>&1 &
PIDS+=($!)
"$BENCH" grpc-backend --addr 127.0.0.1:$GRPC_BE --max-secs 1800 >"$TMP/grpc-backend.log" 2>&1 &
PIDS+=($!)
for p in $TLS_BE $RAW_BE $H2C_BE $TLSH_BE $WS_BE $GRPC_BE; do wait_port $p; done

# LOGS=1: every L7 request logged, as HAProxy's httplog does.
MC_ACCESS_LOG=
[ "$LOGS" = 1 ] && MC_ACCESS_LOG="access_log = true"
l7_route() { # hostname backend-port certificate-name [extra TOML lines...]
    local host=$1 port=$2 cert=$3 line
    shift 3
    printf '\n[[listeners.routes]]\nhostname = "%s"\nbackend = "127.0.0.1:%s"\nmode = "l7"\n' "$host" "$port"
    printf 'tls_cert = "%s"\ntls_key = "%s"\n' "$C/$cert.pem" "$C/$cert.key"
    for line in "$@" "$MC_ACCESS_LOG"; do
        if [ -n "$line" ]; then printf '%s\n' "$line"; fi
    done
}
L7_ROUTE="$(l7_route web.test "$H2C_BE" web.test)
# Re-encryption: HTTP/2 and HTTP/1.1 to a backend over TLS, its certificate checked.
$(l7_route tlsbe.test "$TLSH_BE" tlsbe.test 'backend_tls = true' 'backend_protocol = "h2"')
$(l7_route tlsbe1.test "$TLSH_BE" tlsbe.test 'backend_tls = true' 'backend_protocol = "http1"')
# Streams: WebSockets to an HTTP/1.1 backend, gRPC to an h2c one.
$(l7_route ws.test "$WS_BE" ws.test 'backend_protocol = "http1"')
$(l7_route grpc.test "$GRPC_BE" grpc.test)"
write_mc_config() { # with_l7
    cat >"$TMP/mc-proxy.toml" <<EOF
[database]
path = "$TMP/mc-proxy.db"

[proxy]
max_connections = $MAXCONN
shutdown_timeout = "2s"
backend_ca = "$C/ca.pem"

[[listeners]]
addr = "127.0.0.1:$MC"

[[listeners.routes]]
hostname = "a.test"
backend = "127.0.0.1:$TLS_BE"

[[listeners.routes]]
hostname = "raw.test"
backend = "127.0.0.1:$RAW_BE"
${1:+$L7_ROUTE}
EOF
}
L7=1
write_mc_config 1
if ! "$MC_PROXY" check --config "$TMP/mc-proxy.toml" >"$TMP/check.log" 2>&1; then
    L7=0
    write_mc_config ""
fi

MC_LOG=info HA_LOG="    log stdout format raw local0" HA_TCPLOG="    option tcplog"
HA_HTTPLOG="    option httplog"
if [ "$LOGS" = 0 ]; then MC_LOG=warn HA_LOG= HA_TCPLOG= HA_HTTPLOG=; fi
# One job for both: SNI routing of TLS passthrough on one port, TLS termination + h2c on another
# (mc-proxy does both on one listener; HAProxy needs a tcp and an http frontend).
cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn $MAXCONN
    nbthread 2
$HA_LOG

defaults
    log global
    timeout connect 5s
    timeout client 5m
    timeout server 5m

frontend l4
    mode tcp
$HA_TCPLOG
    bind 127.0.0.1:$HA_L4
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend tls_echo if { req_ssl_sni -i a.test }
    use_backend raw_sink if { req_ssl_sni -i raw.test }

backend tls_echo
    mode tcp
    server s1 127.0.0.1:$TLS_BE

backend raw_sink
    mode tcp
    server s1 127.0.0.1:$RAW_BE

frontend l7
    mode http
$HA_HTTPLOG
    option forwardfor
    bind 127.0.0.1:$HA_L7 ssl crt $C/web.test.haproxy.pem crt $C/tlsbe.test.haproxy.pem crt $C/ws.test.haproxy.pem crt $C/grpc.test.haproxy.pem alpn h2,http/1.1
    use_backend tls_h2 if { ssl_fc_sni -i tlsbe.test }
    use_backend tls_h1 if { ssl_fc_sni -i tlsbe1.test }
    use_backend ws_h1 if { ssl_fc_sni -i ws.test }
    use_backend grpc_h2c if { ssl_fc_sni -i grpc.test }
    default_backend h2c

backend h2c
    mode http
    server s1 127.0.0.1:$H2C_BE proto h2

backend tls_h2
    mode http
    server s1 127.0.0.1:$TLSH_BE ssl verify required ca-file $C/ca.pem sni str(tlsbe.test) alpn h2

backend tls_h1
    mode http
    server s1 127.0.0.1:$TLSH_BE ssl verify required ca-file $C/ca.pem sni str(tlsbe1.test) alpn http/1.1

# WebSocket: HTTP/1.1 to the backend; after the 101 HAProxy tunnels the bytes (timeout tunnel
# defaults to the client and server timeouts).
backend ws_h1
    mode http
    server s1 127.0.0.1:$WS_BE

backend grpc_h2c
    mode http
    server s1 127.0.0.1:$GRPC_BE proto h2
EOF
haproxy -c -q -f "$TMP/haproxy.cfg"

start_mc() {
    rm -f "$TMP"/mc-proxy.db*
    RUST_LOG=$MC_LOG "$MC_PROXY" --config "$TMP/mc-proxy.toml" >>"$TMP/mc-proxy.log" 2>&1 &
    MC_PID=$!
    wait_port $MC
}
stop_mc() { kill -TERM "$MC_PID"; wait "$MC_PID" || true; MC_PID=; }
start_ha() {
    haproxy -db -f "$TMP/haproxy.cfg" >>"$TMP/haproxy.log" 2>&1 &
    HA_PID=$!
    wait_port $HA_L4
    wait_port $HA_L7
}
stop_ha() { kill -TERM "$HA_PID"; wait "$HA_PID" || true; HA_PID=; }

# --- measuring -----------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; } # utime + stime of the process
rss_kib() { awk '/^VmRSS:/ {print $2}' /proc/"$1"/status; }
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }
record() { echo "$3" >>"$TMP/res.$1.$2"; } # metric who value
median() { [ -s "$TMP/res.$1.$2" ] && sort -g "$TMP/res.$1.$2" | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}' || echo -; }
pid_of() { case $1 in mc) echo "$MC_PID" ;; ha) echo "$HA_PID" ;; big) echo "$BIG_PID" ;; *) echo ;; esac; }
l4_target() { case $1 in mc) echo 127.0.0.1:$MC ;; ha) echo 127.0.0.1:$HA_L4 ;; big) echo 127.0.0.1:$MC_BIG ;; direct) echo "127.0.0.1:$2" ;; esac; }
order() { # round -> the order of the contenders in it (alternating who goes first)
    if (($1 % 2)); then echo "mc ha ${2:-}"; else echo "ha mc ${2:-}"; fi
}

# run METRIC-PREFIX WHO COMMAND...: runs one load command, records its RESULT fields and the
# proxy's CPU time over the run; prints the RESULT line.
run() {
    local who=$1 pid out t0 t1
    shift
    pid=$(pid_of "$who")
    [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
    out=$("$@" 2>>"$TMP/bench.err" | grep '^RESULT') || {
        echo "load command failed: $* (see below)" >&2
        tail -5 "$TMP/bench.err" >&2
        return 1
    }
    [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
    LAST_CPU_S=$([ -n "$pid" ] && awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" 'BEGIN {print (b - a) / hz}' || echo 0)
    LAST=$out
    printf '   %-7s %s proxy_cpu_s=%s\n' "$who" "${out#RESULT }" "$LAST_CPU_S" >&2
}

say "starting mc-proxy and HAProxy $(haproxy -v | awk 'NR==1 {print $3}')"
start_mc
start_ha

want connrate && say "L4 new TLS connections/s: $CONC clients, $SECS s, $ROUNDS rounds"
want connrate && for r in $(seq "$ROUNDS"); do
    for who in $(order "$r" direct); do
        run "$who" "$BENCH" connrate --target "$(l4_target "$who" $TLS_BE)" --sni a.test \
            --ca "$C/ca.pem" --concurrency "$CONC" --seconds "$SECS"
        conns=$(field "$LAST" conns) errors=$(field "$LAST" errors)
        record connrate "$who" "$(field "$LAST" conn_per_sec)"
        record connerr "$who" "$errors"
        [ "$who" = direct ] || record conncpu "$who" "$(awk -v c="$LAST_CPU_S" -v n="$conns" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
    done
done

# The route table's size (issue 35): the same L4 job through a second mc-proxy, its listener
# holding ROUTES_N more routes (`mc-bench routes`' names: even exact, odd wildcard), alternating
# with the two-route one.
if want routes; then
    say "L4 new TLS connections/s with $ROUTES_N more routes: $CONC clients, $SECS s, $ROUNDS rounds"
    mkdir -p "$TMP/big"
    sed -e "s#$TMP/mc-proxy.db#$TMP/big/mc-proxy.db#" -e "s#127.0.0.1:$MC\"#127.0.0.1:$MC_BIG\"#" \
        "$TMP/mc-proxy.toml" >"$TMP/big/mc-proxy.toml"
    awk -v n="$ROUTES_N" 'BEGIN {
        for (i = 0; i < n; i++) {
            h = (i % 2 == 0) ? "r" i ".fill.test" : "*.r" i ".fill.test"
            printf "[[listeners.routes]]\nhostname = \"%s\"\nbackend = \"127.0.0.1:9\"\n", h
        }
    }' >>"$TMP/big/mc-proxy.toml"
    printf '[admin]\nsocket = "%s"\n' "$TMP/big/admin.sock" >>"$TMP/big/mc-proxy.toml"
    RUST_LOG=$MC_LOG "$MC_PROXY" --config "$TMP/big/mc-proxy.toml" >>"$TMP/big/mc-proxy.log" 2>&1 &
    BIG_PID=$!
    wait_port $MC_BIG
    sleep 1
    for r in $(seq "$ROUNDS"); do
        for who in $( ((r % 2)) && echo "mc big" || echo "big mc"); do
            run "$who" "$BENCH" connrate --target "$(l4_target "$who")" --sni a.test \
                --ca "$C/ca.pem" --concurrency "$CONC" --seconds "$SECS"
            record routesrate "$who" "$(field "$LAST" conn_per_sec)"
            record routescpu "$who" "$(awk -v c="$LAST_CPU_S" -v n="$(field "$LAST" conns)" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
        done
    done
    # L7 requests while 10 route changes a second are applied to the large table, against
    # the same load quiet: the p99, and what each change took.
    if [ "$L7" = 1 ]; then
        say "L7 h2 at $ROUTES_N routes, quiet and with 10 route changes/s: $ROUNDS rounds"
        for r in $(seq "$ROUNDS"); do
            run big "$BENCH" h2load-like --target 127.0.0.1:$MC_BIG --sni web.test --ca "$C/ca.pem" \
                --concurrency "$H2_CONNS" --streams "$H2_STREAMS" --seconds "$H2_SECS"
            record routesquiet big "$(field "$LAST" p99_ms)"
            "$BENCH" routes --socket "$TMP/big/admin.sock" --listener 127.0.0.1:$MC_BIG \
                --routes "$ROUTES_N" --fill none --rate 10 --changes $((H2_SECS * 10)) \
                >"$TMP/big/changes.$r" 2>>"$TMP/bench.err" &
            CH=$!
            run big "$BENCH" h2load-like --target 127.0.0.1:$MC_BIG --sni web.test --ca "$C/ca.pem" \
                --concurrency "$H2_CONNS" --streams "$H2_STREAMS" --seconds "$H2_SECS"
            record routesbusy big "$(field "$LAST" p99_ms)"
            wait $CH
            changes=$(grep '^RESULT' "$TMP/big/changes.$r")
            printf '   changes %s\n' "${changes#RESULT }" >&2
            record routeschange big "$(field "$changes" all_p50_ms)"
            record routeschange99 big "$(field "$changes" all_p99_ms)"
        done
    fi
    kill -TERM "$BIG_PID"
    wait "$BIG_PID" || true
    BIG_PID=
fi

want tput && say "L4 throughput: one connection, $BYTES bytes, $ROUNDS rounds"
want tput && for r in $(seq "$ROUNDS"); do
    for who in $(order "$r" direct); do
        run "$who" "$BENCH" throughput --target "$(l4_target "$who" $RAW_BE)" --sni raw.test \
            --bytes "$BYTES"
        record tput "$who" "$(field "$LAST" mb_per_sec)"
        [ "$who" = direct ] || record tputcpu "$who" "$(awk -v c="$LAST_CPU_S" -v b="$BYTES" 'BEGIN {printf "%.2f", c / (b / 1073741824)}')"
    done
done

L7_NOTE=
if [ "$L7" = 1 ] && "$BENCH" h2load-like --target 127.0.0.1:$MC --sni web.test --ca "$C/ca.pem" \
    --concurrency 1 --streams 1 --seconds 0.2 >/dev/null 2>>"$TMP/bench.err"; then
    want l7hs && say "L7 new TLS handshakes/s (the proxy's own TLS): $CONC clients, $SECS s, $ROUNDS rounds"
    want l7hs && for r in $(seq "$ROUNDS"); do
        for who in $(order "$r"); do
            target=127.0.0.1:$MC
            [ "$who" = ha ] && target=127.0.0.1:$HA_L7
            run "$who" "$BENCH" connrate --mode handshake --target "$target" --sni web.test \
                --ca "$C/ca.pem" --concurrency "$CONC" --seconds "$SECS"
            record l7hs "$who" "$(field "$LAST" conn_per_sec)"
            record l7hscpu "$who" "$(awk -v c="$LAST_CPU_S" -v n="$(field "$LAST" conns)" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
        done
        # The post-quantum hybrid group: mc-proxy only (HAProxy 2.6 on OpenSSL 3.0 has none).
        run mc "$BENCH" connrate --mode handshake --groups pq --target 127.0.0.1:$MC --sni web.test \
            --ca "$C/ca.pem" --concurrency "$CONC" --seconds "$SECS"
        record l7pq mc "$(field "$LAST" conn_per_sec)"
        record l7pqcpu mc "$(awk -v c="$LAST_CPU_S" -v n="$(field "$LAST" conns)" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
    done
    want h2 && say "L7 HTTP/2: $H2_CONNS connections x $H2_STREAMS streams, $H2_SECS s, $ROUNDS rounds"
    want h2 && for r in $(seq "$ROUNDS"); do
        for who in $(order "$r"); do
            target=127.0.0.1:$MC
            [ "$who" = ha ] && target=127.0.0.1:$HA_L7
            run "$who" "$BENCH" h2load-like --target "$target" --sni web.test --ca "$C/ca.pem" \
                --concurrency "$H2_CONNS" --streams "$H2_STREAMS" --seconds "$H2_SECS"
            record rps "$who" "$(field "$LAST" rps)"
            record p99 "$who" "$(field "$LAST" p99_ms)"
            record p50 "$who" "$(field "$LAST" p50_ms)"
            record reqcpu "$who" "$(awk -v c="$LAST_CPU_S" -v n="$(field "$LAST" requests)" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
        done
    done
    want h1 && say "L7 HTTP/1.1 clients: $H1_CONNS keep-alive connections, $H2_SECS s, $ROUNDS rounds"
    want h1 && for r in $(seq "$ROUNDS"); do
        for who in $(order "$r"); do
            target=127.0.0.1:$MC
            [ "$who" = ha ] && target=127.0.0.1:$HA_L7
            run "$who" "$BENCH" h2load-like --http 1 --target "$target" --sni web.test --ca "$C/ca.pem" \
                --concurrency "$H1_CONNS" --seconds "$H2_SECS"
            record h1rps "$who" "$(field "$LAST" rps)"
            record h1cpu "$who" "$(awk -v c="$LAST_CPU_S" -v n="$(field "$LAST" requests)" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
        done
    done
    want tlsbe && say "L7 re-encryption: $H2_CONNS connections x $H2_STREAMS streams to a TLS backend (h2, then HTTP/1.1), $H2_SECS s, $ROUNDS rounds"
    want tlsbe && for r in $(seq "$ROUNDS"); do
        for be in tlsbe tlsbe1; do
            for who in $(order "$r"); do
                target=127.0.0.1:$MC
                [ "$who" = ha ] && target=127.0.0.1:$HA_L7
                run "$who" "$BENCH" h2load-like --target "$target" --sni "$be.test" --ca "$C/ca.pem" \
                    --concurrency "$H2_CONNS" --streams "$H2_STREAMS" --seconds "$H2_SECS"
                record "${be}rps" "$who" "$(field "$LAST" rps)"
                record "${be}cpu" "$who" "$(awk -v c="$LAST_CPU_S" -v n="$(field "$LAST" requests)" 'BEGIN {printf "%.1f", c * 1e6 / n}')"
            done
        done
    done
    # Long-lived streams: messages echoed one at a time on each, per message the proxy's CPU.
    want stream && say "L7 streams: $WS_CONNS WebSockets, then $GRPC_CONNS connections x $GRPC_STREAMS gRPC bidi streams, $MSG_SIZE-byte messages, $H2_SECS s, $ROUNDS rounds"
    want stream && for r in $(seq "$ROUNDS"); do
        for who in $(order "$r"); do
            target=127.0.0.1:$MC
            [ "$who" = ha ] && target=127.0.0.1:$HA_L7
            run "$who" "$BENCH" ws --target "$target" --sni ws.test --ca "$C/ca.pem" \
                --concurrency "$WS_CONNS" --seconds "$H2_SECS" --size "$MSG_SIZE"
            record wsmps "$who" "$(field "$LAST" msgs_per_sec)"
            record wsp99 "$who" "$(field "$LAST" p99_ms)"
            record wscpu "$who" "$(awk -v c="$LAST_CPU_S" -v n="$(field "$LAST" messages)" 'BEGIN {printf "%.2f", c * 1e6 / n}')"
        done
        for who in $(order "$r"); do
            target=127.0.0.1:$MC
            [ "$who" = ha ] && target=127.0.0.1:$HA_L7
            run "$who" "$BENCH" grpc-stream --target "$target" --sni grpc.test --ca "$C/ca.pem" \
                --concurrency "$GRPC_CONNS" --streams "$GRPC_STREAMS" --seconds "$H2_SECS" \
                --size "$MSG_SIZE"
            record grpcmps "$who" "$(field "$LAST" msgs_per_sec)"
            record grpcp99 "$who" "$(field "$LAST" p99_ms)"
            record grpccpu "$who" "$(awk -v c="$LAST_CPU_S" -v n="$(field "$LAST" messages)" 'BEGIN {printf "%.2f", c * 1e6 / n}')"
        done
    done
else
    L7_NOTE="L7: skipped (mc-proxy L7 not available)"
    say "$L7_NOTE"
fi

# idle_round WHO MODE N METRIC: restart the proxy, warm it up, measure RSS before and with N idle
# connections (MODE l4: TLS through to the echo backend; tls: TLS-terminated, nothing sent;
# h2: TLS-terminated after one HTTP/2 request); records KiB per connection under METRIC and
# the number of connections that came up under METRIC.up.
idle_round() {
    local who=$1 mode=$2 n=$3 metric=$4 pid before after out target sni=a.test up
    if [ "$who" = mc ]; then stop_mc; start_mc; else stop_ha; start_ha; fi
    pid=$(pid_of "$who")
    if [ "$mode" = l4 ]; then
        target=$(l4_target "$who")
        "$BENCH" connrate --target "$target" --sni a.test --ca "$C/ca.pem" \
            --concurrency 4 --seconds 0.3 >/dev/null 2>>"$TMP/bench.err"
    else
        target=127.0.0.1:$MC sni=web.test
        [ "$who" = ha ] && target=127.0.0.1:$HA_L7
        "$BENCH" h2load-like --target "$target" --sni web.test --ca "$C/ca.pem" \
            --concurrency 4 --streams 2 --seconds 0.3 >/dev/null 2>>"$TMP/bench.err"
    fi
    sleep 0.3
    before=$(rss_kib "$pid")
    out=$TMP/idle.out
    "$BENCH" idle --mode "$mode" --target "$target" --sni "$sni" --ca "$C/ca.pem" --count "$n" \
        --hold-secs "$IDLE_HOLD" >"$out" 2>>"$TMP/bench.err" &
    local idle_pid=$!
    for _ in $(seq 1200); do
        grep -q "^ready" "$out" 2>/dev/null && break
        sleep 0.1
    done
    sleep 0.5
    after=$(rss_kib "$pid")
    wait "$idle_pid" || true
    up=$(awk '/^ready/ {print $2}' "$out")
    printf '   %-7s %s: %s rss_before_kib=%s rss_after_kib=%s\n' "$who" "$mode" "$(head -1 "$out")" "$before" "$after" >&2
    record "$metric.up" "$who" "${up:-0}"
    if [ "${up:-0}" -gt 0 ]; then
        record "$metric" "$who" "$(awk -v a="$after" -v b="$before" -v n="$up" 'BEGIN {printf "%.1f", (a - b) / n}')"
    fi
}
want idle && say "memory per idle L4 connection: $IDLE_N connections, fresh proxy each round, $ROUNDS rounds"
want idle && for r in $(seq "$ROUNDS"); do
    for who in $(order "$r"); do idle_round "$who" l4 "$IDLE_N" idlemem; done
done
if [ -z "$L7_NOTE" ] && want l7idle; then
    say "memory per idle L7 connection: $IDLE_L7_N connections, TLS only and after one h2 request, $ROUNDS rounds"
    for r in $(seq "$ROUNDS"); do
        for who in $(order "$r"); do
            idle_round "$who" tls "$IDLE_L7_N" idletls
            idle_round "$who" h2 "$IDLE_L7_N" idleh2
        done
    done
fi
want hold && say "connections held: $HOLD_N L4 connections at once, one round"
want hold && for who in $(order 1); do idle_round "$who" l4 "$HOLD_N" hold; done

# --- the table -----------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b}'; }
row() { # label better metric
    local m h
    m=$(median "$3" mc) h=$(median "$3" ha)
    printf '| %-44s | %-6s | %10s | %10s | %9s | %8s |\n' "$1" "$2" "$m" "$h" "$(ratio "$m" "$h")" "$(median "$3" direct)"
}
echo
echo "mc-proxy $("$MC_PROXY" --version | awk '{print $2}') ($(git -C "$ROOT" rev-parse --short HEAD)) vs $(haproxy -v | awk 'NR==1 {print "HAProxy " $3}'), $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), median of $ROUNDS alternating rounds, logs $([ "$LOGS" = 1 ] && echo on || echo off)"
echo
printf '| %-44s | %-6s | %10s | %10s | %9s | %8s |\n' figure better mc-proxy HAProxy "mc / HA" direct
echo "|----------------------------------------------|--------|------------|------------|-----------|----------|"
row "L4 new TLS connections/s (C=$CONC, ${SECS} s)" higher connrate
row "  proxy CPU per connection (us)" lower conncpu
row "  failed connections" lower connerr
row "L4 throughput, one connection (MB/s)" higher tput
row "  proxy CPU per GiB (s)" lower tputcpu
if [ -z "$L7_NOTE" ]; then
    row "L7 new TLS handshakes/s (C=$CONC, ${SECS} s)" higher l7hs
    row "  proxy CPU per handshake (us)" lower l7hscpu
    row "  X25519MLKEM768 handshakes/s" higher l7pq
    row "  X25519MLKEM768 proxy CPU per handshake (us)" lower l7pqcpu
    row "L7 h2 requests/s (${H2_CONNS}x${H2_STREAMS} streams, ${H2_SECS} s)" higher rps
    row "L7 h2 p50 latency (ms)" lower p50
    row "L7 h2 p99 latency (ms)" lower p99
    row "  proxy CPU per request (us)" lower reqcpu
    row "L7 HTTP/1.1 requests/s (${H1_CONNS} conns, ${H2_SECS} s)" higher h1rps
    row "  proxy CPU per request (us)" lower h1cpu
    row "L7 h2 to an h2-over-TLS backend, requests/s" higher tlsberps
    row "  proxy CPU per request (us)" lower tlsbecpu
    row "L7 h2 to an HTTP/1.1-over-TLS backend, req/s" higher tlsbe1rps
    row "  proxy CPU per request (us)" lower tlsbe1cpu
    row "L7 WebSocket messages/s (${WS_CONNS} conns, ${MSG_SIZE} B)" higher wsmps
    row "  p99 latency (ms)" lower wsp99
    row "  proxy CPU per message (us)" lower wscpu
    row "L7 gRPC bidi messages/s (${GRPC_CONNS}x${GRPC_STREAMS} streams, ${MSG_SIZE} B)" higher grpcmps
    row "  p99 latency (ms)" lower grpcp99
    row "  proxy CPU per message (us)" lower grpccpu
fi
row "L4 memory per idle connection (KiB, N=$IDLE_N)" lower idlemem
if [ -z "$L7_NOTE" ]; then
    row "L7 memory per idle conn, TLS only (KiB, N=$IDLE_L7_N)" lower idletls
    row "L7 memory per idle conn, after h2 req (KiB)" lower idleh2
fi
row "L4 connections held (of $HOLD_N)" higher hold.up
row "  memory per held connection (KiB)" lower hold
[ -z "$L7_NOTE" ] || echo "$L7_NOTE"
if [ -s "$TMP/res.routescpu.big" ]; then
    echo
    echo "L4 with $ROUTES_N more routes (same mc-proxy, a second process), median of $ROUNDS alternating rounds:"
    echo "  new TLS connections/s: $(median routesrate big) against $(median routesrate mc) with 2 routes ($(ratio "$(median routesrate big)" "$(median routesrate mc)"))"
    echo "  proxy CPU per connection (us): $(median routescpu big) against $(median routescpu mc) ($(ratio "$(median routescpu big)" "$(median routescpu mc)"))"
    if [ -s "$TMP/res.routesbusy.big" ]; then
        echo "  L7 h2 p99 (ms) with 10 route changes/s: $(median routesbusy big) against $(median routesquiet big) quiet ($(ratio "$(median routesbusy big)" "$(median routesquiet big)")); a change took $(median routeschange big) ms p50, $(median routeschange99 big) ms p99"
    fi
fi
echo
echo "direct: the client straight to the backend (no proxy), for scale."
if [ "$LOGS" = 1 ]; then
    # The lines as written: mc-proxy's request lines (target mc_proxy::request) and connection
    # lines, HAProxy's httplog and tcplog lines.
    bpl() { awk -v pat="$2" '$0 ~ pat {n++; b += length($0) + 1} END {if (n) printf "%d bytes/line (%d lines)", b / n, n; else printf "no lines"}' "$1"; }
    echo "log lines: mc-proxy request $(bpl "$TMP/mc-proxy.log" 'mc_proxy::request'), connection $(bpl "$TMP/mc-proxy.log" 'connection closed'); HAProxy http $(bpl "$TMP/haproxy.log" 'HTTP/'), tcp $(bpl "$TMP/haproxy.log" 'tls_echo|raw_sink')"
fi
