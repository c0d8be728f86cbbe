#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Removes the old run logs named on stdin (one file name per line, chosen by
# plugin_utils/steps/run_log.py rotation) from the directory dir; only regular files named
# osfleet-hup.<run id>.log, never a link, never a path.

dir=$1 names=$(cat)
printf '%s\n' "$names" | while IFS= read -r n; do
  [ -n "$n" ] || continue
  case $n in */* | .* ) continue ;; osfleet-hup.*.log) ;; *) continue ;; esac
  [ -f "$dir/$n" ] && [ ! -L "$dir/$n" ] && rm -f "$dir/$n"
  # the ids of the lines steps handed on (scripts/run_log.sh)
  [ -f "$dir/$n.carried" ] && [ ! -L "$dir/$n.carried" ] && rm -f "$dir/$n.carried"
done
sync
