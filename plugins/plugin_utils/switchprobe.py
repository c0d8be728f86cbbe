# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The switch steps' part of the device probe (``scripts/probe_switch.sh``, same round trip): the
rollback variables and marker, and, when asked, sha256 + md5 + size of every file on the boot
partition and in both roots' ``/resin-boot``, with the boot partition's free bytes. On a balenaOS
(hostapp) device the roots' payloads are the running overlay's ``/resin-boot`` and the inactive
hostapp's, read under the read-only mount its ``init -sysroot`` makes (unmounted after).
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks, keepback
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, act_then_probe, check_file_sizes, marker_json, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import STATE_MOUNT, Op, validate_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import HEALTH_VARIABLES_FILE, ROLLBACK_MARKER

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession


@dataclass(frozen=True)
class Listing:
    """Regular files below one directory (``path -> FileInfo``) and entries that cannot be copied."""

    files: dict[str, keepback.FileInfo] = field(default_factory=dict)
    bad: tuple[str, ...] = ()
    present: bool = True


@dataclass(frozen=True)
class SwitchProbe:
    """What the switch probe read besides the common device probe."""

    health_variables: str | None = None
    rollback_marker: dict[str, t.Any] | None = None
    boot_free_bytes: int | None = None
    #: the boot partition's block (vfat: cluster) size, its allocation unit
    boot_block_size: int = 1
    boot: Listing | None = None
    payloads: dict[str, Listing] = field(default_factory=dict)
    #: a balenaOS (hostapp) device: ``payloads["active"]`` is the running OS's ``/resin-boot`` and
    #: ``payloads["inactive"]`` the inactive hostapp's, read under its ``init -sysroot`` mount
    hostapp: bool = False
    #: that mount's unmount: "ok", or what went wrong; None when nothing was mounted
    inactive_mount: str | None = None
    #: the keep-back files' sha256 from before the hooks ran (:data:`.hooks.KEEPBACK_RECORD`), if recorded
    keepback_record: dict[str, str] | None = None

    @property
    def listed(self) -> bool:
        return self.boot is not None


_SHA_LINE = re.compile(r"^([0-9a-f]{64})  \./(.+)$")
_MD5_LINE = re.compile(r"^([0-9a-f]{32})  \./(.+)$")
_SIZE_LINE = re.compile(r"^(\d+) \./(.+)$")


def parse_listing(sha_text: str, size_text: str, other_text: str = "", present: bool = True, md5_text: str = "") -> Listing:
    """Merge ``sha256sum`` lines and ``stat -c '%s %n'`` lines (paths ``./x``) into a :class:`Listing`.

    ``md5sum`` lines (``md5_text``) only add the md5 that the fingerprint is made of; a file
    they lack keeps an empty md5 (the fingerprint then uses its sha256) and is not bad.

    A name with a line break breaks its lines apart; the probe also prints such names in
    ``other_text``, with the non-regular entries (dangling symlinks, devices, ...). Those, broken
    lines and paths that :func:`keepback.check_path` refuses end up in ``bad``.
    """
    bad: list[str] = []
    shas: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for line in sha_text.splitlines():
        match = _SHA_LINE.match(line)
        if match:
            shas[match.group(2)] = match.group(1)
        elif line.strip():
            bad.append(line.strip())
    md5s = {match.group(2): match.group(1) for match in map(_MD5_LINE.match, md5_text.splitlines()) if match}
    for line in size_text.splitlines():
        match = _SIZE_LINE.match(line)
        if match:
            sizes[match.group(2)] = int(match.group(1))
        elif line.strip():
            bad.append(line.strip())
    files: dict[str, keepback.FileInfo] = {}
    for path in sorted(set(shas) | set(sizes)):
        if path not in shas or path not in sizes:
            bad.append(path)
            continue
        try:
            keepback.check_path(path)
        except ValueError:
            bad.append(path)
            continue
        files[path] = keepback.FileInfo(shas[path], sizes[path], md5s.get(path, ""))
    for line in other_text.splitlines():
        if line.strip():
            bad.append(line.strip().removeprefix("./"))
    # the first line of a name with a line break looks like a file of its own: drop it
    files = {path: info for path, info in files.items() if path not in bad}
    return Listing(files=files, bad=tuple(dict.fromkeys(bad)), present=present)


def parse_switch_probe(raw: Mapping[str, t.Any]) -> SwitchProbe:
    """Turn the switch probe's JSON (``DeviceState.extra``) into a :class:`SwitchProbe`."""
    check_file_sizes(raw, {"health_variables": f"{STATE_MOUNT}/{HEALTH_VARIABLES_FILE}", "rollback_marker": f"{STATE_MOUNT}/{ROLLBACK_MARKER}"})
    listed = raw.get("listed") == "1"
    boot = payloads = None
    free = None
    block = 1
    if listed:
        boot = parse_listing(raw.get("boot_sha", ""), raw.get("boot_size", ""), raw.get("boot_other", ""), md5_text=raw.get("boot_md5", ""))
        payloads = {
            side: parse_listing(
                raw.get(f"{side}_sha", ""), raw.get(f"{side}_size", ""), raw.get(f"{side}_other", ""), raw.get(f"{side}_present") == "1",
                raw.get(f"{side}_md5", ""),
            )
            for side in ("active", "inactive")
        }
        parts = str(raw.get("boot_statfs", "")).split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            free, block = int(parts[0]) * int(parts[1]), max(int(parts[1]), 1)
    return SwitchProbe(
        health_variables=raw.get("health_variables") if raw.get("health_variables_present") == "1" else None,
        rollback_marker=marker_json(str(raw.get("rollback_marker", ""))) if raw.get("rollback_marker_present") == "1" else None,
        boot_free_bytes=free,
        boot_block_size=block,
        boot=boot,
        payloads=payloads or {},
        hostapp=raw.get("hostapp") == "1",
        inactive_mount=str(raw["inactive_mount"]) if "inactive_mount" in raw else None,
        keepback_record=hooks.parse_record(str(raw.get("keepback_record", ""))) if raw.get("keepback_present") == "1" else None,
    )


def _switch_params(listed: bool) -> dict[str, str]:
    return {"want": "files" if listed else "", "variables": f"{STATE_MOUNT}/{HEALTH_VARIABLES_FILE}",
            "marker": f"{STATE_MOUNT}/{ROLLBACK_MARKER}", "keepback": hooks.KEEPBACK_RECORD}


def probe_switch(session: DeviceSession, *, listed: bool) -> tuple[DeviceState, SwitchProbe]:
    """The device probe plus the switch probe, one round trip. ``listed`` hashes the boot files."""
    state = probe(session, "probe_switch", **_switch_params(listed))
    return state, parse_switch_probe(state.extra)


def wait_then_probe_switch(session: DeviceSession, *, seconds: int, since: str, boot: str) -> tuple[DeviceState, SwitchProbe, str]:
    """The health step's wait on the device (``scripts/health_wait.sh``: up to ``seconds`` while
    what the step classifies a device by keeps the fingerprint ``since`` and the boot id ``boot``),
    then :func:`probe_switch` (unlisted) in the same round trip: the device's state after the wait,
    and the fingerprint to wait on next."""
    out, state = act_then_probe(session, "health_wait", {"seconds": seconds, "since": since, "boot": boot}, "probe_switch",
                                what="waiting for the device to settle", **_switch_params(False))
    return state, parse_switch_probe(state.extra), out.strip()


def apply_then_probe_switch(session: DeviceSession, ops: list[Op], *, listed: bool, what: str) -> tuple[DeviceState, SwitchProbe]:
    """A plan's file operations (:func:`.fileops.apply_ops`), then :func:`probe_switch` of the device
    as they left it, in one round trip (:func:`.device.act_then_probe`); only the probe when there
    are none. A failed operation fails naming ``what``, unprobed."""
    if not ops:
        return probe_switch(session, listed=listed)
    validate_ops(ops)
    _out, state = act_then_probe(session, "apply", {"ops": [list(op) for op in ops]}, "probe_switch", what=what, **_switch_params(listed))
    return state, parse_switch_probe(state.extra)
