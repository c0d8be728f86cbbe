#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The rootfs step's act on a balenaOS (hostapp) device (plugin_utils/writer.py HostappWriter):
# start the device's own `hostapp-update <flag> <image>` (-i REF: pull, a delta too, through the
# balena-host engine; -f FILE: load a saved image), never with -n (the new OS's hooks must run) nor
# -r (the reboot step reboots), detached from this SSH session (its own session, stdio on files in
# /run/osfleet/hostapp-update), so that a dropped link does not end it, then wait up to wait
# seconds for it (osfleet_hostapp_wait). A hostapp-update of the same image that an earlier run
# started and that still runs is attached to, never started twice. The partition checks are the
# export writer's (osfleet_writable_root); the release stamp is removed before anything is written
# (scripts/hostapp_stamp.sh writes it once the controller verified the new hostapp). The job keeps
# the writer lock (fd 8) and, in an update run, the run's busy lock (fd 7, so the run's watchdog
# waits for it) until it ends. With creds on stdin ({username, password, registries}; -i only):
# balena login --password-stdin into a private directory first (a failed login fails here, before
# anything is written), which becomes the job's DOCKER_CONFIG ($job/auth) and is removed when
# hostapp-update has ended.

label=$1 want_dev=$2 flag=$3 image=$4 wait=$5 image_id=$6 scheme=$7 creds=$(cat)
job=/run/osfleet/hostapp-update; mnt=/mnt/sysroot/inactive; stamp=.osfleet-release.json
case $flag in -i|-f) ;; *) fail "hostapp_write: flag must be -i or -f, got '$flag'" ;; esac
case $image in ''|-*) fail "hostapp_write: no image to write (got '$image')" ;; esac
command -v hostapp-update >/dev/null 2>&1 || fail "this device has no hostapp-update: it is not a balenaOS device that writes its own hostapps"
if pid=$(cat "$job/pid" 2>/dev/null) && [ ! -f "$job/status" ] && kill -0 "$pid" 2>/dev/null; then
  running=$(cat "$job/image" 2>/dev/null)
  [ "$running" = "$image" ] \
    || fail "a hostapp-update of $running, started by an earlier run, still runs on the device (pid $pid); run again when it has ended"
  osfleet_hostapp_wait "$wait" attached
  exit 0
fi
[ "$flag" != -f ] || [ -f "$image" ] || fail "the saved image $image is not on the device"
osfleet_writer_lock
dev=""
osfleet_writable_root "$label" "$want_dev" write  # sets dev
cur=$(osfleet_mounted_dev "$mnt")
if [ -z "$cur" ] || [ "$(readlink -f "$cur")" != "$dev" ]; then
  fail "$mnt holds ${cur:-nothing}, not $label ($dev): hostapp-update writes the partition mounted there"
fi
# -f: the saved image must still be the verified image (config and every layer against their
# digests), checked here under the writer lock, before hostapp-update wipes anything; a bad one is
# removed (the next fetch sends it again)
if [ "$flag" = -f ] && ! why=$(osfleet_archive_check "$image" "$image_id"); then
  rm -f "$image" "$image.json"; sync
  fail "refusing to load the saved image $image: $why (the catalog's image is $image_id); removed it, $label is untouched"
fi
authdir=""
if [ -n "$creds" ]; then
  authdir=$(osfleet_auth_dir) || exit 1
  trap 'rm -rf "$authdir"' EXIT
  trap 'exit 143' TERM HUP INT
  osfleet_registry_login "$creds" balena "$authdir" "$scheme"
fi
# from here on the partition is not the release any stamp names
rm -f "${mnt:?}/$stamp" "$mnt/$stamp.tmp"; sync
rm -rf "$job"; mkdir -p "$job" || fail "cannot create $job"
jobauth=""
if [ -n "$authdir" ]; then
  mv "$authdir" "$job/auth" || fail "cannot move the registry credentials to $job/auth"
  jobauth=$job/auth
fi
{ printf '%s\n' "$image" > "$job/image" && printf '%s\n' "$flag" > "$job/flag"; } || fail "cannot write to $job"
cut -d' ' -f1 /proc/uptime > "$job/started"
# shellcheck disable=SC2016 # the job's own positional parameters
setsid sh -c 'if [ -n "$4" ]; then export DOCKER_CONFIG="$4"; fi; hostapp-update "$1" "$2" > "$3/log" 2>&1; rc=$?; [ -z "$4" ] || rm -rf "$4"
  echo "$rc" > "$3/status.tmp"; mv "$3/status.tmp" "$3/status"' \
  hostapp-update "$flag" "$image" "$job" "$jobauth" < /dev/null > /dev/null 2>&1 &
printf '%s\n' "$!" > "$job/pid"
# the job holds the writer lock now; this script, which may go on waiting after its controller is
# gone, must not (the next run's stamp takes the lock once the job has ended)
exec 8>&-
osfleet_hostapp_wait "$wait" started
