# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The release catalog (docs/internals.md §3): load, validate, look up.

Keys that start with ``x-`` (at the top level, in a device type, a release or a delta) belong to
the tools that write the catalog (the lab's ``x-osfleet-lab``); the collection ignores them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import yaml

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import BalenaVersion, VersionLike, parse_version

FetchUrl = Callable[[str], bytes]

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
SCHEMA_VERSION = 1
URL_TIMEOUT = 30

KIND_DELTA = "delta"
KIND_REGISTRY = "registry"
KIND_FALLBACK = "fallback"


def _image_ref(registry: str, repository: str, digest: str) -> str:
    return f"{registry.rstrip('/')}/{repository}@{digest}"


@dataclass(frozen=True)
class Delta:
    """A delta image: the changes from release ``from_version`` to the release that lists it."""

    from_version: str
    repository: str
    tag: str | None
    digest: str
    size: int | None

    def image_ref(self, registry: str) -> str:
        """``registry/repository@sha256:...``"""
        return _image_ref(registry, self.repository, self.digest)


@dataclass(frozen=True)
class RootListing:
    """A release's ``root_listing``: the sha256 (64 hex digits) of the canonical listing of its whole
    root filesystem (docs/internals.md §3) and how many entries (lines) that listing has."""

    sha256: str
    entries: int


@dataclass
class Release:
    """One OS release of one device type."""

    device_type: str
    version: str
    parsed: BalenaVersion
    arch: str | None
    layout: str | None
    repository: str
    tag: str | None
    digest: str
    size: int | None
    supervisor_version: str | None
    disk_image: dict[str, Any] | None
    deltas: list[Delta] = field(default_factory=list)
    #: bytes of the root filesystem once the image is unpacked (files and link targets of all its
    #: layers); None: the catalog does not say
    size_unpacked: int | None = None
    #: the listing the written root must have (rootfs checks it, for a delta and a full image);
    #: None: the catalog does not say, the root is checked only against what the image brought
    root_listing: RootListing | None = None
    #: the image id (``sha256:`` of the image's config) an engine gives the release: how a hostapp
    #: written by ``hostapp-update`` is recognised; None: the catalog does not say
    image_id: str | None = None

    def delta_from(self, version: VersionLike) -> Delta | None:
        """The delta whose base is ``version`` (compared as versions), or None."""
        wanted = parse_version(version)
        return next((delta for delta in self.deltas if parse_version(delta.from_version) == wanted), None)

    def image_ref(self, registry: str) -> str:
        """``registry/repository@sha256:...``"""
        return _image_ref(registry, self.repository, self.digest)


@dataclass(frozen=True)
class Supervisor:
    """A supervisor image the catalog vouches for: pulled by its manifest digest, never by tag."""

    version: str
    repository: str | None
    digest: str


@dataclass(frozen=True)
class Source:
    """One place to fetch a release from, in the order the fetch step tries them."""

    kind: str
    registry: str
    ref: str
    digest: str
    size: int | None


# --- validation --------------------------------------------------------------------------------

class _Problems:
    """Collects schema problems so that one CatalogError can name all of them."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def string(self, item: Mapping[str, Any], key: str, where: str, required: bool = True) -> str | None:
        value = item.get(key)
        if value is None:
            if required:
                self.add(where, f"missing {key!r}")
            return None
        if not isinstance(value, str) or not value:
            self.add(where, f"{key!r} must be a non-empty string, got {value!r}")
            return None
        return value

    def digest(self, item: Mapping[str, Any], key: str, where: str) -> str | None:
        value = self.string(item, key, where)
        if value is not None and not DIGEST_RE.fullmatch(value):
            self.add(where, f"{key} {value!r} is not sha256:<64 lowercase hex digits>")
            return None
        return value

    def version(self, item: Mapping[str, Any], key: str, where: str, required: bool = True) -> BalenaVersion | None:
        value = self.string(item, key, where, required)
        if value is None:
            return None
        try:
            return parse_version(value)
        except ValueError as exc:
            self.add(where, str(exc))
            return None

    def size(self, item: Mapping[str, Any], key: str, where: str) -> int | None:
        value = item.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            self.add(where, f"{key!r} must be a non-negative integer, got {value!r}")
            return None
        return value

    def mapping(self, value: Any, where: str) -> bool:
        if not isinstance(value, Mapping):
            self.add(where, f"must be a mapping, got {type(value).__name__}")
            return False
        return True


def _entries(problems: _Problems, raw: Any, where: str, label: str, prefix: str) -> list[tuple[str, Mapping[str, Any]]]:
    """The mapping entries of a list field with their spots (``<prefix>[i]``); a non-list is one problem."""
    raw = raw or []
    if not isinstance(raw, list):
        problems.add(where, f"{label}must be a list, got {type(raw).__name__}")
        return []
    spots = [(f"{prefix}[{index}]", entry) for index, entry in enumerate(raw)]
    return [(spot, entry) for spot, entry in spots if problems.mapping(entry, spot)]


def _check_deltas(problems: _Problems, item: Mapping[str, Any], where: str, repository: str | None) -> list[Delta]:
    deltas = []
    for spot, entry in _entries(problems, item.get("deltas"), where, "'deltas' ", f"{where} deltas"):
        from_version = problems.version(entry, "from", spot)
        digest = problems.digest(entry, "digest", spot)
        delta_repo = problems.string(entry, "repository", spot, required=False) or repository
        tag = problems.string(entry, "tag", spot, required=False)
        size = problems.size(entry, "size", spot)
        if from_version is not None and digest is not None and delta_repo is not None:
            deltas.append(Delta(str(from_version), delta_repo, tag, digest, size))
    return deltas


def _check_disk_image(problems: _Problems, item: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    disk = item.get("disk_image")
    if disk is None:
        return None
    spot = f"{where} disk_image"
    if not problems.mapping(disk, spot):
        return None
    problems.string(disk, "url", spot)
    sha = problems.string(disk, "sha256", spot)
    if sha is not None and not HEX64_RE.fullmatch(sha):
        problems.add(spot, f"sha256 {sha!r} is not 64 lowercase hex digits")
    problems.size(disk, "size", spot)
    problems.size(disk, "raw_size", spot)  # the disk unpacked: what the takeover needs on the device's disk
    return dict(disk)


def _check_root_listing(problems: _Problems, item: Mapping[str, Any], where: str) -> RootListing | None:
    """``root_listing``: ``{"sha256": <64 lowercase hex digits>, "entries": <a positive integer>}``, optional."""
    raw = item.get("root_listing")
    if raw is None:
        return None
    spot = f"{where} root_listing"
    if not problems.mapping(raw, spot):
        return None
    sha = problems.string(raw, "sha256", spot)
    if sha is not None and not HEX64_RE.fullmatch(sha):
        problems.add(spot, f"sha256 {sha!r} is not 64 lowercase hex digits")
        sha = None
    entries = raw.get("entries")
    if entries is None:
        problems.add(spot, "missing 'entries'")
    elif isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
        problems.add(spot, f"'entries' must be a positive integer, got {entries!r}")
        entries = None
    if sha is None or entries is None:
        return None
    return RootListing(sha, entries)


def _check_release(problems: _Problems, index: int, item: Any) -> Release | None:
    where = f"releases[{index}]"
    if not problems.mapping(item, where):
        return None
    if isinstance(item.get("device_type"), str) and isinstance(item.get("version"), str):
        where = f"releases[{index}] ({item['device_type']} {item['version']})"
    before = len(problems.items)
    device_type = problems.string(item, "device_type", where)
    parsed = problems.version(item, "version", where)
    repository = problems.string(item, "repository", where)
    digest = problems.digest(item, "digest", where)
    optional = {key: problems.string(item, key, where, required=False) for key in ("arch", "layout", "tag", "supervisor_version")}
    size = problems.size(item, "size", where)
    size_unpacked = problems.size(item, "size_unpacked", where)
    image_id = problems.digest(item, "image_id", where) if item.get("image_id") is not None else None
    disk_image = _check_disk_image(problems, item, where)
    root_listing = _check_root_listing(problems, item, where)
    deltas = _check_deltas(problems, item, where, repository)
    if len(problems.items) > before or device_type is None or parsed is None or repository is None or digest is None:
        return None
    return Release(
        device_type=device_type,
        version=item["version"],
        parsed=parsed,
        repository=repository,
        digest=digest,
        size=size,
        size_unpacked=size_unpacked,
        root_listing=root_listing,
        image_id=image_id,
        disk_image=disk_image,
        deltas=deltas,
        **optional,
    )


def _check_top(problems: _Problems, data: Mapping[str, Any]) -> None:
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        problems.add("schema", f"unsupported schema {schema!r} (this collection reads schema {SCHEMA_VERSION})")
    registries = data.get("registries", {})
    if problems.mapping(registries, "registries"):
        for name, value in registries.items():
            if not isinstance(value, str) or not value:
                problems.add("registries", f"{name!r} must be a non-empty string, got {value!r}")
    if not isinstance(data.get("insecure_registries", False), bool):
        problems.add("insecure_registries", "must be true or false")
    problems.string(data, "supervisor_repository", "catalog", required=False)
    _check_supervisors(problems, data)
    device_types = data.get("device_types", {})
    if problems.mapping(device_types, "device_types"):
        for name, entry in device_types.items():
            if problems.mapping(entry, f"device_types.{name}"):
                problems.version(entry, "min_takeover_version", f"device_types.{name}", required=False)


def _check_supervisors(problems: _Problems, data: Mapping[str, Any]) -> list[Supervisor]:
    """``supervisors``: ``[{version, digest, repository?}]`` (repository: ``supervisor_repository``)."""
    found = []
    for spot, entry in _entries(problems, data.get("supervisors"), "supervisors", "", "supervisors"):
        version = problems.version(entry, "version", spot)
        digest = problems.digest(entry, "digest", spot)
        repository = problems.string(entry, "repository", spot, required=False) or data.get("supervisor_repository")
        if version is not None and digest is not None:
            found.append(Supervisor(str(entry["version"]).lstrip("v"), repository, digest))
    return found


def _check_catalog(data: Any) -> tuple[list[Release], list[str]]:
    problems = _Problems()
    if not isinstance(data, Mapping):
        problems.add("top level", f"must be a mapping, got {'nothing' if data is None else type(data).__name__}")
        return [], problems.items
    _check_top(problems, data)
    raw = data.get("releases")
    if raw is None:
        problems.add("catalog", "missing 'releases'")
        return [], problems.items
    if not isinstance(raw, list):
        problems.add("releases", f"must be a list, got {type(raw).__name__}")
        return [], problems.items
    releases: list[Release] = []
    seen: dict[tuple[str, BalenaVersion], int] = {}
    for index, item in enumerate(raw):
        release = _check_release(problems, index, item)
        if release is None:
            continue
        key = (release.device_type, release.parsed)
        if key in seen:
            problems.add(
                f"releases[{index}]",
                f"duplicate release {release.parsed} for device type {release.device_type} (also releases[{seen[key]}])",
            )
            continue
        seen[key] = index
        releases.append(release)
    return releases, problems.items


# --- the catalog -------------------------------------------------------------------------------

class Catalog:
    """A validated release catalog. ``data`` is the raw mapping."""

    def __init__(self, data: Any, source: str = "<catalog>") -> None:
        releases, problems = _check_catalog(data)
        if problems:
            raise CatalogError(f"catalog {source} is invalid: " + "; ".join(problems))
        self.data: Mapping[str, Any] = data
        self.source = source
        self._releases = releases
        self._supervisors = _check_supervisors(_Problems(), data)

    @property
    def device_types(self) -> list[str]:
        """Every device type named in ``device_types`` or in a release, sorted."""
        return sorted(set(self.data.get("device_types", {})) | {release.device_type for release in self._releases})

    def releases(self, device_type: str) -> list[Release]:
        """The releases of ``device_type``, oldest first."""
        return sorted((r for r in self._releases if r.device_type == device_type), key=lambda r: r.parsed)

    def release(self, device_type: str, version: VersionLike) -> Release:
        """The release ``version`` of ``device_type`` (versions compared as versions).

        The one "release not found" message: "unknown target version V for T; known: ..." (or the
        unknown device type).
        """
        try:
            wanted = parse_version(version)
        except ValueError as exc:
            raise CatalogError(f"catalog {self.source}: {exc}") from None
        candidates = self.releases(device_type)
        found = next((r for r in candidates if r.parsed == wanted), None)
        if found is not None:
            return found
        if not candidates:
            raise self._unknown_device_type(device_type)
        raise CatalogError(f"unknown target version {version} for {device_type}; known: {', '.join(r.version for r in candidates)}")

    def device_type(self, name: str) -> dict[str, Any]:
        """The ``device_types`` entry of ``name`` ({} for a type known only from its releases)."""
        entry = self.data.get("device_types", {}).get(name)
        if entry is not None:
            return dict(entry)
        if self.releases(name):
            return {}
        raise self._unknown_device_type(name)

    def _unknown_device_type(self, name: str) -> CatalogError:
        return CatalogError(f"unknown device type {name} in catalog {self.source}; known: {', '.join(self.device_types) or 'none'}")

    @property
    def registries(self) -> dict[str, str]:
        """``{"primary": host:port, "fallback": host:port}`` (fallback optional)."""
        return dict(self.data.get("registries", {}))

    @property
    def ordered_registries(self) -> list[tuple[str, str]]:
        """``[(name, host:port)]`` of the registries, primary first, then fallback, then the others."""
        regs = self.registries
        ordered = [name for name in ("primary", "fallback") if regs.get(name)]
        ordered += sorted(name for name in regs if name not in ordered)
        return [(name, regs[name]) for name in ordered]

    @property
    def insecure_registries(self) -> bool:
        """Whether the registries are plain HTTP / unverified TLS."""
        return bool(self.data.get("insecure_registries", False))

    def registry_insecure(self, override: bool | None) -> bool:
        """The option ``registry_insecure`` when given, else the catalog's ``insecure_registries``."""
        return self.insecure_registries if override is None else bool(override)

    @property
    def supervisor_repository(self) -> str | None:
        """Repository of the supervisor images in the primary registry."""
        return self.data.get("supervisor_repository")

    def supervisor(self, version: VersionLike, repository: str | None = None) -> Supervisor | None:
        """The catalog's supervisor image ``version`` (compared as versions) in ``repository``
        (default: any), or None."""
        wanted = parse_version(version)
        return next((s for s in self._supervisors
                     if parse_version(s.version) == wanted and repository in (None, s.repository)), None)


def sources_for(release: Release, current_version: VersionLike | None, registries: Mapping[str, str]) -> list[Source]:
    """The ordered fetch plan: delta from the primary (if one starts at ``current_version``),
    the full image from the primary, then from the fallback registry (if set)."""
    primary = registries.get("primary")
    if not primary:
        raise CatalogError(f"no primary registry configured for release {release.device_type} {release.version}")
    sources = []
    delta = release.delta_from(current_version) if current_version is not None else None
    if delta is not None:
        sources.append(Source(KIND_DELTA, primary, delta.image_ref(primary), delta.digest, delta.size))
    sources.append(Source(KIND_REGISTRY, primary, release.image_ref(primary), release.digest, release.size))
    fallback = registries.get("fallback")
    if fallback:
        sources.append(Source(KIND_FALLBACK, fallback, release.image_ref(fallback), release.digest, release.size))
    return sources


# --- loading -----------------------------------------------------------------------------------

def _default_fetch(url: str) -> bytes:
    # imported here: ansible.module_utils.urls costs every importing process (each task of each host
    # is one) a fifth of a second, and most catalogs are files
    from ansible.module_utils.urls import ConnectionError as UrlConnectionError  # pylint: disable=import-outside-toplevel
    from ansible.module_utils.urls import open_url  # pylint: disable=import-outside-toplevel
    try:
        with open_url(url, timeout=URL_TIMEOUT) as response:
            return response.read()
    except UrlConnectionError as exc:
        raise OSError(str(exc)) from None


def _read_source(source: str, fetch_url: FetchUrl | None) -> bytes:
    scheme = urlparse(source).scheme
    if scheme in ("http", "https"):
        try:
            return (fetch_url or _default_fetch)(source)
        except (OSError, ValueError) as exc:
            raise CatalogError(f"cannot fetch catalog {source}: {exc}") from None
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise CatalogError(f"catalog file {source} does not exist") from None
    except OSError as exc:
        raise CatalogError(f"cannot read catalog file {source}: {exc.strerror or exc}") from None


def _parse(raw: bytes, source: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"catalog {source} is not UTF-8 text: {exc}") from None
    suffix = urlparse(source).path.lower().rsplit(".", 1)[-1]
    if suffix == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"catalog {source} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise CatalogError(f"catalog {source} is not valid YAML: {where}{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {source} is not valid YAML: {exc}") from None


def _pinned(sha256: str | None, source: str) -> str | None:
    """The pin as 64 lowercase hex digits (``sha256:`` prefix allowed), None when not given."""
    if not sha256:
        return None
    pin = sha256.strip().lower()
    pin = pin[len("sha256:"):] if pin.startswith("sha256:") else pin
    if not HEX64_RE.fullmatch(pin):
        raise CatalogError(f"catalog_sha256 {sha256!r} of the catalog {source} is not 64 hex digits")
    return pin


def load_catalog(source: str, *, fetch_url: FetchUrl | None = None, sha256: str | None = None,
                 allow_http: bool = False) -> Catalog:
    """Load and validate a catalog from a ``.json``/``.yaml``/``.yml`` path or an http(s) URL.

    The catalog names the digests, the registries and whether they are insecure, so it is
    protected: ``sha256`` pins its bytes (a mismatch is refused); a plain ``http://`` URL is refused
    unless it is pinned or ``allow_http`` is set. ``fetch_url(url) -> bytes`` replaces ``open_url``
    (tests, or an action plugin's own fetcher). Files and URLs without a ``.json`` suffix are read
    as YAML (a superset of JSON).
    """
    if not isinstance(source, str) or not source:
        raise CatalogError(f"catalog source must be a path or URL, got {source!r}")
    pin = _pinned(sha256, source)
    if urlparse(source).scheme == "http" and pin is None and not allow_http:
        raise CatalogError(
            f"refusing the catalog {source}: plain HTTP, so anyone on the way can change the digests and registries it "
            "names; use https:// or a file, pin it with catalog_sha256, or set catalog_allow_http"
        )
    raw = _read_source(source, fetch_url)
    if pin is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != pin:
            raise CatalogError(f"refusing the catalog {source}: its sha256 is {got}, catalog_sha256 pins {pin}")
    return Catalog(_parse(raw, source), source)
