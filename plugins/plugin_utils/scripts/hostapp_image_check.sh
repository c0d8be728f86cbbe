#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Verify a saved image on the device before anything loads it (the hostapp writer's push
# transport): the archive dir/from (the partial copy when the send just ended, or the finished
# image) must have the sha256 the controller computed (sha256, when given) and hold the image
# image_id (osfleet_archive_check: config and every layer against their digests). A good partial
# copy becomes dir/name with name.json (meta, where it came from), synced, and the other saved
# images in dir are removed. A bad one is removed when remove is 1 (check mode passes 0).
# Prints {ok, why, removed}.

dir=$1 from=$2 name=$3 image_id=$4 sha256=$5 meta=$6 remove=$7
file=$dir/$from
ok=1; why=""
if [ -n "$sha256" ] && [ -f "$file" ]; then
  found=$(sha256sum "$file" | cut -d' ' -f1)
  [ "sha256:$found" = "$sha256" ] || { ok=0; why="the file's sha256 is sha256:$found, not the controller's $sha256"; }
fi
if [ "$ok" = 1 ] && ! why=$(osfleet_archive_check "$file" "$image_id"); then ok=0; fi
removed=0
if [ "$ok" = 0 ] && [ "$remove" = 1 ] && [ -f "$file" ]; then
  rm -f "$file" "$dir/$name.json"; sync; removed=1
fi
if [ "$ok" = 1 ] && [ "$from" != "$name" ]; then
  printf '%s\n' "$meta" > "$dir/$name.json.tmp" || fail "cannot write $dir/$name.json"
  mv "$dir/$name.json.tmp" "$dir/$name.json" || fail "cannot write $dir/$name.json"
  sync
  mv "$file" "$dir/$name" || fail "cannot move $file to $dir/$name"
  sync
  find "$dir" -mindepth 1 -maxdepth 1 -type f \( -name '*.tar' -o -name '*.tar.json' -o -name '*.part' \) \
    ! -name "$name" ! -name "$name.json" -exec rm -f {} + && sync
fi
jq -n --argjson ok "$([ "$ok" = 1 ] && echo true || echo false)" --arg why "$why" --argjson removed "$([ "$removed" = 1 ] && echo true || echo false)" \
  '{ok: $ok, why: $why, removed: $removed}'
