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
# And where the device's SSH host keys live: the HostKey files its sshd reads (sshd -T; without
# it the HostKey lines of /etc/ssh/sshd_config), each resolved (readlink -f), the device number of the
# state partition and every mount (device, root inside its filesystem, mount point; from
# /proc/self/mountinfo): steps/takeover.host_key_home finds the state partition's path of a key,
# where the whole-disk write puts the device's next host key. And the programs the whole-disk write
# needs (scripts/takeover_flash.sh: telinit, partx, sfdisk, ssh-keygen, a busybox) that the device
# lacks (missing_tools), so that a device that cannot be written is refused before the download.

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
state=$(readlink -f /dev/disk/by-partlabel/resin-state 2>/dev/null) || state=""
state_dev=""
if [ -b "$state" ] && [ -r "/sys/class/block/${state##*/}/dev" ]; then state_dev=$(cat "/sys/class/block/${state##*/}/dev"); fi
sshd=$(command -v sshd 2>/dev/null) || sshd=""
if [ -z "$sshd" ] && [ -x /usr/sbin/sshd ]; then sshd=/usr/sbin/sshd; fi
host_keys=""
if [ -n "$sshd" ]; then host_keys=$("$sshd" -T 2>/dev/null | awk '$1 == "hostkey" {print $2}'); fi
if [ -z "$host_keys" ] && [ -r /etc/ssh/sshd_config ]; then
  host_keys=$(awk 'tolower($1) == "hostkey" {print $2}' /etc/ssh/sshd_config)
fi
# configured<TAB>resolved of each host key; device<TAB>root<TAB>mount point of each mount
keys=$(printf '%s\n' "$host_keys" | while read -r k; do
  if [ -n "$k" ]; then printf '%s\t%s\n' "$k" "$(readlink -f "$k" 2>/dev/null || printf '%s' "$k")"; fi
done)
mounts=$(awk '{print $3 "\t" $4 "\t" $5}' /proc/self/mountinfo 2>/dev/null)
missing=""
for prog in telinit partx sfdisk ssh-keygen; do
  command -v "$prog" >/dev/null 2>&1 || missing="$missing $prog"
done
bb=no
for cand in /bin/busybox /usr/bin/busybox /sbin/busybox /usr/sbin/busybox; do
  if [ -x "$cand" ]; then bb=yes; break; fi
done
[ "$bb" = yes ] || missing="$missing busybox"
conns() { if [ -d "$1" ]; then (cd "$1" && for f in *; do [ -f "$f" ] && printf '%s\t%s\n' "$f" "$(sha256sum < "$f" | cut -d' ' -f1)"; done); fi; }
jq -n --arg disk "/dev/$disk" --argjson disk_sectors "$disk_sectors" --argjson mem_kib "${mem_kib:-0}" \
  --arg fstype "$fstype" --argjson free_kib "${free_kib:-0}" --argjson part_bytes "$part_bytes" --argjson image_bytes "$image_bytes" \
  --arg image_sha256 "$image_sha256" \
  --arg record "$(osfleet_read "$dir/staged.json")" --argjson fsck_rc "$fsck_rc" --arg fsck "$(printf '%s' "$fsck_out" | tail -n 5)" \
  --arg keep "$keep" --arg boot_conns "$(conns /mnt/boot/system-connections)" \
  --arg etc_conns "$(conns /etc/NetworkManager/system-connections)" \
  --arg keys "$keys" --arg mounts "$mounts" --arg state_dev "$state_dev" --arg missing "${missing# }" \
  --arg table "$table" --arg flashed "$(osfleet_read /mnt/data/balenahup/takeover.json)" \
  'def table: split("\n") | map(select(. != "") | split("\t")) | map({key: .[0], value: .[1]}) | from_entries;
   {disk: $disk, disk_bytes: ($disk_sectors * 512), mem_available: ($mem_kib * 1024), staging_fstype: $fstype,
    staging_free: ($free_kib * 1024), staged_bytes: $part_bytes, image_bytes: $image_bytes, image_sha256: $image_sha256, record: ($record | fromjson? // null),
    fsck_rc: $fsck_rc, fsck: $fsck,
    keep: ($keep | split("\n") | map(select(. != "") | split("\t") | {key: .[0], value: {size: (.[1] | tonumber), sha256: .[2]}}) | from_entries),
    boot_connections: ($boot_conns | table), etc_connections: ($etc_conns | table),
    host_keys: ($keys | split("\n") | map(select(. != "") | split("\t") | {path: .[0], resolved: (.[1] // .[0])})),
    mounts: ($mounts | split("\n") | map(select(. != "") | split("\t") | {dev: .[0], root: .[1], point: .[2]})),
    state_dev: $state_dev, missing_tools: ($missing | split(" ") | map(select(. != ""))),
    table: ($table | fromjson? // null), flashed: ($flashed | fromjson? // null)}'
