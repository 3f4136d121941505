"""Holds the declared rust-version without an older toolchain: every
published crate of the workspace declares one, and no dependency in the
lock file needs a newer Rust than the lowest declared (resolver 3 picks
versions that fit; this says so, naming any that does not)."""
import json
import subprocess
import sys

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked"],
    check=True, capture_output=True, text=True).stdout)


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


members = [p for p in meta["packages"] if p["id"] in meta["workspace_members"]]
published = [p for p in members if p.get("publish") != []]
missing = [p["name"] for p in published if not p.get("rust_version")]
if missing:
    sys.exit(f"no rust-version declared by: {', '.join(missing)}")
floor = min(version(p["rust_version"]) for p in published)
newer = sorted(
    f"{p['name']} {p['version']} needs {p['rust_version']}"
    for p in meta["packages"]
    if p.get("rust_version") and version(p["rust_version"]) > floor
)
if newer:
    sys.exit("dependencies newer than rust-version " + ".".join(map(str, floor)) + ":\n  " + "\n  ".join(newer))
print(f"rust-version {'.'.join(map(str, floor))}: {len(published)} published crates, "
      f"{len(meta['packages'])} packages in the lock, none needing more")
