#!/usr/bin/env bash
# Runs one load-test scenario against a fresh nats-server (Debian's package:
# apt-get install nats-server) pinned to CPU 0, with its websocket listener
# configured by this script, and the load tool pinned to CPU 1 with
# --target nats; prints the tool's JSON result. The NATS twin of
# run-pinned.sh: same tool, same flags, same payloads.
#
#   loadtest/run-nats-pinned.sh [--nats-args "..."] -- <singyeong-loadtest args>
#
# Build first: cargo build --release -p singyeong-loadtest
# LOADTEST_NICE and LOADTEST_PIN as for run-pinned.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
nats_args=""
if [ "${1:-}" = "--nats-args" ]; then nats_args=$2; shift 2; fi
[ "${1:-}" = "--" ] && shift
command -v nats-server >/dev/null || {
    echo "nats-server not found: apt-get install -y nats-server" >&2
    exit 1
}
bin=${CARGO_TARGET_DIR:-target}/release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ws_port=$(free_port)
client_port=$(free_port)
# Plain websocket, no auth; limits well above what the tool opens.
cat >"$out/nats.conf" <<CONF
listen: 127.0.0.1:$client_port
max_connections: 1000000
websocket {
  listen: "127.0.0.1:$ws_port"
  no_tls: true
}
CONF
nice=(nice -n "${LOADTEST_NICE:-0}")
# LOADTEST_PIN=0: no pinning, server and tool scheduled freely over every CPU.
pin_server=(taskset -c 0) pin_tool=(taskset -c 1)
[ "${LOADTEST_PIN:-1}" = 0 ] && pin_server=() pin_tool=()
"${nice[@]}" "${pin_server[@]}" nats-server -c "$out/nats.conf" $nats_args >"$out/nats.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 100); do grep -q 'Server is ready' "$out/nats.log" && break; sleep 0.05; done
grep -q 'Listening for websocket clients' "$out/nats.log" || { cat "$out/nats.log" >&2; exit 1; }
sleep 1 # let the idle server settle before its baseline RSS is read
"${nice[@]}" "${pin_tool[@]}" "$bin/singyeong-loadtest" --target nats --url "ws://127.0.0.1:$ws_port" \
    --server-pid "$server" --quiet "$@"
