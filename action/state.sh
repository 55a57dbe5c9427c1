#!/usr/bin/env bash
# Guards tend's state between runs. `sign` records which workflow and path
# the state belongs to and, with TEND_STATE_SECRET, an HMAC-SHA256 over
# every file of it; `verify` checks both after a restore. A state restored
# from another workflow, or whose signature does not verify (it was not
# saved by a run that knew the secret), is set aside, and tend starts from
# an empty state: used approvals, fight history and last known good specs
# are never taken from a state nobody can vouch for.
set -uo pipefail
dir="${TEND_STATE_DIR:?}"
origin="${TEND_STATE_ORIGIN:-}"
secret="${TEND_STATE_SECRET:-}"

digest() {
  (cd "$dir" && find . -type f ! -name state.hmac -print0 | sort -z | xargs -0 -r sha256sum) |
    openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1
}

discard() {
  echo "::warning title=tend::$1; tend starts from an empty state"
  rm -rf "$dir"
  mkdir -p "$dir"
}

case "${1:-}" in
  sign)
    [ -d "$dir" ] || exit 0
    printf '%s\n' "$origin" >"$dir/origin"
    chmod 600 "$dir/origin"
    if [ -n "$secret" ]; then
      digest >"$dir/state.hmac"
      chmod 600 "$dir/state.hmac"
    fi
    ;;
  verify)
    [ -d "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ] || exit 0
    if [ -f "$dir/origin" ] && [ "$(cat "$dir/origin")" != "$origin" ]; then
      discard "the restored state belongs to '$(cat "$dir/origin")', not to '$origin'"
      exit 0
    fi
    if [ -n "$secret" ]; then
      if [ ! -f "$dir/state.hmac" ]; then
        discard "the restored state is not signed"
      elif [ "$(cat "$dir/state.hmac")" != "$(digest)" ]; then
        discard "the restored state's signature does not verify"
      fi
    fi
    ;;
  *) echo "usage: state.sh sign|verify" >&2; exit 2 ;;
esac
exit 0
