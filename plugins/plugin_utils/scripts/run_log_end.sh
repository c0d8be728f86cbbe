#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The end of a run's log (action run_log): appends the outcome line (entry, on stdin) to the run
# log at path when the log exists (a run that wrote nothing leaves no file), then prints
# {exists, lines, listing: "<mtime> <name>" per file of the log's directory, log: the log's text}.

path=$1 entry=$(cat)
dir=$(dirname "$path")
exists=0
if [ -f "$path" ]; then
  printf "%s\n" "$entry" >> "$path" || fail "cannot append to $path"
  sync
  exists=1
fi
listing=""
if [ -d "$dir" ]; then
  listing=$(cd "$dir" && for f in osfleet-hup.*.log; do [ -f "$f" ] && [ ! -L "$f" ] && printf '%s %s\n' "$(stat -c %Y "$f")" "$f"; done)
fi
if [ "$exists" = 1 ]; then
  head -c 4194304 "$path" | jq -Rs --arg listing "$listing" '{exists: true, listing: $listing, log: .}'
else
  jq -n --arg listing "$listing" '{exists: false, listing: $listing, log: ""}'
fi
