#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Starts the watchdog of the run run (osfleet_watchdog_start in _lib.sh: bound, interval, log; texts
# on stdin, a JSON object {watchdog, apply}). Prints "started" or "running" (the same run's, not fired).
# The lock step starts it within scripts/lock_step.sh.

run=$1 bound=$2 interval=$3 log=$4 texts=$(cat)
osfleet_watchdog_start "$run" "$bound" "$interval" "$log" "$texts"
