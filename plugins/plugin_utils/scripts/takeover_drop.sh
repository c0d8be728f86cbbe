#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Remove the advanced update's staging (scripts/takeover_stage.sh) in dir and unmount its RAM
# filesystem.

dir=$1
osfleet_writer_lock
if [ -d "$dir" ]; then rm -rf "${dir:?}/image.img.gz" "$dir/image.img.gz.part" "$dir/keep" "$dir/keep.new" "$dir/staged.json" "$dir/staged.json.tmp" "$dir/curl.err"; fi
fstype=$(awk -v d="$dir" '$2 == d {t = $3} END {print t}' /proc/mounts)
if [ -n "$fstype" ]; then umount "$dir" || fail "cannot unmount $dir"; fi
if [ -d "$dir" ]; then rmdir "$dir" 2>/dev/null || true; fi
echo '{}'
