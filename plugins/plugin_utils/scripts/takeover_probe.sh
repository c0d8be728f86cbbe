#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# What the advanced update (takeover) checks on the device (plugin_utils/steps/takeover.py
# TakeoverFacts): the whole disk that holds resin-boot and its size, MemAvailable, the staging
# directory dir (mounted as a RAM filesystem or not yet, its free space, a partial download, a
# downloaded image and the record of a finished staging), e2fsck -n of the data partition (exit status 4 or more: not
# clean, as the reference's upgrade-takeover.sh has it), the files to keep from the boot partition
# with their sizes, the NetworkManager connections on the boot partition and in /etc (sha256), the
# disk's partition table (start, size, name; sfdisk) and the record of the whole-disk write that
# made the disk (/mnt/data/balenahup/takeover.json, scripts/takeover_flash.sh), if any. With verify=1
# also the sha256 of a staged image (image.img.gz) read again now (image_sha256; empty otherwise).

dir=$1 verify=$2
boot=$(readlink -f /dev/disk/by-partlabel/resin-boot 2>/dev/null) || boot=""
[ -b "$boot" ] || fail "no resin-boot partition (/dev/disk/by-partlabel/resin-boot)"
part=${boot##*/}
disk=$(readlink -f "/sys/class/block/$part/..") || disk=""
disk=${disk##*/}
if [ -z "$disk" ] || [ ! -r "/sys/class/block/$disk/size" ]; then fail "cannot find the disk that holds $boot"; fi
disk_sectors=$(cat "/sys/class/block/$disk/size")
mem_kib=$(awk '$1 == "MemAvailable:" {print $2}' /proc/meminfo)
fstype=$(awk -v d="$dir" '$2 == d {t = $3} END {print t}' /proc/mounts)
free_kib=0
if [ -n "$fstype" ]; then free_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}'); fi
part_bytes=0 image_bytes=0
if [ -f "$dir/image.img.gz.part" ]; then part_bytes=$(wc -c < "$dir/image.img.gz.part" | tr -d ' '); fi
image_sha256=""
if [ -f "$dir/image.img.gz" ]; then
  image_bytes=$(wc -c < "$dir/image.img.gz" | tr -d ' ')
  if [ "$verify" = 1 ]; then image_sha256=$(sha256sum "$dir/image.img.gz" | cut -d' ' -f1); fi
fi
data=$(readlink -f /dev/disk/by-partlabel/resin-data 2>/dev/null) || data=""
fsck_rc=-1 fsck_out=""
if command -v e2fsck >/dev/null 2>&1 && [ -b "$data" ]; then
  fsck_out=$(e2fsck -n "$data" 2>&1); fsck_rc=$?
fi
# path<TAB>size<TAB>sha256 of each file to keep, relative to the boot partition
keep=$(cd /mnt/boot 2>/dev/null && for f in config.json system-connections/* system-proxy/*; do
  if [ -f "$f" ]; then printf '%s\t%s\t%s\n' "$f" "$(wc -c < "$f" | tr -d ' ')" "$(sha256sum < "$f" | cut -d' ' -f1)"; fi
done)
# the disk's partition table (sfdisk, when the device has it) and the record a whole-disk write
# left on the (new) data partition (scripts/takeover_flash.sh)
table=""
if command -v sfdisk >/dev/null 2>&1; then
  table=$(sfdisk -J "/dev/$disk" 2>/dev/null | jq -c '[.partitiontable.partitions[] | {start, size, name}]' 2>/dev/null) || table=""
fi
conns() { if [ -d "$1" ]; then (cd "$1" && for f in *; do [ -f "$f" ] && printf '%s\t%s\n' "$f" "$(sha256sum < "$f" | cut -d' ' -f1)"; done); fi; }
jq -n --arg disk "/dev/$disk" --argjson disk_sectors "$disk_sectors" --argjson mem_kib "${mem_kib:-0}" \
  --arg fstype "$fstype" --argjson free_kib "${free_kib:-0}" --argjson part_bytes "$part_bytes" --argjson image_bytes "$image_bytes" \
  --arg image_sha256 "$image_sha256" \
  --arg record "$(osfleet_read "$dir/staged.json")" --argjson fsck_rc "$fsck_rc" --arg fsck "$(printf '%s' "$fsck_out" | tail -n 5)" \
  --arg keep "$keep" --arg boot_conns "$(conns /mnt/boot/system-connections)" \
  --arg etc_conns "$(conns /etc/NetworkManager/system-connections)" \
  --arg table "$table" --arg flashed "$(osfleet_read /mnt/data/balenahup/takeover.json)" \
  'def table: split("\n") | map(select(. != "") | split("\t")) | map({key: .[0], value: .[1]}) | from_entries;
   {disk: $disk, disk_bytes: ($disk_sectors * 512), mem_available: ($mem_kib * 1024), staging_fstype: $fstype,
    staging_free: ($free_kib * 1024), staged_bytes: $part_bytes, image_bytes: $image_bytes, image_sha256: $image_sha256, record: ($record | fromjson? // null),
    fsck_rc: $fsck_rc, fsck: $fsck,
    keep: ($keep | split("\n") | map(select(. != "") | split("\t") | {key: .[0], value: {size: (.[1] | tonumber), sha256: .[2]}}) | from_entries),
    boot_connections: ($boot_conns | table), etc_connections: ($etc_conns | table),
    table: ($table | fromjson? // null), flashed: ($flashed | fromjson? // null)}'
