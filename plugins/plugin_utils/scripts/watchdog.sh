#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The device-side watchdog of one update run (plugin_utils/watchdog.py), a detached process that
# the lock step starts (osfleet_watchdog_start, scripts/lock_step.sh). It holds the reference updater's lock
# /var/lock/resinhup.lock for the run, and refreshes the run's update lock (boot_id, uptime) while
# it hears from the controller: every device script of the run writes the device's uptime to
# <dir>/heartbeat and holds a shared flock on <dir>/busy while it runs (the preamble of _lib.sh).
# When it heard nothing for more than bound seconds (and no script of the run runs), the
# controller is gone (killed, Ctrl-C, link lost): it fires, holding busy exclusively so that no
# script of the run starts meanwhile:
#   1. puts the env back if the run armed it (<dir>/disarm.ops, the file operations of
#      bootenv state=rolled_back, applied with <dir>/apply.sh; on a balenaOS device, where the new
#      OS's hooks armed it, <dir>/disarm.hooks: the running OS's hooks, DURING_UPDATE=0
#      hostapp-update-hooks), so the device does not switch at a later power cycle with nobody watching;
#   2. starts balena-supervisor again;
#   3. records in the lock that its run was interrupted (reason, boot_id, uptime, at);
#   4. appends a line to the run log (log), writes <dir>/fired (the reason) and exits.
# It ends without doing anything when <dir>/run or the lock no longer name its run (released, or
# taken over). Every interval seconds it looks; times are the device's uptime, never its wall clock.

run=$1 bound=$2 interval=$3 log=$4
d=/run/osfleet/watchdog; lock=/mnt/state/osfleet/hup.lock
exec 9>>/var/lock/resinhup.lock || { echo "cannot open /var/lock/resinhup.lock" > "$d/error"; exit 1; }
flock -n 9 || { echo "/var/lock/resinhup.lock is held (another updater runs)" > "$d/error"; exit 1; }
exec 7>>"$d/busy" || { echo "cannot open $d/busy" > "$d/error"; exit 1; }
printf '%s\n' "$$" > "$d/pid.tmp" && mv "$d/pid.tmp" "$d/pid"
up() { cut -d. -f1 /proc/uptime; }
# set (or refresh) fields of the update lock, only while it is this run's: $1 is a jq filter
edit_lock() {
  exec 6>>"$lock.guard" || return 1
  flock -x 6 || return 1
  if [ "$(jq -r '.run_id' "$lock" 2>/dev/null)" = "$run" ]; then
    jq --arg boot "$(cat /proc/sys/kernel/random/boot_id)" --argjson up "$(cut -d' ' -f1 /proc/uptime)" \
      --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg reason "${reason:-}" "$1" "$lock" > "$lock.tmp" \
      && sync && mv "$lock.tmp" "$lock" && sync
  fi
  flock -u 6
  exec 6>&-
}
last=$(up); refreshed=$last
# it ends when the run is over: <dir>/run names another run or none (released, or taken over), or
# the lock is no longer this run's
while [ "$(cat "$d/run" 2>/dev/null)" = "$run" ] && [ "$(jq -r '.run_id' "$lock" 2>/dev/null)" = "$run" ]; do
  now=$(up)
  if flock -n -x 7; then
    hb=$(cut -d. -f1 "$d/heartbeat" 2>/dev/null)
    case $hb in '' | *[!0-9]*) hb=0 ;; esac
    [ "$hb" -gt "$last" ] && last=$hb
    if [ $((now - last)) -gt "$bound" ]; then
      reason="no word from the controller for $((now - last)) s (watchdog bound $bound s)"
      printf '%s\n' "$reason" > "$d/fired"  # from now on the run's scripts refuse to run
      done_what=""
      if [ -f "$d/disarm.hooks" ]; then
        if DURING_UPDATE=0 hostapp-update-hooks > "$d/disarm.log" 2>&1 7>&- 9>&-; then
          done_what="put the env and boot files back for the running OS with its hooks; "; rm -f "$d/disarm.hooks"
        else
          done_what="could not put the env back with the running OS's hooks ($(tail -n 1 "$d/disarm.log")); "
        fi
        sync
      elif [ -f "$d/disarm.ops" ]; then
        if sh "$d/apply.sh" < "$d/disarm.ops" > "$d/disarm.log" 2>&1 7>&- 9>&-; then
          done_what="put the env and boot files back for the running OS; "; rm -f "$d/disarm.ops"
        else
          done_what="could not put the env back ($(tail -n 1 "$d/disarm.log")); "
        fi
      fi
      # (no child keeps the locks: a started service must not hold resinhup.lock for ever)
      if systemctl is-active balena-supervisor >/dev/null 2>&1 7>&- 9>&- || systemctl start balena-supervisor >/dev/null 2>&1 7>&- 9>&-; then
        done_what="${done_what}the supervisor runs; "
      else
        done_what="${done_what}could not start the supervisor; "
      fi
      # shellcheck disable=SC2016 # jq variables
      edit_lock '.interrupted = {reason: $reason, boot_id: $boot, uptime: $up, at: $at}'
      reason="$reason: ${done_what}the lock records the run as interrupted"
      printf '%s\n' "$reason" > "$d/fired"
      if [ -n "$log" ]; then
        mkdir -p "$(dirname "$log")" && jq -nc --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg msg "$reason" \
          '{time: $at, step: "watchdog", changed: true, failed: true, actions: [], msg: $msg}' >> "$log"
      fi
      rm -f "$d/pid"
      exit 0
    fi
    flock -u 7
  else
    last=$now  # a script of the run is running: the controller waits for it
  fi
  if [ $((now - refreshed)) -ge $((bound / 2)) ]; then
    # shellcheck disable=SC2016 # jq variables
    edit_lock '.boot_id = $boot | .uptime = $up'
    refreshed=$now
  fi
  sleep "$interval" 7>&- 9>&-
done
rm -f "$d/pid"
