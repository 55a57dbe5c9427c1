#!/usr/bin/env bash
# Installs tend for the action.
#   install.sh key      decide how (outputs: needed=path|download|build, root, key)
#   install.sh install  install it and put it on PATH
# A tend already on PATH is used as it is. With TEND_VERSION, that release's
# archive for this platform is downloaded and its sha256 verified before it
# is unpacked. Otherwise the action's own checkout is built with
# `cargo install --locked`, into a root the action caches between runs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo_root="$(cd "$here/.." && pwd)"
out="${GITHUB_OUTPUT:-/dev/null}"

case "$(uname -m)" in
  x86_64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) arch="$(uname -m)" ;;
esac
case "$(uname -s)" in
  Linux) target="$arch-unknown-linux-gnu" ;;
  Darwin) target="$arch-apple-darwin" ;;
  *) echo "::error title=tend::unsupported runner platform $(uname -s)"; exit 1 ;;
esac
root="${RUNNER_TEMP:-/tmp}/tend-install"

case "${1:-}" in
  key)
    if command -v tend >/dev/null 2>&1; then
      echo "needed=path" >>"$out"
    elif [ -n "${TEND_VERSION:-}" ]; then
      echo "needed=download" >>"$out"
    else
      lock="$(sha256sum "$repo_root/Cargo.lock" | cut -c1-16)"
      src="$(cd "$repo_root" && find src Cargo.toml -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
      echo "needed=build" >>"$out"
      echo "key=tend-build-$target-$lock-$src" >>"$out"
    fi
    echo "root=$root" >>"$out"
    ;;
  install)
    if command -v tend >/dev/null 2>&1; then
      echo "tend: using $(command -v tend) ($(tend --version))"
      exit 0
    fi
    mkdir -p "$root/bin"
    if [ -n "${TEND_VERSION:-}" ]; then
      version="${TEND_VERSION#v}"
      source_repo="${GITHUB_ACTION_REPOSITORY:-tend-dev/tend}"
      server="${GITHUB_SERVER_URL:-https://github.com}"
      name="tend-$version-$target.tar.gz"
      url="$server/$source_repo/releases/download/v$version/$name"
      tmp="$(mktemp -d)"
      curl -fsSL --retry 3 -o "$tmp/$name" "$url"
      curl -fsSL --retry 3 -o "$tmp/$name.sha256" "$url.sha256"
      want="$(cut -d' ' -f1 <"$tmp/$name.sha256")"
      got="$(sha256sum "$tmp/$name" | cut -d' ' -f1)"
      if [ "$want" != "$got" ]; then
        echo "::error title=tend::$name has sha256 $got, but the release says $want; not running it"
        exit 1
      fi
      tar -xzf "$tmp/$name" -C "$root/bin" tend
    elif [ ! -x "$root/bin/tend" ]; then
      cargo install --locked --path "$repo_root" --root "$root" --bin tend
    fi
    echo "$root/bin" >>"${GITHUB_PATH:-/dev/null}"
    "$root/bin/tend" --version
    ;;
  *) echo "usage: install.sh key|install" >&2; exit 2 ;;
esac
