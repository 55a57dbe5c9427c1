#!/usr/bin/env bash
# Installs tend for the action.
#   install.sh key      decide how (outputs: needed=path|download|build, root, key)
#   install.sh install  install it and put it on PATH
# A tend already on PATH is used as it is. With TEND_VERSION, that release's
# archive for this platform is downloaded and verified before it is
# unpacked: its sha256 against the release's SHA256SUMS, and, where `gh`
# and a token are at hand, its build provenance attestation (that the
# archive was built by the release workflow of the action's repository);
# the log says which checks were made. Otherwise the action's own checkout
# is built with `cargo install --locked`, into a root the action caches
# between runs.
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
root="${TEND_INSTALL_ROOT:-${RUNNER_TEMP:-/tmp}/tend-install}"

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
      base="$server/$source_repo/releases/download/v$version"
      tmp="$(mktemp -d)"
      curl -fsSL --retry 3 -o "$tmp/$name" "$base/$name"
      curl -fsSL --retry 3 -o "$tmp/SHA256SUMS" "$base/SHA256SUMS"
      want="$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1 }' "$tmp/SHA256SUMS")"
      got="$(sha256sum "$tmp/$name" | cut -d' ' -f1)"
      if [ -z "$want" ]; then
        echo "::error title=tend::the SHA256SUMS of v$version lists no $name; not running it"
        exit 1
      fi
      if [ "$want" != "$got" ]; then
        echo "::error title=tend::$name has sha256 $got, but the release's SHA256SUMS says $want; not running it"
        exit 1
      fi
      checks="its sha256 matches the release's SHA256SUMS"
      token="${GH_TOKEN:-${GITHUB_TOKEN:-}}"
      if command -v gh >/dev/null 2>&1 && [ -n "$token" ]; then
        if ! GH_TOKEN="$token" gh attestation verify "$tmp/$name" --repo "$source_repo" >/dev/null; then
          echo "::error title=tend::$name has no build provenance attestation from $source_repo that verifies; not running it"
          exit 1
        fi
        checks="$checks, and its build provenance attestation verifies (built by $source_repo)"
      else
        checks="$checks (its build provenance was not checked: gh or a token is missing)"
      fi
      echo "tend: verified $name: $checks"
      tar -xzf "$tmp/$name" -C "$tmp"
      install -m 0755 "$tmp/tend-$version-$target/tend" "$root/bin/tend"
    elif [ ! -x "$root/bin/tend" ]; then
      cargo install --locked --path "$repo_root" --root "$root" --bin tend
    fi
    echo "$root/bin" >>"${GITHUB_PATH:-/dev/null}"
    "$root/bin/tend" --version
    ;;
  *) echo "usage: install.sh key|install" >&2; exit 2 ;;
esac
