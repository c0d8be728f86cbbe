# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""How a release gets onto the inactive root partition: the writer seam (DESIGN §3).

Two ways exist to fill the inactive root. On generic A/B devices and in the lab, the partition
holds the exported root filesystem itself (:class:`ExportWriter`). On a real balenaOS device it
holds a hostapp that only the device's ``hostapp-update`` writes correctly (:class:`HostappWriter`,
chosen per device from the probe: steps/hostapp.py ``choose_writer``).

A writer only turns plans (``steps/fetch.py``, ``steps/rootfs.py``) into script calls (``scripts/probe_cache.sh``,
``fetch.sh``, ``write_root.sh`` with their parameters), and parses what the scripts print. The
steps do the probing, deciding and verifying.
"""

from __future__ import annotations

import abc
import json
import typing as t
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, parse_json
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.registry import RegistryAuth
from ansible_collections.osfleet.hup.plugins.plugin_utils.shell import Call
from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CachedImage, CacheState
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import FetchPlan
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.hostapp import WRITER_AUTO, WRITER_HOSTAPP, HostappAttempt, HostappPlan, choose_writer
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.rootfs import RootfsPlan


@dataclass(frozen=True)
class FetchOutcome:
    image: CachedImage | None
    attempts: list[dict[str, t.Any]]


class RootWriter(abc.ABC):
    """The interface the fetch and rootfs steps use."""

    name: t.ClassVar[str]

    @abc.abstractmethod
    def cache_probe(self, cache_dir: str) -> Call:
        """A probe extension (``probe_<name>``) that reports the image cache."""

    @abc.abstractmethod
    def cache_state(self, cache_dir: str, extra: t.Mapping[str, t.Any]) -> CacheState:
        """Parse the cache probe's output (``DeviceState.extra``)."""

    @abc.abstractmethod
    def fetch_script(self, plan: FetchPlan, insecure: bool, auth: RegistryAuth | None = None) -> Call:
        """Try the plan's sources in order (logged in with ``auth`` first); leave a verified image in the cache or nothing."""

    @abc.abstractmethod
    def fetch_outcome(self, output: t.Mapping[str, t.Any]) -> FetchOutcome:
        """Parse what the fetch script printed."""

    @abc.abstractmethod
    def write_script(self, plan: RootfsPlan) -> Call:
        """Write the inactive root from the cached image and stamp it last."""


class ExportWriter(RootWriter):
    """The inactive root holds the exported filesystem: fetched with skopeo into an OCI layout
    under the cache dir, written by applying the layers (or a delta on a copy of the active root)."""

    name = "export"

    def cache_probe(self, cache_dir: str) -> Call:
        return Call("probe_cache", {"cache_dir": cache_dir})

    def cache_state(self, cache_dir: str, extra: t.Mapping[str, t.Any]) -> CacheState:
        images = []
        for entry in extra.get("images") or []:
            image = _cached_image(entry)
            if image is not None:
                images.append(image)
        staging = tuple(str(s) for s in extra.get("staging") or [])
        info = extra.get("cache") or {}
        entries = info.get("entries")
        return CacheState(
            cache_dir=cache_dir, images=tuple(images), staging=staging,
            exists=info.get("exists") is True, directory=info.get("directory") is True,
            mount_point=info.get("mount_point") is True, marked=info.get("marked") is True,
            entries=entries if isinstance(entries, int) else 0,
            names=tuple(str(n) for n in (info.get("names") or [])[:5]),
        )

    def fetch_script(self, plan: FetchPlan, insecure: bool, auth: RegistryAuth | None = None) -> Call:
        attempts = [{"kind": a.kind, "ref": a.ref, "digest": a.digest, "tag": a.tag} for a in plan.attempts]
        return Call("fetch", {"cache": plan.cache_dir, "insecure": insecure,
                              "input": {"attempts": attempts, "auth": auth.device_input() if auth else None}})

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

    def write_script(self, plan: RootfsPlan) -> Call:
        if plan.image is None:
            raise DeviceError("no image to write from")
        return Call("write_root", {
            "label": plan.label,
            "want_dev": plan.dev,
            "mode": plan.mode,
            "layout": plan.layout_dir,
            "manifest": plan.image.digest,
            "device_type": plan.stamp["device_type"],
            "version": plan.stamp["version"],
            "digest": plan.stamp["digest"],
            "source": plan.stamp["source"],
            "listing_sha256": plan.listing.sha256 if plan.listing else "",
            "listing_entries": plan.listing.entries if plan.listing else "",
        })


def _cached_image(entry: t.Mapping[str, t.Any]) -> CachedImage | None:
    """A cache entry whose index.json names exactly the manifest its directory is named after."""
    name = str(entry.get("name", ""))
    try:
        index = parse_json(entry.get("index") or "[]")
    except ValueError:
        return None
    if not isinstance(index, list) or index != [f"sha256:{name}"]:
        return None
    try:
        meta = parse_json(entry.get("meta") or "{}")
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


class HostappWriter:
    """The inactive root holds a hostapp that the device's own ``hostapp-update`` writes
    (steps/hostapp.py decides, scripts/hostapp_*.sh act). With the pull transport nothing is
    fetched ahead and the write is ``hostapp-update -i REF``; with the push transport the fetch
    streams a saved image (plugin_utils/archive.py) into a directory of its own on the data
    partition, checked there (scripts/hostapp_image_*.sh), and the write is ``hostapp-update -f
    FILE``. Either runs detached from the SSH session, waited for in calls of at most ``wait``
    seconds, then the stamp once the controller verified the new hostapp's image id."""

    name = "hostapp"

    @staticmethod
    def start_script(plan: HostappPlan, attempt: HostappAttempt, wait: int, insecure: bool = False,
                     auth: RegistryAuth | None = None) -> Call:
        """Start hostapp-update; with ``auth`` (a pull), logged in first (``balena login --password-stdin``
        into a private DOCKER_CONFIG of the job, removed when it ends)."""
        return Call("hostapp_write", {"label": plan.label, "want_dev": plan.dev, "flag": attempt.flag, "image": attempt.job_image,
                                      "wait": wait, "image_id": plan.image_id, "scheme": "http" if insecure else "https",
                                      "creds": auth.device_input() if auth and attempt.flag == "-i" else ""})

    @staticmethod
    def anonymous_script(insecure: bool, registries: t.Sequence[str]) -> Call:
        """Ask the registries' /v2/ without credentials: which want them (a Basic challenge)."""
        return Call("registry_login", {"tool": "none", "scheme": "http" if insecure else "https", "creds": {"registries": list(registries)}})

    @staticmethod
    def login_script(insecure: bool, auth: RegistryAuth) -> Call:
        """Check the credentials on the device (``balena login --password-stdin`` into a private
        directory that is removed again): what the fetch does ahead of the rootfs step's pull."""
        return Call("registry_login", {"tool": "balena", "scheme": "http" if insecure else "https", "creds": auth.device_input()})

    # the push transport: saved images in a directory of their own on the data partition

    @staticmethod
    def image_probe_script(image_dir: str, name: str, part: str = "") -> Call:
        return Call("hostapp_image_probe", {"dir": image_dir, "name": name, "part": part})

    #: streams one chunk: DeviceSession.run_with_bytes(script, chunk, **params)
    PUT_SCRIPT = "hostapp_image_put"

    @staticmethod
    def put_params(image_dir: str, part: str, offset: int) -> dict[str, t.Any]:
        return {"dir": image_dir, "part": part, "offset": offset}

    @staticmethod
    def image_check_script(image_dir: str, source: str, name: str, image_id: str, sha256: str, meta: t.Mapping[str, t.Any],
                           remove: bool) -> Call:
        return Call("hostapp_image_check", {"dir": image_dir, "from": source, "name": name, "image_id": image_id, "sha256": sha256,
                                            "meta": json.dumps(dict(meta), sort_keys=True), "remove": remove})

    @staticmethod
    def image_drop_script(image_dir: str, name: str) -> Call:
        return Call("hostapp_image_drop", {"dir": image_dir, "name": name})

    @staticmethod
    def wait_script(wait: int) -> Call:
        return Call("hostapp_wait", {"wait": wait})

    @staticmethod
    def stamp_script(plan: HostappPlan, source: str) -> Call:
        return Call("hostapp_stamp", {
            "label": plan.label, "want_dev": plan.dev, "image_id": plan.image_id, "device_type": plan.stamp["device_type"],
            "version": plan.stamp["version"], "digest": plan.stamp["digest"], "source": source,
        })


def writer_for(state: DeviceState | None = None, forced: str = WRITER_AUTO) -> RootWriter | HostappWriter:
    """The writer for a device: the hostapp writer on a balenaOS device (its running root holds a
    hostapp), the export writer otherwise (steps.hostapp.choose_writer; ``forced`` wins)."""
    if state is None:
        return ExportWriter()
    return HostappWriter() if choose_writer(state, forced) == WRITER_HOSTAPP else ExportWriter()


__all__ = ["ExportWriter", "FetchOutcome", "HostappWriter", "RootWriter", "writer_for"]
