#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# A rehearsal drill's user data (module osfleet.hup.rehearsal): mode write puts 256 KiB of random
# bytes at path (a temporary file, renamed, synced) and prints their sha256; mode check prints the
# sha256 of what is at path now, or "missing".

mode=$1 path=$2
case $mode in
  write)
    mkdir -p "$(dirname "$path")" || exit 1
    dd if=/dev/urandom of="$path.tmp" bs=1024 count=256 2>/dev/null || exit 1
    sync
    mv "$path.tmp" "$path" || exit 1
    sync
    sha256sum "$path" | cut -d ' ' -f 1
    ;;
  check)
    if [ -f "$path" ]; then sha256sum "$path" | cut -d ' ' -f 1; else echo missing; fi
    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
