#!/usr/bin/env bash
# Proxied vs direct, same load tool, same run (PERF.md "HTTP proxy").
#
#   bench/proxy/run.sh [SHARDS]        (default 1)
#
# nginx (Debian package; apt-get install -y nginx wrk) serves a 17-byte body
# on 127.0.0.1:18080 with one worker; the release server proxies to it
# through one websocket client identified with ip=127.0.0.1:18080. wrk runs
# direct and proxied alternately, 3 rounds, with 32 connections and with 1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
shards=${1:-1}
bin=${CARGO_TARGET_DIR:-$root/target}/release/singyeong
work=$(mktemp -d)
cleanup() { kill $ws $sg $ng 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/tmp"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/tmp; proxy_temp_path $work/tmp;
    fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
    server {
        listen 127.0.0.1:18080;
        location / { default_type text/plain; return 200 "hello from nginx\n"; }
    }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" & ng=$!
"$bin" --bind 127.0.0.1 --port 14567 --shards "$shards" --heartbeat-interval 600000 --log warn >"$work/sg.out" 2>&1 & sg=$!
sleep 1
kill -0 $ng 2>/dev/null || { echo "nginx did not start (port 18080 taken?)" >&2; exit 1; }
kill -0 $sg 2>/dev/null || { echo "singyeong did not start (port 14567 taken?)" >&2; cat "$work/sg.out" >&2; exit 1; }
python3 "$here/upstream_client.py" 127.0.0.1 14567 300 >"$work/ws.out" 2>&1 & ws=$!
sleep 1.5
summary() { grep -E "Requests/sec|^ +50%" "$1" | tr -s ' ' | paste -sd' '; }
for i in 1 2 3; do
    for c in "-t2 -c32 -d10s" "-t1 -c1 -d5s"; do
        wrk $c --latency http://127.0.0.1:18080/ >"$work/direct" && echo "round $i direct  $c: $(summary "$work/direct")"
        wrk $c --latency -s "$here/proxy.lua" http://127.0.0.1:14567/api/v1/proxy >"$work/proxied" &&
            echo "round $i proxied $c: $(summary "$work/proxied")"
    done
done
