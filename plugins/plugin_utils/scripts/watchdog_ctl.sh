#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Tells the run's watchdog (scripts/watchdog.sh) about the run, when it is this run's (run):
# op=disarm stores ops (stdin: the file operations of bootenv state=rolled_back, JSON) to apply
# when it fires; op=disarm_hooks (a balenaOS device, whose env the new OS's hooks armed) has it run
# the running OS's hooks (DURING_UPDATE=0 hostapp-update-hooks) instead. (Releasing the lock stops
# it: scripts/lock_step.sh.) Prints what it did: "stored" or "none" (no watchdog of this run).

op=$1 run=$2 ops=$(cat)
d=/run/osfleet/watchdog
[ "$(osfleet_read "$d/run")" = "$run" ] || { echo none; exit 0; }
case $op in
  disarm)
    printf '%s\n' "$ops" > "$d/disarm.ops.tmp" || fail "cannot write $d/disarm.ops.tmp"
    mv "$d/disarm.ops.tmp" "$d/disarm.ops" || fail "cannot write $d/disarm.ops"
    echo stored ;;
  disarm_hooks)
    : > "$d/disarm.hooks" || fail "cannot write $d/disarm.hooks"
    echo stored ;;
  *) fail "unknown operation $op" ;;
esac
