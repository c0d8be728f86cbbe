#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The image cache part of the device probe (fetch and rootfs, plugin_utils/cache.py): the layouts
# in cache_dir (name, osfleet-fetch.json, the manifests index.json names), the staging dirs an
# interrupted fetch left, and the device's clock.

cache_dir=$1
imgs=""; stg=""
if [ -d "$cache_dir" ]; then
  for d in "$cache_dir"/* "$cache_dir"/.staging-*; do
    [ -d "$d" ] || continue
    n=${d##*/}
    case $n in
      .staging-*) stg="$stg$n
" ;;
      *) meta=""; [ -f "$d/osfleet-fetch.json" ] && meta=$(cat "$d/osfleet-fetch.json")
         idx=""; [ -f "$d/index.json" ] && idx=$(jq -c '[.manifests[]?.digest]' "$d/index.json" 2>/dev/null)
         imgs="$imgs$(jq -nc --arg name "$n" --arg meta "$meta" --arg idx "$idx" '{name: $name, meta: $meta, index: $idx}')
" ;;
    esac
  done
fi
jq -n --arg images "$imgs" --arg staging "$stg" --arg now "$(date +%s)" \
  '{images: ($images | split("\n") | map(select(length > 0) | fromjson)),
    staging: ($staging | split("\n") | map(select(length > 0))), now: ($now | tonumber)}'
