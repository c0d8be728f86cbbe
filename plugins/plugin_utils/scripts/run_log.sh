#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Append one JSON line (entry, on stdin: the actions of a step that copied a thousand boot files
# are larger than one argument may be) to the run log at path on the device (plugin_utils/action.py).

path=$1 entry=$(cat)
# its directory made when missing (no dirname: this runs after every step)
case $path in
  */*) dir=${path%/*} ;;
  *) dir=. ;;
esac
[ -d "${dir:-/}" ] || mkdir -p "$dir" || exit 1
printf "%s\n" "$entry" >> "$path"
