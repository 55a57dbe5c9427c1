#!/usr/bin/env bash
# Runs the side-by-side benchmark of tend and Cloud Custodian on one moto
# inventory (benches/aws.rs), installing moto[server] and c7n into a virtual
# environment when they are missing. Everything runs on 127.0.0.1.
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
exec cargo bench -j"${TEND_BENCH_JOBS:-2}" --bench aws "$@"
