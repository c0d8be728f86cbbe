#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The rootfs step's act (steps/rootfs.py, plugin_utils/writer.py): format the inactive root
# (label, the device node the probe saw as dev; never the running root nor the root the bootloader
# env names), fill it from the image manifest in the OCI
# layout (mode=full: its layers; mode=delta: the delta layer on a copy of the active root),
# check it against its rootfs.sha256 and its os-release VERSION, then (when the catalog gives the
# release's root_listing: listing_sha256, listing_entries) against the target release itself: the
# canonical listing of the whole written root (osfleet_root_listing) must have that sha256, so a
# delta applied on an active root that is not exactly its base release is never stamped; and write
# the stamp /.osfleet-release.json (device_type, version, digest, source) last.

label=$1 want_dev=$2 mode=$3 layout=$4 manifest=$5 device_type=$6 version=$7 digest=$8 source=$9 listing_sha256=${10} listing_entries=${11}
mnt=/mnt/sysroot/inactive; act=/mnt/sysroot/active; stamp=.osfleet-release.json
osfleet_writer_lock
dev=""; actdev=""
osfleet_writable_root "$label" "$want_dev" format  # sets dev and actdev
mf="$layout/blobs/sha256/${manifest#sha256:}"
[ -f "$mf" ] || fail "the image $manifest is not in $layout"
# From here on every way out but the last line leaves no stamp on the partition (the image's own
# is refused by osfleet_apply_layer), so a failed root never looks staged to the next run.
written=0
unstamp() { [ "$written" = 1 ] || { rm -rf "${mnt:?}/$stamp" "$mnt/$stamp.tmp"; sync; }; }
trap unstamp EXIT
trap 'exit 1' HUP INT TERM
unstamp
cur=$(osfleet_mounted_dev "$mnt")
if [ -n "$cur" ]; then
  [ "$(readlink -f "$cur")" = "$dev" ] || fail "$mnt holds $cur, not $dev"
  umount "$mnt" || fail "cannot unmount $mnt (busy?)"
fi
mkfs.ext4 -F -q -L "$label" "$dev" >/dev/null || fail "mkfs.ext4 of $label ($dev) failed"
mkdir -p "$mnt"
mount -t ext4 -o rw "$dev" "$mnt" || fail "cannot mount $dev at $mnt"
if [ "$mode" = delta ]; then
  [ -n "$actdev" ] || fail "$act is not mounted: no base for the delta"
  (cd "$act" && tar -cf - --numeric-owner .) | tar -C "$mnt" -xf - --numeric-owner || fail "cannot copy the active root into $mnt"
  unstamp
fi
layers=$(osfleet_apply_image "$layout" "$manifest" "$mnt") || fail "$layers"
msg=$(osfleet_check_root "$mnt") || fail "$msg"
# /etc/os-release of the written root, its links resolved inside it (never the running system's)
got=""; osr=$(osfleet_root_file "$mnt" etc/os-release) \
  && got=$(sed -n 's/^VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$osr" 2>/dev/null | head -n 1)
[ "$got" = "$version" ] || fail "the written root is ${got:-no balenaOS release} (its /etc/os-release), the catalog says $version"
# the listing's sha256 and entries, as osfleet_check_listing printed them (the last jq makes {sha256, entries} of them)
listed=""
if [ -n "$listing_sha256" ]; then
  msg=$(osfleet_check_listing "$mnt" "$listing_sha256" "$listing_entries") \
    || fail "refusing to stamp $label: the written root is not $version as the catalog lists it ($mode write): $msg"
  listed=$msg
  case ${listed#* } in '' | *[!0-9]*) fail "cannot record the listing of $label" ;; esac
fi
unstamp
jq -n --arg device_type "$device_type" --arg version "$version" --arg digest "$digest" --arg source "$source" \
  --arg written_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  '{device_type: $device_type, version: $version, digest: $digest, source: $source, written_at: $written_at}' \
  > "$mnt/$stamp.tmp" || fail "cannot write the stamp"
sync
mv "$mnt/$stamp.tmp" "$mnt/$stamp" || fail "cannot write the stamp"
sync
written=1
# shellcheck disable=SC2016  # jq's variables
jq -n --argjson layers "$layers" --arg mode "$mode" --arg listed "$listed" --slurpfile stamp "$mnt/$stamp" \
  '{layers: $layers, mode: $mode, listing: (if $listed == "" then null else ($listed | split(" ")) as [$sha256, $entries]
     | {sha256: $sha256, entries: ($entries | tonumber)} end), stamp: $stamp[0]}'
