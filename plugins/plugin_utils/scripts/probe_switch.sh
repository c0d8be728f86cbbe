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
sw_has() { if [ -e "$1" ]; then printf 1; else printf 0; fi; }
sw_sha() { if [ "$want" = files ] && [ -d "$1" ]; then (cd "$1" && find -L . -type f -exec sha256sum {} + 2>/dev/null); fi; }
sw_md5() { if [ "$want" = files ] && [ -d "$1" ]; then (cd "$1" && find -L . -type f -exec md5sum {} + 2>/dev/null); fi; }
sw_size() { if [ "$want" = files ] && [ -d "$1" ]; then (cd "$1" && find -L . -type f -exec stat -L -c '%s %n' {} + 2>/dev/null); fi; }
sw_nl='
'
sw_other() { if [ "$want" = files ] && [ -d "$1" ]; then (cd "$1" && find -L . \( ! -type f ! -type d \) -o -name "*$sw_nl*" 2>/dev/null); fi; }
sw_listed=0; sw_statfs=""
if [ "$want" = files ]; then sw_listed=1; sw_statfs=$(stat -f -c '%a %S' /mnt/boot 2>/dev/null); fi
sw_a=/mnt/sysroot/active/resin-boot; sw_i=/mnt/sysroot/inactive/resin-boot
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
    case $sw_side in boot) sw_d=/mnt/boot ;; active) sw_d=$sw_a ;; *) sw_d=$sw_i ;; esac
    [ "$sw_side" = boot ] || sw_has "$sw_d" | osfleet_json_field "${sw_side}_present"
    sw_sha "$sw_d" | osfleet_json_field "${sw_side}_sha"
    sw_md5 "$sw_d" | osfleet_json_field "${sw_side}_md5"
    sw_size "$sw_d" | osfleet_json_field "${sw_side}_size"
    sw_other "$sw_d" | osfleet_json_field "${sw_side}_other"
  done
} | jq -cs add
