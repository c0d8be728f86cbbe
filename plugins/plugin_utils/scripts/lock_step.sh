#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The lock step's act in one round trip (plugins/action/lock.py): the compare-and-swap of the lock
# file (op=write|refresh|remove with expect and doc, osfleet_lock_cas; op=none leaves it), then the
# run's watchdog (watchdog=start: of the run run with bound, interval and log, the script texts in
# input's "texts"; watchdog=stop: the watchdog of the run run; none), then on a balenaOS device the
# keep-back record (record: the file, input's "patterns"; "" = none). Prints, as one JSON object,
# the lock file as it is afterwards (lock: its text, "" when there is none; the step verifies it),
# what the watchdog did (watchdog: started, running, stopped or none) and how many files the
# keep-back record holds (keepback: "" when none was made). A failure stops at once: what was
# done before stays (the lock written, the watchdog not started), as with one script a part.

op=$1 expect=$2 doc=$3 watchdog=$4 run=$5 bound=$6 interval=$7 log=$8 record=$9 input=$(cat)
[ "$op" = none ] || osfleet_lock_cas "$op" "$expect" "$doc"
# What this call needs of the input, in one jq (a jq start costs ~25 ms of a device's CPU), as
# shell assignments quoted with @sh: ls_watchdog and ls_apply, the texts of texts.watchdog and
# texts.apply (as jq -r prints them, but its final newline); ls_patterns, the keep-back patterns one
# a line, as a command substitution of jq -r '.patterns[] | select(...)' gives them (ls_bad=1 when
# they cannot be listed).
ls_watchdog=""; ls_apply=""; ls_patterns=""; ls_bad=0
if [ "$watchdog" = start ] || [ -n "$record" ]; then
  # shellcheck disable=SC2016  # jq's variables
  vars=$(printf '%s' "$input" | jq -r --arg watchdog "$watchdog" --arg record "$record" '
    def text: if type == "string" then . else tojson end;
    (if $watchdog == "start" then "ls_watchdog=\(.texts.watchdog | text | @sh) ls_apply=\(.texts.apply | text | @sh)" else empty end),
    (if $record != "" then (try ([.patterns[] | select(type == "string" and (test("\n") | not))] | join("\n")
       | until(endswith("\n") | not; .[:-1]) | "ls_patterns=\(@sh)") catch "ls_bad=1") else empty end)') \
    || fail "the lock step's input is not JSON ({texts, patterns})"
  eval "$vars"
fi
wd=none
case $watchdog in
  start) wd=$(osfleet_watchdog_start "$run" "$bound" "$interval" "$log" "$ls_watchdog" "$ls_apply") || exit 1 ;;
  stop) wd=$(osfleet_watchdog_stop "$run") || exit 1 ;;
  none) ;;
  *) fail "unknown watchdog operation $watchdog" ;;
esac
kept=""
if [ -n "$record" ]; then
  [ "$ls_bad" = 0 ] || fail "patterns: a JSON list of paths"
  kept=$(osfleet_keepback_record "$record" "$ls_patterns") || exit 1
fi
jq -n --arg lock "$(osfleet_read /mnt/state/osfleet/hup.lock)" --arg watchdog "$wd" --arg keepback "$kept" \
  '{lock: $lock, watchdog: $watchdog, keepback: $keepback}'
