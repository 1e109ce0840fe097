#!/usr/bin/env bash
# Runs one load-test scenario against a fresh release server pinned to CPU 0,
# with the load tool pinned to CPU 1, and prints the tool's JSON result.
#
#   loadtest/run-pinned.sh [--server-args "..."] -- <singyeong-loadtest args>
#
# Build first: cargo build --release --workspace
# LOADTEST_NICE=-10 runs server and tool at that nice level (root only), so
# other work on a shared machine disturbs the measurement less.
# LOADTEST_PIN=0 runs both unpinned (scheduled freely over every CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
server_args="--shards 1"
if [ "${1:-}" = "--server-args" ]; then server_args=$2; shift 2; fi
[ "${1:-}" = "--" ] && shift
bin=${CARGO_TARGET_DIR:-target}/release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
nice=(nice -n "${LOADTEST_NICE:-0}")
# LOADTEST_PIN=0: no pinning, server and tool scheduled freely over every CPU.
pin_server=(taskset -c 0) pin_tool=(taskset -c 1)
[ "${LOADTEST_PIN:-1}" = 0 ] && pin_server=() pin_tool=()
"${nice[@]}" "${pin_server[@]}" "$bin/singyeong" $server_args --port 0 --bind 127.0.0.1 --log warn >"$out/server.out" 2>"$out/server.err" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$out"' EXIT
for _ in $(seq 100); do grep -q '^listening on' "$out/server.out" && break; sleep 0.05; done
addr=$(sed -n 's/^listening on //p' "$out/server.out")
[ -n "$addr" ] || { cat "$out/server.err" >&2; exit 1; }
sleep 1 # let the idle server settle before its baseline RSS is read
"${nice[@]}" "${pin_tool[@]}" "$bin/singyeong-loadtest" --url "ws://$addr/gateway/websocket" --server-pid "$server" --quiet "$@"
