#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The switch steps' part of the device probe (plugin_utils/switchprobe.py): the rollback
# variables and osfleet's rollback marker, and with want=files sha256 + md5 + size of every file
# on the boot partition and in both roots' /resin-boot, plus the boot partition's free bytes
# (on a hostapp device: the running OS's and the inactive hostapp's /resin-boot, below).
# variables and marker are the paths of those two files in /mnt/state; keepback the record of the
# boot partition's keep-back files that the lock step makes on a hostapp device (plugin_utils/hooks.py).

want=$1 variables=$2 marker=$3 keepback=$4
# find -L on the boot partition (vfat: no links); plain find in a root's /resin-boot, whose links
# could name files of the running system: a link there is listed as "other" (not a boot file)
sw_find() {
  sw_d=$1; shift
  if [ "$sw_d" = /mnt/boot ]; then (cd "$sw_d" && find -L . "$@"); else (cd "$sw_d" && find . "$@"); fi
}
sw_has() { if [ -e "$1" ]; then printf 1; else printf 0; fi; }
sw_sha() { if [ "$want" = files ] && [ -d "$1" ]; then sw_find "$1" -type f -exec sha256sum {} + 2>/dev/null; fi; }
sw_md5() { if [ "$want" = files ] && [ -d "$1" ]; then sw_find "$1" -type f -exec md5sum {} + 2>/dev/null; fi; }
sw_size() { if [ "$want" = files ] && [ -d "$1" ]; then sw_find "$1" -type f -exec stat -L -c '%s %n' {} + 2>/dev/null; fi; }
sw_nl='
'
sw_other() { if [ "$want" = files ] && [ -d "$1" ]; then sw_find "$1" \( ! -type f ! -type d \) -o -name "*$sw_nl*" 2>/dev/null; fi; }
sw_listed=0; sw_statfs=""
if [ "$want" = files ]; then sw_listed=1; sw_statfs=$(stat -f -c '%a %S' /mnt/boot 2>/dev/null); fi
# each root's /resin-boot, its links resolved inside that root. On a balenaOS (hostapp) device the
# partitions hold hostapps, not OS roots: the running OS's /resin-boot is the one of / (the overlay
# of its layers); the inactive hostapp's is read, with want=files only, under the read-only mount
# that its own init makes (`init -sysroot`, as hostapp-update does), unmounted right after
# (before the inactive hostapp is mounted: nothing to unmount when it cannot be made)
sw_t=$(mktemp -d "${TMPDIR:-/tmp}/osfleet-probe.XXXXXX") || fail "cannot create a temporary directory"
sw_m=""; sw_hostapp=0
if [ -L /mnt/sysroot/active/current ] && [ -d /mnt/sysroot/active/balena ]; then sw_hostapp=1; fi
if [ "$sw_hostapp" = 1 ]; then
  sw_a=$(osfleet_in_root / resin-boot) || sw_a=/nonexistent
  sw_i=/nonexistent
  if [ "$want" = files ] && [ -L /mnt/sysroot/inactive/current ] && [ -d /mnt/sysroot/inactive/balena ]; then
    sw_init=$(osfleet_in_root /mnt/sysroot/inactive current/boot/init) || sw_init=""
    if [ -n "$sw_init" ] && [ -f "$sw_init" ] && [ -x "$sw_init" ]; then
      sw_m=$("$sw_init" -sysroot /mnt/sysroot/inactive 2>/dev/null) || sw_m=""
      case $sw_m in
        /mnt/sysroot/inactive/balena/overlay2/*/merged)
          if awk -v m="$sw_m" '$2==m {f=1} END {exit !f}' /proc/mounts; then
            sw_i=$(osfleet_in_root "$sw_m" resin-boot) || sw_i=/nonexistent
          else
            sw_m=""
          fi ;;
        *) sw_m="" ;;
      esac
    fi
  fi
else
  sw_a=$(osfleet_in_root /mnt/sysroot/active resin-boot) || sw_a=/nonexistent
  sw_i=$(osfleet_in_root /mnt/sysroot/inactive resin-boot) || sw_i=/nonexistent
fi
# one JSON object, made by one jq: the short values as --arg, the others (a listing of many boot
# files is far larger than the 128 KiB one argument may hold; the files' contents) as --rawfile of
# a private temporary directory. One jq, not one per value: a jq start costs tens of milliseconds
# on a busy device, and the listing probe runs twice in each of bootfiles and bootenv
set -- --arg listed "$sw_listed" --arg boot_statfs "$sw_statfs" --arg hostapp "$sw_hostapp" \
  --arg health_variables_present "$(sw_has "$variables")" --rawfile health_variables "$sw_t/health_variables" \
  --arg rollback_marker_present "$(sw_has "$marker")" --rawfile rollback_marker "$sw_t/rollback_marker" \
  --arg keepback_present "$(sw_has "$keepback")" --rawfile keepback_record "$sw_t/keepback_record"
osfleet_read "$variables" > "$sw_t/health_variables"
osfleet_read "$marker" > "$sw_t/rollback_marker"
osfleet_read "$keepback" > "$sw_t/keepback_record"
for sw_side in boot active inactive; do
  case $sw_side in boot) sw_dir=/mnt/boot ;; active) sw_dir=$sw_a ;; *) sw_dir=$sw_i ;; esac
  [ "$sw_side" = boot ] || set -- "$@" --arg "${sw_side}_present" "$(sw_has "$sw_dir")"
  sw_sha "$sw_dir" > "$sw_t/${sw_side}_sha"
  sw_md5 "$sw_dir" > "$sw_t/${sw_side}_md5"
  sw_size "$sw_dir" > "$sw_t/${sw_side}_size"
  sw_other "$sw_dir" > "$sw_t/${sw_side}_other"
  for sw_f in sha md5 size other; do set -- "$@" --rawfile "${sw_side}_$sw_f" "$sw_t/${sw_side}_$sw_f"; done
done
if [ -n "$sw_m" ]; then
  if umount "$sw_m" 2>/dev/null; then sw_u=ok; else sw_u="could not unmount $sw_m"; fi
  set -- "$@" --arg inactive_mount "$sw_u"
fi
jq -cn "$@" '$ARGS.named'
sw_rc=$?
rm -rf "$sw_t"
[ "$sw_rc" -eq 0 ]
