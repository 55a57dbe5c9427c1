#!/usr/bin/env bash
# Runs the side-by-side benchmark of tend and Cloud Custodian on one moto
# inventory (benches/aws.rs), installing moto[server] and c7n into a virtual
# environment when they are missing, then reports each tool's end-to-end
# time as a multiple of the floor: the same listings made by boto3 in one
# process, which is what the server itself needs to answer them. Everything
# runs on 127.0.0.1. TEND_BENCH_AWS_N sets how many instances and security
# groups are seeded (default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TEND_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tend-bench-venv}"
if ! command -v moto_server >/dev/null 2>&1 || ! command -v custodian >/dev/null 2>&1 \
  || ! python3 -c 'import boto3' >/dev/null 2>&1; then
  if [ ! -x "$venv/bin/custodian" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'moto[server]' c7n
  fi
  export PATH="$venv/bin:$PATH"
fi
cargo bench -j"${TEND_BENCH_JOBS:-2}" --bench aws "$@"

n="${TEND_BENCH_AWS_N:-1000}"
dir="${CARGO_TARGET_DIR:-target}/criterion/aws-$n"
[ -f "$dir/floor/new/estimates.json" ] || exit 0
python3 - "$dir" "$n" <<'PY'
import json, sys
d, n = sys.argv[1], sys.argv[2]
def median(name):
    with open(f"{d}/{name}/new/estimates.json") as f:
        m = json.load(f)["median"]
    return m["point_estimate"] / 1e9, m["confidence_interval"]["lower_bound"] / 1e9, m["confidence_interval"]["upper_bound"] / 1e9
floor, tend, c7n = median("floor"), median("tend"), median("custodian")
print(f"\naws, {n} instances and {n} security groups (median, 95% interval):")
for label, (m, lo, hi) in [("tend plan", tend), ("custodian run", c7n), ("floor (boto3 listings)", floor)]:
    print(f"  {label:24} {m:6.2f} s ({lo:.2f}-{hi:.2f} s)  {m / floor[0]:.2f}x the floor")
print(f"  tend / custodian         {tend[0] / c7n[0]:.2f}")
PY
