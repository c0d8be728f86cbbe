#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Append JSON lines to the run log at path on the device (plugin_utils/action.py): lines (an
# argument: lines earlier steps handed on, option run_log_defer, each "<id><TAB><JSON line>"), then
# entry (stdin: the actions of a step that copied a thousand boot files are larger than one
# argument may be), each when not empty. A handed-on line is appended once: its id goes to
# <path>.carried, and a line whose id is there already is left out (the same lines handed on again
# after the answer of the command that carried them was lost, or by a step that failed after
# writing them: Ansible keeps no fact of a failed result).

path=$1 lines=$2 entry=$(cat)
# its directory made when missing (no dirname: this runs with every step)
case $path in
  */*) dir=${path%/*} ;;
  *) dir=. ;;
esac
[ -d "${dir:-/}" ] || mkdir -p "$dir" || exit 1
if [ -n "$lines" ]; then
  tab=$(printf '\t')
  while IFS= read -r l; do
    id=${l%%"$tab"*} line=${l#*"$tab"}
    [ -n "$line" ] || continue
    grep -qxF -e "$id" "$path.carried" 2>/dev/null && continue
    printf "%s\n" "$line" >> "$path" || exit 1
    printf "%s\n" "$id" >> "$path.carried"
  done <<EOF
$lines
EOF
fi
[ -z "$entry" ] || printf "%s\n" "$entry" >> "$path"
