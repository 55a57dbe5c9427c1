#!/usr/bin/env bash
# Packs a built tend into its release archive:
#   tend-<version>-<target>.tar.gz   tend, README.md, LICENSE,
#                                    completions/ (bash, zsh, fish,
#                                    powershell), man/tend.1
#   tend-<version>-<target>.tar.gz.sha256
# The completions and the man page come from the binary itself, so they
# always match it.
#
#   scripts/package.sh BINARY TARGET VERSION OUTDIR
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: scripts/package.sh BINARY TARGET VERSION OUTDIR" >&2
  exit 2
fi
binary="$1"; target="$2"; version="${3#v}"; outdir="$4"
root="$(cd "$(dirname "$0")/.." && pwd)"
name="tend-$version-$target"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stage="$work/$name"
mkdir -p "$stage/completions" "$stage/man" "$outdir"
install -m 0755 "$binary" "$stage/tend"
cp "$root/README.md" "$root/LICENSE" "$stage/"
"$stage/tend" completions bash >"$stage/completions/tend.bash"
"$stage/tend" completions zsh >"$stage/completions/_tend"
"$stage/tend" completions fish >"$stage/completions/tend.fish"
"$stage/tend" completions powershell >"$stage/completions/_tend.ps1"
"$stage/tend" man >"$stage/man/tend.1"
# Reproducible: fixed owner, order and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='1970-01-01 00:00:00Z' \
  -C "$work" -czf "$outdir/$name.tar.gz" "$name"
(cd "$outdir" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "$outdir/$name.tar.gz"
