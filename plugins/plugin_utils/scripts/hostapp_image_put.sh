#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# One chunk of a saved image that the controller streams to the device (the hostapp writer's push
# transport): the chunk (this script's standard input, raw bytes) is appended to dir/part, which
# must hold exactly offset bytes now (the controller resumes an interrupted send from the size the
# probe saw). An interrupted append leaves a prefix of the chunk, so dir/part is always a prefix of
# the archive its name carries the sha256 of; scripts/hostapp_image_check.sh checks it at the end.

dir=$1 part=$2 offset=$3
case $part in *.part) ;; *) fail "hostapp_image_put: not a partial image name: '$part'" ;; esac
case $part in */*|.*|-*) fail "hostapp_image_put: not a partial image name: '$part'" ;; esac
mkdir -p "$dir" || fail "cannot create $dir"
have=0; if [ -f "$dir/$part" ]; then have=$(wc -c < "$dir/$part" | tr -d ' '); fi
[ "$have" = "$offset" ] || fail "$dir/$part holds $have bytes, not $offset: another send runs, or it changed (run again)"
cat >> "$dir/$part" || fail "cannot write $dir/$part"
jq -n --argjson size "$(wc -c < "$dir/$part" | tr -d ' ')" '{size: $size}'
