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
wd=none
case $watchdog in
  start) wd=$(osfleet_watchdog_start "$run" "$bound" "$interval" "$log" "$(printf '%s' "$input" | jq -c '.texts')") || exit 1 ;;
  stop) wd=$(osfleet_watchdog_stop "$run") || exit 1 ;;
  none) ;;
  *) fail "unknown watchdog operation $watchdog" ;;
esac
kept=""
if [ -n "$record" ]; then
  kept=$(osfleet_keepback_record "$record" "$(printf '%s' "$input" | jq -c '.patterns')") || exit 1
fi
jq -n --arg lock "$(osfleet_read /mnt/state/osfleet/hup.lock)" --arg watchdog "$wd" --arg keepback "$kept" \
  '{lock: $lock, watchdog: $watchdog, keepback: $keepback}'
