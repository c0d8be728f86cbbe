#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The device probe (plugin_utils/device.py): everything the steps decide on, in one round trip,
# printed as one JSON object (each file read is bounded: osfleet_read). A step's own probe (scripts/probe_<name>.sh) becomes the body of
# osfleet_probe_extra; it gets the probe's parameters and its output is the key "extra". The
# active root comes from /proc/mounts, never from the bootloader env. Files of the inactive root
# are read with its links resolved inside it (osfleet_read_in), its stamp only as a plain file.

extra=$(osfleet_probe_extra "$@") || fail "the step's part of the device probe failed"
active_dev=$(awk '$2=="/" {d=$1} END {print d}' /proc/mounts)
# a balenaOS (hostapp) device boots an overlay of its hostapp's layers as /: its active root is the
# partition mounted at /mnt/sysroot/active (rollback-parse-bootloader's way)
case $active_dev in
  /dev/*) ;;
  *) active_dev=$(awk '$2=="/mnt/sysroot/active" {d=$1} END {print d}' /proc/mounts) ;;
esac
active_dev=$(readlink -f "$active_dev" 2>/dev/null || echo "$active_dev")
# balenaOS's udev rules name the booted root /dev/disk/by-state/active (a cross-check, where present)
by_state_active=""
[ -e /dev/disk/by-state/active ] && by_state_active=$(readlink -f /dev/disk/by-state/active 2>/dev/null)
active_label=""; inactive_label=""; inactive_dev=""
for l in resin-rootA resin-rootB; do
  d=$(readlink -f "/dev/disk/by-partlabel/$l" 2>/dev/null || true)
  if [ -n "$d" ] && [ "$d" = "$active_dev" ]; then active_label=$l; else inactive_label=$l; inactive_dev=$d; fi
done
[ -n "$active_label" ] || { inactive_label=""; inactive_dev=""; }
grubenv=""
for g in /mnt/boot/grub/grubenv /mnt/boot/EFI/BOOT/grubenv /mnt/boot/bootenv; do
  if [ -f "$g" ]; then grubenv=$g; break; fi
done
# every rollback-* file in /mnt/state; the controller keeps the names it knows (plugin_utils/markers.py)
markers=""
for m in /mnt/state/rollback-*; do
  [ -e "$m" ] && markers="$markers ${m##*/}"
done
# a *-triggered marker newer than the inactive root's stamp: that release is the one that rolled
# back (a root written after the rollback holds another one)
triggered_newer=""; stamp=/mnt/sysroot/inactive/.osfleet-release.json
for m in rollback-altboot-triggered rollback-health-triggered; do
  [ -e "/mnt/state/$m" ] || continue
  if [ ! -e "$stamp" ] || [ -n "$(find "/mnt/state/$m" -newer "$stamp" 2>/dev/null)" ]; then triggered_newer="$triggered_newer $m"; fi
done
inactive_mounted=0
awk '$2=="/mnt/sysroot/inactive" {f=1} END {exit !f}' /proc/mounts && inactive_mounted=1
df_out=$(df -Pk /mnt/boot /mnt/sysroot/inactive /mnt/data /mnt/state 2>/dev/null | awk 'NR>1 {print $6" "$4" "$2}')
svc=""
for s in balena-supervisor balena user-app rollback-health rollback-altboot; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active "$s" >/dev/null 2>&1; then st=active; else st=inactive; fi
  svc="$svc$s=$st
"
done
legacy_lock=free
if [ -e /var/lock/resinhup.lock ] && command -v flock >/dev/null 2>&1; then
  ( flock -n 9 || exit 1 ) 9</var/lock/resinhup.lock || legacy_lock=held
fi
# the run whose watchdog (scripts/watchdog.sh) is alive: it holds /var/lock/resinhup.lock for that run
wd_run=""
wd=/run/osfleet/watchdog
if [ -f "$wd/pid" ] && kill -0 "$(cat "$wd/pid" 2>/dev/null)" 2>/dev/null; then wd_run=$(osfleet_read "$wd/run"); fi
# the hostapp of each root partition (a balena-engine data root and a `current` link, hostapp-facts
# §1): "<current link target> <the image id of its container>" (osfleet_hostapp_of), nothing otherwise
active_hostapp=$(osfleet_hostapp_of /mnt/sysroot/active)
inactive_hostapp=$(osfleet_hostapp_of /mnt/sysroot/inactive)
hostapp_update=absent
command -v hostapp-update >/dev/null 2>&1 && hostapp_update=present
# the hostapp-update that the rootfs step started (scripts/hostapp_write.sh), since this boot
hostapp_job=""
[ -d /run/osfleet/hostapp-update ] && hostapp_job=$(osfleet_hostapp_wait 0 probe)
pyth=absent
for p in python3 python; do command -v "$p" >/dev/null 2>&1 && pyth=present; done
# the step's part (which can be large: boot file listings) on jq's standard input, not as an argument
printf '%s' "$extra" | jq -Rs \
  --arg os_release "$(osfleet_read /etc/os-release)" \
  --arg active_dev "$active_dev" --arg active_label "$active_label" --arg by_state_active "$by_state_active" \
  --arg inactive_dev "$inactive_dev" --arg inactive_label "$inactive_label" \
  --arg inactive_mounted "$inactive_mounted" \
  --arg uenv "$(osfleet_read /mnt/boot/resinOS_uEnv.txt)" --arg uenv_present "$([ -f /mnt/boot/resinOS_uEnv.txt ] && echo 1 || echo 0)" \
  --arg bootcount "$(osfleet_read /mnt/boot/bootcount.env)" --arg bootcount_present "$([ -e /mnt/boot/bootcount.env ] && echo 1 || echo 0)" \
  --arg extra_uenv "$(osfleet_read /mnt/boot/extra_uEnv.txt)" \
  --arg grubenv_path "$grubenv" --arg grubenv "$( [ -n "$grubenv" ] && osfleet_read "$grubenv" | tr -d '\000' )" \
  --arg markers "$markers" --arg df "$df_out" --arg services "$svc" \
  --arg triggered_newer "$triggered_newer" --arg rollback_record "$(osfleet_read /mnt/state/osfleet-rollback)" \
  --arg active_stamp "$(osfleet_read /mnt/sysroot/active/.osfleet-release.json)" \
  --arg inactive_stamp "$([ -L /mnt/sysroot/inactive/.osfleet-release.json ] || osfleet_read /mnt/sysroot/inactive/.osfleet-release.json)" \
  --arg inactive_os_release "$(osfleet_read_in /mnt/sysroot/inactive etc/os-release)" \
  --arg shipped_supervisor "$(osfleet_read /mnt/sysroot/active/etc/balena-supervisor/supervisor.conf)" \
  --arg running_supervisor "$(osfleet_read /mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf)" \
  --arg inactive_supervisor "$(osfleet_read_in /mnt/sysroot/inactive etc/balena-supervisor/supervisor.conf)" \
  --arg config_json "$(osfleet_read /mnt/boot/config.json)" \
  --arg lock "$(osfleet_read /mnt/state/osfleet/hup.lock)" --arg legacy_lock "$legacy_lock" \
  --arg boot_id "$(osfleet_read /proc/sys/kernel/random/boot_id)" --arg uptime "$(osfleet_read /proc/uptime)" \
  --arg watchdog_run "$wd_run" \
  --arg rollback_health_state "$(osfleet_read /run/rollback-health.state)" \
  --arg active_hostapp "$active_hostapp" --arg inactive_hostapp "$inactive_hostapp" --arg hostapp_update "$hostapp_update" --arg hostapp_job "$hostapp_job" \
  --arg python "$pyth" --arg uname_m "$(uname -m)" \
  '$ARGS.named + {extra: .}'
