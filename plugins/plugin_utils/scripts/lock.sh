#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The lock step's act (steps/lock.py): op=write|refresh|remove the lock file
# /mnt/state/osfleet/hup.lock under flock on its guard file, with a compare-and-swap: the file must
# still show expect (owner|run_id|since as jq prints it, "" = no lock file). doc is the new lock
# (JSON; a null since becomes the device's time, a null interrupted is dropped). write and refresh
# stamp the lock with the device's boot id and uptime (its age is measured with them, never with
# the wall clock); refresh changes nothing else.

op=$1 expect=$2 doc=$3
d=/mnt/state/osfleet; f=$d/hup.lock
mkdir -p "$d" || fail "cannot create $d"
exec 9>>"$d/hup.lock.guard" || fail "cannot open $d/hup.lock.guard"
flock -x 9 || fail "cannot lock $d/hup.lock.guard"
tok=""
if [ -e "$f" ]; then tok=$(jq -r '"\(.owner)|\(.run_id)|\(.since)"' "$f" 2>/dev/null) || tok='?unreadable'; fi
[ "$tok" = "$expect" ] || fail "the lock changed while this step ran (now: ${tok:-no lock}; expected: ${expect:-no lock}); run it again"
if [ "$op" = remove ]; then
  rm -f "$f" || fail "cannot remove $f"
  sync
  exit 0
fi
boot=$(cat /proc/sys/kernel/random/boot_id) || fail "cannot read the boot id"
up=$(cut -d' ' -f1 /proc/uptime) || fail "cannot read /proc/uptime"
case $op in
  write) new=$doc ;;
  refresh) new=$(cat "$f") || fail "cannot read $f" ;;
  *) fail "unknown operation $op" ;;
esac
printf '%s' "$new" | jq --arg now "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg boot "$boot" --argjson up "$up" \
  '.since //= $now | .boot_id = $boot | .uptime = $up | if .interrupted == null then del(.interrupted) else . end' > "$f.tmp" \
  || fail "cannot write $f.tmp"
sync
mv "$f.tmp" "$f" || fail "cannot replace $f"
sync
