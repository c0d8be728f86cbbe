#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# On a balenaOS (hostapp) device, before the new OS's hostapp-update hooks copy their boot files
# (plugin_utils/hooks.py): records the sha256 of the boot partition's keep-back files in record
# (sha256sum lines, paths ./x relative to /mnt/boot), written atomically. patterns (stdin) is a
# JSON list of boot-relative paths, "dir/" meaning the files below dir. Prints how many files it
# recorded.

record=$1 patterns=$(cat)
mkdir -p "$(dirname "$record")" || fail "cannot create the directory of $record"
list=$(printf '%s' "$patterns" | jq -r '.[] | select(type == "string" and (test("\n") | not))') || fail "patterns: a JSON list of paths"
out=$(cd /mnt/boot || exit 1
  printf '%s\n' "$list" | while IFS= read -r p; do
    case $p in
      '' | /* | *..*) ;;
      */) [ -d "./${p%/}" ] && find -L "./${p%/}" -type f -exec sha256sum {} + ;;
      *) [ -f "./$p" ] && sha256sum "./$p" ;;
    esac
  done | sort -k2 -u) || fail "cannot read /mnt/boot"
if ! { if [ -n "$out" ]; then printf '%s\n' "$out"; fi; } > "$record.tmp" || ! mv "$record.tmp" "$record"; then fail "cannot write $record"; fi
sync
if [ -n "$out" ]; then printf '%s\n' "$out" | grep -c .; else echo 0; fi
