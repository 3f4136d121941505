#!/usr/bin/env python3
"""Prints the medians of the last `cargo bench -p keyroll-bench` run and the ratios BENCHMARKS.md reports.

Reads criterion's own target/criterion/<group>/<id>/new/estimates.json.
Usage: python3 benches/ratios.py [target-dir]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target") / "criterion"


def median(bench):
    path = root / bench / "new" / "estimates.json"
    return json.loads(path.read_text())["median"]["point_estimate"]


ids = [
    "verify/floor", "verify/floor_wordwise", "verify/current", "verify/old", "verify/mismatch",
    "verify/malformed", "peer/pak_parse_check", "peer/pak_generate", "renew/keyroll",
    "renew/issue", "store/floor_1m", "store/authenticate_1m", "store/authenticate_token_1m",
    "store/authenticate_1m_counted", "store/authenticate_1m_rate_limited",
    "store/authenticate_1m_rate_limited_counted", "store/authenticate_1m_owner_limited",
    "cache/memory_authenticate", "cache/pg_cached_authenticate", "cache/pg_authenticate",
]
m = {}
print("| bench | median |\n|---|---|")
for bench in ids:
    try:
        m[bench] = median(bench)
        print(f"| `{bench}` | {m[bench]:.1f} ns |")
    except FileNotFoundError:
        print(f"| `{bench}` | not run |")

ratios = [
    ("verify/current", "verify/floor", "<= 1.3"),
    ("verify/mismatch", "verify/current", "0.9 to 1.1"),
    ("verify/current", "peer/pak_parse_check", "<= 0.6"),
    ("renew/keyroll", "peer/pak_generate", "<= 0.3"),
    ("store/authenticate_1m", "store/floor_1m", "<= 1.5"),
    ("store/authenticate_token_1m", "store/floor_1m", "<= 1.5"),
    ("store/authenticate_1m_rate_limited_counted", "store/authenticate_1m", "<= 1.5"),
    ("store/authenticate_1m_owner_limited", "store/authenticate_1m_rate_limited", "<= 1.3"),
    ("store/authenticate_1m_counted", "store/authenticate_1m", "(for the record)"),
    ("store/authenticate_1m_rate_limited", "store/authenticate_1m", "(for the record)"),
    ("cache/pg_cached_authenticate", "cache/memory_authenticate", "<= 2.0"),
    ("cache/pg_authenticate", "cache/memory_authenticate", "(for the record)"),
    ("verify/current", "verify/floor_wordwise", "(not a target)"),
]
print("\n| ratio | measured | target |\n|---|---|---|")
for a, b, target in ratios:
    if a in m and b in m:
        print(f"| `{a}` / `{b}` | {m[a] / m[b]:.2f} | {target} |")
