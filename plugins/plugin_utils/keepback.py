# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Boot partition files: keep-back rules and the copy plan (facts sheet §6.3, the 1-bootfiles hook).

Paths are relative to the boot partition, ``/`` separated. The boot partition is vfat on real
devices, so rules match case-insensitively. Paths come from an untrusted payload: anything
absolute, with ``..``/``.``/empty components, NUL or a line break is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

#: Never copied: device configuration, and the bootloader env files (owned by the bootenv step).
KEEP_BACK_NEVER = (
    "config.json",
    "config.txt",
    "splash/balena-logo.png",
    "configfs.json",
    "hw_intfc.conf",
    "bootenv",
    "resinOS_uEnv.txt",
    "bootcount.env",
    "grub/grubenv",
    "EFI/BOOT/grubenv",
    "system-connections/",
    "system-proxy/",
)
#: Copied only when the boot partition does not have them yet.
KEEP_BACK_IF_ABSENT = ("extra_uEnv.txt", "grub/grub_extraenv", "EFI/BOOT/grub_extraenv")

FINGERPRINT_FILE = "balenaos.fingerprint"
#: bootloader env files: written by the bootloader and the bootenv step, never by the boot files
#: copy, and left out of the fingerprint so that arming or a boot does not make it stale
ENV_FILES = ("resinOS_uEnv.txt", "bootcount.env", "grub/grubenv", "EFI/BOOT/grubenv", "bootenv")
#: suffix of the temporary copies that atomic writes leave behind when interrupted
TMP_SUFFIX = ".osfleet-tmp"
FINGERPRINT_EXCLUDED = ("config.json", FINGERPRINT_FILE, *ENV_FILES)

RULE_NEVER = "never"
RULE_IF_ABSENT = "if-absent"
RULE_COPY = "copy"


class FileInfo(NamedTuple):
    """Content hash (hex sha256), size in bytes and, when the probe listed it, hex md5 of one file.

    The md5 only feeds the fingerprint (balenaOS's format); whether two files are the same is
    decided by sha256 and size alone (:meth:`same_content`), never by ``==`` on the tuple.
    """

    sha256: str
    size: int
    md5: str = ""

    def same_content(self, other: FileInfo) -> bool:
        """Same sha256 and size (the md5 is ignored: it may be missing on one side)."""
        return self.sha256 == other.sha256 and self.size == other.size


def check_path(path: str) -> str:
    """Return ``path`` if it is a safe boot-relative path, else raise ValueError naming it."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"boot file path {path!r} is empty or not a string")
    if any(char in path for char in "\0\n\r"):
        raise ValueError(f"boot file path {path!r} contains a NUL or line break")
    if path.startswith("/"):
        raise ValueError(f"boot file path {path!r} is absolute")
    parts = path.split("/")
    if ".." in parts:
        raise ValueError(f"boot file path {path!r} contains '..'")
    if any(part in ("", ".") for part in parts):
        raise ValueError(f"boot file path {path!r} has an empty or '.' component")
    return path


def _matches(path: str, patterns: Iterable[str]) -> bool:
    folded = path.casefold()
    for pattern in patterns:
        pat = pattern.casefold()
        if folded == pat or (pat.endswith("/") and folded.startswith(pat)):
            return True
    return False


def rule_for(path: str, extra_keep: Iterable[str] = ()) -> str:
    """``"never"``, ``"if-absent"`` or ``"copy"`` for a boot-relative path (``dir/`` patterns match below)."""
    check_path(path)
    if _matches(path, (*KEEP_BACK_NEVER, *extra_keep)):
        return RULE_NEVER
    if _matches(path, KEEP_BACK_IF_ABSENT):
        return RULE_IF_ABSENT
    return RULE_COPY


@dataclass
class BootfilesPlan:
    """What the boot files step will do; see :func:`plan_bootfiles`."""

    copy: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_back: list[str] = field(default_factory=list)
    needed_bytes: int = 0
    free_after: int = 0
    low_water: int = 0
    reserve: int = 0
    fits: bool = True
    fingerprint: str = ""
    fingerprint_changed: bool = False

    @property
    def changed(self) -> bool:
        """True when any file is copied or the fingerprint must be rewritten."""
        return bool(self.copy) or self.fingerprint_changed


def _fingerprint(files: Mapping[str, FileInfo]) -> str:
    """balenaOS's ``balenaos.fingerprint``: ``md5sum`` lines ``<md5>  /<path>``, sorted by path, of
    every file except config.json, the fingerprint, the env files and interrupted temporaries
    (byte for byte what the 1-bootfiles hook writes for the same files). A file listed without an
    md5 gets its sha256 on its line instead, so the fingerprint still changes with its content."""
    lines = [
        f"{info.md5 or info.sha256}  /{path}\n"
        for path, info in sorted(files.items())
        if path not in FINGERPRINT_EXCLUDED and not path.endswith(TMP_SUFFIX)
    ]
    return "".join(lines)


def allocated(size: int, block_size: int) -> int:
    """The bytes a file of ``size`` bytes takes on a file system of ``block_size`` blocks (clusters
    on vfat): whole blocks; an empty file takes none."""
    block_size = max(block_size, 1)
    return -(-size // block_size) * block_size


def plan_bootfiles(
    payload: Mapping[str, FileInfo],
    boot: Mapping[str, FileInfo],
    free_bytes: int,
    *,
    reserve: int,
    extra_keep: Iterable[str] = (),
    block_size: int = 1,
) -> BootfilesPlan:
    """Plan copying the new OS's boot payload onto the boot partition.

    ``payload``: the new OS's ``/resin-boot`` files; ``boot``: what the boot partition holds now;
    ``free_bytes``: its free space; ``reserve``: the bytes it must keep free (the bootfiles step's
    ``reserve_kib``); ``block_size``: its allocation unit (each file takes whole blocks).

    The space model is the apply script's (``scripts/apply.sh``): it writes every new file (and
    the new fingerprint) as a temporary copy before it renames any, and only then removes the old
    files one by one. So the lowest free space, ``low_water``, is the free space minus every new
    file; nothing the copy replaces is credited before that peak. ``fits`` is ``low_water >=
    reserve`` (or nothing to copy: a plan that is already done never fails for space).
    ``free_after`` is the free space once the old files are gone.
    """
    extra_keep = tuple(extra_keep)
    for path in boot:
        check_path(path)
    plan = BootfilesPlan(reserve=reserve)
    for path in sorted(payload):
        rule = rule_for(path, extra_keep)
        if path == FINGERPRINT_FILE:
            continue  # regenerated below, never copied
        current = boot.get(path)
        if rule == RULE_NEVER or (rule == RULE_IF_ABSENT and current is not None):
            plan.kept_back.append(path)
        elif current is not None and current.same_content(payload[path]):
            plan.unchanged.append(path)
        else:
            plan.copy.append(path)
    after = {**boot, **{path: payload[path] for path in plan.copy}}
    plan.fingerprint = _fingerprint(after)
    old_fingerprint = boot.get(FINGERPRINT_FILE)
    plan.fingerprint_changed = old_fingerprint is None or old_fingerprint.sha256 != hashlib.sha256(plan.fingerprint.encode()).hexdigest()
    written = [payload[path].size for path in plan.copy]
    replaced = [boot[path].size for path in plan.copy if path in boot]
    if plan.fingerprint_changed:
        written.append(len(plan.fingerprint.encode()))
        if old_fingerprint is not None:
            replaced.append(old_fingerprint.size)
    plan.needed_bytes = sum(allocated(size, block_size) for size in written)
    plan.low_water = free_bytes - plan.needed_bytes
    plan.free_after = plan.low_water + sum(allocated(size, block_size) for size in replaced)
    plan.fits = not plan.copy or plan.low_water >= reserve  # low_water <= free_after always
    return plan
