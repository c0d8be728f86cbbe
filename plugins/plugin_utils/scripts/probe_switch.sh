#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The switch steps' part of the device probe (plugin_utils/switchprobe.py): the rollback
# variables and osfleet's rollback marker, and with want=files sha256 + md5 + size of every file
# on the boot partition and in both roots' /resin-boot, plus the boot partition's free bytes.
# variables and marker are the paths of those two files in /mnt/state.

want=$1 variables=$2 marker=$3
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
# each root's /resin-boot, its links resolved inside that root
sw_a=$(osfleet_in_root /mnt/sysroot/active resin-boot) || sw_a=/nonexistent
sw_i=$(osfleet_in_root /mnt/sysroot/inactive resin-boot) || sw_i=/nonexistent
# one JSON object, each value streamed to jq on its standard input (osfleet_json_field): a listing
# of many boot files is far larger than the 128 KiB one argument may hold
{
  printf %s "$sw_listed" | osfleet_json_field listed
  printf %s "$sw_statfs" | osfleet_json_field boot_statfs
  sw_has "$variables" | osfleet_json_field health_variables_present
  osfleet_read "$variables" | osfleet_json_field health_variables
  sw_has "$marker" | osfleet_json_field rollback_marker_present
  osfleet_read "$marker" | osfleet_json_field rollback_marker
  for sw_side in boot active inactive; do
    case $sw_side in boot) sw_dir=/mnt/boot ;; active) sw_dir=$sw_a ;; *) sw_dir=$sw_i ;; esac
    [ "$sw_side" = boot ] || sw_has "$sw_dir" | osfleet_json_field "${sw_side}_present"
    sw_sha "$sw_dir" | osfleet_json_field "${sw_side}_sha"
    sw_md5 "$sw_dir" | osfleet_json_field "${sw_side}_md5"
    sw_size "$sw_dir" | osfleet_json_field "${sw_side}_size"
    sw_other "$sw_dir" | osfleet_json_field "${sw_side}_other"
  done
} | jq -cs add
