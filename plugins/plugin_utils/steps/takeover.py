# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The advanced update's (takeover's) checks and plan: pure, no I/O.

What the device's probe found (:class:`TakeoverFacts`) and the target release decide whether the
whole disk may be written, and what that run would do, keep and lose. Nothing here touches a
device: plugins/action/takeover.py carries the plan out.
"""

from __future__ import annotations

import posixpath
import re
import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Release

MIB = 1024 * 1024
#: the files of the boot partition a takeover keeps (hostos-update-facts §10): the device's identity
#: and its network configuration; paths relative to the boot partition, a trailing / is a directory
KEEP_FILES = ("config.json", "system-connections/", "system-proxy/")
#: RAM left to the device's own processes while the staged image and the kept files sit in RAM
RAM_RESERVE = 64 * MIB
#: what a whole-disk write loses: every partition is written anew
LOST = (
    "the data partition (resin-data: the applications' containers, volumes and data)",
    "the state partition (resin-state: the root overlay, SSH host keys, logs)",
    "both root partitions (the running OS and the one before it)",
    "every file of the boot partition but the kept ones",
)


#: the host key types the whole-disk write can generate (ssh-keygen -t), the first the sshd reads wins
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
_HOST_KEY_NAME = re.compile(r"ssh_host_(" + "|".join(HOST_KEY_TYPES) + r")_key$")
_SAFE_PATH = re.compile(r"^(/[A-Za-z0-9._-]+)+$")


@dataclass(frozen=True)
class HostKeyHome:
    """Where the device's next SSH host key goes: ``path`` as its sshd reads it, ``inner`` the same
    file inside the state partition's filesystem (which the whole-disk write mounts on its own),
    ``type`` what ssh-keygen makes."""

    path: str
    inner: str
    type: str


def _unescape(field_text: str) -> str:
    """A /proc/self/mountinfo field with its octal escapes (``\\040`` a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def _within(path: str, point: str) -> str | None:
    """``path`` relative to the mount point ``point`` ('' for the point itself), None when outside it."""
    if point == "/":
        return path.lstrip("/")
    if path == point:
        return ""
    return path[len(point) + 1:] if path.startswith(point + "/") else None


def host_key_home(host_keys: t.Sequence[t.Mapping[str, t.Any]], mounts: t.Sequence[t.Mapping[str, t.Any]],
                  state_dev: str) -> HostKeyHome | None:
    """The host key file of the device's sshd that lives on the state partition, as a path inside
    that partition's filesystem: each key's resolved path is looked up in the mounts (the mount
    with the longest mount point that holds it, the last one mounted there); a mount of the state
    partition (its device number ``state_dev``) gives the file's path inside the filesystem (the
    mount's root plus the rest of the path: a bind mount such as balenaOS's /etc/ssh/hostkeys from
    /mnt/state/root-overlay/etc/ssh/hostkeys resolves to /root-overlay/etc/ssh/hostkeys/...). Of the
    keys so found, the first type of HOST_KEY_TYPES the sshd reads; None when no key is on the state
    partition (a new state partition would then not give the new OS the key the controller pins)."""
    if not state_dev:
        return None
    table = [(str(m.get("dev") or ""), _unescape(str(m.get("root") or "")), _unescape(str(m.get("point") or "")))
             for m in mounts if isinstance(m, dict)]
    found: dict[str, HostKeyHome] = {}
    for key in host_keys:
        if not isinstance(key, dict):
            continue
        configured = str(key.get("path") or "")
        path = posixpath.normpath(str(key.get("resolved") or configured))
        name = _HOST_KEY_NAME.search(path)
        if not name or not path.startswith("/"):
            continue
        best: tuple[int, str, str] | None = None
        for dev, root, point in table:
            rest = _within(path, point)
            if rest is not None and (best is None or len(point) >= best[0]):
                best = (len(point), dev, posixpath.join(root or "/", rest) if rest else root)
        if best is None or best[1] != state_dev:
            continue
        inner = posixpath.normpath(best[2])
        if _SAFE_PATH.match(inner) and name.group(1) not in found:
            found[name.group(1)] = HostKeyHome(path=configured, inner=inner, type=name.group(1))
    return next((found[k] for k in HOST_KEY_TYPES if k in found), None)


def host_key_problem(facts: "TakeoverFacts") -> str | None:
    """Refused when the device's sshd keeps no host key on the state partition: the whole-disk
    write gives the new OS a fresh state partition with the host key the controller pins for the
    reconnect; a key elsewhere would be a new, unverifiable one."""
    if facts.host_key is not None:
        return None
    keys = ", ".join(facts.host_keys) or "none found (no sshd -T, no HostKey line in /etc/ssh/sshd_config)"
    return (f"the SSH host keys of its sshd ({keys}) are not on the state partition (resin-state): after the whole-disk "
            f"write it would come back with a host key the controller cannot verify")


#: the programs of the device the whole-disk write needs (scripts/takeover_flash.sh), and what for
TOOLS = {
    "telinit": "moves PID 1 off the disk into RAM",
    "partx": "reads the new partition table after the write",
    "sfdisk": "reads the disk image's partition table",
    "ssh-keygen": "makes the device's next SSH host key",
    "busybox": "the shell of the write's second stage, run from RAM",
}


@dataclass(frozen=True)
class TakeoverFacts:
    """What the probe found on the device."""

    disk: str  # the whole disk that holds resin-boot, e.g. /dev/mmcblk0
    disk_bytes: int
    mem_available: int  # bytes (/proc/meminfo MemAvailable)
    staging_free: int  # bytes free where the image is staged (a RAM filesystem)
    staging_is_ram: bool
    #: fsck -n of the data partition: True clean, False not, None not checked (no fsck on the device)
    data_clean: bool | None
    data_fsck: str = ""
    #: files kept from the boot partition: path (relative to it) -> size in bytes
    keep: dict[str, int] = field(default_factory=dict)
    #: NetworkManager connection files: name -> sha256, on the boot partition and in /etc
    boot_connections: dict[str, str] = field(default_factory=dict)
    etc_connections: dict[str, str] = field(default_factory=dict)
    #: bytes of the disk image already staged (an earlier, interrupted download), 0 when none
    staged_bytes: int = 0
    #: the sha256 of the whole disk image staged already (its record), "" when none; and the bytes
    #: the staging holds that a new staging reuses or frees (a partial or a whole image)
    staged_image: str = ""
    reclaimable: int = 0
    #: where the device's next SSH host key goes (host_key_home), None when its sshd keeps none on
    #: the state partition; and the HostKey files its sshd reads, for messages
    host_key: HostKeyHome | None = None
    host_keys: tuple[str, ...] = ()
    #: the programs the whole-disk write needs that the device lacks (TOOLS)
    missing_tools: tuple[str, ...] = ()


@dataclass
class TakeoverPlan:
    """What a takeover of one device would do; ``problems`` non-empty: it must not run."""

    problems: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    download_bytes: int = 0
    ram_needed: int = 0
    disk_needed: int = 0
    url: str = ""
    sha256: str = ""
    #: where the device's next SSH host key goes (the facts' host_key)
    host_key: HostKeyHome | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, t.Any]:
        return {"problems": list(self.problems), "actions": list(self.actions), "keep": list(self.keep), "lost": list(self.lost),
                "download_bytes": self.download_bytes, "ram_needed": self.ram_needed, "disk_needed": self.disk_needed,
                "url": self.url, "sha256": self.sha256,
                "host_key": {"path": self.host_key.path, "type": self.host_key.type} if self.host_key else None}


def _mib(value: int) -> str:
    return f"{value / MIB:.0f} MiB"


def network_problem(facts: TakeoverFacts) -> str | None:
    """The network configuration the device runs (/etc/NetworkManager/system-connections) must be
    the one the boot partition holds: only the boot partition's copy survives the takeover, so a
    connection that exists (or differs) only in /etc would be lost and the device could come back
    unreachable."""
    only_etc = sorted(n for n in facts.etc_connections if n not in facts.boot_connections)
    differ = sorted(n for n, sha in facts.etc_connections.items() if n in facts.boot_connections and facts.boot_connections[n] != sha)
    if not only_etc and not differ:
        return None
    parts = []
    if only_etc:
        parts.append(f"{', '.join(only_etc)} only in /etc/NetworkManager/system-connections")
    if differ:
        parts.append(f"{', '.join(differ)} differs between /etc/NetworkManager/system-connections and the boot partition")
    return ("the network configuration on the boot partition and in /etc disagree (" + "; ".join(parts)
            + "): only the boot partition's system-connections/ is kept, so the device could come back without its network; "
            "put the connection the device uses on the boot partition first")


def decide_takeover(device: str, current: str, release: Release, facts: TakeoverFacts) -> TakeoverPlan:
    """The checks and the plan of a takeover of ``device`` (running ``current``) to ``release``.

    Refused (``problems``) when: the catalog has no disk image (url and sha256) for the release; the
    disk is smaller than the image unpacked (the catalog's ``disk_image.raw_size``); the image
    cannot be staged in RAM (not a RAM filesystem, too little free, or MemAvailable below the image
    plus the kept files plus RAM_RESERVE); the data partition is not clean (fsck -n); the boot
    partition has no config.json; the network configuration disagrees (network_problem); the
    device's sshd keeps no host key on the state partition (host_key_problem); the device lacks a
    program the write needs (TOOLS)."""
    plan = TakeoverPlan(lost=list(LOST), host_key=facts.host_key)
    disk = release.disk_image or {}
    url, sha, size, raw = disk.get("url"), disk.get("sha256"), disk.get("size"), disk.get("raw_size")
    if not url or not sha:
        plan.problems.append(f"{device}: the catalog gives no disk image (disk_image url and sha256) for {release.device_type} "
                             f"{release.version}, which the advanced update writes; osfleet.hup.catalog records it (disk_image)")
        return plan
    plan.url, plan.sha256 = str(url), str(sha)
    keep_bytes = sum(facts.keep.values())
    plan.keep = sorted(facts.keep)
    if "config.json" not in facts.keep:
        plan.problems.append(f"{device}: the boot partition has no config.json, the device's identity that a takeover keeps")
    staged = min(facts.staged_bytes, size) if isinstance(size, int) else facts.staged_bytes
    if facts.staged_image == sha and isinstance(size, int):
        staged = size  # downloaded and verified by an earlier run
    plan.download_bytes = (size - staged) if isinstance(size, int) else 0
    room = facts.staging_free + max(staged, facts.reclaimable)
    if isinstance(size, int):
        plan.ram_needed = size + keep_bytes + RAM_RESERVE
        if not facts.staging_is_ram:
            plan.problems.append(f"{device}: the staging directory is not a RAM filesystem: the image must not sit on the disk it overwrites")
        elif room < size + keep_bytes:
            plan.problems.append(f"{device}: not enough room in RAM to stage the disk image: it needs {_mib(size + keep_bytes)} "
                                 f"(image and kept files), the staging directory has {_mib(room)} free")
        if facts.mem_available + max(staged, facts.reclaimable) < plan.ram_needed:
            plan.problems.append(f"{device}: not enough RAM for the takeover: it needs {_mib(plan.ram_needed)} (the disk image "
                                 f"{_mib(size)}, the kept files and {_mib(RAM_RESERVE)} for the device), MemAvailable is "
                                 f"{_mib(facts.mem_available)}")
    else:
        plan.problems.append(f"{device}: the catalog gives no size for the disk image of {release.version}: the RAM it needs "
                             f"cannot be checked")
    if isinstance(raw, int):
        plan.disk_needed = raw
        if facts.disk_bytes < raw:
            plan.problems.append(f"{device}: the disk {facts.disk} ({_mib(facts.disk_bytes)}) is smaller than the disk image of "
                                 f"{release.version} unpacked ({_mib(raw)}, layout {release.layout or '?'})")
    else:
        plan.problems.append(f"{device}: the catalog gives no raw_size for the disk image of {release.version}: whether the "
                             f"disk is large enough cannot be checked")
    if facts.data_clean is False:
        tail = facts.data_fsck.strip().splitlines()[-1:] or [""]
        plan.problems.append(f"{device}: the data partition is not clean (fsck -n: {tail[0] or 'errors'}); the takeover writes "
                             f"its logs there: repair it first")
    net = network_problem(facts)
    if net:
        plan.problems.append(f"{device}: {net}")
    key = host_key_problem(facts)
    if key:
        plan.problems.append(f"{device}: {key}")
    if facts.missing_tools:
        what = "; ".join(f"{tool}: {TOOLS.get(tool, 'needed')}" for tool in facts.missing_tools)
        plan.problems.append(f"{device}: the device lacks programs the whole-disk write needs ({what})")
    resumed = f", resuming after the {_mib(staged)} already staged" if staged else ""
    plan.actions = [
        f"checked: disk {facts.disk} {_mib(facts.disk_bytes)}, MemAvailable {_mib(facts.mem_available)}, "
        f"data partition {'clean' if facts.data_clean else 'not checked (no fsck)' if facts.data_clean is None else 'NOT clean'}",
        f"downloaded the disk image of {release.version} ({plan.download_bytes} bytes{resumed}) from {url} into RAM and "
        f"verified its sha256 {sha} before anything was staged",
        f"staged in RAM the files to keep: {', '.join(plan.keep) or 'none'} ({keep_bytes} bytes)",
        f"stopped the device's processes, unmounted its partitions and wrote the whole disk {facts.disk} "
        f"({current} -> {release.version}, layout {release.layout or '?'})",
        "re-read the partition table and restored the kept files onto the new boot partition",
        (f"put the device's next SSH host key ({facts.host_key.type}) on the new state partition where its sshd reads it "
         f"({facts.host_key.path})" if facts.host_key else "put the device's next SSH host key on the new state partition"),
        f"rebooted into {release.version}",
    ]
    return plan


#: where the takeover stages the disk image and the kept files: a RAM filesystem of its own
STAGING_DIR = "/run/osfleet/takeover"
#: a staging tmpfs gets this much more than the image and the kept files
STAGING_SLACK = 16 * MIB


def facts_from_probe(raw: t.Mapping[str, t.Any]) -> TakeoverFacts:
    """TakeoverFacts from scripts/takeover_probe.sh's JSON. A staging directory that is not mounted
    yet becomes a RAM filesystem of its own (the stage mounts it), as large as RAM allows."""
    fstype = str(raw.get("staging_fstype") or "")
    mem = int(raw.get("mem_available") or 0)
    keep = raw.get("keep") or {}
    rc = raw.get("fsck_rc")
    return TakeoverFacts(
        disk=str(raw.get("disk") or ""), disk_bytes=int(raw.get("disk_bytes") or 0), mem_available=mem,
        staging_free=int(raw.get("staging_free") or 0) if fstype else max(0, mem - RAM_RESERVE),
        staging_is_ram=fstype in ("", "tmpfs", "ramfs"),
        data_clean=None if not isinstance(rc, int) or rc < 0 else rc < 4, data_fsck=str(raw.get("fsck") or ""),
        keep={str(k): int((v or {}).get("size") or 0) for k, v in keep.items()},
        boot_connections={str(k): str(v) for k, v in (raw.get("boot_connections") or {}).items()},
        etc_connections={str(k): str(v) for k, v in (raw.get("etc_connections") or {}).items()},
        staged_bytes=int(raw.get("staged_bytes") or 0),
        staged_image=(str(record.get("sha256") or "") if isinstance(record := raw.get("record"), dict) and raw.get("image_bytes")
                      and image_intact(raw) else ""),
        reclaimable=int(raw.get("staged_bytes") or 0) + int(raw.get("image_bytes") or 0),
        host_key=host_key_home(raw.get("host_keys") or [], raw.get("mounts") or [], str(raw.get("state_dev") or "")),
        host_keys=tuple(str(k.get("path")) for k in raw.get("host_keys") or [] if isinstance(k, dict)),
        missing_tools=tuple(str(x) for x in raw.get("missing_tools") or []),
    )


def image_intact(raw: t.Mapping[str, t.Any]) -> bool:
    """The staged image still has the sha256 its record names, as far as the probe read it: its
    ``image_sha256`` (the image hashed again, ``verify=1``) is the record's, or the probe did not
    hash it."""
    found = str(raw.get("image_sha256") or "")
    record = raw.get("record")
    return not found or (isinstance(record, dict) and found == record.get("sha256"))


def staged_already(raw: t.Mapping[str, t.Any], plan: TakeoverPlan) -> bool:
    """The staging is done: its record names this disk image, the image still has that sha256
    when the probe read it again (``image_intact``), and the kept files it holds are the boot
    partition's files as they are now (same paths, sizes and sha256)."""
    record = raw.get("record")
    if not isinstance(record, dict) or record.get("sha256") != plan.sha256 or record.get("url") != plan.url:
        return False
    if not image_intact(raw):
        return False
    held = {str(k.get("path")): (k.get("size"), k.get("sha256")) for k in record.get("keep") or [] if isinstance(k, dict)}
    now = {str(k): ((v or {}).get("size"), (v or {}).get("sha256")) for k, v in (raw.get("keep") or {}).items()}
    return held == now


def staging_mib(plan: TakeoverPlan, facts: TakeoverFacts) -> int:
    """The size of the staging tmpfs: the image, the kept files and STAGING_SLACK, in MiB (rounded up)."""
    need = (plan.ram_needed - RAM_RESERVE) + STAGING_SLACK if plan.ram_needed else STAGING_SLACK
    return -(-need // MIB)


# --- the whole-disk write (state=flashed) -------------------------------------------------------

#: what the device's flash log and record are named on its (new) data partition
FLASH_RECORD = "/mnt/data/balenahup/takeover.json"
#: where the flash leaves its log and record on the new data partition, and the run's own log it carries over
FLASH_LOG_DIR = "/mnt/data/balenahup/"
_LOG_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


def carried_log(run_log: t.Any) -> str:
    """The run log the whole-disk write carries onto the new data partition: the run's log when it
    is a file of the flash's log directory (the role's default hup_log_dir), else none ('')."""
    path = str(run_log or "")
    if not path.startswith(FLASH_LOG_DIR):
        return ""
    name = path[len(FLASH_LOG_DIR):]
    return path if _LOG_NAME.match(name) else ""


def layout_of(table: t.Any) -> list[dict[str, t.Any]]:
    """A partition table (the probe's ``table`` or a record's) as a list of {name, start, size} in
    partition order; [] when there is none."""
    if not isinstance(table, list):
        return []
    return [{"name": str(p.get("name") or ""), "start": int(p.get("start") or 0), "size": int(p.get("size") or 0)}
            for p in table if isinstance(p, dict)]


def layout_text(table: t.Any) -> str:
    """``resin-boot 2048+196608, ...`` (sectors) for messages."""
    return ", ".join(f"{p['name']} {p['start']}+{p['size']}" for p in layout_of(table)) or "no partition table"


def kept_problems(keep_now: t.Mapping[str, t.Any], wanted: t.Sequence[t.Any]) -> list[str]:
    """The kept files a record lists (path, sha256) against the boot partition's files now (the
    probe's ``keep``): each must be there, byte for byte."""
    problems = []
    for item in wanted:
        if not isinstance(item, dict):
            continue
        path, sha = str(item.get("path")), item.get("sha256")
        now = keep_now.get(path)
        if not isinstance(now, dict):
            problems.append(f"the kept file {path} is missing on the new boot partition")
        elif now.get("sha256") != sha:
            problems.append(f"the kept file {path} on the new boot partition has sha256 {now.get('sha256')}, not {sha} as staged")
    return problems


def flash_problems(raw: t.Mapping[str, t.Any], version: str | None, target: str, record: t.Mapping[str, t.Any]) -> list[str]:
    """What is wrong with a device after the whole-disk write of ``record`` (what
    scripts/takeover_flash.sh recorded: the image's table, the kept files): it must run ``target``,
    its disk's partition table must be the image's, and the kept files must be on its boot
    partition as staged. [] when all holds."""
    problems = []
    if version != target:
        problems.append(f"the device runs {version or 'an unknown version'}, not {target}")
    want, have = layout_of(record.get("table")), layout_of(raw.get("table"))
    if not want:
        problems.append("the record of the whole-disk write names no partition table")
    elif have != want:
        problems.append(f"the disk's partition table ({layout_text(have)}) is not the disk image's ({layout_text(want)})")
    problems += kept_problems(raw.get("keep") or {}, record.get("keep") or [])
    return problems


def flash_view(version: str | None, table: t.Any) -> dict[str, t.Any]:
    """What the diff of state=flashed shows: the version and the partition layout."""
    return {"version": version, "layout": layout_of(table)}
