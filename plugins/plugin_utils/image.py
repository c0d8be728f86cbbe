# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Read an OCI / Docker v2 image from its blobs on the controller: what a catalog entry says of it.

Pure Python on local files (no registry, no subprocess): the blobs are in a directory named by
digest, a ``skopeo copy ... dir:DIR`` (``DIR/<hex>``) or an OCI image layout
(``DIR/blobs/sha256/<hex>``). Used by ``osfleet.hup.catalog`` (after skopeo copied the image) and by
the lab (on its own OCI layout), so both describe a release the same way (docs/internals.md §3):

* ``digest``: the manifest's sha256; ``image_id``: the config's sha256 (what an engine calls the image);
* ``size``: what a pull transfers, manifest + config + layers (compressed) bytes;
* ``size_unpacked``: bytes of the regular files and symlink targets of every layer, a hard link
  not again (what the engine's layer store records);
* ``arch``: the config's architecture in balena's names (``arm64`` -> ``aarch64``);
* files read from the image root (``/etc/os-release``, the supervisor.conf): the layers applied in
  order with their whiteouts, symlinks resolved inside the image root (an absolute target or
  ``..`` never leaves it), every blob's sha256 and size checked before it is read.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.osfleet.hup.plugins.plugin_utils.device import _kv, supervisor_version
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import OsfleetError

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFESTS = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEXES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
#: layer media types this reader unpacks (tar, gzip'd tar); zstd is refused with a clear message
LAYER_TYPES = re.compile(r"application/vnd\.(oci\.image\.layer\.v1\.tar|docker\.image\.rootfs\.diff\.tar)(\.gzip|\+gzip)?$")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
#: OCI architecture (and variant) -> balena's arch name (the catalog's ``arch``)
BALENA_ARCH = {("amd64", ""): "amd64", ("arm64", ""): "aarch64", ("arm64", "v8"): "aarch64", ("arm", "v7"): "armv7hf",
               ("arm", "v6"): "rpi", ("386", ""): "i386"}
#: the files of an OS image a catalog entry reads, relative to the image root
OS_RELEASE = "etc/os-release"
SUPERVISOR_CONF = "etc/balena-supervisor/supervisor.conf"
FILE_LIMIT = 64 * 1024
MAX_LINKS = 40
_REF_RE = re.compile(
    r"^(?:(?P<registry>(?:localhost|[A-Za-z0-9.-]+\.[A-Za-z0-9.-]+|[A-Za-z0-9.-]+:[0-9]+|\[[0-9A-Fa-f:]+\](?::[0-9]+)?)(?::[0-9]+)?)/)?"
    r"(?P<repository>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


class ImageError(OsfleetError):
    """An image reference, manifest, config or layer that cannot be read as an OS release image."""


@dataclass(frozen=True)
class ImageRef:
    """A docker reference ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def by_digest(self, digest: str) -> str:
        return f"{self.registry}/{self.repository}@{digest}"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageRef:
    """``registry[:port]/repository[:tag][@sha256:...]``; without a registry, Docker Hub (``docker.io``,
    ``library/`` for one-word names). A reference that names neither tag nor digest means ``latest``."""
    if not isinstance(text, str) or not text.strip():
        raise ImageError(f"an image reference must be a non-empty string, got {text!r}")
    text = text.strip()
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    match = _REF_RE.match(text)
    if not match:
        raise ImageError(f"{text!r} is not an image reference (registry/repository[:tag][@sha256:<64 hex>], lower-case repository)")
    registry, repository = match.group("registry"), match.group("repository")
    if registry is None:
        registry = "docker.io"
        if "/" not in repository:
            repository = f"library/{repository}"
    tag, digest = match.group("tag"), match.group("digest")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, repository, tag, digest)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_json(raw: bytes, what: str) -> dict[str, t.Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ImageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ImageError(f"{what} is not a JSON object")
    return data


def media_type(manifest: t.Mapping[str, t.Any]) -> str:
    """The manifest's media type (an OCI manifest may leave it out: then its shape says)."""
    kind = manifest.get("mediaType")
    if isinstance(kind, str) and kind:
        return kind
    return MEDIA_OCI_INDEX if "manifests" in manifest else MEDIA_OCI_MANIFEST


def is_index(manifest: t.Mapping[str, t.Any]) -> bool:
    return media_type(manifest) in INDEXES


def select_platform(index: t.Mapping[str, t.Any], arch: str | None, what: str) -> str:
    """The digest of the linux manifest of an index / manifest list for balena ``arch`` (None: the only one)."""
    found = []
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        if not isinstance(platform, dict) or platform.get("os", "linux") != "linux" or platform.get("architecture") == "unknown":
            continue
        name = balena_arch(str(platform.get("architecture", "")), str(platform.get("variant", "")))
        found.append((name, str(entry.get("digest", ""))))
    matching = [digest for name, digest in found if arch is None or name == arch]
    if len(matching) == 1 and DIGEST_RE.fullmatch(matching[0]):
        return matching[0]
    names = ", ".join(sorted({name for name, _digest in found})) or "none"
    if not matching:
        raise ImageError(f"{what} is a multi-platform index without a linux image for {arch} (it has: {names})")
    raise ImageError(f"{what} is a multi-platform index ({names}): name the architecture (option arch) or the platform's digest")


def balena_arch(arch: str, variant: str = "") -> str:
    """OCI ``architecture``/``variant`` -> balena's arch name; unknown ones stay as they are."""
    return BALENA_ARCH.get((arch, variant)) or BALENA_ARCH.get((arch, "")) or arch


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @classmethod
    def from_json(cls, value: t.Any, what: str) -> Descriptor:
        if not isinstance(value, dict):
            raise ImageError(f"{what} is not a descriptor")
        digest, size = value.get("digest"), value.get("size")
        if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
            raise ImageError(f"{what} has no sha256 digest ({digest!r})")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ImageError(f"{what} has no size ({size!r})")
        return cls(str(value.get("mediaType") or ""), digest, size)


@dataclass(frozen=True)
class Manifest:
    """A single-platform image manifest and its bytes."""

    raw: bytes
    digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, raw: bytes, what: str = "the manifest") -> Manifest:
        data = load_json(raw, what)
        if is_index(data):
            raise ImageError(f"{what} is a multi-platform index, not an image manifest")
        kind = media_type(data)
        if kind not in MANIFESTS or data.get("schemaVersion") != 2:
            raise ImageError(f"{what} has media type {kind!r} (schema {data.get('schemaVersion')!r}); an OCI or Docker v2 image manifest is needed")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise ImageError(f"{what} has no layers list")
        return cls(raw, sha256_digest(raw), Descriptor.from_json(data.get("config"), f"{what}'s config"),
                   tuple(Descriptor.from_json(layer, f"{what}'s layer {i}") for i, layer in enumerate(layers)))

    @property
    def size(self) -> int:
        """What a pull transfers: manifest + config + layers bytes (the catalog's ``size``)."""
        return len(self.raw) + self.config.size + sum(layer.size for layer in self.layers)


class BlobStore:
    """Blobs in a directory, by digest: ``DIR/<hex>`` (skopeo ``dir:``) or ``DIR/blobs/sha256/<hex>`` (OCI layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        #: digest -> its parsed layer; blobs already verified (a store describing many images that share
        #: layers, the lab's OCI layout, reads each layer once)
        self._layers: dict[str, ParsedLayer] = {}
        self._verified: dict[str, Path] = {}

    def path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        for candidate in (self.root / "blobs" / "sha256" / hexd, self.root / hexd):
            if candidate.is_file():
                return candidate
        raise ImageError(f"blob {digest} is missing from {self.root}")

    def verified(self, desc: Descriptor, what: str) -> Path:
        """The blob's file, once its size and sha256 are the descriptor's."""
        if desc.digest in self._verified and desc.size == self._verified[desc.digest].stat().st_size:
            return self._verified[desc.digest]
        path = self.path(desc.digest)
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
        got = "sha256:" + digest.hexdigest()
        if got != desc.digest or size != desc.size:
            raise ImageError(f"{what} {desc.digest}: the blob has sha256 {got} and {size} bytes, the manifest says {desc.size}; refusing to read it")
        self._verified[desc.digest] = path
        return path

    def layer(self, desc: Descriptor, index: int) -> ParsedLayer:
        """The layer's tar headers, read once its blob is verified."""
        if desc.digest not in self._layers:
            self._layers[desc.digest] = parse_layer(self.verified(desc, f"layer {index}"), index)
        return self._layers[desc.digest]

    def read(self, desc: Descriptor, what: str, limit: int = 4 * 1024 * 1024) -> bytes:
        if desc.size > limit:
            raise ImageError(f"{what} {desc.digest} has {desc.size} bytes, more than the {limit} this reader accepts")
        return self.verified(desc, what).read_bytes()


# --- the image root: layers, whiteouts, links ----------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """A path of the image root: its kind (``file``, ``dir``, ``symlink``, ``other``), the layer blob
    that holds its contents and its member name there, a symlink's target. A hard link is the entry
    of the file it links to."""

    kind: str
    blob: Path
    member: str
    target: str = ""


@dataclass(frozen=True)
class ParsedLayer:
    """One layer's members (paths, not contents): entries, hard links (path -> target path), whiteouts
    (path, opaque) and the bytes its regular files and symlink targets take."""

    entries: dict[str, Entry]
    hardlinks: dict[str, tuple[str, str]]
    whiteouts: tuple[tuple[str, bool], ...]
    size: int


def parse_layer(path: Path, index: int) -> ParsedLayer:
    """Read a (verified) layer's tar headers."""
    entries: dict[str, Entry] = {}
    hardlinks: dict[str, tuple[str, str]] = {}
    whiteouts: list[tuple[str, bool]] = []
    size = 0
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                rel = _member_path(member.name, index)
                if not rel:
                    continue
                base, name = posixpath.split(rel)
                if name == ".wh..wh..opq":
                    whiteouts.append((base, True))
                    continue
                if name.startswith(".wh."):
                    whiteouts.append((posixpath.join(base, name[len(".wh."):]), False))
                    continue
                kind = _kind(member)
                if kind == "file":
                    size += member.size
                elif kind == "symlink":
                    size += len(member.linkname.encode("utf-8", "surrogateescape"))
                if kind == "hardlink":
                    entries.pop(rel, None)
                    hardlinks[rel] = (_member_path(member.linkname, index), member.name)
                    continue
                hardlinks.pop(rel, None)
                entries[rel] = Entry(kind, path, member.name, member.linkname if kind == "symlink" else "")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ImageError(f"layer {index} is not a readable tar archive: {exc}") from None
    return ParsedLayer(entries, hardlinks, tuple(whiteouts), size)


def _member_path(name: str, layer: int) -> str:
    """A tar member name as a path relative to the image root ("" for the root); a name that leaves it is refused."""
    if ".." in name.replace("\\", "/").split("/"):
        raise ImageError(f"layer {layer} has a member {name!r} outside the image root; refusing the image")
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return "other"


def _drop(tree: dict[str, Entry], path: str, keep_self: bool = False) -> None:
    prefix = path + "/" if path else ""
    for name in [n for n in tree if n.startswith(prefix) or (not keep_self and n == path)]:
        del tree[name]


@dataclass
class ImageRoot:
    """The merged root of an image's layers (paths, not contents) and its unpacked size."""

    tree: dict[str, Entry] = field(default_factory=dict)
    size_unpacked: int = 0

    def add_layer(self, layer: ParsedLayer) -> None:
        """Apply one layer: its whiteouts remove lower entries, then its entries cover them; a hard link
        is the file it links to, of this layer or a lower one."""
        entries = dict(layer.entries)
        for rel, (target, member) in layer.hardlinks.items():
            linked = layer.entries.get(target) or self.tree.get(target)
            entries[rel] = linked if linked is not None and linked.kind == "file" else Entry("other", Path(), member)
        for where, opaque in layer.whiteouts:
            _drop(self.tree, where, keep_self=opaque)
        for rel, entry in entries.items():
            lower = self.tree.get(rel)
            if lower is not None and lower.kind == "dir" and entry.kind != "dir":
                _drop(self.tree, rel)  # a file over a directory hides what was below it
            self.tree[rel] = entry
        self.size_unpacked += layer.size

    def resolve(self, path: str) -> Entry | None:
        """The entry at ``path`` with every symlink resolved inside the image root; None when absent."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            current = "/".join([*done, part])
            entry = self.tree.get(current)
            if entry is not None and entry.kind == "symlink":
                links += 1
                if links > MAX_LINKS:
                    raise ImageError(f"/{path} in the image: more than {MAX_LINKS} symlinks (a loop?)")
                target = [p for p in entry.target.split("/") if p not in ("", ".")]
                if entry.target.startswith("/"):
                    done = []
                todo = target + todo
                continue
            if entry is not None and entry.kind not in ("dir",) and todo:
                return None
            done.append(part)
        return self.tree.get("/".join(done))

    def read_files(self, paths: t.Sequence[str], limit: int = FILE_LIMIT) -> dict[str, bytes | None]:
        """The contents of regular files of the image root (None: absent or not a regular file)."""
        wanted: dict[str, Entry] = {}
        out: dict[str, bytes | None] = {}
        for path in paths:
            entry = self.resolve(path.lstrip("/"))
            if entry is None or entry.kind != "file":
                out[path] = None
            else:
                wanted[path] = entry
        by_blob: dict[Path, dict[str, list[str]]] = {}
        for path, entry in wanted.items():
            by_blob.setdefault(entry.blob, {}).setdefault(entry.member, []).append(path)
        for blob, members in by_blob.items():
            try:
                with tarfile.open(blob, "r|*") as tar:
                    for member in tar:
                        if member.name in members and member.isreg():
                            if member.size > limit:
                                raise ImageError(f"/{members[member.name][0]} in the image has {member.size} bytes, more than {limit}; refusing it")
                            handle = tar.extractfile(member)
                            data = handle.read() if handle is not None else b""
                            for path in members[member.name]:
                                out[path] = data
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise ImageError(f"layer {blob.name} is not a readable tar archive: {exc}") from None
        return out


@dataclass(frozen=True)
class ImageFacts:
    """What an OS image says of itself, for its catalog entry."""

    digest: str
    image_id: str
    size: int
    size_unpacked: int
    arch: str
    os_release: dict[str, str]
    supervisor_version: str | None
    #: the layers' compressed bytes (``size`` without manifest and config)
    layers_size: int = 0


def read_config(store: BlobStore, manifest: Manifest) -> dict[str, t.Any]:
    config = load_json(store.read(manifest.config, "the image config"), "the image config")
    layers = len((config.get("rootfs") or {}).get("diff_ids") or [])
    if layers != len(manifest.layers):
        raise ImageError(f"the image config lists {layers} layers, the manifest {len(manifest.layers)}")
    return config


def inspect_image(store: BlobStore, manifest: Manifest) -> ImageFacts:
    """Read an OS image whose blobs are in ``store``: sizes, arch, os-release and shipped supervisor."""
    config = read_config(store, manifest)
    root = ImageRoot()
    for index, layer in enumerate(manifest.layers):
        if not LAYER_TYPES.match(layer.media_type or "application/vnd.oci.image.layer.v1.tar"):
            raise ImageError(f"layer {index} has media type {layer.media_type!r}; only tar and gzip'd tar layers are read")
        root.add_layer(store.layer(layer, index))
    files = root.read_files([OS_RELEASE, SUPERVISOR_CONF])
    os_release_raw = files[OS_RELEASE]
    if os_release_raw is None:
        raise ImageError("the image has no /etc/os-release (a regular file, links resolved inside the image): not an OS image")
    conf = files[SUPERVISOR_CONF]
    return ImageFacts(
        digest=manifest.digest,
        image_id=manifest.config.digest,
        size=manifest.size,
        size_unpacked=root.size_unpacked,
        arch=balena_arch(str(config.get("architecture", "")), str(config.get("variant", ""))),
        os_release=_kv(os_release_raw.decode("utf-8", "replace")),
        supervisor_version=supervisor_version(conf.decode("utf-8", "replace")) if conf is not None else None,
        layers_size=sum(layer.size for layer in manifest.layers),
    )
