#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Starts the watchdog of the run run (scripts/watchdog.sh, plugin_utils/watchdog.py) as a detached
# process: bound, interval and log are its parameters; texts (stdin) is a JSON object with the
# script texts it needs ({watchdog, apply}). A watchdog of the same run that has not fired keeps
# running (prints "running"); one of another run is stopped first (its run lost the lock).
# Prints "started".

run=$1 bound=$2 interval=$3 log=$4 texts=$(cat)
d=/run/osfleet/watchdog
mkdir -p "$d" || fail "cannot create $d"
old=$(osfleet_read "$d/pid")
if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
  if [ "$(osfleet_read "$d/run")" = "$run" ] && [ ! -e "$d/fired" ]; then echo running; exit 0; fi
  rm -f "$d/run"
  kill "$old" 2>/dev/null
  i=0
  while kill -0 "$old" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -0 "$old" 2>/dev/null && fail "the watchdog of the previous run (pid $old) does not stop"
fi
rm -f "$d/fired" "$d/error" "$d/disarm.ops" "$d/disarm.hooks" "$d/pid"
printf '%s' "$texts" | jq -r '.watchdog' > "$d/watchdog.sh" || fail "cannot write $d/watchdog.sh"
printf '%s' "$texts" | jq -r '.apply' > "$d/apply.sh" || fail "cannot write $d/apply.sh"
printf '%s\n' "$run" > "$d/run"
cut -d' ' -f1 /proc/uptime > "$d/heartbeat"
setsid sh "$d/watchdog.sh" "$run" "$bound" "$interval" "$log" </dev/null >/dev/null 2>&1 6>&- 7>&- 8>&- 9>&- &
i=0
while [ ! -f "$d/pid" ] && [ ! -f "$d/error" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -f "$d/pid" ] || fail "the device-side watchdog did not start: $(osfleet_read "$d/error")"
echo started
