# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The image cache on the device (``<cache_dir>/<digest hex>``, OCI layouts moved there only after
verification) and what the inactive root can be written from. Shared by fetch and rootfs.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import Target, active_release


def digest_hex(digest: str) -> str:
    """``sha256:abc...`` → ``abc...``"""
    return digest.split(":", 1)[1] if ":" in digest else digest


@dataclass(frozen=True)
class CachedImage:
    """A verified OCI layout ``<cache_dir>/<hex>`` (moved there only after verification)."""

    name: str
    digest: str
    kind: str = ""
    ref: str = ""
    bytes: int = 0


#: the file that marks a directory as the collection's image cache (written by scripts/fetch.sh)
CACHE_MARKER = ".osfleet-cache"


@dataclass(frozen=True)
class CacheState:
    """The image cache as probed. ``entries``/``names``: how many entries the directory holds, and
    the first few names (for the message that refuses a directory the collection did not make)."""

    cache_dir: str
    images: tuple[CachedImage, ...] = ()
    staging: tuple[str, ...] = ()
    exists: bool = False
    directory: bool = False
    mount_point: bool = False
    marked: bool = False
    entries: int = 0
    names: tuple[str, ...] = ()

    def find(self, digest: str) -> CachedImage | None:
        return next((i for i in self.images if i.name == digest_hex(digest) and i.digest == digest), None)


@dataclass(frozen=True)
class Wanted:
    """What the inactive root can be written from: the full image, or a delta on the active root."""

    full_digest: str
    delta_digest: str | None
    delta_from: str | None


def wanted_images(target: Target, catalog: Catalog, state: DeviceState) -> Wanted:
    base = active_release(catalog, target.device_type, state)
    delta = target.release.delta_from(base.version) if base is not None else None
    return Wanted(
        full_digest=target.release.digest,
        delta_digest=delta.digest if delta else None,
        delta_from=base.version if (delta and base) else None,
    )


def cache_dir_problem(path: str) -> str | None:
    """cache_dir is removed from (stale and other layouts): only an absolute, normalised,
    at least two levels deep path without line breaks is accepted."""
    normal = posixpath.normpath(path) if path else ""
    if not path.startswith("/") or normal != path.rstrip("/") or normal.count("/") < 2 or any(c in path for c in "\n\r\0"):
        return f"cache_dir {path!r} must be an absolute, normalised path at least two levels deep"
    return None


def cache_problem(cache: CacheState) -> str | None:
    """The image cache must be a directory of its own that the collection made and marked (fetch
    removes what it made there): refuse a mount point (``/mnt/data``, ``/mnt/boot``, ...), a
    non-directory, and a non-empty directory without the marker."""
    where = cache.cache_dir
    if not cache.exists:
        return None
    if not cache.directory:
        return f"refusing cache_dir {where}: it exists and is not a directory"
    if cache.mount_point:
        return f"refusing cache_dir {where}: it is a mount point; the image cache must be a directory of its own"
    if not cache.marked and cache.entries:
        shown = ", ".join(cache.names) + (", ..." if cache.entries > len(cache.names) else "")
        return (f"refusing cache_dir {where}: it is not empty ({shown}) and has no {CACHE_MARKER}, "
                "so osfleet.hup did not make it; give a new or empty directory")
    return None


def oci_tag(text: str) -> str:
    """A valid OCI layout ref name for ``text`` (``2.113.0+rev1`` → ``2.113.0_rev1``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:128] or "latest"
