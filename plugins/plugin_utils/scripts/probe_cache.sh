#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The image cache part of the device probe (fetch and rootfs, plugin_utils/cache.py): whether
# cache_dir exists, is a mount point, carries the collection's marker (and else how many entries it
# holds, and the first few names), the layouts in it (name, osfleet-fetch.json, the manifests
# index.json names), the staging dirs an interrupted fetch left, and the device's clock.

cache_dir=$1
# each layout's name, meta and index: the arguments of the last jq (name_<i>, meta_<i>, index_<i>)
set --
nimg=0; stg=""; exists=0; isdir=0; mnt=0; marked=0; count=0; names=""
if [ -d "$cache_dir" ]; then
  exists=1; isdir=1
  if osfleet_mount_point "$cache_dir"; then mnt=1; fi
  if [ -f "$cache_dir/.osfleet-cache" ]; then marked=1; fi
  count=$(find "$cache_dir" -mindepth 1 -maxdepth 1 | wc -l)
  names=$(find "$cache_dir" -mindepth 1 -maxdepth 1 | head -n 5 | sed 's|.*/||')
  for d in "$cache_dir"/* "$cache_dir"/.staging-*; do
    [ -d "$d" ] || continue
    n=${d##*/}
    case $n in
      .staging-*) stg="$stg$n
" ;;
      *) meta=""; [ -f "$d/osfleet-fetch.json" ] && meta=$(cat "$d/osfleet-fetch.json")
         idx=""; [ -f "$d/index.json" ] && idx=$(jq -c '[.manifests[]?.digest]' "$d/index.json" 2>/dev/null)
         set -- "$@" --arg "name_$nimg" "$n" --arg "meta_$nimg" "$meta" --arg "index_$nimg" "$idx"; nimg=$((nimg + 1)) ;;
    esac
  done
elif [ -e "$cache_dir" ] || [ -L "$cache_dir" ]; then
  exists=1
fi
# shellcheck disable=SC2016  # jq's variables
jq -n "$@" --argjson nimg "$nimg" --arg staging "$stg" --arg now "$(date +%s)" \
  --argjson exists "$exists" --argjson isdir "$isdir" --argjson mount_point "$mnt" --argjson marked "$marked" --argjson count "$count" --arg names "$names" \
  '$ARGS.named as $a | {images: [range($nimg) | tostring as $i | {name: $a["name_" + $i], meta: $a["meta_" + $i], index: $a["index_" + $i]}],
    staging: ($staging | split("\n") | map(select(length > 0))), now: ($now | tonumber),
    cache: {exists: ($exists == 1), directory: ($isdir == 1), mount_point: ($mount_point == 1), marked: ($marked == 1), entries: $count,
            names: ($names | split("\n") | map(select(length > 0)))}}'
