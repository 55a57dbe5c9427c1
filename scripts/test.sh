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
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
# Prometheus serves the health-signal tests (started per test on 127.0.0.1).
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${need_apt[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

exec cargo test -j"${TEND_TEST_JOBS:-2}" --locked "$@"
