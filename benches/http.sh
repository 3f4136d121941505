#!/usr/bin/env bash
# wrk against the HTTP example, usage recording on: GET /v1/ping (no
# authentication) and GET /v1/whoami (keyroll), the same bearer token sent
# to both, `wrk -t1 -c8 -d${SECONDS_EACH:-5}s` per measurement; with
# LIMITS=1 the key has a rate limit and credits (charged each request). ROUNDS rounds, each a pair
# of measurements, in the order ping-whoami, then whoami-ping, and so on
# (so a machine slowing down or speeding up favours neither route); prints
# each rate, the ratio of the medians, and the median of the rounds' ratios
# (each round's two measurements ran back to back, under the same load)
# with its 95% confidence interval (6 rounds or more).
#
# Arguments after ROUNDS go to the service (`--no-usage-recording`
# measures the same without noting uses).
#
#   bash benches/http.sh [ROUNDS [SERVICE ARGS...]]   (needs wrk: apt-get install wrk)
set -euo pipefail
# The bootstrap token: at least 32 bytes, or the service does not start.
bootstrap=bench-bootstrap-token-0123456789abcdef
cd "$(dirname "$0")/.."
# cargo's output directory (CARGO_TARGET_DIR, a config), not always ./target.
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
rounds=${1:-5}
shift || true
port=18089
cargo build --release -q -p keyroll-demo --bin http_service
KEYROLL_ADMIN_TOKEN=$bootstrap "$target"/release/http_service --listen "127.0.0.1:$port" "$@" >/dev/null 2>&1 &
service=$!
trap 'kill $service' EXIT
for _ in $(seq 50); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
key='{"label": "wrk"}'
if [ "${LIMITS:-0}" = 1 ]; then
    key='{"label": "wrk", "rate_limit": {"limit": 1000000000, "period": "1s"},
          "credits": {"remaining": 1000000000000}}'
fi
token=$(curl -s -X POST -H "Authorization: Bearer $bootstrap" -H "Content-Type: application/json" \
    -d "$key" "http://127.0.0.1:$port/admin/keys" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
rate() {
    wrk -t1 -c8 -d"${SECONDS_EACH:-5}"s -H "Authorization: Bearer $token" "http://127.0.0.1:$port$1" |
        awk '/Requests\/sec/ {print $2}'
}
ping=() whoami=()
for round in $(seq "$rounds"); do
    if ((round % 2)); then
        ping+=("$(rate /v1/ping)")
        whoami+=("$(rate /v1/whoami)")
    else
        whoami+=("$(rate /v1/whoami)")
        ping+=("$(rate /v1/ping)")
    fi
    echo "round $round: ping ${ping[-1]} req/s, whoami ${whoami[-1]} req/s"
done
python3 - "${ping[*]}" "${whoami[*]}" <<'PY'
import math, statistics, sys
ping, whoami = ([float(r) for r in a.split()] for a in sys.argv[1:3])
p, w = statistics.median(ping), statistics.median(whoami)
ratios = sorted(b / a for a, b in zip(ping, whoami))
paired = statistics.median(ratios)
print(f"medians: ping {p:.0f} req/s, whoami {w:.0f} req/s, ratio whoami/ping {w / p:.3f}")
print(f"median of the rounds' ratios whoami/ping: {paired:.3f}", end="")
# A 95% confidence interval for that median, from order statistics (no
# assumption on how rounds vary): the k-th smallest and k-th largest ratio,
# k the largest with P(Binomial(n, 1/2) < k) <= 2.5%.
n, k, below = len(ratios), 0, 0.0
while below + math.comb(n, k) / 2**n <= 0.025:
    below += math.comb(n, k) / 2**n
    k += 1
if k > 0:
    print(f" (95% confidence interval {ratios[k - 1]:.3f}-{ratios[n - k]:.3f})")
else:
    print(" (too few rounds for a 95% confidence interval)")
PY
