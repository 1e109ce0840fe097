#!/usr/bin/env bash
# Runs one load-test scenario against a fresh server at several shard
# counts (default 1 2 4 8), server and tool unpinned, alternating shard
# counts (and, with --before, the two builds) round by round; keeps every
# JSON result in --out and prints one TSV line per run and the medians per
# build and shard count (jq needed).
#
#   loadtest/scaling.sh [--bin DIR] [--before DIR] [--runs 3] [--shards "1 2 4 8"]
#                       [--server-args "..."] [--tool PATH] [--out DIR] [-- <tool flags>]
#
# --bin DIR      the server under test, DIR/singyeong (default target/release)
# --before DIR   a second server binary dir, run alternately with --bin
#                (labelled "before"; --bin is then "after", else "server"):
#                a before/after comparison in one run
# --tool PATH    the load tool for every run (default: --bin's
#                singyeong-loadtest), so only the server differs
# --server-args  added to every server's command line
# Tool flags after -- are appended to the default workload and override it
# (the tool takes the last of a repeated flag):
#   --scenario targeted -n 1000 --senders 4 --window 64 --payload-bytes 64 --duration 6
# e.g. `loadtest/scaling.sh -- --scenario group --groups 10`, or
#      `loadtest/scaling.sh --shards "1 2" -- --scenario update -n 100`.
#
# Each server: singyeong --shards S --port 0 --bind 127.0.0.1 --log warn --no-durable
# Each run:    singyeong-loadtest --url ws://ADDR/gateway/websocket --server-pid PID --quiet <flags>
# Columns: build, shards, run, delivered/s (update: applied updates/s),
# server CPU µs per delivery (update: per applied update), lost (update:
# stale probes), errors, p50 and p99 latency in µs (update: batch round trip).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release
before=""
runs=3
shards="1 2 4 8"
server_args=""
tool=""
out=""
while [ $# -gt 0 ]; do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --before) before=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --server-args) server_args=$2; shift 2 ;;
        --tool) tool=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1 (put the tool's flags after --)" >&2; exit 2 ;;
    esac
done
command -v jq >/dev/null || { echo "jq not found: apt-get install -y jq" >&2; exit 1; }
[ -n "$tool" ] || tool=$bin/singyeong-loadtest
for f in "$bin/singyeong" "$tool" ${before:+"$before/singyeong"}; do
    [ -x "$f" ] || { echo "$f: not found or not executable (cargo build --release --workspace)" >&2; exit 1; }
done
workload=(--scenario targeted -n 1000 --senders 4 --window 64 --payload-bytes 64 --duration 6)
[ -n "$out" ] || out=$(mktemp -d /tmp/loadtest-scaling.XXXX)
mkdir -p "$out"
# One build is labelled "server"; with --before, "before" and "after".
builds=("server:$bin")
[ -n "$before" ] && builds=("before:$before" "after:$bin")

server=""
tmp=$(mktemp -d)
cleanup() {
    if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# Starts DIR/singyeong with S shards; sets $server and $addr.
start_server() {
    local dir=$1 s=$2
    : >"$tmp/server.out"
    "$dir/singyeong" --shards "$s" --port 0 --bind 127.0.0.1 --log warn --no-durable $server_args \
        >"$tmp/server.out" 2>"$tmp/server.err" &
    server=$!
    for _ in $(seq 100); do grep -q '^listening on' "$tmp/server.out" && break; sleep 0.05; done
    addr=$(sed -n 's/^listening on //p' "$tmp/server.out")
    [ -n "$addr" ] || { cat "$tmp/server.err" >&2; exit 1; }
    sleep 1 # let the idle server settle before its baseline RSS is read
}

stop_server() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
}

line='[$build, $shards, $run,
       ((.traffic.updates_per_second // .traffic.delivered_per_second // 0) | floor),
       ((.server.cpu_us_per_delivery // 0) * 100 | floor / 100),
       (.traffic.lost // .traffic.stale // 0), .errors.count,
       (.traffic.latency_us.p50 // .traffic.batch_latency_us.p50 // 0),
       (.traffic.latency_us.p99 // .traffic.batch_latency_us.p99 // 0)] | @tsv'
echo "tool: $tool ${workload[*]} $*" >&2
echo "results: $out" >&2
echo -e "build\tshards\trun\tdelivered/s\tcpu_us/deliv\tlost\terrors\tp50us\tp99us"
for i in $(seq "$runs"); do
    for s in $shards; do
        for b in "${builds[@]}"; do
            name=${b%%:*} dir=${b#*:}
            start_server "$dir" "$s"
            json=$out/$name-s$s-$i.json
            status=0
            "$tool" --url "ws://$addr/gateway/websocket" --server-pid "$server" --quiet \
                "${workload[@]}" "$@" >"$json" 2>"$out/$name-s$s-$i.log" || status=$?
            stop_server
            if [ "$status" -ne 0 ]; then
                echo -e "$name\t$s\t$i\tFAILED (exit $status, see $out/$name-s$s-$i.log)"
                rm -f "$json"
                continue
            fi
            jq -r --arg build "$name" --arg shards "$s" --arg run "$i" "$line" "$json"
        done
    done
done
echo
echo -e "build\tshards\truns\tmedian delivered/s\tmedian cpu_us/deliv\tdelivered/s by run\tcpu_us by run"
median='def med: sort | .[(length/2|floor)];
  [.[] | {b: (input_filename | capture("/(?<b>[a-z]+)-s(?<s>[0-9]+)-[0-9]+\\.json$")),
          d: (.traffic.updates_per_second // .traffic.delivered_per_second // 0),
          c: (.server.cpu_us_per_delivery // 0)}]
  | group_by([.b.b, (.b.s | tonumber)])[]
  | [.[0].b.b, .[0].b.s, length, (map(.d) | med | floor), (map(.c) | med * 100 | floor / 100),
     (map(.d | floor | tostring) | join(" / ")), (map(.c * 100 | floor / 100 | tostring) | join(" / "))] | @tsv'
# input_filename needs the files read one by one, not slurped.
for f in "$out"/*.json; do jq -c --arg f "$f" '. + {__file: $f}' "$f"; done \
    | jq -rs "${median//input_filename/.__file}"
