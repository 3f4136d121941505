#!/usr/bin/env bash
# What the HTTP example executes per request, counted rather than timed:
# http_service runs under callgrind (valgrind) while `wrk -t1 -c8` sends
# GET /v1/ping, then (a new service) GET /v1/whoami, the same bearer token to
# both, usage recording on; counting starts after a warm-up. Prints the
# service's user-space instructions per request for each route and the
# difference, which is what authenticating adds. The count is the same on a
# busy or an idle machine (wrk's rate only changes how many requests share
# the per-connection costs), so a change of a few hundred instructions shows
# where a timed ratio would drown it in noise.
#
# valgrind's CPU has no SHA extensions: SHA-256 runs sha2's portable code,
# ~3,400 instructions a token, where x86-64 with SHA-NI runs ~200. The
# figures are printed with and without that part.
#
#   bash benches/http_instructions.sh [SERVICE ARGS...]   (needs valgrind and wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
port=18088
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo build --release -q -p keyroll-demo --bin http_service
count() {
    local route=$1
    shift
    KEYROLL_ADMIN_TOKEN=bench valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out/$route" ./target/release/http_service \
        --listen "127.0.0.1:$port" "$@" >/dev/null 2>&1 &
    local service=$!
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.2
    done
    local token
    token=$(curl -s -X POST -H "Authorization: Bearer bench" -H "Content-Type: application/json" \
        -d '{"label": "wrk"}' "http://127.0.0.1:$port/admin/keys" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    wrk -t1 -c8 -d2s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/$route" >/dev/null
    callgrind_control -i on "$service" >/dev/null 2>&1
    wrk -t1 -c8 -d6s -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/$route" |
        awk '/requests in/ {print $1}' >"$out/$route.requests"
    callgrind_control -d "$service" >/dev/null 2>&1
    kill "$service"
    wait "$service" 2>/dev/null || true
    # The dump of the running service is the file numbered 1.
    callgrind_annotate --threshold=100 "$out/$route.1" >"$out/$route.txt"
}
count ping "$@"
count whoami "$@"
python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def figures(route):
    text = open(f"{out}/{route}.txt").read().replace(",", "")
    total = int(re.search(r"^\s*(\d+) .*PROGRAM TOTALS", text, re.M).group(1))
    soft = sum(int(n) for n in re.findall(r"^\s*(\d+) .*sha256::soft", text, re.M))
    requests = int(open(f"{out}/{route}.requests").read())
    return total / requests, soft / requests, requests
(p, ps, pn), (w, ws, wn) = figures("ping"), figures("whoami")
print(f"ping:   {p:7.0f} instructions/request over {pn} requests")
print(f"whoami: {w:7.0f} instructions/request over {wn} requests "
      f"({w - ws:.0f} without portable SHA-256)")
print(f"whoami - ping: {w - p:.0f} ({w - ws - p:.0f} without portable SHA-256)")
PY
