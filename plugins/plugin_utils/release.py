# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The release a step works towards: the options every release step shares (the doc fragment
``osfleet.hup.release``), the target resolved against the catalog and the device, and the views of
it that results show.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog, Release, load_catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.registry import RegistryAuth
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version

#: the inactive root must hold the unpacked release with this much headroom (ext4 blocks, directories;
#: the lab's roots take 1.05 times their size_unpacked)
ROOT_UNPACKED_HEADROOM = 1.1
#: without size_unpacked only the pull (compressed) size is known: the old guess of the unpacked size
ROOT_SIZE_FACTOR = 1.2
MIB = 1024 * 1024


def open_catalog(args: t.Mapping[str, t.Any]) -> Catalog:
    """Load the catalog a step's options name (``catalog``, with ``catalog_sha256`` and
    ``catalog_allow_http``, doc fragment ``osfleet.hup.release.catalog``); every error names the
    catalog (the only I/O in this module)."""
    source = str(args["catalog"])
    try:
        return load_catalog(source, sha256=args.get("catalog_sha256"), allow_http=bool(args.get("catalog_allow_http")))
    except CatalogError as exc:
        text = str(exc)
        raise CatalogError(text if source in text else f"catalog {source}: {text}") from None


def release_dict(release: Release) -> dict[str, t.Any]:
    """The catalog entry of a release as plain data (for results)."""
    return {
        "device_type": release.device_type,
        "version": release.version,
        "digest": release.digest,
        "repository": release.repository,
        "tag": release.tag,
        "size": release.size,
        "size_unpacked": release.size_unpacked,
        "supervisor_version": release.supervisor_version,
        "layout": release.layout,
        "arch": release.arch,
        "disk_image": release.disk_image,
        "deltas": [
            {"from": d.from_version, "repository": d.repository, "tag": d.tag, "digest": d.digest, "size": d.size}
            for d in release.deltas
        ],
    }


def stamp_summary(stamp: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    """What the diff shows of a release stamp (None: no stamp)."""
    if not stamp:
        return None
    return {k: stamp.get(k) for k in ("device_type", "version", "digest", "source")}


@dataclass(frozen=True)
class ReleaseArgs:
    """The options every release step shares (doc fragment ``osfleet.hup.release``)."""

    target_version: str
    device_type: str | None = None
    registry_insecure: bool | None = None

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any]) -> ReleaseArgs:
        return cls(str(args["target_version"]), args.get("device_type"), args.get("registry_insecure"))


@dataclass(frozen=True)
class Target:
    """The release a step works towards, resolved against the catalog and the device."""

    device_type: str
    release: Release
    registries: dict[str, str]
    insecure: bool


def resolve_target(args: ReleaseArgs, catalog: Catalog, state: DeviceState) -> Target:
    """The target release; CatalogError names the device type and the known versions."""
    device_type = args.device_type or state.device_type
    release = catalog.release(device_type, args.target_version)
    return Target(device_type, release, catalog.registries, catalog.registry_insecure(args.registry_insecure))


def registry_auth(args: t.Mapping[str, t.Any], target: Target) -> RegistryAuth | None:
    """The credentials of the target's registries (options of the doc fragment osfleet.hup.release.registry_auth),
    None when the task gives none; PlanError for credentials that cannot be used."""
    try:
        return RegistryAuth.from_args(args, target.registries.values())
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def active_release(catalog: Catalog, device_type: str, state: DeviceState) -> Release | None:
    """The catalog release the active root verifiably holds: its stamp names a catalog release
    of this device type with the same digest (so a delta from that release applies to it)."""
    stamp = state.active_stamp or {}
    version, digest = stamp.get("version"), stamp.get("digest")
    if not isinstance(version, str) or not isinstance(digest, str):
        return None
    if stamp.get("device_type") not in (None, device_type):
        return None
    try:
        release = catalog.release(device_type, version)
    except CatalogError:
        return None
    return release if release.digest == digest else None


def inactive_is_target(target: Target, state: DeviceState) -> bool:
    """The inactive root's stamp names the target's digest and version; on a hostapp device its
    hostapp is also the target's image (the stamp lies at the partition's top, where the device's
    own ``hostapp-update`` leaves it: it wipes only the engine and ``hostapps/``)."""
    stamp = state.inactive_stamp or {}
    if stamp.get("digest") != target.release.digest or not same_version(str(stamp.get("version", "")), target.release.version):
        return False
    if not state.hostapp:
        return True
    return hostapp_is_target(target, state)


def hostapp_is_target(target: Target, state: DeviceState) -> bool:
    """The inactive partition's hostapp is the target's image (by image id, the catalog's
    ``image_id``; the stamp's ``image_id`` when the catalog gives none)."""
    held = state.inactive_hostapp
    if held is None or not held.image_id:
        return False
    want = target.release.image_id or str((state.inactive_stamp or {}).get("image_id") or "")
    return bool(want) and held.image_id == want


def root_space_problem(release: Release, state: DeviceState) -> str | None:
    """Why the release does not fit the inactive root (None: it fits, or nothing is known).

    The need is the catalog's ``size_unpacked`` (what the image holds once unpacked) with headroom;
    a catalog without it only has the pull size, compressed, so the need is a guess from that.
    """
    root_kib = state.size_kib.get("inactive")
    if root_kib is None:
        return None
    if release.size_unpacked:
        need, why = int(release.size_unpacked * ROOT_UNPACKED_HEADROOM), f"size_unpacked {-(-release.size_unpacked // MIB)} MiB × {ROOT_UNPACKED_HEADROOM}"
    elif release.size:
        need, why = int(release.size * ROOT_SIZE_FACTOR), f"pull size × {ROOT_SIZE_FACTOR}; the catalog has no size_unpacked"
    else:
        return None
    if root_kib * 1024 >= need:
        return None
    return (f"the inactive root {state.inactive_label} is too small: {root_kib // 1024} MiB, "
            f"{release.version} needs {-(-need // MIB)} MiB unpacked ({why})")


def optional_release(args: t.Mapping[str, t.Any], dev: DeviceState) -> Release | None:
    """The release named by the optional release options (``catalog`` + ``target_version``) of the
    switch steps, or None."""
    if not args.get("catalog"):
        return None
    if not args.get("target_version"):
        raise PlanError("catalog is given without target_version: name the release to check against")
    device_type = args.get("device_type") or dev.device_type
    return open_catalog(args).release(device_type, str(args["target_version"]))
