# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a release gets onto the inactive root partition: the writer seam (DESIGN §3).

Two ways exist to fill the inactive root. On generic A/B devices and in the lab, the partition
holds the exported root filesystem itself (:class:`ExportWriter`). On a real balenaOS device it
holds a hostapp that only the device's ``hostapp-update`` writes correctly; a ``HostappWriter``
can implement :class:`RootWriter` later without reshaping the fetch and rootfs steps.

A writer only turns plans (``plan_prepare``) into constant shell scripts plus positional
arguments, and parses what the scripts print. The steps do the probing, deciding and verifying.
"""

from __future__ import annotations

import abc
import json
import typing as t
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.plan_prepare import (
    CachedImage,
    CacheState,
    FetchPlan,
    RootfsPlan,
)


@dataclass(frozen=True)
class Script:
    """A constant shell script and the values it gets as ``$1 ...``."""

    text: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchOutcome:
    image: CachedImage | None
    attempts: list[dict[str, t.Any]]


class RootWriter(abc.ABC):
    """The interface the fetch and rootfs steps use."""

    name: t.ClassVar[str]

    @abc.abstractmethod
    def cache_probe(self, cache_dir: str) -> Script:
        """A probe extension (body of ``osfleet_probe_extra``) that reports the image cache."""

    @abc.abstractmethod
    def cache_state(self, cache_dir: str, extra: t.Mapping[str, t.Any]) -> CacheState:
        """Parse the cache probe's output (``DeviceState.extra``)."""

    @abc.abstractmethod
    def fetch_script(self, plan: FetchPlan, insecure: bool) -> Script:
        """Try the plan's sources in order; leave a verified image in the cache or nothing."""

    @abc.abstractmethod
    def fetch_outcome(self, output: t.Mapping[str, t.Any]) -> FetchOutcome:
        """Parse what the fetch script printed."""

    @abc.abstractmethod
    def write_script(self, plan: RootfsPlan) -> Script:
        """Write the inactive root from the cached image and stamp it last."""


# --- shell ---------------------------------------------------------------------------------------

_COMMON = r"""
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
fail() { printf '%s\n' "$*" >&2; exit 1; }
# One fetch or root write at a time on a device: the script of a killed run goes on running on the
# device (no tty, so no hangup), and a second writer must not race it.
osfleet_writer_lock() {
  rundir=${OSFLEET_RUN_DIR:-/run/osfleet}
  mkdir -p "$rundir" || fail "cannot create $rundir"
  exec 8>"$rundir/writer.lock" || fail "cannot open $rundir/writer.lock"
  flock -n 8 || fail "another fetch or root write is still running on the device (an interrupted run?); run again when it has ended"
}
"""

#: verify an OCI layout against the catalog digest: index.json names exactly that manifest,
#: every blob's sha256 equals its name, every blob the manifest names is present.
VERIFY_LAYOUT = r"""
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
"""

CACHE_PROBE = r"""
c=$1; imgs=""; stg=""
if [ -d "$c" ]; then
  for d in "$c"/* "$c"/.staging-*; do
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
"""

# $1 cache dir, $2 1 = plain HTTP/no TLS verify, then groups of four: kind ref digest tag
FETCH_SCRIPT = _COMMON + VERIFY_LAYOUT + r"""
cache=$1; insecure=$2; shift 2
osfleet_writer_lock
umask 022
mkdir -p "$cache" || fail "cannot create $cache"
rm -rf "$cache"/.staging-*
tls=""; [ "$insecure" = 1 ] && tls=--src-tls-verify=false
pol=""; [ -f /etc/containers/policy.json ] || pol=--insecure-policy
attempts=""; ok=""; okbytes=0
while [ $# -ge 4 ]; do
  kind=$1; ref=$2; digest=$3; tag=$4; shift 4
  hex=${digest#sha256:}
  stage="$cache/.staging-$hex"
  rm -rf "$stage"
  err=""; bytes=0
  if out=$(skopeo $pol copy --quiet --preserve-digests $tls "docker://$ref" "oci:$stage:$tag" 2>&1); then
    if err=$(osfleet_verify_layout "$stage" "$digest"); then
      m="$stage/blobs/sha256/$hex"
      bytes=$(( $(jq '[.config.size, .layers[].size] | add' "$m") + $(wc -c < "$m") ))
      jq -n --arg kind "$kind" --arg ref "$ref" --arg digest "$digest" --argjson bytes "$bytes" \
        --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        '{kind: $kind, ref: $ref, digest: $digest, bytes: $bytes, fetched_at: $at}' > "$stage/osfleet-fetch.json" \
        || err="cannot write $stage/osfleet-fetch.json"
    fi
  else
    err=$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n 2 \
      | sed 's/^time="[^"]*" level=[a-z]* msg="\(.*\)"$/\1/' | tr '\n' ' ' | sed 's/ *$//')
    [ -n "$err" ] || err="skopeo failed"
  fi
  if [ -z "$err" ]; then
    sync
    rm -rf "${cache:?}/$hex"
    if mv "$stage" "$cache/$hex"; then ok=$hex; okbytes=$bytes; sync; else err="cannot move the layout into $cache/$hex"; fi
  fi
  attempts="$attempts$(jq -nc --arg kind "$kind" --arg ref "$ref" --arg error "$err" --argjson bytes "$bytes" \
    '{kind: $kind, ref: $ref, ok: ($error == ""), error: $error, bytes: $bytes}')
"
  rm -rf "$stage"
  [ -n "$ok" ] && break
done
if [ -n "$ok" ]; then
  for d in "$cache"/*; do
    [ -d "$d" ] && [ "${d##*/}" != "$ok" ] && rm -rf "$d"
  done
  sync
fi
jq -n --arg attempts "$attempts" --arg ok "$ok" --argjson bytes "$okbytes" \
  '{attempts: ($attempts | split("\n") | map(select(length > 0) | fromjson)), fetched: $ok, bytes: $bytes}'
"""

#: apply one layer blob ($1, media type $2) onto the directory $3: OCI whiteouts first (they
#: hide what the lower layers put there), then the layer's files, then the whiteout entries are
#: removed again. Works with GNU tar and busybox tar (busybox ash prefers its own applets).
APPLY_LAYER = r"""
osfleet_inside() {  # is the existing directory $2 inside $1 (after resolving symlinks)?
  r=$(readlink -f "$2" 2>/dev/null) || return 1
  case "$r/" in "$1"/*) return 0 ;; esac
  return 1
}
osfleet_apply_layer() {
  blob=$1; mt=$2; root=$3
  case $mt in
    *tar+gzip|*tar.gzip|*.tar.gzip) z=-z ;;
    *.tar|*tar) z= ;;
    *) echo "unsupported layer media type $mt"; return 1 ;;
  esac
  list=$(tar $z -tf "$blob") || { echo "cannot read layer ${blob##*/}"; return 1; }
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
      rm -rf "$root/$dir"/* "$root/$dir"/.[!.]* "$root/$dir"/..?*
    else
      rm -rf "$root/$dir/${base#.wh.}"
    fi
  done <<EOF
$list
EOF
  tar $z -xf "$blob" -C "$root" --numeric-owner || { echo "cannot extract layer ${blob##*/}"; return 1; }
  # the whiteout entries themselves are markers, not files of the root
  while IFS= read -r p; do
    [ -n "$p" ] && rm -rf "$root/$p"
  done <<EOF
$wh
EOF
  return 0
}
osfleet_apply_image() {  # $1 layout, $2 manifest digest, $3 root
  m="$1/blobs/sha256/${2#sha256:}"
  layers=$(jq -r '.layers[] | .digest + " " + .mediaType' "$m") || { echo "cannot read the manifest $2"; return 1; }
  n=0
  while read -r d mt; do
    [ -n "$d" ] || continue
    osfleet_apply_layer "$1/blobs/sha256/${d#sha256:}" "$mt" "$3" || return 1
    n=$((n + 1))
  done <<EOF
$layers
EOF
  echo "$n"
}
osfleet_check_root() {  # $1 root: sha256sum -c of the release's own list; prints the mismatches
  [ -f "$1/usr/share/osfleet/rootfs.sha256" ] || { echo "the written root has no usr/share/osfleet/rootfs.sha256"; return 1; }
  out=$(cd "$1" && sha256sum -c usr/share/osfleet/rootfs.sha256 2>/dev/null) && return 0
  n=$(printf '%s\n' "$out" | grep -vc ': OK$')
  echo "the written root does not match the release: $n files differ ($(printf '%s\n' "$out" | grep -v ': OK$' | head -n 3 | tr '\n' ' '))"
  return 1
}
"""

# $1 label, $2 device the probe saw, $3 full|delta, $4 layout dir, $5 manifest digest,
# $6 device type, $7 version, $8 release digest, $9 source
WRITE_SCRIPT = _COMMON + APPLY_LAYER + r"""
label=$1; want_dev=$2; mode=$3; layout=$4; manifest=$5; dt=$6; ver=$7; digest=$8; source=$9
mnt=/mnt/sysroot/inactive; act=/mnt/sysroot/active; stamp=.osfleet-release.json
osfleet_writer_lock
mounted_dev() { awk -v m="$1" '$2==m {d=$1} END {print d}' /proc/mounts; }
dev=$(readlink -f "/dev/disk/by-partlabel/$label" 2>/dev/null) || fail "$label: no /dev/disk/by-partlabel/$label"
[ -b "$dev" ] || fail "$label resolves to $dev, which is not a block device"
[ "$dev" = "$want_dev" ] || fail "$label resolves to $dev now, the probe saw $want_dev"
rootdev=$(readlink -f "$(mounted_dev /)")
[ "$dev" != "$rootdev" ] || fail "refusing to format $label ($dev): it is the device of / (the running root)"
actdev=$(mounted_dev "$act"); [ -z "$actdev" ] || actdev=$(readlink -f "$actdev")
[ "$dev" != "$actdev" ] || fail "refusing to format $label ($dev): it is mounted at $act"
mf="$layout/blobs/sha256/${manifest#sha256:}"
[ -f "$mf" ] || fail "the image $manifest is not in $layout"
rm -f "$mnt/$stamp" "$mnt/$stamp.tmp"; sync
cur=$(mounted_dev "$mnt")
if [ -n "$cur" ]; then
  [ "$(readlink -f "$cur")" = "$dev" ] || fail "$mnt holds $cur, not $dev"
  umount "$mnt" || fail "cannot unmount $mnt (busy?)"
fi
mkfs.ext4 -F -q -L "$label" "$dev" >/dev/null || fail "mkfs.ext4 of $label ($dev) failed"
mkdir -p "$mnt"
mount -t ext4 -o rw "$dev" "$mnt" || fail "cannot mount $dev at $mnt"
if [ "$mode" = delta ]; then
  [ -n "$actdev" ] || fail "$act is not mounted: no base for the delta"
  (cd "$act" && tar -cf - --numeric-owner .) | tar -C "$mnt" -xf - --numeric-owner || fail "cannot copy the active root into $mnt"
  rm -f "$mnt/$stamp"
fi
layers=$(osfleet_apply_image "$layout" "$manifest" "$mnt") || fail "$layers"
if ! msg=$(osfleet_check_root "$mnt"); then
  rm -f "$mnt/$stamp"; sync
  fail "$msg"
fi
got=$(sed -n 's/^VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$mnt/etc/os-release" 2>/dev/null | head -n 1)
[ "$got" = "$ver" ] || fail "the written root is ${got:-no balenaOS release} (its /etc/os-release), the catalog says $ver"
jq -n --arg device_type "$dt" --arg version "$ver" --arg digest "$digest" --arg source "$source" \
  --arg written_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  '{device_type: $device_type, version: $version, digest: $digest, source: $source, written_at: $written_at}' \
  > "$mnt/$stamp.tmp" || fail "cannot write the stamp"
sync
mv "$mnt/$stamp.tmp" "$mnt/$stamp" || fail "cannot write the stamp"
sync
jq -n --argjson layers "$layers" --arg mode "$mode" --slurpfile stamp "$mnt/$stamp" \
  '{layers: $layers, mode: $mode, stamp: $stamp[0]}'
"""


class ExportWriter(RootWriter):
    """The inactive root holds the exported filesystem: fetched with skopeo into an OCI layout
    under the cache dir, written by applying the layers (or a delta on a copy of the active root)."""

    name = "export"

    def cache_probe(self, cache_dir: str) -> Script:
        return Script(CACHE_PROBE, (cache_dir,))

    def cache_state(self, cache_dir: str, extra: t.Mapping[str, t.Any]) -> CacheState:
        images = []
        for entry in extra.get("images") or []:
            image = _cached_image(entry)
            if image is not None:
                images.append(image)
        staging = tuple(str(s) for s in extra.get("staging") or [])
        return CacheState(cache_dir=cache_dir, images=tuple(images), staging=staging)

    def fetch_script(self, plan: FetchPlan, insecure: bool) -> Script:
        args = [plan.cache_dir, "1" if insecure else "0"]
        for attempt in plan.attempts:
            args.extend([attempt.kind, attempt.ref, attempt.digest, attempt.tag])
        return Script(FETCH_SCRIPT, tuple(args))

    def fetch_outcome(self, output: t.Mapping[str, t.Any]) -> FetchOutcome:
        attempts = [dict(a) for a in output.get("attempts") or []]
        ok = next((a for a in attempts if a.get("ok")), None)
        if not output.get("fetched") or ok is None:
            return FetchOutcome(None, attempts)
        image = CachedImage(
            name=str(output["fetched"]),
            digest=f"sha256:{output['fetched']}",
            kind=str(ok.get("kind", "")),
            ref=str(ok.get("ref", "")),
            bytes=int(output.get("bytes") or 0),
        )
        return FetchOutcome(image, attempts)

    def write_script(self, plan: RootfsPlan) -> Script:
        if plan.image is None:
            raise DeviceError("no image to write from")
        return Script(
            WRITE_SCRIPT,
            (
                plan.label,
                plan.dev,
                plan.mode,
                plan.layout_dir,
                plan.image.digest,
                str(plan.stamp["device_type"]),
                str(plan.stamp["version"]),
                str(plan.stamp["digest"]),
                str(plan.stamp["source"]),
            ),
        )


def _cached_image(entry: t.Mapping[str, t.Any]) -> CachedImage | None:
    """A cache entry whose index.json names exactly the manifest its directory is named after."""
    name = str(entry.get("name", ""))
    try:
        index = json.loads(entry.get("index") or "[]")
    except ValueError:
        return None
    if not isinstance(index, list) or index != [f"sha256:{name}"]:
        return None
    try:
        meta = json.loads(entry.get("meta") or "{}")
    except ValueError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    return CachedImage(
        name=name,
        digest=f"sha256:{name}",
        kind=str(meta.get("kind", "")),
        ref=str(meta.get("ref", "")),
        bytes=meta["bytes"] if isinstance(meta.get("bytes"), int) else 0,
    )


def writer_for(state: t.Any = None) -> RootWriter:
    """The writer for a device (only the export writer exists so far)."""
    del state
    return ExportWriter()


__all__ = ["ExportWriter", "FetchOutcome", "RootWriter", "Script", "writer_for"]
