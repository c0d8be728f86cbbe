#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The device probe (plugin_utils/device.py): everything the steps decide on, in one round trip,
# printed as one JSON object. A step's own probe (scripts/probe_<name>.sh) becomes the body of
# osfleet_probe_extra; it gets the probe's parameters and its output is the key "extra". The
# active root comes from /proc/mounts, never from the bootloader env. Files of the inactive root
# are read with their links resolved inside it (osfleet_in_root), its stamp only as a plain file.
#
# It runs before and after every step's act, so it forks little: /proc/mounts in one awk, the
# services in one systemctl, and jq reads the files itself (--rawfile). Each file is bounded: one
# find names those larger than the controller accepts (plugin_utils/device.py FILE_LIMIT, in
# 512-byte blocks), which are read as osfleet_read reads them (one byte more, so that the
# controller refuses them). Each file's text is what a command substitution gives (NUL bytes and
# trailing newlines dropped); a missing file is "".

extra=$(osfleet_probe_extra "$@") || fail "the step's part of the device probe failed"
nl='
'
# /proc/mounts in one pass: the device mounted at /, the one at /mnt/sysroot/active, whether
# /mnt/sysroot/inactive is mounted (the last line of each mount point counts)
mounts=$(awk '$2=="/" {r=$1} $2=="/mnt/sysroot/active" {a=$1} $2=="/mnt/sysroot/inactive" {i=1}
  END {print (r == "" ? "-" : r); print (a == "" ? "-" : a); print (i ? 1 : 0)}' /proc/mounts)
set -f
# shellcheck disable=SC2086  # split on purpose (set -f: no globbing)
set -- $mounts
set +f
active_dev=${1:--}; sysroot_dev=${2:--}; inactive_mounted=${3:-0}
# a balenaOS (hostapp) device boots an overlay of its hostapp's layers as /: its active root is the
# partition mounted at /mnt/sysroot/active (rollback-parse-bootloader's way)
case $active_dev in
  /dev/*) ;;
  *) active_dev=$sysroot_dev ;;
esac
[ "$active_dev" = - ] && active_dev=""
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
df_out=$(df -Pk /mnt/boot /mnt/sysroot/inactive /mnt/data /mnt/state 2>/dev/null | awk 'NR>1 {print $6" "$4" "$2}')
# the services in one call: systemd prints one state a line, in the order asked, also for a unit it
# does not know ("inactive"); when the lines do not match the units, one call a unit
units="balena-supervisor balena user-app rollback-health rollback-altboot"
svc=""
if command -v systemctl >/dev/null 2>&1; then
  # shellcheck disable=SC2086  # the unit names, split on purpose
  states=$(systemctl is-active $units 2>/dev/null)
  set -f
  # shellcheck disable=SC2086
  set -- $states
  set +f
  if [ $# -eq 5 ]; then
    for s in $units; do
      if [ "$1" = active ]; then st=active; else st=inactive; fi
      svc="$svc$s=$st$nl"; shift
    done
  else
    for s in $units; do
      if systemctl is-active "$s" >/dev/null 2>&1; then st=active; else st=inactive; fi
      svc="$svc$s=$st$nl"
    done
  fi
else
  for s in $units; do svc="$svc$s=inactive$nl"; done
fi
legacy_lock=free
if [ -e /var/lock/resinhup.lock ] && command -v flock >/dev/null 2>&1; then
  ( flock -n 9 || exit 1 ) 9</var/lock/resinhup.lock || legacy_lock=held
fi
# the run whose watchdog (scripts/watchdog.sh) is alive: it holds /var/lock/resinhup.lock for that run
wd=/run/osfleet/watchdog; wd_pid=""
[ -f "$wd/pid" ] && { read -r wd_pid < "$wd/pid" || true; } 2>/dev/null
# the hostapp of each root partition (a balena-engine data root and a `current` link, hostapp-facts
# §1): "<current link target> <the image id of its container>" as osfleet_hostapp_of prints it,
# nothing otherwise. The container's config is read by the jq below (config_<side>; no jq of its
# own), a config over 64 KiB by osfleet_hostapp_of (its first MiB).
active_hostapp=""; inactive_hostapp=""; hostapp_configs=""
for side in active inactive; do
  osfleet_hostapp_config "/mnt/sysroot/$side" || continue
  # shellcheck disable=SC2154  # osfleet_hostapp_config's variables
  if [ -z "$ho_f" ]; then h="$ho_t -"; else h=$ho_t; hostapp_configs="$hostapp_configs$side $ho_f$nl"; fi
  if [ "$side" = active ]; then active_hostapp=$h; else inactive_hostapp=$h; fi
done
hostapp_update=absent
command -v hostapp-update >/dev/null 2>&1 && hostapp_update=present
# the hostapp-update that the rootfs step started (scripts/hostapp_write.sh), since this boot:
# where it stands (osfleet_hostapp_job), as the JSON text of osfleet_hostapp_wait's object (how:
# probe), which the jq below makes (hostapp_job; "" when there is no job)
hostapp_job='""'
if [ -d /run/osfleet/hostapp-update ]; then
  osfleet_hostapp_job 0
  # shellcheck disable=SC2016,SC2154  # jq's variables; osfleet_hostapp_job's
  hostapp_job='($ARGS.named | .hj_state as $state | "probe" as $how | .hj_status as $status | .hj_image as $image | .hj_flag as $flag
    | .hj_started as $started | .hj_log as $log | '"$hw_filter"' | tojson)'
fi
pyth=absent
for p in python3 python; do command -v "$p" >/dev/null 2>&1 && pyth=present; done
uenv_present=0; [ -f /mnt/boot/resinOS_uEnv.txt ] && uenv_present=1
bootcount_present=0; [ -e /mnt/boot/bootcount.env ] && bootcount_present=1
# the files, "<key> <path>" lines
files="os_release /etc/os-release
uenv /mnt/boot/resinOS_uEnv.txt
bootcount /mnt/boot/bootcount.env
extra_uenv /mnt/boot/extra_uEnv.txt
rollback_record /mnt/state/osfleet-rollback
active_stamp /mnt/sysroot/active/.osfleet-release.json
shipped_supervisor /mnt/sysroot/active/etc/balena-supervisor/supervisor.conf
running_supervisor /mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf
config_json /mnt/boot/config.json
lock /mnt/state/osfleet/hup.lock
boot_id /proc/sys/kernel/random/boot_id
uptime /proc/uptime
rollback_health_state /run/rollback-health.state"
# a file of the inactive root, its links resolved inside it (osfleet_in_root, in this shell: its
# result is in its variables); none when the path leaves the root
for f in inactive_os_release=etc/os-release inactive_supervisor=etc/balena-supervisor/supervisor.conf; do
  if osfleet_in_root /mnt/sysroot/inactive "${f#*=}" >/dev/null; then
    # shellcheck disable=SC2154  # osfleet_in_root's variables
    files="$files$nl${f%%=*} $ir_root${ir_done:+/$ir_done}${ir_last:+/$ir_last}"
  fi
done
[ -L "$stamp" ] || files="$files${nl}inactive_stamp $stamp"
[ -n "$grubenv" ] && files="$files${nl}grubenv $grubenv"
[ -n "$wd_pid" ] && kill -0 "$wd_pid" 2>/dev/null && files="$files${nl}watchdog_run $wd/run"
# the regular files among them, and the hostapps' configs, as find's arguments: it names those over the limit
present=""
set --
while read -r key path; do
  if [ -f "$path" ]; then present="$present$key $path$nl"; set -- "$@" "$path"; fi
done <<EOF
$files
EOF
while read -r side path; do
  [ -n "$path" ] && set -- "$@" "$path"
done <<EOF
$hostapp_configs
EOF
big=""
[ $# -gt 0 ] && big=$(find -L "$@" -prune -type f -size +128 2>/dev/null)
# jq's arguments: each key once ("" for a file that is not there) and the keys of the files
set --
keys=""
for key in os_release uenv bootcount extra_uenv rollback_record active_stamp shipped_supervisor running_supervisor config_json lock \
           boot_id uptime rollback_health_state inactive_os_release inactive_supervisor inactive_stamp grubenv watchdog_run; do
  keys="$keys $key"
  line=""
  case $present in
    "$key "*) line=${present#"$key "} ;;
    *"$nl$key "*) line=${present#*"$nl$key "} ;;
  esac
  if [ -z "$line" ]; then set -- "$@" --arg "$key" ""; continue; fi
  path=${line%%"$nl"*}
  case "$nl$big$nl" in
    *"$nl$path$nl"*) set -- "$@" --arg "$key" "$(osfleet_read "$path")" ;;
    *) set -- "$@" --rawfile "$key" "$path" ;;
  esac
done
# the hostapps' configs: read by jq, a large one by osfleet_hostapp_of
while read -r side path; do
  [ -n "$path" ] || continue
  case "$nl$big$nl" in
    *"$nl$path$nl"*)
      if [ "$side" = active ]; then active_hostapp=$(osfleet_hostapp_of /mnt/sysroot/active)
      else inactive_hostapp=$(osfleet_hostapp_of /mnt/sysroot/inactive); fi ;;
    *) set -- "$@" --rawfile "config_$side" "$path" ;;
  esac
done <<EOF
$hostapp_configs
EOF
# the step's part (which can be large: boot file listings) on jq's standard input, not as an
# argument; within an act's script (shell.then_probe: osfleet_act_out is set) the act's output
# before it and a NUL (neither holds one: they are shell variables), which jq prints first, as one
# JSON string on a line of its own (jq 1.6's split drops an empty last part: the step's part then
# is ""). as_read: a file's text as a command substitution gives it (NUL bytes dropped, then the
# trailing newlines), in jq's builtins (no walk over each character). image_of: a hostapp's Image
# as osfleet_hostapp_of prints it, "-" when there is none to tell.
{ [ -z "${osfleet_act_out+set}" ] || printf '%s\0' "$osfleet_act_out"; printf '%s' "$extra"; } \
  | jq -Rs "$@" --arg file_keys "$keys" --arg then_act "${osfleet_act_out+1}" \
  --arg active_dev "$active_dev" --arg active_label "$active_label" --arg by_state_active "$by_state_active" \
  --arg inactive_dev "$inactive_dev" --arg inactive_label "$inactive_label" \
  --arg inactive_mounted "$inactive_mounted" --arg uenv_present "$uenv_present" --arg bootcount_present "$bootcount_present" \
  --arg grubenv_path "$grubenv" --arg markers "$markers" --arg df "$df_out" --arg services "$svc" \
  --arg triggered_newer "$triggered_newer" --arg legacy_lock "$legacy_lock" \
  --arg active_hostapp "$active_hostapp" --arg inactive_hostapp "$inactive_hostapp" --arg hostapp_update "$hostapp_update" \
  --arg hostapp_job "" --arg hj_state "${hw_state:-}" --arg hj_status "${hw_status:-}" --arg hj_image "${hw_image:-}" \
  --arg hj_flag "${hw_flag:-}" --arg hj_started "${hw_started:-}" --arg hj_log "${hw_log:-}" --arg python "$pyth" --arg uname_m "$(uname -m)" \
  'def as_read: (if index("\u0000") then split("\u0000") | join("") else . end)
     | if endswith("\n") then rtrimstr("\n") else . end
     | if endswith("\n") then explode | . as $c | ((first(range(length - 1; -1; -1) | select($c[.] != 10)) // -1) + 1) as $n
         | $c[:$n] | implode else . end;
   def image_of: (try (fromjson | .Image // "-") catch "-") | if type == "string" then . else tojson end | if . == "" then "-" else . end;
   (if $then_act == "1" then split("\u0000") | [.[0], .[1] // ""] else [null, .] end) as [$act, $extra]
   | if $act != null then $act else empty end,
   (($file_keys | split(" ") | map(select(. != ""))) as $fk
   | reduce $fk[] as $k ($ARGS.named | del(.file_keys, .then_act); .[$k] |= as_read)
   | .hostapp_job = '"$hostapp_job"' | del(.hj_state, .hj_status, .hj_image, .hj_flag, .hj_started, .hj_log)
   | reduce ("active", "inactive") as $s (.; if has("config_" + $s)
       then .[$s + "_hostapp"] += " " + (.["config_" + $s] | image_of) | del(.["config_" + $s]) else . end)
   | . + {extra: $extra})'
