# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Saved images on the controller: the push transport of the hostapp writer (steps/hostapp.py).

For own-registry and air-gapped fleets the controller gets the release itself, by digest, with
``skopeo copy docker://REG/REPO@DIGEST docker-archive:FILE:REG/REPO:TAG`` (skopeo checks the
manifest against the digest and every blob against its own), keeps the archive in a cache
directory of its own on the controller (one file per image id, reused across devices and runs,
moved into place only once verified), and streams it to the device, whose ``hostapp-update -f``
loads it. A ``docker save`` archive has no RepoDigests, so it is recognised by its image id: the
config member must hash to the catalog's ``image_id`` and every layer member, in manifest order,
to the config's ``diff_ids`` at its position (:func:`archive_problem`). The device checks the same
before anything loads it (scripts/_lib.sh ``osfleet_archive_check``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import typing as t
from collections.abc import Iterator
from dataclasses import asdict, dataclass

#: the controller's cache of saved images when the option does not name one
CACHE_SUBDIR = os.path.join("osfleet-hup", "images")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: member names a device script may pass to tar (scripts/_lib.sh osfleet_archive_check refuses others too)
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_CHUNK = 1024 * 1024


def default_cache_dir(env: t.Mapping[str, str] | None = None) -> str:
    """``$XDG_CACHE_HOME/osfleet-hup/images``, else ``~/.cache/osfleet-hup/images``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, CACHE_SUBDIR)


def image_hex(image_id: str) -> str:
    """The 64 hex digits of an image id (``sha256:<hex>``); ValueError otherwise."""
    hexpart = image_id[len("sha256:"):] if image_id.startswith("sha256:") else ""
    if not _HEX64.match(hexpart):
        raise ValueError(f"not an image id: {image_id!r}")
    return hexpart


def archive_name(image_id: str) -> str:
    """The file name of a release's saved image, on the controller and on the device."""
    return f"{image_hex(image_id)}.tar"


def archive_tag(registry: str, repository: str, tag: str) -> str:
    """The name the archive carries (what ``balena load`` prints and ``hostapp-update -f`` creates
    the hostapp from): the primary registry's name of the release, whichever registry it came from."""
    return f"{registry}/{repository}:{tag}"


@dataclass(frozen=True)
class SavedImage:
    """A verified archive in the controller's cache and where it came from."""

    path: str
    image_id: str
    sha256: str
    size: int
    kind: str
    ref: str
    digest: str

    def meta(self) -> dict[str, t.Any]:
        return {k: v for k, v in asdict(self).items() if k != "path"}


def _sha256_stream(handle: t.IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(block)
    return "sha256:" + digest.hexdigest()


def file_sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return _sha256_stream(handle)


def archive_problem(path: str, image_id: str) -> str | None:
    """Why the docker-archive at ``path`` is not the image ``image_id`` (None: it is): one image in
    ``manifest.json``, its config hashes to the image id, each layer to its diff_id."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}

            def read(name: str) -> bytes:
                member = members.get(name)
                handle = tar.extractfile(member) if member is not None and member.isfile() else None
                if handle is None:
                    raise KeyError(name)
                return handle.read()

            try:
                manifest = json.loads(read("manifest.json"))
            except (KeyError, ValueError):
                return "it has no readable manifest.json"
            if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
                return "its manifest.json does not describe exactly one image"
            config_name, layers = manifest[0].get("Config"), manifest[0].get("Layers")
            if not isinstance(config_name, str) or not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
                return "its manifest.json has no Config or Layers"
            for name in [config_name, *layers]:
                if not _MEMBER.match(name) or ".." in name.split("/"):
                    return f"its manifest.json names the member {name!r}"
            try:
                config = read(config_name)
            except KeyError:
                return f"it has no config member {config_name}"
            found = "sha256:" + hashlib.sha256(config).hexdigest()
            if found != image_id:
                return f"its config is image {found}, not {image_id}"
            try:
                diff_ids = json.loads(config)["rootfs"]["diff_ids"]
            except (ValueError, KeyError, TypeError):
                return "its config has no rootfs.diff_ids"
            if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
                return f"its config names {len(diff_ids) if isinstance(diff_ids, list) else '?'} layers, its manifest.json {len(layers)}"
            for index, (name, diff_id) in enumerate(zip(layers, diff_ids)):
                member = members.get(name)
                handle = tar.extractfile(member) if member is not None and member.isfile() else None
                if handle is None:
                    return f"it has no layer member {name}"
                found = _sha256_stream(handle)
                if found != diff_id:
                    return f"its layer {index + 1} ({name}) is {found}, not the config's diff_id {diff_id}"
    except (OSError, tarfile.TarError) as exc:
        return f"it is not a readable tar archive ({exc})"
    return None


class ControllerCache:
    """The controller's directory of saved images: ``<image hex>.tar`` and its ``.json`` (where it came from)."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(os.path.expanduser(directory))

    def path(self, image_id: str) -> str:
        return os.path.join(self.directory, archive_name(image_id))

    @contextlib.contextmanager
    def locked(self, image_id: str) -> Iterator[None]:
        """One process at a time gets or checks a given image (forks of one play, two plays)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with open(os.path.join(self.directory, f".{image_hex(image_id)}.lock"), "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def lookup(self, image_id: str) -> SavedImage | None:
        """The cached archive of ``image_id`` with its record, unverified (None: not there)."""
        path = self.path(image_id)
        try:
            with open(path + ".json", encoding="utf-8") as handle:
                meta = json.load(handle)
            size = os.path.getsize(path)
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("image_id") != image_id or meta.get("size") != size:
            return None
        try:
            return SavedImage(path=path, image_id=image_id, sha256=str(meta["sha256"]), size=size, kind=str(meta["kind"]),
                              ref=str(meta["ref"]), digest=str(meta["digest"]))
        except KeyError:
            return None

    def drop(self, image_id: str) -> None:
        for path in (self.path(image_id), self.path(image_id) + ".json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def verified(self, image_id: str) -> tuple[SavedImage | None, str | None]:
        """The cached archive when it still is the image (its sha256 as recorded, its digests);
        else it is removed and the reason given."""
        saved = self.lookup(image_id)
        if saved is None:
            return None, None
        problem = archive_problem(saved.path, image_id)
        if problem is None and file_sha256(saved.path) != saved.sha256:
            problem = "its sha256 is not the recorded one"
        if problem is not None:
            self.drop(image_id)
            return None, problem
        return saved, None

    def add(self, image_id: str, copy: t.Callable[[str], None], kind: str, ref: str, digest: str) -> SavedImage:
        """``copy(tmp_path)`` writes the archive; it is verified, then moved into place with its
        record (both atomically). ArchiveError when it is not the image: nothing is kept."""
        work = tempfile.mkdtemp(prefix=".get-", dir=self.directory)
        try:
            tmp = os.path.join(work, "image.tar")
            copy(tmp)
            problem = archive_problem(tmp, image_id)
            if problem is not None:
                raise ArchiveError(f"the image that {ref} names is not the catalog's image {image_id}: {problem}")
            saved = SavedImage(path=self.path(image_id), image_id=image_id, sha256=file_sha256(tmp), size=os.path.getsize(tmp),
                               kind=kind, ref=ref, digest=digest)
            with open(os.path.join(work, "meta.json"), "w", encoding="utf-8") as handle:
                json.dump(saved.meta(), handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, saved.path)
            os.replace(os.path.join(work, "meta.json"), saved.path + ".json")
            return saved
        finally:
            shutil.rmtree(work, ignore_errors=True)


class ArchiveError(Exception):
    """An archive that is not the image the catalog names."""


__all__ = ["ArchiveError", "ControllerCache", "SavedImage", "archive_name", "archive_problem", "archive_tag", "default_cache_dir",
           "file_sha256", "image_hex"]
