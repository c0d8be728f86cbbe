#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Stamp the inactive partition of a balenaOS (hostapp) device once hostapp-update wrote it and the
# controller verified it (plugin_utils/writer.py HostappWriter): only while the partition's hostapp
# is still the image the controller verified (image_id), and no hostapp-update runs; the stamp
# /.osfleet-release.json (device_type, version, digest, source, image_id, writer) at the
# partition's top, written atomically and synced.

label=$1 want_dev=$2 image_id=$3 device_type=$4 version=$5 digest=$6 source=$7
mnt=/mnt/sysroot/inactive; stamp=.osfleet-release.json; job=/run/osfleet/hostapp-update
if pid=$(cat "$job/pid" 2>/dev/null) && [ ! -f "$job/status" ] && kill -0 "$pid" 2>/dev/null; then
  fail "a hostapp-update still runs on the device (pid $pid): not stamping $label"
fi
# the job has ended: its last process may still hold the writer lock for a moment after it wrote
# its status (a CI failure of test_hostapp_writer's killed controller): wait a little for it
osfleet_writer_lock_within 15
if pid=$(cat "$job/pid" 2>/dev/null) && [ ! -f "$job/status" ] && kill -0 "$pid" 2>/dev/null; then
  fail "a hostapp-update still runs on the device (pid $pid): not stamping $label"
fi
dev=""
osfleet_writable_root "$label" "$want_dev" stamp
cur=$(osfleet_mounted_dev "$mnt")
if [ -z "$cur" ] || [ "$(readlink -f "$cur")" != "$dev" ]; then fail "$mnt holds ${cur:-nothing}, not $label ($dev)"; fi
held=$(osfleet_hostapp_of "$mnt")
[ "${held#* }" = "$image_id" ] || fail "refusing to stamp $label: its hostapp is ${held:-none} now, not the verified image $image_id"
jq -n --arg device_type "$device_type" --arg version "$version" --arg digest "$digest" --arg source "$source" \
  --arg image_id "$image_id" --arg written_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  '{device_type: $device_type, version: $version, digest: $digest, source: $source, image_id: $image_id, writer: "hostapp",
    written_at: $written_at}' > "$mnt/$stamp.tmp" || fail "cannot write the stamp"
sync
mv "$mnt/$stamp.tmp" "$mnt/$stamp" || fail "cannot write the stamp"
sync
jq -c . "$mnt/$stamp"
