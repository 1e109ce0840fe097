#!/usr/bin/env bash
# Runs one workload against singyeong (run-pinned.sh) and NATS
# (run-nats-pinned.sh) alternately, --runs times each, keeps every JSON
# result in --out, and prints one line per run and the medians (jq needed).
#
#   loadtest/compare.sh [--runs 3] [--out DIR] -- <singyeong-loadtest args>
#
# Example (PERF.md): loadtest/compare.sh -- --scenario targeted -n 1000 \
#     --senders 4 --window 64 --payload-bytes 64 --duration 10
set -euo pipefail
here=$(dirname "$0")
runs=3
out=""
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1 (put the tool's flags after --)" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || out=$(mktemp -d /tmp/loadtest-compare.XXXX)
mkdir -p "$out"
line='[.target, (.traffic.delivered_per_second // 0 | floor), (.traffic.lost // 0),
      (.traffic.misrouted // 0), .errors.count,
      (.traffic.latency_us.p50 // 0), (.traffic.latency_us.p99 // 0), (.traffic.latency_us.p999 // 0),
      ((.server.cpu_us_per_delivery // 0) * 100 | floor / 100),
      (.server.rss_per_connection_bytes // 0 | floor), (.connect.per_second | floor)] | @tsv'
echo -e "target\tdelivered/s\tlost\tmisrouted\terrors\tp50us\tp99us\tp999us\tcpu_us/deliv\trss_B/conn\tconnect/s"
for i in $(seq "$runs"); do
    "$here/run-pinned.sh" -- "$@" >"$out/singyeong-$i.json" 2>"$out/singyeong-$i.log"
    jq -r "$line" "$out/singyeong-$i.json"
    "$here/run-nats-pinned.sh" -- "$@" >"$out/nats-$i.json" 2>"$out/nats-$i.log"
    jq -r "$line" "$out/nats-$i.json"
done
median='def med: sort | .[(length/2|floor)];
  [.[] | {t: .target, d: (.traffic.delivered_per_second // 0), p50: (.traffic.latency_us.p50 // 0),
          p99: (.traffic.latency_us.p99 // 0), p999: (.traffic.latency_us.p999 // 0),
          cpu: (.server.cpu_us_per_delivery // 0), rss: (.server.rss_per_connection_bytes // 0),
          c: .connect.per_second}]
  | group_by(.t)[] | [.[0].t + " median", (map(.d)|med|floor), "", "", "", (map(.p50)|med),
     (map(.p99)|med), (map(.p999)|med), (map(.cpu)|med*100|floor/100), (map(.rss)|med|floor),
     (map(.c)|med|floor)] | @tsv'
jq -rs "$median" "$out"/*.json
echo "results: $out" >&2
