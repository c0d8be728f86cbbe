#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# `make bench` step_overhead (tests/tools/bench.py): the baseline updater of a plain A/B lab device,
# the shape of the reference updater in one SSH session: fetch (skopeo, the image the collection
# fetches), write the spare root (format, copy of the running root for a delta, the image's layers
# applied with the collection's own osfleet_apply_image), the boot files (the new root's
# /resin-boot), arm the bootloader, reboot. bench.py puts the preamble and the functions of
# plugins/plugin_utils/scripts/_lib.sh this names in front of it, waits for the new boot and
# commits with update_commit.sh. No checks beyond the tools' own exit status: a baseline, not an
# updater. Prints "boot_id <id>" first and "phase <name> <uptime>" lines.
#
# Usage: sh -s -- REF DIGEST TAG MODE    (MODE: delta or full)

ref=$1 digest=$2 tag=$3 mode=$4
cache=/mnt/data/osfleet-bench-reference mnt=/mnt/sysroot/inactive act=/mnt/sysroot/active
printf 'boot_id %s\n' "$(cat /proc/sys/kernel/random/boot_id)"
phase() { printf 'phase %s %s\n' "$1" "$(cut -d' ' -f1 /proc/uptime)"; }
phase start
{ rm -rf "$cache" && mkdir -p "$cache"; } || fail "cannot make $cache"
skopeo --insecure-policy copy --quiet --preserve-digests --src-tls-verify=false "docker://$ref" "oci:$cache/image:$tag" </dev/null \
  || fail "skopeo copy of $ref failed"
phase fetched
actdev=$(awk '$2 == "/mnt/sysroot/active" {print $1}' /proc/mounts)
if [ "$(readlink -f "$actdev")" = "$(readlink -f /dev/disk/by-partlabel/resin-rootA)" ]; then
  label=resin-rootB index=3
else
  label=resin-rootA index=2
fi
dev=$(readlink -f "/dev/disk/by-partlabel/$label")
if awk -v m="$mnt" '$2 == m {found = 1} END {exit !found}' /proc/mounts; then umount "$mnt" || fail "cannot unmount $mnt"; fi
mkfs.ext4 -F -q -L "$label" "$dev" >/dev/null || fail "mkfs.ext4 of $dev failed"
mount -t ext4 -o rw "$dev" "$mnt" || fail "cannot mount $dev"
if [ "$mode" = delta ]; then
  (cd "$act" && tar -cf - --numeric-owner .) | tar -C "$mnt" -xf - --numeric-owner || fail "cannot copy the running root"
fi
osfleet_apply_image "$cache/image" "$digest" "$mnt" >/dev/null || fail "cannot apply $digest"
sync
phase written
{ cp -a "$mnt/resin-boot/." /mnt/boot/ && sync; } || fail "cannot copy the boot files"
phase bootfiles
{ printf 'resin_root_part=%s\nupgrade_available=1\n' "$index" > /mnt/boot/resinOS_uEnv.txt.tmp \
  && mv /mnt/boot/resinOS_uEnv.txt.tmp /mnt/boot/resinOS_uEnv.txt && rm -f /mnt/boot/bootcount.env && sync; } \
  || fail "cannot arm the bootloader"
rm -rf "$cache"
phase armed
setsid sh -c 'sleep 1; reboot' >/dev/null 2>&1 </dev/null & sleep 0.5
