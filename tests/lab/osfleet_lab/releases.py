# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's OS releases: device root filesystems, OCI images, deltas, registry storage, disks.

Everything is built once into ``build/lab/cache/`` and shared by every lab prefix. Stdlib only.

Public API (the lab lifecycle and the tests call these; keep the signatures):

``known_releases() -> list[Release]``
    Every release of ``releases.json`` (device type order, then version order).
``device_types() -> dict[str, DeviceType]``
    The device types with their arch, machine, ``min_takeover_version`` and releases.
``find_release(device_type, version) -> Release``
    One release; ``LabError`` naming the device type and version when unknown.
``layout(layout_id) -> list[tuple[str, int]]``
    Partition table of a layout id: ``[(label, size_mib), ...]`` in partition order (p1 first).
``ensure_built(cache_dir, *, disk_images=False, disk_profile="ab", disk_device_type=None) -> Build``
    Build (or find) every artifact; rebuilds only when an input changed (content-addressed key
    over the host binaries, ``os/``, ``releases.json`` and this code). Thread/process safe
    (flock on ``cache_dir/.build.lock``). ``disk_images=True`` also builds the gzip'd raw GPT
    disk images of the device profile ``disk_profile`` (slow, needed only for the advanced HUP):
    ``ab`` of every release, ``balenaos`` (hostapp disks) of the releases of
    ``disk_device_type`` (every release when None).
``release_rootfs(cache_dir, device_type, version) -> Path``
    Directory holding the full root filesystem of a release (what its OCI image unpacks to,
    without the stamp). Read-only: copy it (``cp -a DIR/. MNT/`` or ``mke2fs -d DIR``), never
    modify it (its files are hard links shared by every release and build).
``release_stamp(cache_dir, device_type, version, source="provision", written_at=None, build=None) -> str``
    The JSON text of ``/.osfleet-release.json`` for a root written with that release (``build``:
    one ``ensure_built`` returned already, so that it is not checked again).
``build_disk_image(build, release, profile="ab") -> Path``
    The ``.img.gz`` of one release for a device profile (built on first call): ``ab`` a plain
    root on resin-rootA, ``balenaos`` a hostapp on it (``hostapp.root_image``), as a real
    balenaOS disk has it.
``describe_releases(oci_root, entries)``
    Sets each build entry's catalog facts (digest, image_id, sizes, arch, version, device type,
    supervisor version) to what osfleet.hup.catalog's image reader (the collection's
    ``plugins/plugin_utils/image.py``, stdlib only) reads from the image in the OCI layout, and
    fails when the lab's own model of them disagrees. The build runs it on every release.

A ``Build`` has ``path`` (the build directory), ``key`` and ``info`` (its ``build.json``: per
release the manifest ``digest``, ``size``, ``layers``, ``deltas``; the supervisor images; build
timings). ``services.start_services`` turns it into a lab's registries and catalog.

Layout of a build directory ``cache_dir/build-<key>/``: ``roots/<device_type>/<version>/`` (full
roots), ``oci/`` (one OCI image layout holding every image), ``registry/`` (storage tree of a
docker-registry holding every image), ``disk/<device_type>-<version>.img.gz`` (profile ab) and
``disk/<device_type>-<version>-hostapp.img.gz`` (profile balenaos), each with a ``.json`` (sha256,
size), ``build.json`` (written last: the build is complete when it exists). The base
root (busybox + copied Debian binaries) lives in ``cache_dir/base-<key>/``.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import importlib
import io
import json
import os
import random
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from . import hostapp
from .device import SECTOR, Partition, copy_extents, debugfs_write, stage_data
from .util import REPO_ROOT, LabError, file_lock, log, read_json, run, write_json

PKG_DIR = Path(__file__).resolve().parent
RELEASES_JSON = PKG_DIR / "releases.json"
OS_DIR = PKG_DIR / "os"
#: the collection's image reader, what osfleet.hup.catalog describes a release with (stdlib only), and
#: the helpers it uses: the lab's catalog facts are what it reads (``describe_releases``)
PRODUCT_READER = ("plugins/plugin_utils/image.py", "plugins/plugin_utils/device.py")
BUILDER_VERSION = "1"  # bump to force a rebuild when the output format changes

EPOCH = 1700000000  # mtime of every file of every image: 2023-11-14T22:13:20Z
EPOCH_ISO = "2023-11-14T22:13:20Z"
GZIP_LEVEL = 6
KEEP_BUILDS = 2

SUPERVISOR_REPOSITORY = "osfleet/balena-supervisor"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ARCH = {"amd64": "amd64", "aarch64": "arm64"}
LAB_FAULTS = (None, "health", "boot", "norollback")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(\+rev\d+)?$")
SEMVER_RE = re.compile(r"^\d+\.\d+\.\d+$")
GPT_TYPE_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT_TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

# Host binaries copied (with their libraries, found by ldd) into the base root.
BASE_BINARIES = (
    "/usr/bin/bash", "/usr/bin/jq", "/usr/bin/curl", "/usr/bin/tar", "/usr/bin/flock",
    "/usr/sbin/mke2fs", "/usr/sbin/e2fsck", "/usr/sbin/tune2fs", "/usr/sbin/resize2fs",
    "/usr/sbin/dumpe2fs", "/usr/bin/skopeo", "/usr/bin/umoci", "/usr/sbin/sshd",
    "/usr/lib/openssh/sftp-server", "/usr/bin/ssh-keygen",
    # GNU tools that balenaOS ships and its hostapp-update uses (busybox lacks `cut --complement`,
    # `ln -r` and `mountpoint`)
    "/usr/bin/cut", "/usr/bin/ln", "/usr/bin/realpath", "/usr/bin/mountpoint",
    # util-linux's partition tools (balenaOS ships util-linux): the kernel parses no partition
    # table, so a device that rewrites its whole disk re-reads the table with partx (BLKPG)
    "/usr/bin/partx", "/usr/sbin/sfdisk",
)
BUSYBOX = "/usr/bin/busybox"
BASE_HOST_FILES = ("/etc/mke2fs.conf", "/etc/ssh/moduli")
NSS_LIBS = ("libnss_files.so.2",)
# /sbin/init is the OS's own; /bin/sh is bash like on balenaOS (Yocto gives bash priority over
# busybox for sh): Debian's busybox-static ash prefers its applets to PATH (GNU tar, mount ...)
BUSYBOX_SKIP = {"init", "linuxrc", "sh"}
TOP_SYMLINKS = {  # merged /usr and the volatile /var
    "bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64",
    "var/run": "../run", "var/tmp": "volatile/tmp", "var/log": "volatile/log",
}
TOOL_SYMLINKS = {  # made after the busybox applets (they win over an applet of the same name)
    "usr/bin/sh": "bash",
    "usr/sbin/mkfs.ext4": "mke2fs", "usr/sbin/mkfs.ext3": "mke2fs", "usr/sbin/mkfs.ext2": "mke2fs",
    "usr/sbin/fsck.ext4": "e2fsck", "usr/sbin/fsck.ext3": "e2fsck", "usr/sbin/fsck.ext2": "e2fsck",
}
BASE_DIRS = {
    "dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "tmp": 0o1777, "root": 0o700,
    "home": 0o755, "mnt/boot": 0o755, "mnt/state": 0o755, "mnt/data": 0o755,
    "mnt/sysroot/active": 0o755, "mnt/sysroot/inactive": 0o755, "var/lock": 0o755,
    "var/volatile": 0o755, "var/lib": 0o755, "usr/local/bin": 0o755, "usr/lib64": 0o755,
}
PRIVATE_FILES = {"etc/shadow": 0o600}
ROOTFS_SHA256 = "usr/share/osfleet/rootfs.sha256"
STAMP = ".osfleet-release.json"


# ==== releases.json ============================================================================

@dataclasses.dataclass(frozen=True)
class Release:
    device_type: str
    version: str
    index: int  # position in its device type's release list
    arch: str
    machine: str
    kernel: str
    layout: str
    supervisor_version: str
    lab_fault: str | None

    @property
    def tag(self) -> str:
        return image_tag(self.version)

    @property
    def repository(self) -> str:
        return f"osfleet/{self.device_type}"

    @property
    def delta_repository(self) -> str:
        return f"osfleet/{self.device_type}-delta"

    @property
    def name(self) -> str:
        return f"{self.device_type}-{self.tag}"


@dataclasses.dataclass(frozen=True)
class DeviceType:
    name: str
    arch: str
    machine: str
    pretty_name: str
    min_takeover_version: str | None
    releases: tuple[Release, ...]
    deltas: tuple[tuple[str, str], ...]  # (from, to) versions


def image_tag(version: str) -> str:
    """Registry tag of a version: '+' is not allowed in tags, '6.0.24+rev1' -> '6.0.24_rev1'."""
    return version.replace("+", "_")


def _spec_error(where: str, why: str) -> LabError:
    return LabError(f"{RELEASES_JSON.name}: {where}: {why}")


@functools.lru_cache(maxsize=1)
def _spec() -> tuple[dict[str, DeviceType], dict[str, list[tuple[str, int]]]]:
    try:
        raw = json.loads(RELEASES_JSON.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _spec_error("file", f"cannot read it: {exc}") from exc
    layouts: dict[str, list[tuple[str, int]]] = {}
    for lid, parts in raw.get("layouts", {}).items():
        labels = [p[0] for p in parts]
        if labels != ["resin-boot", "resin-rootA", "resin-rootB", "resin-state", "resin-data"]:
            raise _spec_error(f"layout {lid}", f"partitions must be p1..p5 resin-*, got {labels}")
        layouts[lid] = [(str(label), int(size)) for label, size in parts]
    types: dict[str, DeviceType] = {}
    for dt, d in raw.get("device_types", {}).items():
        arch = d.get("arch")
        if arch not in OCI_ARCH:
            raise _spec_error(dt, f"unknown arch {arch!r} (known: {', '.join(OCI_ARCH)})")
        rels = []
        for i, r in enumerate(d.get("releases", [])):
            ver = str(r.get("version", ""))
            where = f"{dt} {ver or '#' + str(i)}"
            if not VERSION_RE.match(ver):
                raise _spec_error(where, "version must look like 2.113.0 or 6.0.24+rev1")
            if r.get("layout") not in layouts:
                raise _spec_error(where, f"unknown layout {r.get('layout')!r}")
            if not SEMVER_RE.match(str(r.get("supervisor_version", ""))):
                raise _spec_error(where, "supervisor_version must look like 14.11.2")
            if r.get("lab_fault") not in LAB_FAULTS:
                raise _spec_error(where, f"lab_fault must be one of {LAB_FAULTS}")
            rels.append(Release(dt, ver, i, arch, d.get("machine", dt), d.get("kernel", "zImage"),
                                r["layout"], r["supervisor_version"], r.get("lab_fault")))
        versions = [r.version for r in rels]
        if len(set(versions)) != len(versions):
            raise _spec_error(dt, "duplicate versions")
        deltas = list(zip(versions, versions[1:]))
        for pair in d.get("extra_deltas", []):
            frm, to = str(pair[0]), str(pair[1])
            if frm not in versions or to not in versions:
                raise _spec_error(dt, f"delta {frm}->{to} names an unknown version")
            if (frm, to) not in deltas:
                deltas.append((frm, to))
        types[dt] = DeviceType(dt, arch, d.get("machine", dt), d.get("name", dt),
                               d.get("min_takeover_version"), tuple(rels), tuple(deltas))
    return types, layouts


def device_types() -> dict[str, DeviceType]:
    return dict(_spec()[0])


def known_releases() -> list[Release]:
    return [r for dt in _spec()[0].values() for r in dt.releases]


def find_release(device_type: str, version: str) -> Release:
    types = _spec()[0]
    if device_type not in types:
        raise LabError(f"unknown device type {device_type!r} (known: {', '.join(types)})")
    for rel in types[device_type].releases:
        if rel.version == version:
            return rel
    known = ", ".join(r.version for r in types[device_type].releases)
    raise LabError(f"{device_type} has no release {version!r} (known: {known})")


def layout(layout_id: str) -> list[tuple[str, int]]:
    layouts = _spec()[1]
    if layout_id not in layouts:
        raise LabError(f"unknown partition layout {layout_id!r} (known: {', '.join(layouts)})")
    return list(layouts[layout_id])


# ==== in-memory file trees =====================================================================

@dataclasses.dataclass(frozen=True)
class Node:
    """One entry of a root filesystem: a directory, a regular file or a symlink."""

    kind: str  # "dir" | "file" | "symlink"
    mode: int  # permission bits (incl. sticky)
    sha256: str = ""  # files: content digest
    size: int = 0
    data: bytes | None = None  # files: content held in memory ...
    src: str | None = None  # ... or read from this host path
    target: str | None = None  # symlinks

    @staticmethod
    def directory(mode: int = 0o755) -> Node:
        return Node("dir", mode)

    @staticmethod
    def symlink(target: str) -> Node:
        return Node("symlink", 0o777, target=target)

    @staticmethod
    def file(data: bytes, mode: int = 0o644) -> Node:
        return Node("file", mode, hashlib.sha256(data).hexdigest(), len(data), data=data)

    @staticmethod
    def host_file(path: Path, mode: int) -> Node:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return Node("file", mode, digest.hexdigest(), size, src=os.fspath(path))

    def same_as(self, other: Node) -> bool:
        return (self.kind, self.mode, self.sha256, self.target) == (
            other.kind, other.mode, other.sha256, other.target)

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.src is not None
        return open(self.src, "rb")


Tree = dict[str, Node]  # relative path ("usr/bin/bash") -> node


def tree_from_dir(root: Path) -> Tree:
    """Read a directory into a Tree (file contents stay on disk, digests are computed)."""
    tree: Tree = {}

    def walk(rel: str) -> None:
        with os.scandir(root / rel if rel else root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for ent in entries:
            path = f"{rel}/{ent.name}" if rel else ent.name
            st = ent.stat(follow_symlinks=False)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                tree[path] = Node.symlink(os.readlink(ent.path))
            elif stat.S_ISDIR(st.st_mode):
                tree[path] = Node.directory(perm)
                walk(path)
            elif stat.S_ISREG(st.st_mode):
                tree[path] = Node.host_file(Path(ent.path), perm)
            else:
                raise LabError(f"{ent.path}: unsupported file type in a lab root")

    walk("")
    return tree


def add_parents(tree: Tree, base: Mapping[str, Node] | None = None) -> Tree:
    """Add the missing parent directories of every entry (mode from ``base`` when it has them)."""
    out = dict(tree)
    for path in list(tree):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in out:
                out[parent] = base[parent] if base and parent in base else Node.directory()
    return out


def overlay_dir(src: Path, prefix: str = "") -> Tree:
    """Files of a source directory in this package (os/...), with normalised modes."""
    tree: Tree = {}
    for path in sorted(src.rglob("*")):
        rel = prefix + path.relative_to(src).as_posix()
        if path.is_symlink():
            tree[rel] = Node.symlink(os.readlink(path))
        elif path.is_dir():
            tree[rel] = Node.directory()
        else:
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tree[rel] = Node.file(path.read_bytes(), PRIVATE_FILES.get(rel, mode))
    return tree


def rootfs_sha256(tree: Mapping[str, Node]) -> bytes:
    """``sha256sum`` lines (``./path``) of every regular file except itself and the stamp."""
    lines = [f"{n.sha256}  ./{p}\n" for p, n in sorted(tree.items())
             if n.kind == "file" and p not in (ROOTFS_SHA256, STAMP)]
    return "".join(lines).encode()


LISTING_TYPES = {"dir": "d", "file": "f", "symlink": "l"}
#: entries at the top of a written root that a root listing leaves out: mkfs makes lost+found
LISTING_SKIP = ("lost+found", STAMP)


def _listing_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t")


def root_listing(tree: Mapping[str, Node]) -> bytes:
    """The canonical listing of a whole root (docs/internals.md §3, a release's ``root_listing``),
    byte for byte what the collection's ``osfleet_root_listing`` (plugins/plugin_utils/scripts/
    _lib.sh) prints for the root written on a device: per entry except ``LISTING_SKIP``,
    ``<path>\t<d|f|l>\t<mode octal>\t<uid>:<gid>\t<size | ->\t<sha256 | link target | ->``
    (every lab entry is owned by 0:0; ``\\`` and tab escaped in paths and targets), the lines
    sorted by their bytes."""
    lines = []
    for path, node in tree.items():
        if path in LISTING_SKIP:
            continue
        if "\n" in path or (node.target and "\n" in node.target):
            raise LabError(f"{path!r}: a root listing cannot hold a line break")
        if node.kind == "file":
            size, data = str(node.size), node.sha256
        elif node.kind == "symlink":
            assert node.target is not None
            size, data = str(len(node.target.encode())), _listing_escape(node.target)
        else:
            size, data = "-", "-"
        lines.append(f"{_listing_escape(path)}\t{LISTING_TYPES[node.kind]}\t{node.mode & 0o7777:o}\t0:0\t{size}\t{data}".encode())
    return b"".join(line + b"\n" for line in sorted(lines))


def root_listing_info(tree: Mapping[str, Node]) -> dict[str, Any]:
    """A release's catalog field ``root_listing``: the sha256 of its root listing and its entries."""
    listing = root_listing(tree)
    return {"sha256": hashlib.sha256(listing).hexdigest(), "entries": listing.count(b"\n")}


def materialize(tree: Mapping[str, Node], dest: Path) -> None:
    """Write a tree to a directory; host-file nodes become hard links (they are never written)."""
    for path in sorted(tree):
        node = tree[path]
        target = dest / path
        if node.kind == "dir":
            target.mkdir(exist_ok=True)
            continue
        if node.kind == "symlink":
            assert node.target is not None
            os.symlink(node.target, target)
            continue
        if node.src is not None and os.stat(node.src).st_mode & 0o7777 == node.mode:
            os.link(node.src, target)
        else:
            with node.open() as src_fh, open(target, "wb") as out:
                shutil.copyfileobj(src_fh, out)
            os.chmod(target, node.mode)
    for path in sorted(tree, reverse=True):  # directories last: children do not bump them
        node = tree[path]
        target = dest / path
        if node.kind == "dir":
            os.chmod(target, node.mode)
        if node.kind != "file" or node.src is None:
            os.utime(target, (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(dest, (EPOCH, EPOCH))


def tree_delta(old: Mapping[str, Node], new: Mapping[str, Node]) -> Tree:
    """The layer that turns ``old`` into ``new``: changed/added entries (+ parents) and OCI
    whiteouts ``.wh.<name>`` for removed entries (only the topmost removed path; no opaque
    whiteouts). An entry whose type changes is whited out and added again."""
    changed: Tree = {}
    removed: list[str] = []
    for path, node in new.items():
        prev = old.get(path)
        if prev is None or not prev.same_as(node):
            changed[path] = node
        if prev is not None and prev.kind != node.kind:
            removed.append(path)
    removed += [p for p in old if p not in new]
    removed_set = set(removed)
    layer = add_parents(changed, new)
    for path in removed:
        parent, _sep, name = path.rpartition("/")
        if parent and parent in removed_set and parent not in new:
            continue  # the whole parent directory goes
        layer[f"{parent}/.wh.{name}" if parent else f".wh.{name}"] = Node.file(b"")
    return add_parents(layer, new)


def apply_delta(old: Mapping[str, Node], layer: Mapping[str, Node]) -> Tree:
    """Apply a layer to a tree the OCI way (whiteouts first, then the entries); for checks."""
    out = dict(old)
    for path in layer:
        parent, _sep, name = path.rpartition("/")
        if name.startswith(".wh."):
            gone = f"{parent}/{name[4:]}" if parent else name[4:]
            for p in [p for p in out if p == gone or p.startswith(gone + "/")]:
                del out[p]
    for path, node in layer.items():
        if not path.rpartition("/")[2].startswith(".wh."):
            out[path] = node
    return out


# ==== deterministic content ====================================================================

def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def _blob(size: int, *seed: object) -> bytes:
    return random.Random(_h(*seed)).randbytes(size)


WORDS = ("balena", "fleet", "update", "rootfs", "kernel", "device", "supervisor", "engine",
         "health", "delta", "registry", "partition", "rollback", "commit", "boot", "state")


def _text(lines: int, *seed: object) -> bytes:
    rnd = random.Random(_h(*seed))
    return "".join(" ".join(rnd.choice(WORDS) for _word in range(rnd.randint(4, 12))) + "\n"
                   for _line in range(lines)).encode()


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b""))


OVERLAYS = ("i2c-rtc", "spi-gpio", "uart5", "pwm-2chan", "w1-gpio", "disable-bt", "hifiberry-dac",
            "gpio-fan", "vc4-kms", "can-mcp2515", "sdio-1bit")


def boot_payload(rel: Release) -> Tree:
    """``/resin-boot``: kernel (1-2 MiB, version-specific), overlays (a sliding window: one
    added and one removed per release), config.txt, logo, grub.cfg, fingerprint."""
    files: dict[str, bytes] = {}
    files[rel.kernel] = _blob(1024 * 1024 + _h(rel.device_type, rel.version) % (1024 * 1024),
                              "kernel", rel.device_type, rel.version)
    for k, name in enumerate(OVERLAYS[rel.index:rel.index + 4]):
        rev = rel.index if k == 0 else 0  # the oldest overlay of the window changes each release
        files[f"overlays/{name}.dtbo"] = _blob(2048 + _h(name) % 6144, "dtbo", rel.device_type,
                                               name, rev)
    files["config.txt"] = (f"# {rel.machine} boot configuration\n"
                           "disable_splash=1\ndtparam=i2c_arm=on\ngpu_mem=16\n").encode()
    files["splash/balena-logo.png"] = _png(64, 16, (0x2A, 0x50, 0x6F))
    files["EFI/BOOT/grub.cfg"] = (
        "set default=0\nset timeout=0\nload_env -f /EFI/BOOT/grubenv\n"
        f"menuentry 'balenaOS {rel.version}' {{\n"
        f"  linux /{rel.kernel} root=LABEL=resin-root${{resin_root_part}} rootwait\n}}\n").encode()
    files["EFI/BOOT/bootx64.efi" if rel.arch == "amd64" else "EFI/BOOT/bootaa64.efi"] = _blob(
        96 * 1024, "efi", rel.device_type)
    if rel.arch == "aarch64":
        files["extlinux/extlinux.conf"] = (
            f"DEFAULT primary\nLABEL primary\n  LINUX /{rel.kernel}\n"
            f"  APPEND root=LABEL=resin-rootA ro rootwait # {rel.layout}\n").encode()
    files["os-release"] = f"balenaOS {rel.version} {rel.device_type}\n".encode()
    fingerprint = "".join(f"{hashlib.md5(data).hexdigest()}  /{path}\n"
                          for path, data in sorted(files.items()) if path != "config.json")
    files["balenaos.fingerprint"] = fingerprint.encode()
    return {f"resin-boot/{p}": Node.file(d) for p, d in files.items()}


CONTENT_BASE, CONTENT_ADDED_PER_RELEASE = 300, 12


def content_files(rel: Release) -> Tree:
    """``/usr/share/osfleet-content``: ~300-360 small files. Per release step about 10% change,
    4% disappear and 12 are added; plus a per-release directory (gone in the next release)."""
    tree: Tree = {}
    top = "usr/share/osfleet-content"
    for k in range(CONTENT_BASE + CONTENT_ADDED_PER_RELEASE * rel.index):
        born = 0 if k < CONTENT_BASE else (k - CONTENT_BASE) // CONTENT_ADDED_PER_RELEASE + 1
        steps = range(born + 1, rel.index + 1)
        if any(_h(rel.device_type, k, "rm", j) % 25 == 0 for j in steps):
            continue
        rev = sum(1 for j in steps if _h(rel.device_type, k, "chg", j) % 10 == 0)
        group = f"g{_h(k, 'grp') % 12:02d}"
        if k % 2:
            data = _text(2 + _h(k, "n") % 40, rel.device_type, k, rev)
            tree[f"{top}/{group}/item-{k:04d}.txt"] = Node.file(data)
        else:
            data = _blob(64 + _h(k, "size") % 2048, rel.device_type, k, rev)
            tree[f"{top}/{group}/item-{k:04d}.bin"] = Node.file(data)
    notes = f"{top}/release-{rel.tag}"
    tree[f"{notes}/NOTES.txt"] = Node.file(_text(20, rel.device_type, rel.version, "notes"))
    tree[f"{notes}/CHANGES.txt"] = Node.file(_text(8, rel.device_type, rel.version, "changes"))
    return tree


def os_release(rel: Release, pretty: str) -> bytes:
    fields = {
        "ID": "balena-os", "NAME": "balenaOS", "VERSION": rel.version, "VERSION_ID": rel.version,
        "PRETTY_NAME": f"balenaOS {rel.version}", "MACHINE": rel.machine, "SLUG": rel.device_type,
        "META_BALENA_VERSION": rel.version.split("+")[0], "BALENA_BOARD_REV": "osfleet-lab",
        "OSFLEET_ARCH": rel.arch, "OSFLEET_LAYOUT": rel.layout, "OSFLEET_DEVICE_NAME": pretty,
    }
    return "".join(f'{k}="{v}"\n' for k, v in fields.items()).encode()


def supervisor_files(version: str, prefix: str) -> Tree:
    script = (OS_DIR / "supervisor" / "balena-supervisor").read_bytes()
    return {f"{prefix}balena-supervisor": Node.file(script, 0o755),
            f"{prefix}VERSION": Node.file(f"{version}\n".encode())}


def supervisor_conf(version: str) -> bytes:
    return f"SUPERVISOR_IMAGE={SUPERVISOR_REPOSITORY}\nSUPERVISOR_VERSION=v{version}\n".encode()


def release_overlay(rel: Release, base: Mapping[str, Node]) -> Tree:
    """The release-specific layer: personality, fault overlay, generated files, rootfs.sha256."""
    dt = device_types()[rel.device_type]
    tree = overlay_dir(OS_DIR / "rootfs")
    if rel.lab_fault:
        tree.update(overlay_dir(OS_DIR / "faults" / rel.lab_fault))
    tree.update(supervisor_files(
        rel.supervisor_version, f"usr/lib/balena-supervisor/images/v{rel.supervisor_version}/"))
    conf = supervisor_conf(rel.supervisor_version)
    tree["etc/balena-supervisor/supervisor.conf"] = Node.file(conf)
    tree["etc/os-release"] = Node.file(os_release(rel, dt.pretty_name))
    tree["usr/share/osfleet/release.json"] = Node.file(json.dumps({
        "device_type": rel.device_type, "version": rel.version, "arch": rel.arch,
        "layout": rel.layout, "supervisor_version": rel.supervisor_version,
        "lab_fault": rel.lab_fault}, indent=1, sort_keys=True).encode() + b"\n")
    tree.update(boot_payload(rel))
    # the hostapp's /boot (what `balena create --volume=/boot` copies into the boot volume, found
    # through the partition's `boot` link): the kernel beside /boot/init (os/rootfs/boot/init)
    tree[f"boot/{rel.kernel}"] = tree[f"resin-boot/{rel.kernel}"]
    tree.update(content_files(rel))
    tree = add_parents(tree, base)
    full = {**base, **tree}
    tree[ROOTFS_SHA256] = Node.file(rootfs_sha256(full))
    return tree


# ==== the base root ============================================================================

def _usr_path(path: str) -> str:
    """Host path -> path in the merged-/usr device root (relative)."""
    rel = path.lstrip("/")
    for top in ("bin/", "sbin/", "lib/", "lib64/"):
        if rel.startswith(top):
            return "usr/" + rel
    return rel


def _ldd(binary: str) -> list[str]:
    out = run(["ldd", binary], check=False).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def _copy_host_file(host: str, root: Path) -> None:
    dest = root / _usr_path(host)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(os.path.realpath(host), dest)
    os.chmod(dest, 0o755 if os.access(host, os.X_OK) else 0o644)


def _base_skeleton(root: Path) -> None:
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "var"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in TOP_SYMLINKS.items():
        os.symlink(target, root / link)
    for d, mode in BASE_DIRS.items():
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / d, mode)


def _copy_binaries(root: Path) -> None:
    """BASE_BINARIES with every library ldd names, the NSS module and a few data files."""
    libs: set[str] = set()
    for binary in BASE_BINARIES:
        if not os.path.exists(binary):
            raise LabError(f"{binary} is missing on this host: install tests/lab/apt-packages.txt")
        _copy_host_file(binary, root)
        libs.update(_ldd(binary))
    libdir = os.path.dirname(next(lib for lib in sorted(libs) if "/libc.so" in lib))
    libs.update(os.path.join(libdir, name) for name in NSS_LIBS)
    for path in (*sorted(libs), *(p for p in BASE_HOST_FILES if os.path.exists(p))):
        _copy_host_file(path, root)


def _install_busybox(root: Path) -> None:
    """busybox-static and a symlink per applet, except where a real tool already sits."""
    _copy_host_file(BUSYBOX, root)
    for applet in run([BUSYBOX, "--list-full"]).stdout.split():
        rel = _usr_path(applet)
        if os.path.basename(rel) in BUSYBOX_SKIP or os.path.lexists(root / rel):
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/usr/bin/busybox", root / rel)
    for link, target in TOOL_SYMLINKS.items():
        os.symlink(target, root / link)


def _install_base_files(root: Path) -> None:
    """os/base/ (passwd, sshd_config, containers policy, ...) and an empty machine-id."""
    for path, node in overlay_dir(OS_DIR / "base").items():
        if node.kind == "dir":
            (root / path).mkdir(parents=True, exist_ok=True)
        else:
            assert node.data is not None
            (root / path).write_bytes(node.data)
            os.chmod(root / path, node.mode)
    (root / "etc/machine-id").write_bytes(b"")


def _clamp_mtimes(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def build_base_root(root: Path) -> None:
    """busybox-static applets + ldd-copied Debian binaries + static /etc, no python."""
    _base_skeleton(root)
    _copy_binaries(root)
    _install_busybox(root)
    _install_base_files(root)
    _clamp_mtimes(root)
    pythons = list(root.rglob("python*"))
    if pythons:
        raise LabError(f"the device base root must not contain python: {pythons[0]}")


# ==== layers and OCI images ====================================================================

class _HashWriter:
    """File-like sink that hashes (and counts) what passes through to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.inner.write(data) if self.inner is not None else len(data)

    def flush(self) -> None:
        if self.inner is not None:
            self.inner.flush()


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str  # sha256:<hex> of the gzip blob
    diff_id: str  # sha256:<hex> of the uncompressed tar
    size: int
    path: Path  # the blob file

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": MEDIA_LAYER, "digest": self.digest, "size": self.size}


def _tarinfo(path: str, node: Node) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path)
    ti.mode, ti.uid, ti.gid, ti.uname, ti.gname, ti.mtime = node.mode, 0, 0, "root", "root", EPOCH
    if node.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif node.kind == "symlink":
        ti.type, ti.linkname = tarfile.SYMTYPE, node.target or ""
    else:
        ti.type, ti.size = tarfile.REGTYPE, node.size
    return ti


def write_layer(tree: Mapping[str, Node], blobs: Path, hardlinks: bool = False) -> Layer:
    """Write a gzip'd tar layer of ``tree`` (sorted, root-owned, mtimes clamped) into ``blobs``
    (an OCI ``blobs/sha256`` directory), named by its digest. With ``hardlinks``, a big file
    that repeats an earlier one of the layer (``hostapp.hardlinks``) is a hard link to it."""
    links = hostapp.hardlinks(tree) if hardlinks else {}
    blobs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".layer.")
    with os.fdopen(fd, "wb") as raw:
        gz_out = _HashWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=gz_out,  # type: ignore[arg-type]
                           compresslevel=GZIP_LEVEL, mtime=0) as gz:
            tar_out = _HashWriter(gz)
            with tarfile.open(fileobj=tar_out, mode="w|",  # type: ignore[call-overload]
                              format=tarfile.GNU_FORMAT) as tar:
                for path in sorted(tree):
                    node = tree[path]
                    if path in links:
                        info = _tarinfo(path, node)
                        info.type, info.linkname, info.size = tarfile.LNKTYPE, links[path], 0
                        tar.addfile(info)
                    elif node.kind == "file":
                        with node.open() as fh:
                            tar.addfile(_tarinfo(path, node), fh)
                    else:
                        tar.addfile(_tarinfo(path, node))
    digest = gz_out.hash.hexdigest()
    final = blobs / digest
    os.replace(tmp, final)
    return Layer(f"sha256:{digest}", f"sha256:{tar_out.hash.hexdigest()}", gz_out.size, final)


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class OciLayout:
    """An OCI image layout directory holding many images (``index.json`` ref names)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.manifests: list[dict[str, Any]] = []

    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blobs / digest
        if not path.exists():
            path.write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def adopt(self, layer: Layer) -> Layer:
        """Hard-link a layer blob built elsewhere (the base layer) into this layout."""
        path = self.blobs / layer.digest.split(":")[1]
        if not path.exists():
            os.link(layer.path, path)
        return dataclasses.replace(layer, path=path)

    def image(self, ref: str, layers: list[Layer], arch: str, labels: dict[str, str],
              history: list[str], env: list[str] | None = None) -> dict[str, Any]:
        image_config: dict[str, Any] = {"Labels": labels, "Cmd": ["/sbin/init"]}
        if env:
            image_config["Env"] = env
        config = {
            "architecture": OCI_ARCH[arch], "os": "linux", "created": EPOCH_ISO,
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": EPOCH_ISO, "created_by": h} for h in history],
        }
        cfg = self.put(_canonical_json(config), MEDIA_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": cfg,
                    "layers": [layer.descriptor() for layer in layers], "annotations": labels}
        desc = self.put(_canonical_json(manifest), MEDIA_MANIFEST)
        entry = {**desc, "annotations": {"org.opencontainers.image.ref.name": ref}}
        self.manifests.append(entry)
        size = cfg["size"] + desc["size"] + sum(layer.size for layer in layers)
        return {"ref": ref, "digest": desc["digest"], "size": size,
                "layers": [layer.digest for layer in layers], "image_id": cfg["digest"],
                "diff_ids": [layer.diff_id for layer in layers]}

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": sorted(self.manifests, key=lambda m: m["annotations"][
                     "org.opencontainers.image.ref.name"])}
        (self.root / "index.json").write_bytes(_canonical_json(index))


# ==== build keys and the build =================================================================

def _file_stat_key(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns]


def _dir_content_key(root: Path) -> list[Any]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out.append([path.relative_to(root).as_posix(), os.access(path, os.X_OK),
                        hashlib.sha256(path.read_bytes()).hexdigest()])
    return out


def _digest_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_key() -> str:
    """Key of the base root: the host binaries (by stat), dpkg's status, base files, code."""
    inputs = [BUILDER_VERSION, GZIP_LEVEL, EPOCH,
              [_file_stat_key(p) for p in (*BASE_BINARIES, BUSYBOX, *BASE_HOST_FILES)],
              _file_stat_key("/var/lib/dpkg/status"), _dir_content_key(OS_DIR / "base"),
              hashlib.sha256(Path(__file__).read_bytes()).hexdigest()]
    return _digest_of(inputs)


def build_key() -> str:
    """Key of the whole build: the base key + personality, faults, supervisor, releases.json and
    the hostapp code (delta labels, hostapp root images)."""
    return _digest_of([base_key(), _dir_content_key(OS_DIR),
                       hashlib.sha256(RELEASES_JSON.read_bytes()).hexdigest(),
                       hashlib.sha256(Path(hostapp.__file__).read_bytes()).hexdigest(),
                       [hashlib.sha256((REPO_ROOT / p).read_bytes()).hexdigest() for p in PRODUCT_READER]])


@dataclasses.dataclass(frozen=True)
class Build:
    path: Path
    key: str
    info: dict[str, Any]

    def release_info(self, device_type: str, version: str) -> dict[str, Any]:
        find_release(device_type, version)
        for entry in self.info["releases"]:
            if entry["device_type"] == device_type and entry["version"] == version:
                return entry
        raise LabError(f"build {self.key} has no {device_type} {version}: rebuild the cache")

    def rootfs(self, device_type: str, version: str) -> Path:
        return self.path / self.release_info(device_type, version)["rootfs"]

    @property
    def registry_storage(self) -> Path:
        return self.path / "registry"

    @property
    def oci_dir(self) -> Path:
        return self.path / "oci"


def _load_build(path: Path) -> Build | None:
    info = read_json(path / "build.json")
    if not isinstance(info, dict):
        return None
    return Build(path, info["key"], info)


def _base_tree(cache_dir: Path, timings: dict[str, float]) -> tuple[Tree, Layer]:
    """Build (or reuse) the base root and its layer under ``cache_dir/base-<key>``."""
    key = base_key()
    base_dir = cache_dir / f"base-{key}"
    meta = read_json(base_dir / "layer.json")
    if not meta:
        with _timed(timings, "base"):
            _build_base(cache_dir, key, base_dir)
        meta = read_json(base_dir / "layer.json")
    tree = tree_from_dir(base_dir / "root")
    hexd = meta["digest"].split(":")[1]
    return tree, Layer(meta["digest"], meta["diff_id"], meta["size"], base_dir / "blobs" / hexd)


def _build_base(cache_dir: Path, key: str, base_dir: Path) -> None:
    """The base root and its gzip'd layer, built aside and renamed into place."""
    shutil.rmtree(base_dir, ignore_errors=True)
    work = cache_dir / f".base-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    build_base_root(work / "root")
    tree = tree_from_dir(work / "root")
    layer = write_layer(tree, work / "blobs")
    write_json(work / "layer.json", {"digest": layer.digest, "diff_id": layer.diff_id,
                                     "size": layer.size, "files": len(tree),
                                     "bytes": sum(n.size for n in tree.values())})
    os.rename(work, base_dir)


RELEASE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def _build_release(rel: Release, base: Tree, oci: OciLayout, base_layer: Layer,
                   roots: Path) -> tuple[Release, Tree, Tree, dict[str, Any]]:
    overlay = release_overlay(rel, base)
    layer = write_layer(overlay, oci.blobs, hardlinks=True)  # /boot's kernel = /resin-boot's
    labels = {"io.osfleet.kind": "release", "io.osfleet.device-type": rel.device_type,
              "io.osfleet.version": rel.version, "io.osfleet.layout": rel.layout,
              "io.osfleet.supervisor-version": rel.supervisor_version}
    img = oci.image(rel.name, [base_layer, layer], rel.arch, labels,
                    ["osfleet lab: base root (busybox + Debian binaries)",
                     f"osfleet lab: balenaOS {rel.version} for {rel.device_type}"],
                    env=RELEASE_ENV)
    # what the engine's layer store holds once the image is pulled (layerdb `size` per layer)
    img["layer_sizes"] = [hostapp.layer_size(base), hostapp.layer_size(overlay, hardlinks_too=True)]
    full = {**base, **overlay}
    img["root_listing"] = root_listing_info(full)
    dest = roots / rel.device_type / rel.tag
    dest.mkdir(parents=True)
    materialize(full, dest)
    return rel, full, overlay, img


def _build_delta(dt: DeviceType, frm: Release, to: Release, trees: Mapping[str, Tree],
                 layer_trees: Mapping[str, list[Tree]], entries: Mapping[str, dict[str, Any]],
                 oci: OciLayout) -> dict[str, Any]:
    """One image that serves both profiles: its single layer is the root delta `from` -> `to`
    (applied on a copy of the `from` root by the export writer), and its config carries the
    balena-engine delta labels the lab engine rebuilds the target image from (hostapp.py)."""
    layer_tree = tree_delta(trees[frm.name], trees[to.name])
    layer = write_layer(layer_tree, oci.blobs)
    base_entry, target_entry = entries[frm.name], entries[to.name]
    target_config = (oci.blobs / target_entry["image_id"].split(":")[1]).read_bytes()
    labels = {"io.osfleet.kind": "delta", "io.osfleet.device-type": dt.name,
              "io.osfleet.delta.from": frm.version, "io.osfleet.delta.to": to.version,
              **hostapp.delta_labels(base_entry["image_id"], base_entry["diff_ids"],
                                     target_config, layer_trees[to.name], [False, True])}
    img = oci.image(f"{dt.name}-delta-{frm.tag}-{to.tag}", [layer], dt.arch, labels,
                    [f"osfleet lab: delta {frm.version} -> {to.version}"])
    return {"from": frm.version, "to": to.version, "repository": to.delta_repository,
            "tag": f"{frm.tag}-{to.tag}", "digest": img["digest"], "size": img["size"],
            "ref": img["ref"], "entries": len(layer_tree)}


def _build_supervisor(version: str, oci: OciLayout) -> dict[str, Any]:
    layer = write_layer(supervisor_files(version, ""), oci.blobs)
    labels = {"io.osfleet.kind": "supervisor", "io.osfleet.supervisor-version": version}
    img = oci.image(f"balena-supervisor-v{version}", [layer], "amd64", labels,
                    [f"osfleet lab: balena-supervisor v{version}"])
    return {"version": version, "repository": SUPERVISOR_REPOSITORY, "tag": f"v{version}",
            "digest": img["digest"], "size": img["size"], "ref": img["ref"]}


def _push_all(work: Path, images: list[tuple[str, str]]) -> None:
    """Push (oci ref, registry repo:tag) pairs from ``work/oci`` into a registry whose storage
    becomes ``work/registry``. The first image of each repository goes alone (so that its big
    base layer is uploaded once), the rest in parallel."""
    from . import services  # services imports this module

    with services.registry_process(work / "registry", work / "push-registry") as addr:
        def push(pair: tuple[str, str]) -> None:
            ref, dest = pair
            run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                 f"oci:{work / 'oci'}:{ref}", f"docker://{addr}/{dest}"], timeout=300)

        seen: set[str] = set()
        first, rest = [], []
        for pair in images:
            repo = pair[1].split(":")[0]
            (rest if repo in seen else first).append(pair)
            seen.add(repo)
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(push, first))
            list(pool.map(push, rest))
    shutil.rmtree(work / "push-registry", ignore_errors=True)


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        timings[name] = round(time.monotonic() - t0, 2)


def _build_releases(oci: OciLayout, base: Tree, base_layer: Layer, roots: Path
                    ) -> tuple[dict[str, Tree], dict[str, list[Tree]], dict[str, dict[str, Any]]]:
    """Every release: its image in ``oci`` and its full root under ``roots`` (2 threads).
    Returns the full trees, the trees of each image layer, and the build.json entries."""
    trees: dict[str, Tree] = {}
    layer_trees: dict[str, list[Tree]] = {}
    entries: dict[str, dict[str, Any]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(_build_release, rel, base, oci, base_layer, roots)
                for rel in known_releases()]
        for job in jobs:
            rel, full, overlay, img = job.result()
            trees[rel.name] = full
            layer_trees[rel.name] = [base, overlay]
            entries[rel.name] = {
                "device_type": rel.device_type, "version": rel.version, "arch": rel.arch,
                "layout": rel.layout, "repository": rel.repository, "tag": rel.tag,
                "digest": img["digest"], "size": img["size"], "layers": img["layers"],
                "image_id": img["image_id"], "diff_ids": img["diff_ids"],
                "layer_sizes": img["layer_sizes"], "size_unpacked": sum(img["layer_sizes"]),
                "root_listing": img["root_listing"],
                "ref": img["ref"], "supervisor_version": rel.supervisor_version,
                "lab_fault": rel.lab_fault, "rootfs": f"roots/{rel.device_type}/{rel.tag}",
                "deltas": []}
    return trees, layer_trees, entries


def product_image_reader() -> Any:
    """``plugin_utils/image.py`` of this checkout's collection (stdlib only), imported as
    ``ansible_collections.osfleet.hup`` through ``build/collections`` (the link is made when missing)."""
    root = REPO_ROOT / "build" / "collections"
    link = root / "ansible_collections" / "osfleet" / "hup"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            link.symlink_to(REPO_ROOT, target_is_directory=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("ansible_collections.osfleet.hup.plugins.plugin_utils.image")


#: catalog fields of a release that its image says, as osfleet.hup.catalog reads them
DESCRIBED = ("device_type", "version", "arch", "digest", "size", "image_id", "size_unpacked",
             "supervisor_version")


def describe_releases(oci_root: Path, entries: Mapping[str, dict[str, Any]]) -> None:
    """Each release's catalog facts as osfleet.hup.catalog reads them from its image (the product's
    reader on the OCI layout: blobs verified, layers applied, os-release and supervisor.conf read
    from the image root), so that every test runs on the product's description. The lab's own
    model of the same facts must agree; a difference fails the build, naming the fields."""
    image = product_image_reader()
    store = image.BlobStore(oci_root)

    def read(entry: dict[str, Any]) -> dict[str, Any]:
        manifest = image.Manifest.parse(store.path(entry["digest"]).read_bytes())
        facts = image.inspect_image(store, manifest)
        return {"device_type": facts.os_release.get("SLUG"), "version": facts.os_release.get("VERSION"),
                "arch": facts.arch, "digest": facts.digest, "size": facts.size,
                "image_id": facts.image_id, "size_unpacked": facts.size_unpacked,
                "supervisor_version": facts.supervisor_version}

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        described = list(pool.map(read, entries.values()))
    for entry, got in zip(entries.values(), described):
        differ = {k: (got[k], entry[k]) for k in DESCRIBED if got[k] != entry[k]}
        if differ:
            raise LabError(f"{entry['device_type']} {entry['version']}: osfleet.hup.catalog reads "
                           f"(image, lab model) {differ} from the image; fix the reader or the lab")
        entry.update(got)


def _build_deltas(oci: OciLayout, trees: Mapping[str, Tree],
                  layer_trees: Mapping[str, list[Tree]],
                  entries: dict[str, dict[str, Any]]) -> None:
    for dt in device_types().values():
        by_version = {r.version: r for r in dt.releases}
        for frm, to in dt.deltas:
            delta = _build_delta(dt, by_version[frm], by_version[to], trees, layer_trees,
                                 entries, oci)
            entries[by_version[to].name]["deltas"].append(delta)


def _pushes(entries: Mapping[str, dict[str, Any]], supervisors: list[dict[str, Any]]
            ) -> list[tuple[str, str]]:
    """(OCI ref, registry repository:tag) of every image."""
    images = [*entries.values(), *(d for r in entries.values() for d in r["deltas"]),
              *supervisors]
    return [(i["ref"], f"{i['repository']}:{i['tag']}") for i in images]


def _build(cache_dir: Path, key: str) -> Build:
    timings: dict[str, float] = {}
    work = cache_dir / f".build-{key}.tmp"
    with _timed(timings, "total"):
        base, base_layer = _base_tree(cache_dir, timings)
        shutil.rmtree(work, ignore_errors=True)
        oci = OciLayout(work / "oci")
        with _timed(timings, "releases"):
            trees, layer_trees, entries = _build_releases(oci, base, oci.adopt(base_layer),
                                                          work / "roots")
        with _timed(timings, "deltas_supervisors"):
            _build_deltas(oci, trees, layer_trees, entries)
            versions = sorted({r.supervisor_version for r in known_releases()},
                              key=lambda v: tuple(map(int, v.split("."))))
            supervisors = [_build_supervisor(v, oci) for v in versions]
            oci.write_index()
        with _timed(timings, "describe"):
            describe_releases(oci.root, entries)
        with _timed(timings, "push"):
            _push_all(work, _pushes(entries, supervisors))
    info = {"key": key, "base_key": base_key(), "epoch": EPOCH, "timings": timings,
            "releases": list(entries.values()), "supervisors": supervisors,
            "supervisor_repository": SUPERVISOR_REPOSITORY}
    write_json(work / "build.json", info)
    final = cache_dir / f"build-{key}"
    shutil.rmtree(final, ignore_errors=True)
    os.rename(work, final)
    _prune(cache_dir, keep=final)
    log(f"built the lab releases in {timings['total']:.1f}s ({final})")
    return Build(final, key, info)


def _prune(cache_dir: Path, keep: Path) -> None:
    """Keep the newest KEEP_BUILDS builds (labs hold hard links to what they use)."""
    builds = sorted(cache_dir.glob("build-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    old = [b for b in builds if b != keep][KEEP_BUILDS - 1:]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    used_bases = {read_json(b / "build.json", {}).get("base_key")
                  for b in cache_dir.glob("build-*")}
    for base in cache_dir.glob("base-*"):
        if base.name.removeprefix("base-") not in used_bases:
            shutil.rmtree(base, ignore_errors=True)


_BUILDS: dict[tuple[Path, str], Build] = {}


def _modified(build: Build) -> Path | None:
    """First entry of a release root whose mtime is not EPOCH (every file, link and directory
    is built with it): something wrote into the shared, read-only roots. A stat walk (~10 ms)."""
    for rel in build.info["releases"]:
        root = build.path / rel["rootfs"]
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (".", *dirnames, *filenames):
                path = os.path.join(dirpath, name)
                if os.lstat(path).st_mtime != EPOCH:
                    return Path(path)
    return None


def ensure_built(cache_dir: Path, *, disk_images: bool = False, disk_profile: str = "ab",
                 disk_device_type: str | None = None) -> Build:
    """Return the current build, building it first when an input changed (see module doc)."""
    cache_dir = Path(cache_dir).resolve()
    key = build_key()
    build = _BUILDS.get((cache_dir, key))
    if build is None or not (build.path / "build.json").exists() or _modified(build):
        cache_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(cache_dir / ".build.lock", "the lab release cache", timeout=600):
            build = _load_build(cache_dir / f"build-{key}")
            if build is not None and (bad := _modified(build)):
                log(f"{bad} was modified since it was built: rebuilding the lab releases")
                shutil.rmtree(build.path)
                shutil.rmtree(cache_dir / f"base-{build.info['base_key']}", ignore_errors=True)
                build = None
            build = build or _build(cache_dir, key)
        _BUILDS[(cache_dir, key)] = build
    if disk_images:
        wanted = [r for r in known_releases()
                  if disk_profile == "ab" or disk_device_type in (None, r.device_type)]
        missing = [r for r in wanted
                   if disk_image_info(build, r.device_type, r.version, disk_profile) is None]
        if missing:
            with file_lock(cache_dir / ".build.lock", "the lab release cache", timeout=600), \
                    concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(lambda r: build_disk_image(build, r, disk_profile), missing))
    return build


def release_rootfs(cache_dir: Path, device_type: str, version: str) -> Path:
    """The full root directory of a release (read-only; see the module doc)."""
    return ensure_built(cache_dir).rootfs(device_type, version)


def release_stamp(cache_dir: Path, device_type: str, version: str, source: str = "provision",
                  written_at: str | None = None, build: Build | None = None) -> str:
    """Text of the stamp ``/.osfleet-release.json`` of a root holding that release (``build``: the
    build that ``ensure_built`` returned already, e.g. for each device of one ``up``: not walked
    again for every stamp)."""
    if source not in ("delta", "registry", "fallback", "provision"):
        raise LabError(f"bad stamp source {source!r}")
    entry = (build or ensure_built(cache_dir)).release_info(device_type, version)
    stamp = {"device_type": device_type, "version": version, "digest": entry["digest"],
             "source": source,
             "written_at": written_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return json.dumps(stamp, sort_keys=True) + "\n"


# ==== disk images (advanced HUP) ===============================================================

def _uuid(*seed: object) -> str:
    return str(uuid.UUID(int=_h(*seed, "hi") << 64 | _h(*seed, "lo"), version=4))


#: the device profiles a disk image is made for, and the suffix of its file name
DISK_PROFILES = {"ab": "", "balenaos": "-hostapp"}


def _disk_name(rel: Release, profile: str) -> str:
    if profile not in DISK_PROFILES:
        raise LabError(f"unknown device profile {profile!r} for a disk image (known: {', '.join(DISK_PROFILES)})")
    return f"{rel.name}{DISK_PROFILES[profile]}.img.gz"


def _disk_boot_dir(build: Build, rel: Release, dest: Path) -> None:
    """The boot partition of a fresh disk: the OS's /resin-boot + env + a minimal config.json."""
    shutil.copytree(build.rootfs(rel.device_type, rel.version) / "resin-boot", dest, symlinks=True)
    (dest / "resinOS_uEnv.txt").write_text("resin_root_part=2\nupgrade_available=0\n")
    (dest / "config.json").write_text(json.dumps(
        {"deviceType": rel.device_type, "hostname": "balena", "developmentMode": False,
         "persistentLogging": False}, indent=1) + "\n")


def build_disk_image(build: Build, rel: Release, profile: str = "ab") -> Path:
    """Gzip'd raw GPT disk of a release for a device profile: partitions of its layout (sfdisk on
    a file), each filesystem written at its offset with ``mke2fs -E offset=... -d DIR`` (no loop
    device needed): resin-boot (payload + env), resin-rootA with the release and its stamp, empty
    rootB and state, the data partition. Profile ``ab``: rootA is the plain root and data is
    empty; ``balenaos``: rootA is the release's hostapp partition (``hostapp.root_image``: the
    engine data root, ``current``, ``boot``, ``sbin/init``, written by the release's own
    ``hostapp-update``) and data holds the supervisor's ``resin-data/`` (``device.stage_data``),
    as on a real balenaOS disk. UUIDs, hash seeds and times of what is made here are fixed, so
    the image is reproducible on one host (the hostapp partition: as its root image)."""
    disk_dir = build.path / "disk"
    name = _disk_name(rel, profile)
    out = disk_dir / name
    meta_path = disk_dir / f"{name}.json"
    if out.exists() and meta_path.exists():
        return out
    disk_dir.mkdir(exist_ok=True)
    parts = layout(rel.layout)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=disk_dir, prefix=f".{name}.") as tmp_s:
        tmp = Path(tmp_s)
        img = tmp / "disk.img"
        total_mib = 1 + sum(size for _label, size in parts) + 1
        with open(img, "wb") as fh:
            fh.truncate(total_mib << 20)
        script = ["label: gpt", f"label-id: {_uuid(rel.name, 'disk')}", "unit: sectors"]
        start = 2048
        offsets = []
        for label, size in parts:
            sectors = size << 11
            ptype = GPT_TYPE_ESP if label == "resin-boot" else GPT_TYPE_LINUX
            script.append(f"start={start}, size={sectors}, type={ptype}, "
                          f"uuid={_uuid(rel.name, label)}, name=\"{label}\"")
            offsets.append((label, start * 512, size))
            start += sectors
        run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", img],
            input_text="\n".join(script) + "\n")
        boot = tmp / "boot"
        _disk_boot_dir(build, rel, boot)
        stamp = json.dumps({"device_type": rel.device_type, "version": rel.version,
                            "digest": build.release_info(rel.device_type, rel.version)["digest"],
                            "source": "provision", "written_at": EPOCH_ISO}, sort_keys=True) + "\n"
        contents = {"resin-boot": boot}
        if profile == "balenaos":
            data = tmp / "data"
            data.mkdir()
            stage_data(data, profile)
            contents["resin-data"] = data
        else:
            root = tmp / "rootA"
            shutil.copytree(build.rootfs(rel.device_type, rel.version), root, symlinks=True,
                            copy_function=os.link)
            (root / STAMP).write_text(stamp)
            contents["resin-rootA"] = root
        env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(EPOCH)}
        for label, offset, size in offsets:
            if profile == "balenaos" and label == "resin-rootA":
                _put_hostapp_root(build, rel, img, tmp, offset, size, stamp)
                continue
            fs_uuid = _uuid(rel.name, label, "fs")
            argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-U", fs_uuid,
                    "-E", f"offset={offset},hash_seed={_uuid(rel.name, label, 'hash')}"]
            if label in contents:
                argv += ["-d", contents[label]]
            argv += [img, f"{size}M"]
            proc = subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True,
                                  env=env, check=False)
            if proc.returncode != 0:
                raise LabError(f"{rel.name}: mke2fs of {label} failed: {proc.stderr.strip()}")
        sha, size = _gzip_file(img, tmp / "disk.img.gz")
        os.replace(tmp / "disk.img.gz", out)
    write_json(meta_path, {"sha256": sha, "size": size, "raw_size": total_mib << 20,
                           "layout": rel.layout, "profile": profile,
                           "seconds": round(time.monotonic() - t0, 2)})
    return out


def _put_hostapp_root(build: Build, rel: Release, img: Path, tmp: Path, offset: int,
                      size_mib: int, stamp: str) -> None:
    """resin-rootA of a balenaOS disk: the release's hostapp partition (the cached root image
    of that size, its extents copied in at ``offset``) with the provision stamp on top, as a
    lab device of the balenaos profile is provisioned (``device.build_disk``)."""
    image = hostapp.root_image(build.path.parent, build, rel.device_type, rel.version, size_mib)
    copy_extents(image, img, offset, size_mib << 20)
    stamp_file = tmp / "stamp.json"
    stamp_file.write_text(stamp)
    part = Partition(2, "resin-rootA", offset // SECTOR, (size_mib << 20) // SECTOR)
    debugfs_write(img, part, stamp_file, STAMP)


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) runs of a sparse file (holes found with SEEK_DATA/SEEK_HOLE)."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            data = size
        if data > pos:
            yield pos, data - pos, False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data, True
        pos = hole


GZ_CHUNK = 4 << 20


@functools.lru_cache(maxsize=1)
def _deflated_zero_chunk() -> bytes:
    """Raw deflate blocks (not final, ending on a full flush) of GZ_CHUNK zero bytes."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    return comp.compress(bytes(GZ_CHUNK)) + comp.flush(zlib.Z_FULL_FLUSH)


def _gzip_file(src: Path, dest: Path) -> tuple[str, int]:
    """gzip (level 1, fixed header) of a sparse file. Holes are not read: each whole
    GZ_CHUNK of a hole is the same precomputed deflate segment (valid because the compressor
    is fully flushed before it, so no back-reference crosses it). Returns (sha256, size)."""
    zero_seg = _deflated_zero_chunk()
    zeros = bytes(GZ_CHUNK)
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    crc, total = 0, os.path.getsize(src)
    with open(src, "rb") as fh, open(dest, "wb") as raw:
        sink = _HashWriter(raw)
        sink.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip header, mtime 0
        for off, length, is_data in _data_ranges(fh.fileno(), total):
            if is_data:
                fh.seek(off)
                left = length
                while left:
                    chunk = fh.read(min(GZ_CHUNK, left))
                    left -= len(chunk)
                    crc = zlib.crc32(chunk, crc)
                    sink.write(comp.compress(chunk))
                continue
            whole, rest = divmod(length, GZ_CHUNK)
            if whole:
                sink.write(comp.flush(zlib.Z_FULL_FLUSH))
                for _chunk in range(whole):
                    crc = zlib.crc32(zeros, crc)
                    sink.write(zero_seg)
            if rest:
                crc = zlib.crc32(zeros[:rest], crc)
                sink.write(comp.compress(zeros[:rest]))
        sink.write(comp.flush(zlib.Z_FINISH))
        sink.write(struct.pack("<II", crc & 0xFFFFFFFF, total & 0xFFFFFFFF))
    return sink.hash.hexdigest(), sink.size


def disk_image_info(build: Build, device_type: str, version: str,
                    profile: str = "ab") -> dict[str, Any] | None:
    """sha256/size of a built disk image of a device profile, or None when it was not built."""
    name = _disk_name(find_release(device_type, version), profile)
    meta = read_json(build.path / "disk" / f"{name}.json")
    if not meta or not (build.path / "disk" / name).exists():
        return None
    return {"file": name, "sha256": meta["sha256"], "size": meta["size"], "raw_size": meta["raw_size"]}


def iter_layer_entries(path: Path) -> Iterator[tarfile.TarInfo]:
    """Members of a gzip'd layer blob (tests and tools)."""
    with tarfile.open(path, "r:gz") as tar:
        yield from tar


#: the lab's own part of the catalog: the collection ignores keys that start with x- (docs/internals.md §3)
LAB_EXTENSION = "x-osfleet-lab"


def catalog_document(build: Build, primary: str, fallback: str,
                     http_base: str | None, disk_profile: str = "ab") -> dict[str, Any]:
    """The release catalog (docs/internals.md §3) of a build served at these endpoints, its
    disk images those of the device profile ``disk_profile``; each release's fault is in the
    lab's extension LAB_EXTENSION."""
    types = device_types()
    doc: dict[str, Any] = {
        "schema": 1, "registries": {"primary": primary, "fallback": fallback},
        "insecure_registries": True, "supervisor_repository": SUPERVISOR_REPOSITORY,
        "device_types": {}, "releases": [],
        "supervisors": [{k: s[k] for k in ("version", "repository", "tag", "digest", "size")}
                        for s in build.info["supervisors"]],
    }
    for name, dt in types.items():
        entry: dict[str, Any] = {"arch": dt.arch, "machine": dt.machine, "name": dt.pretty_name}
        if dt.min_takeover_version:
            entry["min_takeover_version"] = dt.min_takeover_version
        doc["device_types"][name] = entry
    for rel in build.info["releases"]:
        disk = disk_image_info(build, rel["device_type"], rel["version"], disk_profile)
        doc["releases"].append({
            **{k: rel[k] for k in ("device_type", "version", "arch", "layout", "repository",
                                   "tag", "digest", "size", "supervisor_version",
                                   "image_id", "size_unpacked", "root_listing")},
            "disk_image": ({"url": f"{http_base}/{disk['file']}", "sha256": disk["sha256"],
                            "size": disk["size"], "raw_size": disk["raw_size"]} if disk and http_base else None),
            "deltas": [{k: d[k] for k in ("from", "repository", "tag", "digest", "size")}
                       for d in rel["deltas"]],
            LAB_EXTENSION: {"fault": rel["lab_fault"]},
        })
    return doc
