#!/usr/bin/env bash
# Runs tend for the action and turns its result into the step's outputs.
# tend itself writes the step summary, the annotations and its outputs
# (changes, review, escalated, failed, plan-json, sarif-file); this script adds
# exit-code and decides, by `fail-on`, whether the job fails. It never
# fails itself, so the state is saved whatever tend did.
set -uo pipefail
out="${GITHUB_OUTPUT:-/dev/null}"
command="${TEND_COMMAND:-plan}"
case "$command" in
  plan | apply | validate) ;;
  *) echo "::error title=tend::input command must be plan, apply or validate, not '$command'"
     echo "exit-code=1" >>"$out"; echo "fail=true" >>"$out"; echo "reason=invalid input command" >>"$out"; exit 0 ;;
esac
args=("$command")
[ "$command" = plan ] && args+=(--detailed-exitcode)
if [ -n "${TEND_MODE:-}" ]; then
  if [ "$command" = apply ]; then args+=(--mode "$TEND_MODE"); else echo "::warning title=tend::input mode applies to apply only"; fi
fi
# Extra arguments are split like a shell would, without running anything.
if [ -n "${TEND_ARGS:-}" ]; then
  read -r -a extra <<<"$TEND_ARGS"
  args+=("${extra[@]}")
fi
args+=("${TEND_PATH:-.}")
export TEND_GITHUB_TOKEN="${TEND_GITHUB_TOKEN:-${GITHUB_TOKEN:-}}"
tend --github "${args[@]}"
code=$?
echo "exit-code=$code" >>"$out"
changes=0; escalated=0; failed=""
if [ -f "${GITHUB_OUTPUT:-/dev/null}" ]; then
  changes="$(grep -E '^changes=' "$GITHUB_OUTPUT" | tail -1 | cut -d= -f2)"
  escalated="$(grep -E '^escalated=' "$GITHUB_OUTPUT" | tail -1 | cut -d= -f2)"
  failed="$(grep -E '^failed=' "$GITHUB_OUTPUT" | tail -1 | cut -d= -f2)"
fi
changes="${changes:-0}"; escalated="${escalated:-0}"
fail=false; reason=""
case "${TEND_FAIL_ON:-error}" in
  error)
    # Exit 1 is an error or an escalation: only a pass that reported no
    # failed action and an escalation is not an error (a pass that never
    # reported, or a failure beside an escalation, is).
    if [ "$code" = 1 ] && { [ "$escalated" = 0 ] || [ "$failed" != 0 ]; }; then
      fail=true; reason="tend failed (exit 1)"
    fi ;;
  escalation)
    if [ "$code" = 1 ]; then fail=true; reason="tend failed or an incident is escalated"; fi ;;
  drift)
    if [ "$code" = 1 ] || [ "$changes" != 0 ]; then fail=true; reason="changes are pending ($changes) or tend failed"; fi ;;
  *) fail=true; reason="input fail-on must be error, escalation or drift" ;;
esac
echo "fail=$fail" >>"$out"
echo "reason=$reason" >>"$out"
exit 0
