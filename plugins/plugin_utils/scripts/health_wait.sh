#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The health step's wait for a settling device (plugins/action/health.py), on the device: up to
# seconds for what the step classifies the device by to move: rollback-health's state, the
# bootloader env and boot count, the names in /mnt/state (rollback markers and breadcrumbs), the
# rollback services' states; read every quarter of a second. since is the fingerprint (sha256) of
# those that the previous call printed: when they moved since, or the device booted again (its boot
# id is not boot), or with seconds=0, there is no wait. Prints the fingerprint when it ends (hashed
# once: each read in the wait compares the text with the first one). It runs before the probe in
# one round trip (plugin_utils/shell.py then_probe): the step reads the device's state after the
# wait, and classifies it as before.

seconds=$1 since=$2 boot=$3
hw_units=""
command -v systemctl >/dev/null 2>&1 && hw_units="rollback-health rollback-altboot"
hw_now() {
  cat /run/rollback-health.state /mnt/boot/resinOS_uEnv.txt /mnt/boot/bootcount.env /mnt/boot/grub/grubenv \
    /mnt/boot/EFI/BOOT/grubenv /mnt/boot/bootenv 2>/dev/null
  ls -a /mnt/state 2>/dev/null
  # shellcheck disable=SC2086  # the unit names, split on purpose
  [ -z "$hw_units" ] || systemctl is-active $hw_units 2>/dev/null
}
hw_sum() {
  printf '%s\n' "$1" | sha256sum
}
text=$(hw_now)
now=$(hw_sum "$text") || fail "cannot fingerprint the device's rollback state (sha256sum)"
n=$((seconds * 4))
[ "$now" = "$since" ] || n=0
booted=""
{ IFS= read -r booted < /proc/sys/kernel/random/boot_id; } 2>/dev/null || true
[ "$booted" = "$boot" ] || n=0
while [ "$n" -gt 0 ]; do
  sleep 0.25
  moved=$(hw_now)
  if [ "$moved" != "$text" ]; then
    now=$(hw_sum "$moved") || fail "cannot fingerprint the device's rollback state (sha256sum)"
    break
  fi
  n=$((n - 1))
done
printf '%s\n' "$now"
