#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Remove the saved image dir/name (and name.json) that hostapp-update -f loaded, once the rootfs
# step verified and stamped the hostapp written from it (the hostapp writer's push transport).

dir=$1 name=$2
case $name in *.tar) ;; *) fail "hostapp_image_drop: not a saved image name: '$name'" ;; esac
removed=false; if [ -f "$dir/$name" ]; then removed=true; fi
rm -f "$dir/$name" "$dir/$name.json" || fail "cannot remove $dir/$name"
sync
jq -n --argjson removed "$removed" '{removed: $removed}'
