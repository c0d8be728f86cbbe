# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostapp side of the lab's releases: what the balenaos device profile needs from a build.

* ``layer_size(tree)``: the bytes an image layer takes in the engine's store (files and link
  targets), what the device engine records in ``layerdb/sha256/<chain>/size``.
* ``layer_listing(tree)``: the canonical listing of a layer (path, kind, mode, sha256, the first
  path of a hard link, or link target), byte for byte what the device engine's ``listing_of`` prints for a layer directory
  (``os/rootfs/usr/lib/osfleet/engine/delta.sh``).
* ``delta_labels(...)``: the config labels of a delta image: balena-engine's
  ``io.resin.delta.base`` / ``io.resin.delta.config`` plus the lab's ``io.osfleet.delta.layers``
  (per target layer: reuse the base's, or the listing the rebuilt layer must match).
* ``root_image(cache_dir, build, device_type, version, size_mib)``: an ext4 image of a root
  partition holding the release's hostapp, written the way a balenaOS image build writes it:
  the release's own ``hostapp-update -f <docker-archive> -n``, run chrooted in the release root
  (built once per build, release and size, and shared; devices copy it into their disk).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .device import SECTOR, Partition, mkfs, prune_root_images
from .util import LabError, file_lock, run

LISTING_KINDS = {"dir": "d", "file": "f", "symlink": "l"}
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


HARDLINK_MIN = 64 * 1024  # smaller files that repeat stay separate files


def hardlinks(tree: Mapping[str, Any]) -> dict[str, str]:
    """path -> earlier path (sorted order) of a file of the layer with the same content and mode:
    what ``write_layer(..., hardlinks=True)`` writes as a hard link (files of HARDLINK_MIN bytes
    and more, e.g. the kernel in both /boot and /resin-boot)."""
    first: dict[tuple[str, int], str] = {}
    out: dict[str, str] = {}
    for path in sorted(tree):
        node = tree[path]
        if node.kind != "file" or node.size < HARDLINK_MIN:
            continue
        key = (node.sha256, node.mode)
        if key in first:
            out[path] = first[key]
        else:
            first[key] = path
    return out


def layer_size(tree: Mapping[str, Any], hardlinks_too: bool = False) -> int:
    """Bytes of the regular files and symlinks (their target's length) of a layer tree, a hard
    linked file once (the engine's layerdb size); ``hardlinks_too``: the layer was written with
    ``hardlinks=True``."""
    linked = hardlinks(tree) if hardlinks_too else {}
    return sum(node.size if node.kind == "file" else len((node.target or "").encode())
               for path, node in tree.items()
               if node.kind in ("file", "symlink") and path not in linked)


def layer_listing(tree: Mapping[str, Any], hardlinks_too: bool = False) -> str:
    """``<path>\t<d|f|h|l>\t<mode octal>\t<sha256 | first path (h) | link target | ->`` lines,
    sorted by their bytes (what ``LC_ALL=C sort`` gives on the device); ``h``: a hard link to the
    earlier path (``hardlinks_too``: the layer was written with ``hardlinks=True``)."""
    linked = hardlinks(tree) if hardlinks_too else {}
    lines = []
    for path, node in tree.items():
        if any(c in path for c in "\t\n|") or path.startswith("/") or ".." in path.split("/"):
            raise LabError(f"{path!r}: a lab image path cannot hold a tab, newline, '|' or '..'")
        kind = LISTING_KINDS[node.kind]
        data = {"file": node.sha256, "symlink": node.target}.get(node.kind, "-")
        if path in linked:
            kind, data = "h", linked[path]
        lines.append(f"{path}\t{kind}\t{node.mode & 0o7777:o}\t{data}\n")
    return "".join(sorted(lines, key=lambda line: line.encode()))


def delta_labels(base_image_id: str, base_diff_ids: Sequence[str], target_config: bytes,
                 target_layers: Sequence[Mapping[str, Any]], linked: Sequence[bool]) -> dict[str, str]:
    """Labels that let an engine rebuild the target image (``target_config``, whose layers are
    the trees ``target_layers``, written with ``hardlinks=linked[i]``) from the base image it
    holds."""
    diff_ids = json.loads(target_config)["rootfs"]["diff_ids"]
    if len(diff_ids) != len(target_layers):
        raise LabError("delta: the target config and its layer trees disagree")
    spec: list[dict[str, Any]] = []
    for i, (diff_id, tree) in enumerate(zip(diff_ids, target_layers)):
        if list(base_diff_ids[:i + 1]) == list(diff_ids[:i + 1]):
            spec.append({"diff_id": diff_id, "reuse": True})
        else:
            spec.append({"diff_id": diff_id, "listing": layer_listing(tree, linked[i])})
    return {
        "io.resin.delta.base": base_image_id,
        "io.resin.delta.config": target_config.decode(),
        "io.osfleet.delta.layers": json.dumps(spec, sort_keys=True, separators=(",", ":")),
    }


# The image build (meta-balena's create.ext4 runs `hostapp-update -f /input -n`): the release's
# own hostapp-update, chrooted in its root, with the partition being written bound at
# /mnt/sysroot/inactive, the archive's directory at /mnt/data and tmpfs wherever it writes.
# Nothing is written into the (shared, read-only) release root.
_IMAGE_BUILD_SH = r"""
set -e
R=$1 S=$2 D=$3
shift 3
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
for d in run tmp mnt/state var/volatile var/lock; do mount -t tmpfs -o mode=0755 image-build "$R/$d"; done
mount --bind "$S" "$R/mnt/sysroot/inactive"
mount --bind "$D" "$R/mnt/data"
exec chroot "$R" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/tmp TMPDIR=/tmp LANG=C "$@"
"""


def write_hostapp(release_root: Path, sysroot: Path, data: Path, archive: str) -> str:
    """Run the release's ``hostapp-update -f <archive> -n`` into ``sysroot`` (the partition's
    contents); ``archive`` is the path in the root (under ``/mnt/data``, i.e. ``data``)."""
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _IMAGE_BUILD_SH, "sh",
         os.fspath(release_root), os.fspath(sysroot), os.fspath(data),
         "/usr/bin/hostapp-update", "-f", archive, "-n"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "CHROOT_PATH": CHROOT_PATH})
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise LabError(f"hostapp-update -f -n of {release_root.name} failed (exit"
                       f" {proc.returncode}): {' | '.join(detail)}")
    return proc.stdout


def root_image(cache_dir: Path, build: Any, device_type: str, version: str, size_mib: int) -> Path:
    """ext4 image (label resin-rootA) of a partition holding the release's hostapp."""
    entry = build.release_info(device_type, version)
    images = cache_dir / "root-images"
    image = images / f"{build.key}-{device_type}-{entry['tag']}-hostapp-{size_mib}M.ext4"
    if image.exists():
        return image
    images.mkdir(parents=True, exist_ok=True)
    with file_lock(images / ".lock", "the root image cache"):
        if image.exists():
            return image
        with tempfile.TemporaryDirectory(dir=images, prefix=".hostapp-") as tmp_s:
            tmp = Path(tmp_s)
            data, sysroot = tmp / "data", tmp / "sysroot"
            data.mkdir()
            sysroot.mkdir()
            # the image as a docker-archive, as `docker save` would give it to the image build
            run(["skopeo", "copy", "--quiet", f"oci:{build.oci_dir}:{entry['ref']}",
                 f"docker-archive:{data / 'hostapp.tar'}:{entry['repository']}:{entry['tag']}"],
                timeout=300)
            write_hostapp(build.rootfs(device_type, version), sysroot, data, "/mnt/data/hostapp.tar")
            current = sysroot / "current"
            if not current.is_symlink() or not (sysroot / "boot" / "init").is_file():
                raise LabError(f"hostapp-update wrote no bootable hostapp for {device_type} {version}")
            part = Partition(2, "resin-rootA", 0, size_mib * 1024 * 1024 // SECTOR)
            building = tmp / "image.ext4"
            building.touch()
            mkfs(building, part, sysroot)
            os.replace(building, image)
        prune_root_images(cache_dir)
    return image
