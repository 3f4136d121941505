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
# Also printed: the code a request runs, in 64-byte lines (those executed
# in at least a third of the requests): what a route needs of the
# instruction caches, and what it brings into them when other work (the
# client, the kernel) has pushed it out.
#
#   bash benches/http_instructions.sh [SERVICE ARGS...]   (needs valgrind and wrk)
set -euo pipefail
# The bootstrap token: at least 32 bytes, or the service does not start.
bootstrap=bench-bootstrap-token-0123456789abcdef
cd "$(dirname "$0")/.."
# cargo's output directory (CARGO_TARGET_DIR, a config), not always ./target.
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
port=18088
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo build --release -q -p keyroll-demo --bin http_service
count() {
    local route=$1
    shift
    KEYROLL_ADMIN_TOKEN=$bootstrap valgrind --tool=callgrind --instr-atstart=no --dump-instr=yes \
        --callgrind-out-file="$out/$route" "$target"/release/http_service \
        --listen "127.0.0.1:$port" "$@" >/dev/null 2>&1 &
    local service=$!
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.2
    done
    local token
    token=$(curl -s -X POST -H "Authorization: Bearer $bootstrap" -H "Content-Type: application/json" \
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

def hot_lines(route, requests):
    """(object, 64-byte line) -> function, for the lines of code executed in
    at least a third of the requests (the dump's positions are addresses,
    absolute or relative to the previous one)."""
    names, counts, where = {}, {}, {}
    obj = fn = None
    address, call = 0, False
    for line in open(f"{out}/{route}.1"):
        m = re.match(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?", line)
        if m:
            kind, number, name = m.groups()
            if name:
                names[kind[-2:], number] = name.strip()
            if kind == "ob":
                obj = names["ob", number]
            elif kind == "fn":
                fn = names["fn", number]
        elif line.startswith("calls="):
            call = True  # the next line is the call's inclusive cost
        elif line[:1] in "0123456789+-*":
            position, *rest = line.split()
            if position.startswith("0x"):
                address = int(position, 16)
            elif position[0] in "+-":
                address += int(position)
            if call:
                call = False
            elif len(rest) >= 2:
                key = (obj, address >> 6)
                counts[key] = max(counts.get(key, 0), int(rest[1]))
                where[key] = fn
    return {k: where[k] for k, n in counts.items() if n >= requests / 3}

hot = {route: hot_lines(route, int(open(f"{out}/{route}.requests").read()))
       for route in ("ping", "whoami")}
own = {k: f for k, f in hot["whoami"].items() if k not in hot["ping"]}
soft = sum("sha256::soft" in f for f in own.values())
print(f"code run per request, 64-byte lines: ping {len(hot['ping'])}, "
      f"whoami {len(hot['whoami'])}; whoami's own {len(own)} "
      f"({len(own) - soft} without portable SHA-256)")
PY
