#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# `make bench` step_overhead: the baseline updater's commit after the new boot (both profiles):
# the bootloader env disarmed (upgrade_available=0, the boot count gone). Prints the running OS's
# VERSION and the partition label of the running root, for bench.py to check the baseline did
# update the device.

{ sed 's/^upgrade_available=.*/upgrade_available=0/' /mnt/boot/resinOS_uEnv.txt > /mnt/boot/resinOS_uEnv.txt.tmp \
  && mv /mnt/boot/resinOS_uEnv.txt.tmp /mnt/boot/resinOS_uEnv.txt && rm -f /mnt/boot/bootcount.env && sync; } \
  || fail "cannot commit"
version=$(sed -n 's/^VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release | head -n 1)
actdev=$(readlink -f "$(awk '$2 == "/mnt/sysroot/active" {print $1}' /proc/mounts)")
label=""
for l in resin-rootA resin-rootB; do [ "$(readlink -f "/dev/disk/by-partlabel/$l")" = "$actdev" ] && label=$l; done
printf 'version %s\nroot %s\n' "$version" "$label"
