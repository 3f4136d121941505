#!/usr/bin/env bash
# Instructions per call of the hot paths, counted under callgrind (valgrind)
# rather than timed: `verify`, in-memory `authenticate`, `authenticate` of
# keys with a rate limit (charged each time), and `authenticate` with usage
# recording on (uses noted, outcomes counted): `recorded` on keys already
# noted since the last flush (`limited_recorded`: with a rate limit too),
# `first` on keys not yet noted. Each is run for 1,000 and
# 11,000 calls; the difference over 10,000 is the cost of one call, setup
# left out.
#
# valgrind's CPU has no SHA extensions: SHA-256 runs sha2's portable code
# (~3,500 instructions a token, ~200 with SHA-NI), which is in every figure.
#
#   bash benches/instructions.sh   (needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
# cargo's output directory (CARGO_TARGET_DIR, a config), not always ./target.
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
cargo build --release -q -p keyroll-bench --example instructions
bin="$target"/release/examples/instructions
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
        awk '/Collected/ {print $4}'
}
for what in verify auth limited recorded limited_recorded first; do
    short=$(count "$what" 1000)
    long=$(count "$what" 11000)
    echo "$what: $(((long - short) / 10000)) instructions per call"
done
