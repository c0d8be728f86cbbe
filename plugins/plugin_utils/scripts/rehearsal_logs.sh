#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The run logs of a rehearsal (module osfleet.hup.rehearsal): each regular file
# dir/osfleet-hup.<prefix>*.log, after a line "==> <name> <==", at most 256 KiB of each.

dir=$1 prefix=$2
[ -d "$dir" ] || exit 0
for f in "$dir"/osfleet-hup."$prefix"*.log; do
  if [ ! -f "$f" ] || [ -L "$f" ]; then continue; fi
  printf '==> %s <==\n' "$(basename "$f")"
  tail -c 262144 "$f"
done
exit 0
