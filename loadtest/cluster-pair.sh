#!/usr/bin/env bash
# What a second cluster node costs: runs the load tool against node A
# (--shards 1, pinned to CPU 0) alone ("single") or with node B beside it
# ("pair": --shards 1, pinned to CPU 1, a linked member holding no
# clients), and prints one TSV line: mode, delivered/s, A's CPU µs per
# delivery, p50 and p99 latency in µs. B's CPU is not counted.
#
#   loadtest/cluster-pair.sh single|pair [--bin DIR] [-- <tool flags>]
#
# Default tool flags: --scenario targeted -n 1000 --senders 4 --window 64
# --payload-bytes 64 --duration 6 (later flags override). Needs jq and
# taskset, and two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?single or pair}
shift
bin=${CARGO_TARGET_DIR:-target}/release
while [ $# -gt 0 ]; do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
out=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$out"; }
trap cleanup EXIT
secret=$(head -c 24 /dev/urandom | base64)
free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cluster_a=()
if [ "$mode" = pair ]; then
    pa=$(free_udp); pb=$(free_udp)
    cluster_a=(--cluster-addr "127.0.0.1:$pa" --cluster-secret "$secret" --peers "127.0.0.1:$pb")
    taskset -c 1 "$bin/singyeong" --shards 1 --port 0 --bind 127.0.0.1 --log warn --no-durable \
        --node-name b --cluster-addr "127.0.0.1:$pb" --cluster-secret "$secret" --peers "127.0.0.1:$pa" \
        > "$out/b.out" 2> "$out/b.err" &
    pids+=($!)
fi
taskset -c 0 "$bin/singyeong" --shards 1 --port 0 --bind 127.0.0.1 --log warn --no-durable \
    --node-name a "${cluster_a[@]}" > "$out/a.out" 2> "$out/a.err" &
a=$!
pids+=($a)
# The listening line, then (in a pair) time for the two to link up.
for _ in $(seq 50); do
    addr=$(grep -oE '127\.0\.0\.1:[0-9]+' "$out/a.out" | head -1 || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ "$mode" = pair ] && sleep 3
"$bin/singyeong-loadtest" --url "ws://$addr/gateway/websocket" --server-pid "$a" --quiet \
    --scenario targeted -n 1000 --senders 4 --window 64 --payload-bytes 64 --duration 6 "$@" \
    > "$out/r.json" 2> "$out/tool.err"
jq -r --arg m "$mode" '[$m, (.traffic.delivered_per_second|floor),
    ((.server.cpu_us_per_delivery*100|floor)/100), .traffic.latency_us.p50,
    .traffic.latency_us.p99] | @tsv' "$out/r.json"
