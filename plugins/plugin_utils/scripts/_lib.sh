#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The functions the device scripts share (see plugin_utils/shell.py). The loader puts the preamble
# (the code above the first function) in front of every script, then each function below that the
# script, or a function it includes, names. A function starts with a line "name() {" and ends with
# a line "}", both at the start of the line.

set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

fail() {
  printf '%s\n' "$*" >&2
  exit 1
}

# the content of a file, nothing when it does not exist; at most one byte more than the controller
# accepts (plugin_utils/device.py FILE_LIMIT), so that a larger file shows there and is refused
osfleet_read() {
  if [ -f "$1" ]; then head -c 65537 "$1"; fi
}

# {"<key $1>": <standard input as a JSON string>}: a large value goes to jq on its standard input,
# never as one argument (the kernel limits a single argument to 128 KiB)
osfleet_json_field() {
  jq -Rs --arg k "$1" '{($k): .}'
}

# Lists on stdin (plugin_utils/shell.py): the length of the JSON list $1, and its item $2 (or that
# item's key $3), as text
osfleet_length() {
  printf '%s' "$1" | jq 'length'
}

osfleet_at() {
  if [ $# -ge 3 ]; then
    printf '%s' "$1" | jq -r --argjson i "$2" --arg k "$3" '.[$i][$k]'
  else
    printf '%s' "$1" | jq -r --argjson i "$2" '.[$i]'
  fi
}

# One fetch or root write at a time on a device: the script of a killed run goes on running on the
# device (no tty, so no hangup), and a second writer must not race it.
osfleet_writer_lock() {
  rundir=${OSFLEET_RUN_DIR:-/run/osfleet}
  mkdir -p "$rundir" || fail "cannot create $rundir"
  exec 8>"$rundir/writer.lock" || fail "cannot open $rundir/writer.lock"
  flock -n 8 || fail "another fetch or root write is still running on the device (an interrupted run?); run again when it has ended"
}

# Verify the OCI layout $1 against the catalog digest $2: index.json names exactly that manifest,
# every blob's sha256 equals its name, every blob the manifest names is present.
osfleet_verify_layout() {
  l=$1; want=$2
  [ -f "$l/index.json" ] || { echo "no index.json in the layout"; return 1; }
  got=$(jq -r '[.manifests[]?.digest] | if length == 1 then .[0] else "\(length) manifests" end' "$l/index.json" 2>/dev/null) \
    || { echo "index.json is not valid JSON"; return 1; }
  [ "$got" = "$want" ] || { echo "digest mismatch: the image's manifest is $got, the catalog says $want"; return 1; }
  for b in "$l"/blobs/sha256/*; do
    [ -f "$b" ] || continue
    h=$(sha256sum "$b" | cut -d' ' -f1)
    [ "$h" = "${b##*/}" ] || { echo "blob ${b##*/} is corrupt (its sha256 is $h)"; return 1; }
  done
  m="$l/blobs/sha256/${want#sha256:}"
  [ -f "$m" ] || { echo "the manifest blob $want is missing"; return 1; }
  for d in $(jq -r '.config.digest, .layers[].digest' "$m"); do
    [ -f "$l/blobs/sha256/${d#sha256:}" ] || { echo "blob $d is missing"; return 1; }
  done
}

# Is the existing directory $2 inside $1 (after resolving symlinks)?
osfleet_inside() {
  r=$(readlink -f "$2" 2>/dev/null) || return 1
  case "$r/" in "$1"/*) return 0 ;; esac
  return 1
}

# Apply one layer blob ($1, media type $2) onto the directory $3: OCI whiteouts first (they hide
# what the lower layers put there), then the layer's files, then the whiteout entries are removed
# again. Works with GNU tar and busybox tar (busybox ash prefers its own applets).
osfleet_apply_layer() {
  blob=$1; mt=$2; root=$3
  case $mt in
    *tar+gzip|*tar.gzip) z=-z ;;
    *.tar|*tar) z= ;;
    *) echo "unsupported layer media type $mt"; return 1 ;;
  esac
  list=$(tar ${z:+"$z"} -tf "$blob") || { echo "cannot read layer ${blob##*/}"; return 1; }
  wh=""
  while IFS= read -r p; do
    p=${p#./}
    base=${p##*/}
    case $base in .wh.*) ;; *) continue ;; esac
    case "/$p/" in */../*) echo "layer ${blob##*/}: refusing whiteout path $p"; return 1 ;; esac
    dir=""; case $p in */*) dir=${p%/*} ;; esac
    wh="$wh$p
"
    [ -d "$root/$dir" ] || continue
    osfleet_inside "$root" "$root/$dir" || { echo "layer ${blob##*/}: whiteout $p points outside the root"; return 1; }
    if [ "$base" = ".wh..wh..opq" ]; then
      rm -rf "${root:?}/$dir"/* "${root:?}/$dir"/.[!.]* "${root:?}/$dir"/..?*
    else
      rm -rf "${root:?}/$dir/${base#.wh.}"
    fi
  done <<EOF_LIST
$list
EOF_LIST
  tar ${z:+"$z"} -xf "$blob" -C "$root" --numeric-owner || { echo "cannot extract layer ${blob##*/}"; return 1; }
  # the whiteout entries themselves are markers, not files of the root
  while IFS= read -r p; do
    [ -n "$p" ] && rm -rf "${root:?}/$p"
  done <<EOF_WH
$wh
EOF_WH
  return 0
}

# Apply the layers of the image $2 (manifest digest) in the layout $1 onto the root $3; prints
# how many layers it applied.
osfleet_apply_image() {
  m="$1/blobs/sha256/${2#sha256:}"
  layers=$(jq -r '.layers[] | .digest + " " + .mediaType' "$m") || { echo "cannot read the manifest $2"; return 1; }
  n=0
  while read -r d mt; do
    [ -n "$d" ] || continue
    osfleet_apply_layer "$1/blobs/sha256/${d#sha256:}" "$mt" "$3" || return 1
    n=$((n + 1))
  done <<EOF_LAYERS
$layers
EOF_LAYERS
  echo "$n"
}

# sha256sum -c of the release's own list in the root $1; prints the mismatches
osfleet_check_root() {
  [ -f "$1/usr/share/osfleet/rootfs.sha256" ] || { echo "the written root has no usr/share/osfleet/rootfs.sha256"; return 1; }
  out=$(cd "$1" && sha256sum -c usr/share/osfleet/rootfs.sha256 2>/dev/null) && return 0
  n=$(printf '%s\n' "$out" | grep -vc ': OK$')
  echo "the written root does not match the release: $n files differ ($(printf '%s\n' "$out" | grep -v ': OK$' | head -n 3 | tr '\n' ' '))"
  return 1
}
