#!/usr/bin/env bash
# wrk against the HTTP example, usage recording on: GET /v1/ping (no
# authentication) and GET /v1/whoami (keyroll), the same bearer token sent
# to both, `wrk -t1 -c8 -d5s` per measurement, routes interleaved ROUNDS
# times; prints each rate and the medians' ratio.
#
#   bash benches/http.sh [ROUNDS]      (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
port=18089
cargo build --release -q -p keyroll-demo --bin http_service
KEYROLL_ADMIN_TOKEN=bench ./target/release/http_service --listen "127.0.0.1:$port" >/dev/null 2>&1 &
service=$!
trap 'kill $service' EXIT
for _ in $(seq 50); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
token=$(curl -s -X POST -H "Authorization: Bearer bench" -H "Content-Type: application/json" \
    -d '{"label": "wrk"}' "http://127.0.0.1:$port/admin/keys" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
rate() {
    wrk -t1 -c8 -d5s -H "Authorization: Bearer $token" "http://127.0.0.1:$port$1" |
        awk '/Requests\/sec/ {print $2}'
}
ping=() whoami=()
for round in $(seq "$rounds"); do
    ping+=("$(rate /v1/ping)")
    whoami+=("$(rate /v1/whoami)")
    echo "round $round: ping ${ping[-1]} req/s, whoami ${whoami[-1]} req/s"
done
python3 - "${ping[*]}" "${whoami[*]}" <<'PY'
import statistics, sys
ping, whoami = (statistics.median(map(float, a.split())) for a in sys.argv[1:3])
print(f"medians: ping {ping:.0f} req/s, whoami {whoami:.0f} req/s, ratio whoami/ping {whoami / ping:.3f}")
PY
