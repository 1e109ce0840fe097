#!/usr/bin/env bash
# Three of our nodes against a three-node NATS cluster, side by side in one
# run: starts both clusters on loopback, waits until each is formed, then
# runs every scenario against each in turn (the order alternating round by
# round), --runs rounds, and prints one TSV line per run, the medians, and
# what a remote SEND costs against a local one. Every JSON result is kept
# in --out.
#
#   loadtest/cluster-nats.sh [--bin DIR] [--tool PATH] [--runs 3] [--duration 10]
#                            [--shards "default 1"] [--scenarios "remote local rate5k rate20k broadcast"]
#                            [--server-cpus LIST] [--tool-cpus LIST] [--out DIR] [-- <tool flags>]
#
# --bin DIR        our server, DIR/singyeong (default target/release; build
#                  first: cargo build --release -p singyeong -p singyeong-loadtest)
# --tool PATH      the load tool (default: --bin's singyeong-loadtest)
# --shards LIST    shard counts per node of our cluster, "default" = the
#                  server's default (the CPUs available); one cluster of
#                  three nodes per entry, all up for the whole run
# --scenarios LIST which of the scenarios below, in this order
# --server-cpus, --tool-cpus  taskset CPU lists for every server process
#                  (ours and NATS) and for the tool. Default: no pinning,
#                  every process scheduled over every CPU. Six server
#                  processes (nine with two shard settings) and the tool
#                  share the machine; pinning them onto two cores would
#                  leave the tool a fraction of one core, and the tool
#                  would then be the limit. Unpinned, only the cluster under
#                  test is busy (the other idles: gossip, pings), and the
#                  tool's own CPU is in the `tool_cpu_s` column, so a run
#                  where the tool, not the servers, ran out of CPU shows.
#                  On a machine with cores to spare, give the servers and
#                  the tool disjoint lists.
# Tool flags after -- are appended to every run (the tool takes the last
# of a repeated flag, except --url and --server-pid, which add up).
#
# Our nodes:  singyeong [--shards S] --port 0 --bind 127.0.0.1 --log warn --no-durable
#             --node-name nI --cluster-addr 127.0.0.1:GI --cluster-secret ... --peers <the other two>
#             formed when GET /api/v1/cluster on each node shows 2 members
#             alive, each with all its links up (links == links_expected).
# NATS nodes: nats-server -c <conf>: client port, monitoring port (http),
#             plain websocket listener, cluster { listen 127.0.0.1:RI,
#             routes: the other two }; formed when /routez on each shows
#             2 routes.
# Every run:  singyeong-loadtest [--target nats] --url <the 3 nodes> --server-pid <the 3 PIDs>
#             --quiet --duration D <scenario flags> <tool flags>
#             (receiver id -> node id % 3, sender i -> node i % 3; CPU per
#             delivery is the three servers' CPU summed)
#
# Scenarios (64-byte payloads, 1,000 receivers spread over the 3 nodes,
# --drain 5):
#   remote     targeted SEND, closed loop: --senders 6 --window 64, each
#              sender's receivers all on the two other nodes (--placement remote)
#   local      the same with each sender's receivers on its own node
#              (--placement local): remote against local is the cost of
#              crossing nodes
#   rate5k     remote at a fixed 5,000 msg/s (--rate 5000, open loop): p99
#   rate20k    remote at a fixed 20,000 msg/s
#   broadcast  BROADCAST to all 1,000 receivers: --senders 3 (one per node)
#              --window 4
#
# Columns: target, shards, scenario, run, delivered/s, server CPU µs per
# delivery (3 nodes summed), p50/p99/p999 latency µs, lost, errors, the
# tool's CPU seconds during traffic.
# Needs jq, curl, python3 (free ports) and nats-server (apt-get install nats-server).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release
tool=""
runs=3
duration=10
shards_list="default"
scenarios="remote local rate5k rate20k broadcast"
server_cpus=""
tool_cpus=""
out=""
while [ $# -gt 0 ]; do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --tool) tool=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --shards) shards_list=$2; shift 2 ;;
        --scenarios) scenarios=$2; shift 2 ;;
        --server-cpus) server_cpus=$2; shift 2 ;;
        --tool-cpus) tool_cpus=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown option $1 (put the tool's flags after --)" >&2; exit 2 ;;
    esac
done
for c in jq curl python3 nats-server; do
    command -v "$c" >/dev/null || { echo "$c not found" >&2; exit 1; }
done
[ -n "$tool" ] || tool=$bin/singyeong-loadtest
for f in "$bin/singyeong" "$tool"; do
    [ -x "$f" ] || { echo "$f: not found or not executable (cargo build --release -p singyeong -p singyeong-loadtest)" >&2; exit 1; }
done
scenario_flags() {
    # --drain 5: a server behind its schedule gets time to deliver what is
    # in flight before the rest counts as lost (the drain ends as soon as
    # everything arrived, so it costs nothing otherwise).
    local common=(-n 1000 --payload-bytes 64 --duration "$duration" --drain 5)
    case $1 in
        remote) echo "${common[*]} --scenario targeted --senders 6 --window 64 --placement remote" ;;
        local) echo "${common[*]} --scenario targeted --senders 6 --window 64 --placement local" ;;
        rate5k) echo "${common[*]} --scenario targeted --senders 6 --rate 5000 --placement remote" ;;
        rate20k) echo "${common[*]} --scenario targeted --senders 6 --rate 20000 --placement remote" ;;
        broadcast) echo "${common[*]} --scenario broadcast --senders 3 --window 4" ;;
        *) return 1 ;;
    esac
}
for s in $scenarios; do
    scenario_flags "$s" >/dev/null || { echo "unknown scenario $s" >&2; exit 2; }
done
for s in $shards_list; do
    [ "$s" = default ] || [ "$s" -ge 1 ] 2>/dev/null || { echo "--shards: $s is neither default nor a count" >&2; exit 2; }
done
[ -n "$out" ] || out=$(mktemp -d /tmp/loadtest-cluster-nats.XXXX)
mkdir -p "$out"
pin_server=() pin_tool=()
[ -n "$server_cpus" ] && pin_server=(taskset -c "$server_cpus")
[ -n "$tool_cpus" ] && pin_tool=(taskset -c "$tool_cpus")

tmp=$(mktemp -d)
pids=()
cleanup() {
    [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
    # Bounded: anything still up after 5 s is killed.
    for _ in $(seq 50); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    [ ${#pids[@]} -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_tcp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Polls "$@" every 0.2 s until it succeeds; fails after $1 seconds.
wait_for() {
    local secs=$1 what=$2
    shift 2
    for _ in $(seq $((secs * 5))); do "$@" && return 0; sleep 0.2; done
    echo "$what: not within $secs s" >&2
    return 1
}

# Our cluster for shard setting $1: sets sg_urls_<label>, sg_pids_<label>.
start_ours() {
    local label=$1 i j secret gossip=() addrs=() node_pids=() shard_flag=()
    [ "$label" = default ] || shard_flag=(--shards "$label")
    secret=$(head -c 24 /dev/urandom | base64)
    for i in 0 1 2; do gossip+=("127.0.0.1:$(free_udp)"); done
    for i in 0 1 2; do
        local peers=()
        for j in 0 1 2; do [ "$j" = "$i" ] || peers+=("${gossip[$j]}"); done
        "${pin_server[@]}" "$bin/singyeong" "${shard_flag[@]}" --port 0 --bind 127.0.0.1 --log warn \
            --no-durable --node-name "n$i" --cluster-addr "${gossip[$i]}" --cluster-secret "$secret" \
            --peers "$(IFS=,; echo "${peers[*]}")" >"$tmp/sg-$label-$i.out" 2>"$tmp/sg-$label-$i.err" &
        pids+=($!)
        node_pids+=($!)
    done
    for i in 0 1 2; do
        wait_for 20 "node $i (shards $label) listening" grep -q '^listening on' "$tmp/sg-$label-$i.out" \
            || { cat "$tmp/sg-$label-$i.err" >&2; exit 1; }
        addrs+=("$(sed -n 's/^listening on //p' "$tmp/sg-$label-$i.out")")
    done
    for i in 0 1 2; do
        wait_for 30 "our cluster (shards $label) formed on node $i" ours_formed "${addrs[$i]}"
    done
    local urls=()
    for i in 0 1 2; do urls+=("ws://${addrs[$i]}/gateway/websocket"); done
    printf -v "sg_urls_$label" '%s' "$(IFS=,; echo "${urls[*]}")"
    printf -v "sg_pids_$label" '%s' "$(IFS=,; echo "${node_pids[*]}")"
}
ours_formed() {
    curl -sf "http://$1/api/v1/cluster" | jq -e '[.members[] | select(.state == "alive"
        and .links_expected > 0 and (.links | length) == .links_expected)] | length == 2' >/dev/null
}

# The NATS cluster: sets nats_urls, nats_pids.
start_nats() {
    local i j route=() ws=() http=() urls=() node_pids=()
    for i in 0 1 2; do route+=("$(free_tcp)"); ws+=("$(free_tcp)"); http+=("$(free_tcp)"); done
    for i in 0 1 2; do
        local routes=()
        for j in 0 1 2; do [ "$j" = "$i" ] || routes+=("\"nats-route://127.0.0.1:${route[$j]}\""); done
        # Plain websocket, no auth; limits well above what the tool opens.
        cat >"$tmp/nats-$i.conf" <<CONF
listen: 127.0.0.1:$(free_tcp)
http: 127.0.0.1:${http[$i]}
max_connections: 1000000
websocket {
  listen: "127.0.0.1:${ws[$i]}"
  no_tls: true
}
cluster {
  name: bench
  listen: "127.0.0.1:${route[$i]}"
  routes: [$(IFS=,; echo "${routes[*]}")]
}
CONF
        "${pin_server[@]}" nats-server -c "$tmp/nats-$i.conf" >"$tmp/nats-$i.log" 2>&1 &
        pids+=($!)
        node_pids+=($!)
        urls+=("ws://127.0.0.1:${ws[$i]}")
    done
    for i in 0 1 2; do
        wait_for 30 "NATS routes on node $i" nats_formed "${http[$i]}" || { cat "$tmp/nats-$i.log" >&2; exit 1; }
    done
    nats_urls=$(IFS=,; echo "${urls[*]}")
    nats_pids=$(IFS=,; echo "${node_pids[*]}")
}
nats_formed() { curl -sf "http://127.0.0.1:$1/routez" | jq -e '.num_routes >= 2' >/dev/null; }

for s in $shards_list; do start_ours "$s"; done
start_nats
sleep 1 # let the idle servers settle

# One run: $1 target (singyeong|nats), $2 shard label ("-" for NATS), $3 scenario, $4 round.
run_one() {
    local target=$1 label=$2 scenario=$3 round=$4 urls pids name status=0
    shift 4 # the rest: the tool flags given after --
    if [ "$target" = nats ]; then urls=$nats_urls pids=$nats_pids; else
        local u="sg_urls_$label" p="sg_pids_$label"
        urls=${!u} pids=${!p}
    fi
    name=$target-$label-$scenario-$round
    # shellcheck disable=SC2046 # the scenario's flags are words on purpose
    "${pin_tool[@]}" "$tool" --target "$target" --url "$urls" --server-pid "$pids" --quiet \
        --timeout $((duration * 3 + 60)) $(scenario_flags "$scenario") "$@" \
        >"$tmp/r.json" 2>"$out/$name.log" || status=$?
    if [ "$status" -ne 0 ]; then
        echo -e "$target\t$label\t$scenario\t$round\tFAILED (exit $status, see $out/$name.log)"
        return
    fi
    jq --arg t "$target" --arg s "$label" --arg c "$scenario" --arg r "$round" \
        '. + {bench: {target: $t, shards: $s, scenario: $c, run: ($r | tonumber)}}' \
        "$tmp/r.json" >"$out/$name.json"
    jq -r "$line" "$out/$name.json"
}
line='[.bench.target, .bench.shards, .bench.scenario, .bench.run,
       (.traffic.delivered_per_second | floor), ((.server.cpu_us_per_delivery // 0) * 100 | floor / 100),
       .traffic.latency_us.p50, .traffic.latency_us.p99, .traffic.latency_us.p999,
       .traffic.lost, .errors.count, ((.client.cpu_traffic_seconds // 0) * 100 | floor / 100)] | @tsv'

echo "tool: $tool; our cluster(s): shards $shards_list; NATS: $(nats-server --version)" >&2
echo "results: $out" >&2
echo -e "target\tshards\tscenario\trun\tdelivered/s\tcpu_us/deliv\tp50us\tp99us\tp999us\tlost\terrors\ttool_cpu_s"
for round in $(seq "$runs"); do
    for scenario in $scenarios; do
        # Alternate who goes first, so neither always runs on a machine
        # the other just warmed (or heated).
        order=(ours nats)
        [ $((round % 2)) = 0 ] && order=(nats ours)
        for who in "${order[@]}"; do
            if [ "$who" = nats ]; then
                run_one nats - "$scenario" "$round" "$@"
            else
                for s in $shards_list; do run_one singyeong "$s" "$scenario" "$round" "$@"; done
            fi
        done
    done
done

shopt -s nullglob
results=("$out"/*.json)
[ ${#results[@]} -gt 0 ] || { echo "no run completed" >&2; exit 1; }
echo
echo -e "target\tshards\tscenario\truns\tmedian delivered/s\tmedian cpu_us/deliv\tmedian p50us\tmedian p99us\tmedian p999us\tlost (sum)\terrors (sum)"
jq -rs 'def med: sort | .[(length / 2 | floor)];
  group_by([.bench.target, .bench.shards, .bench.scenario])[]
  | [.[0].bench.target, .[0].bench.shards, .[0].bench.scenario, length,
     (map(.traffic.delivered_per_second) | med | floor),
     (map(.server.cpu_us_per_delivery // 0) | med * 100 | floor / 100),
     (map(.traffic.latency_us.p50) | med), (map(.traffic.latency_us.p99) | med),
     (map(.traffic.latency_us.p999) | med),
     (map(.traffic.lost) | add), (map(.errors.count) | add)] | @tsv' "${results[@]}"
echo
echo -e "target\tshards\tremote/local delivered/s\tremote/local cpu_us/deliv\tremote - local p50us"
jq -rs 'def med: sort | .[(length / 2 | floor)];
  group_by([.bench.target, .bench.shards])[]
  | (map(select(.bench.scenario == "remote"))) as $r | (map(select(.bench.scenario == "local"))) as $l
  | select(($r | length) > 0 and ($l | length) > 0)
  | ($r | map(.traffic.delivered_per_second) | med) as $rd | ($l | map(.traffic.delivered_per_second) | med) as $ld
  | ($r | map(.server.cpu_us_per_delivery // 0) | med) as $rc | ($l | map(.server.cpu_us_per_delivery // 0) | med) as $lc
  | [.[0].bench.target, .[0].bench.shards,
     (if $ld > 0 then $rd / $ld * 100 | floor / 100 else "-" end),
     (if $lc > 0 then $rc / $lc * 100 | floor / 100 else "-" end),
     (($r | map(.traffic.latency_us.p50) | med) - ($l | map(.traffic.latency_us.p50) | med))] | @tsv' "${results[@]}"
