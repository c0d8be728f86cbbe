#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The saved images of the hostapp writer's push transport on the device (plugin_utils/writer.py
# HostappWriter): in dir (under /mnt/data, a directory of its own), the finished image name
# (<image id hex>.tar, with name.json: where it came from) and the partial copy part
# (<image id hex>.<archive sha256 hex>.part) of a send that did not finish, each with its size; the
# free space of the filesystem that holds dir; the other files there.

dir=$1 name=$2 part=$3
size_of() { if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo null; fi; }
if [ -d "$dir" ]; then
  probe_dir=$dir
  others=$(find "$dir" -mindepth 1 -maxdepth 1 ! -name "$name" ! -name "$name.json" ! -name "$part" -exec basename {} \; | head -n 20)
else
  probe_dir=$(dirname "$dir"); while [ ! -d "$probe_dir" ]; do probe_dir=$(dirname "$probe_dir"); done
  others=""
fi
free_kib=$(df -Pk "$probe_dir" | awk 'NR == 2 {print $4}')
mounted=0; if osfleet_mount_point "$dir"; then mounted=1; fi
jq -n --argjson exists "$([ -d "$dir" ] && echo true || echo false)" --argjson mount_point "$([ "$mounted" = 1 ] && echo true || echo false)" \
  --argjson size "$(size_of "$dir/$name")" --argjson part_size "$(size_of "$dir/$part")" \
  --arg meta "$(osfleet_read "$dir/$name.json")" --argjson free_kib "${free_kib:-0}" --arg others "$others" \
  '{exists: $exists, mount_point: $mount_point, size: $size, part_size: $part_size,
    meta: ($meta | fromjson? // null), free_kib: $free_kib, others: ($others | split("\n") | map(select(. != "")))}'
