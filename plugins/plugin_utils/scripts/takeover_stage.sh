#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The advanced update's staging (plugin_utils/steps/takeover.py): everything a whole-disk write
# needs, in RAM, before anything is written. dir becomes a RAM filesystem (tmpfs) of ram_mib MiB
# unless it is one; the disk image at url is downloaded there as image.img.gz.part, resuming a
# partial download (curl -C -; from the start when the server cannot resume), checked against its
# sha256 and only then named image.img.gz (a bad one is removed: the next run downloads it again);
# an image staged before is reused only when its sha256, read again now, is still the catalog's (else
# it was damaged in RAM: it is removed and downloaded again, and "damaged" names the sha256 it had);
# the files to keep from the boot partition (config.json, system-connections/, system-proxy/) are
# copied to dir/keep/; dir/staged.json records url, sha256, size and the kept files (path, size,
# sha256). Nothing on the disk is touched. Prints the record and how many bytes were downloaded.

dir=$1 url=$2 sha256=$3 size=$4 ram_mib=$5
case $url in http://*|https://*) ;; *) fail "takeover_stage: the disk image url must be http(s), got '$url'" ;; esac
case $sha256 in *[!0-9a-f]*|'') fail "takeover_stage: bad sha256 '$sha256'" ;; esac
[ "${#sha256}" -eq 64 ] || fail "takeover_stage: bad sha256 '$sha256'"
osfleet_writer_lock
mkdir -p "$dir" || fail "cannot create $dir"
fstype=$(awk -v d="$dir" '$2 == d {t = $3} END {print t}' /proc/mounts)
if [ -z "$fstype" ]; then
  mount -t tmpfs -o "size=${ram_mib}m,mode=0700" osfleet-takeover "$dir" || fail "cannot mount a RAM filesystem at $dir"
elif [ "$fstype" != tmpfs ] && [ "$fstype" != ramfs ]; then
  fail "$dir is a $fstype filesystem, not RAM: the disk image must not sit on the disk it overwrites"
fi
img=$dir/image.img.gz
downloaded=0 damaged=""
have=$(jq -r '.sha256 // empty' "$dir/staged.json" 2>/dev/null) || have=""
if [ "$have" = "$sha256" ] && [ -f "$img" ]; then
  found=$(sha256sum "$img" | cut -d' ' -f1)
  if [ "$found" != "$sha256" ]; then damaged=$found; have=""; fi
fi
if [ "$have" != "$sha256" ] || [ ! -f "$img" ]; then
  rm -f "$dir/staged.json" "$img"
  before=0; if [ -f "$img.part" ]; then before=$(wc -c < "$img.part" | tr -d ' '); fi
  if ! curl -fsS -C - -o "$img.part" "$url" 2> "$dir/curl.err"; then
    # 33: the server cannot resume (no Range support), 416: the part is not a prefix of the file
    rm -f "$img.part"; before=0
    curl -fsS -o "$img.part" "$url" 2> "$dir/curl.err" || { rm -f "$img.part"; fail "cannot download $url: $(tail -n 1 "$dir/curl.err")"; }
  fi
  got=$(wc -c < "$img.part" | tr -d ' ')
  downloaded=$((got - before))
  found=$(sha256sum "$img.part" | cut -d' ' -f1)
  if [ "$found" != "$sha256" ]; then
    rm -f "$img.part"
    fail "the downloaded disk image has sha256 $found, not the catalog's $sha256 ($got bytes, $downloaded of them downloaded now): removed it; nothing was written to the disk"
  fi
  if [ "$size" -gt 0 ] && [ "$got" -ne "$size" ]; then
    rm -f "$img.part"; fail "the downloaded disk image has $got bytes, not the catalog's $size: removed it"
  fi
  mv "$img.part" "$img" || fail "cannot rename $img.part"
fi
rm -rf "$dir/keep.new"; mkdir -p "$dir/keep.new" || fail "cannot create $dir/keep.new"
kept=""
for f in config.json system-connections system-proxy; do
  if [ -e "/mnt/boot/$f" ]; then cp -R "/mnt/boot/$f" "$dir/keep.new/" || fail "cannot stage /mnt/boot/$f"; fi
done
kept=$(cd "$dir/keep.new" && find . -type f | sed 's|^\./||' | sort | while read -r f; do
  printf '%s\t%s\t%s\n' "$f" "$(wc -c < "$f" | tr -d ' ')" "$(sha256sum < "$f" | cut -d' ' -f1)"; done)
rm -rf "$dir/keep"; mv "$dir/keep.new" "$dir/keep" || fail "cannot stage the kept files"
jq -n --arg url "$url" --arg sha256 "$sha256" --argjson size "$(wc -c < "$img" | tr -d ' ')" --arg kept "$kept" \
  '{url: $url, sha256: $sha256, size: $size,
    keep: ($kept | split("\n") | map(select(. != "") | split("\t") | {path: .[0], size: (.[1] | tonumber), sha256: .[2]}))}' \
  > "$dir/staged.json.tmp" || fail "cannot write $dir/staged.json"
mv "$dir/staged.json.tmp" "$dir/staged.json" || fail "cannot write $dir/staged.json"
jq -c --argjson downloaded "$downloaded" --arg damaged "$damaged" '. + {downloaded: $downloaded, damaged: $damaged}' "$dir/staged.json"
