# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The device probe: one round trip that reads everything the steps decide on.

The script is ``scripts/probe.sh``, POSIX sh for busybox + jq (the device contract,
docs/internals.md §2). It prints one JSON object; :func:`parse_state` turns it into a
:class:`DeviceState`. The active root comes from /proc/mounts, never from the bootloader env.
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import MARKERS
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import MAX_LENGTH as MAX_VERSION_LENGTH


if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession

#: partition index of each root label (u-boot convention: boot=1, rootA=2, rootB=3)
ROOT_INDEX = {"resin-rootA": 2, "resin-rootB": 3}
#: the most bytes of one file the probe may send (scripts/_lib.sh ``osfleet_read`` reads one more,
#: so that a larger file shows): a larger one is refused, never truncated
FILE_LIMIT = 65536
#: the files the probe reads, by their key in its JSON (for messages)
PROBED_FILES = {
    "os_release": "/etc/os-release",
    "uenv": "/mnt/boot/resinOS_uEnv.txt",
    "bootcount": "/mnt/boot/bootcount.env",
    "extra_uenv": "/mnt/boot/extra_uEnv.txt",
    "grubenv": "the grubenv",
    "active_stamp": "/mnt/sysroot/active/.osfleet-release.json",
    "inactive_stamp": "/mnt/sysroot/inactive/.osfleet-release.json",
    "inactive_os_release": "/mnt/sysroot/inactive/etc/os-release",
    "shipped_supervisor": "/mnt/sysroot/active/etc/balena-supervisor/supervisor.conf",
    "running_supervisor": "/mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf",
    "inactive_supervisor": "/mnt/sysroot/inactive/etc/balena-supervisor/supervisor.conf",
    "config_json": "/mnt/boot/config.json",
    "lock": "/mnt/state/osfleet/hup.lock",
    "boot_id": "/proc/sys/kernel/random/boot_id",
    "rollback_health_state": "/run/rollback-health.state",
    "rollback_record": "/mnt/state/osfleet-rollback",
}
#: os-release keys that are parsed or shown: at most MAX_VERSION_LENGTH characters each
_OS_RELEASE_BOUNDED = ("VERSION", "VERSION_ID", "META_BALENA_VERSION", "SLUG", "MACHINE", "OSFLEET_ARCH")


def _kv(text: str) -> dict[str, str]:
    """Parse shell-style KEY=value lines (os-release, supervisor.conf); strips one level of quotes."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _sep, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def parse_json(text: str) -> t.Any:
    """``json.loads`` of text from a device: ValueError also for JSON nested too deeply (which
    makes ``json.loads`` raise RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def script_json(stdout: str, stderr: str = "") -> dict[str, t.Any]:
    """The one JSON object a device script printed on ``stdout``; DeviceError (with the start of
    both outputs) when it printed something else."""
    text = stdout.strip()
    try:
        data = parse_json(text)
    except ValueError as exc:
        raise DeviceError(f"the device printed no valid JSON ({exc}): {text[:300]!r} {stderr.strip()[:300]!r}") from exc
    if not isinstance(data, dict):
        raise DeviceError(f"the device printed JSON that is not an object: {text[:300]!r}")
    return data


def json_object(text: str) -> dict[str, t.Any] | None:
    """The JSON object in ``text``; None when it is empty or no JSON object."""
    if not text.strip():
        return None
    try:
        data = parse_json(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def byte_length(text: str) -> int:
    """The bytes the device sent for ``text`` (undecodable bytes arrive as surrogate escapes)."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "replace"))


def check_file_sizes(raw: t.Mapping[str, t.Any], files: t.Mapping[str, str]) -> None:
    """Refuse a probe whose file contents (``raw[key]``, the file ``files[key]``) exceed FILE_LIMIT."""
    for key, path in files.items():
        value = raw.get(key)
        if isinstance(value, str) and byte_length(value) > FILE_LIMIT:
            raise DeviceError(f"{path} on the device is larger than {FILE_LIMIT // 1024} KiB (a broken or hostile device?); refusing to read it")


def _check_os_release(osr: t.Mapping[str, str], path: str) -> None:
    for key in _OS_RELEASE_BOUNDED:
        if len(osr.get(key, "")) > MAX_VERSION_LENGTH:
            raise DeviceError(f"{path} on the device has a {key} of {len(osr[key])} characters, more than {MAX_VERSION_LENGTH}; refusing it")


def supervisor_version(conf_text: str) -> str | None:
    """The version in a supervisor.conf (``SUPERVISOR_VERSION=v14.11.2`` → ``14.11.2``)."""
    conf = _kv(conf_text)
    value = conf.get("SUPERVISOR_VERSION") or conf.get("SUPERVISOR_TAG")
    if not value:
        return None
    return value[1:] if value.startswith("v") else value


_HEX64 = frozenset("0123456789abcdef")


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX64


@dataclass(frozen=True)
class Hostapp:
    """The hostapp a root partition holds (hostapp-facts §1): its ``current`` link's target, the
    container that link names and that container's image id (``sha256:<hex>``; "" when the
    container's config is missing: a half-written or damaged partition)."""

    current: str
    container: str
    image_id: str

    def as_dict(self) -> dict[str, str]:
        return {"current": self.current, "container": self.container, "image_id": self.image_id}


def parse_hostapp(text: t.Any) -> Hostapp | None:
    """``<current link target> <image id | ->`` as ``scripts/_lib.sh osfleet_hostapp_of`` prints it;
    None when the partition holds no hostapp (nothing printed). A link that does not name
    ``hostapps/<64 hex>`` still marks a hostapp partition, with no container."""
    parts = str(text or "").split()
    if not parts:
        return None
    current = parts[0]
    head, _sep, cid = current.rstrip("/").rpartition("/")
    container = cid if head in ("hostapps", "./hostapps") and _is_hex64(cid) else ""
    image = parts[1] if len(parts) > 1 else ""
    image_id = image if image.startswith("sha256:") and _is_hex64(image[7:]) and container else ""
    return Hostapp(current=current[:200], container=container, image_id=image_id)


@dataclass
class DeviceState:
    """Everything a step may decide on, read in one round trip."""

    raw: dict[str, t.Any]
    os_release: dict[str, str]
    active_label: str
    inactive_label: str
    active_dev: str
    inactive_dev: str
    inactive_mounted: bool
    uenv_text: str | None
    bootcount_text: str
    bootcount_present: bool
    extra_uenv_text: str
    grubenv_path: str
    grubenv_text: str
    markers: tuple[str, ...]
    free_kib: dict[str, int]
    size_kib: dict[str, int]
    services: dict[str, str]
    active_stamp: dict[str, t.Any] | None
    inactive_stamp: dict[str, t.Any] | None
    inactive_os_release: dict[str, str]
    shipped_supervisor: str | None
    running_supervisor: str | None
    inactive_supervisor: str | None
    config_json: dict[str, t.Any] | None
    lock: dict[str, t.Any] | None
    legacy_lock_held: bool
    boot_id: str
    rollback_health_state: str
    python_present: bool
    machine: str
    extra: dict[str, t.Any] = field(default_factory=dict)
    #: seconds since this boot (/proc/uptime): the lock's age is measured with it
    uptime: float | None = None
    #: the run id whose watchdog runs on the device (it holds /var/lock/resinhup.lock), "" when none
    watchdog_run: str = ""
    #: osfleet's rollback marker (/mnt/state/osfleet-rollback, JSON: reason, from_version, ...)
    rollback_record: dict[str, t.Any] | None = None
    #: the *-triggered markers newer than the inactive root's stamp (or with no stamp there)
    triggered_newer: tuple[str, ...] = ()
    #: the hostapp each root partition holds (a balenaOS device); None: a plain root (or nothing)
    active_hostapp: Hostapp | None = None
    inactive_hostapp: Hostapp | None = None
    #: the device has balenaOS's ``hostapp-update``
    hostapp_update: bool = False
    #: the hostapp-update the rootfs step started since this boot (scripts/_lib.sh osfleet_hostapp_wait), or None
    hostapp_job: dict[str, t.Any] | None = None

    @property
    def hostapp(self) -> bool:
        """A balenaOS device: the running OS is a hostapp (its root partition holds one)."""
        return self.active_hostapp is not None

    @property
    def version(self) -> str:
        return self.os_release.get("VERSION") or self.os_release.get("VERSION_ID") or ""

    @property
    def device_type(self) -> str:
        return self.os_release.get("SLUG", "")

    @property
    def active_index(self) -> int:
        return ROOT_INDEX.get(self.active_label, 0)

    @property
    def inactive_index(self) -> int:
        return ROOT_INDEX.get(self.inactive_label, 0)

    def root_label(self, index: int) -> str:
        """The label of the root partition with this index (``partition N`` for another one)."""
        if index == self.active_index:
            return self.active_label
        if index == self.inactive_index:
            return self.inactive_label
        return f"partition {index}"

    @property
    def bootloader(self) -> str:
        if self.uenv_text is not None:
            return "uboot"
        if self.grubenv_path:
            return "grub"
        return "unknown"

    def facts(self) -> dict[str, t.Any]:
        """The device facts returned by device_info (and reused in every step's result)."""
        return {
            "device_type": self.device_type,
            "version": self.version,
            "meta_balena_version": self.os_release.get("META_BALENA_VERSION", ""),
            "machine": self.os_release.get("MACHINE", ""),
            "arch": self.os_release.get("OSFLEET_ARCH") or self.machine,
            "active_root": self.active_label,
            "active_index": self.active_index,
            "inactive_root": self.inactive_label,
            "inactive_index": self.inactive_index,
            "bootloader": self.bootloader,
            "rollback_markers": list(self.markers),
            "free_kib": dict(self.free_kib),
            "services": dict(self.services),
            "supervisor_running": self.running_supervisor,
            "supervisor_shipped": self.shipped_supervisor,
            "inactive_stamp": self.inactive_stamp,
            "active_stamp": self.active_stamp,
            "inactive_version": self.inactive_os_release.get("VERSION", ""),
            "lock": self.lock,
            "legacy_lock_held": self.legacy_lock_held,
            "boot_id": self.boot_id,
            "uuid": (self.config_json or {}).get("uuid", ""),
            "python_present": self.python_present,
            "hostapp": self.hostapp,
            "active_hostapp": self.active_hostapp.as_dict() if self.active_hostapp else None,
            "inactive_hostapp": self.inactive_hostapp.as_dict() if self.inactive_hostapp else None,
        }


_MOUNT_KEYS = {"/mnt/boot": "boot", "/mnt/sysroot/inactive": "inactive", "/mnt/data": "data", "/mnt/state": "state"}


def parse_state(raw: dict[str, t.Any]) -> DeviceState:
    """Turn the probe's JSON into a DeviceState; raise DeviceError when the device breaks the contract."""
    check_file_sizes(raw, PROBED_FILES)
    for key, value in raw.items():
        if key != "extra" and isinstance(value, str) and byte_length(value) > FILE_LIMIT:
            raise DeviceError(f"the device probe's {key} is larger than {FILE_LIMIT // 1024} KiB (a broken or hostile device?); refusing it")
    osr = _kv(raw.get("os_release", ""))
    if not osr:
        raise DeviceError("cannot read /etc/os-release")
    inactive_osr = _kv(raw.get("inactive_os_release", ""))
    _check_os_release(osr, PROBED_FILES["os_release"])
    _check_os_release(inactive_osr, PROBED_FILES["inactive_os_release"])
    if raw.get("active_label", "") not in ROOT_INDEX:
        raise DeviceError(
            f"cannot tell the active root: / is on {raw.get('active_dev') or '?'}, which is neither resin-rootA nor resin-rootB"
        )
    by_state = str(raw.get("by_state_active") or "")
    if by_state and by_state != raw.get("active_dev"):
        raise DeviceError(f"cannot tell the active root: /dev/disk/by-state/active names {by_state}, but the root is mounted from "
                          f"{raw.get('active_dev') or '?'}")
    if not raw.get("inactive_label") or raw.get("inactive_label") == raw.get("active_label"):
        raise DeviceError("active and inactive root resolve to the same partition")
    free: dict[str, int] = {}
    size: dict[str, int] = {}
    for line in str(raw.get("df", "")).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in _MOUNT_KEYS:
            free[_MOUNT_KEYS[parts[0]]] = int(parts[1])
            size[_MOUNT_KEYS[parts[0]]] = int(parts[2])
    services = _kv(raw.get("services", ""))
    return DeviceState(
        raw=raw,
        os_release=osr,
        active_label=raw["active_label"],
        inactive_label=raw["inactive_label"],
        active_dev=raw.get("active_dev", ""),
        inactive_dev=raw.get("inactive_dev", ""),
        inactive_mounted=raw.get("inactive_mounted") == "1",
        uenv_text=raw.get("uenv", "") if raw.get("uenv_present") == "1" else None,
        bootcount_text=raw.get("bootcount", ""),
        bootcount_present=raw.get("bootcount_present") == "1",
        extra_uenv_text=raw.get("extra_uenv", ""),
        grubenv_path=raw.get("grubenv_path", ""),
        grubenv_text=raw.get("grubenv", ""),
        markers=_markers(str(raw.get("markers", ""))),
        free_kib=free,
        size_kib=size,
        services=services,
        active_stamp=json_object(raw.get("active_stamp", "")),
        inactive_stamp=json_object(raw.get("inactive_stamp", "")),
        inactive_os_release=inactive_osr,
        shipped_supervisor=supervisor_version(raw.get("shipped_supervisor", "")),
        running_supervisor=supervisor_version(raw.get("running_supervisor", "")) or supervisor_version(raw.get("shipped_supervisor", "")),
        inactive_supervisor=supervisor_version(raw.get("inactive_supervisor", "")),
        config_json=json_object(raw.get("config_json", "")),
        lock=json_object(raw.get("lock", "")),
        # our own run's watchdog holds the reference updater's lock for it: not another updater
        legacy_lock_held=raw.get("legacy_lock") == "held" and not str(raw.get("watchdog_run", "")).strip(),
        boot_id=str(raw.get("boot_id", "")).strip(),
        rollback_health_state=str(raw.get("rollback_health_state", "")).strip(),
        python_present=raw.get("python") == "present",
        machine=str(raw.get("uname_m", "")),
        extra=_extra(raw.get("extra", "")),
        uptime=_uptime(raw.get("uptime", "")),
        watchdog_run=str(raw.get("watchdog_run", "")).strip(),
        rollback_record=marker_json(str(raw.get("rollback_record", ""))),
        triggered_newer=tuple(m for m in str(raw.get("triggered_newer", "")).split() if m in MARKERS),
        active_hostapp=parse_hostapp(raw.get("active_hostapp")),
        inactive_hostapp=parse_hostapp(raw.get("inactive_hostapp")),
        hostapp_update=raw.get("hostapp_update") == "present",
        hostapp_job=json_object(str(raw.get("hostapp_job", ""))),
    )


def _uptime(text: t.Any) -> float | None:
    try:
        return float(str(text).split()[0])
    except (IndexError, ValueError):
        return None


def marker_json(text: str) -> dict[str, t.Any] | None:
    """osfleet's rollback marker's JSON; an unreadable marker still is one (for an unknown reason)."""
    data = json_object(text)
    if data is None and text.strip():
        return {"reason": "unknown", "raw": text.strip()[:200]}
    return data


def _markers(text: str) -> tuple[str, ...]:
    """The known rollback markers among the names the probe listed, in their canonical order."""
    found = set(text.split())
    return tuple(m for m in MARKERS if m in found)


def _extra(text: str) -> dict[str, t.Any]:
    if not str(text).strip():
        return {}
    data = json_object(str(text))
    if data is None:
        raise DeviceError(f"the step's probe printed no JSON object: {str(text)[:300]!r}")
    return data


def probe(session: DeviceSession, extra: str | None = None, **params: object) -> DeviceState:
    """Run the probe on the device (one round trip) and parse it.

    ``extra``/``params``: a step's own probe script (``probe_<name>``) and its parameters, run in
    the same round trip (:func:`.shell.probe`); what it prints is ``DeviceState.extra``.
    """
    return parse_state(session.run_json(shell.probe(extra), what="device probe", **params))


def act_then_probe(session: DeviceSession, act: str, act_params: t.Mapping[str, object], extra: str | None = None, *,
                   what: str, **params: object) -> tuple[str, DeviceState]:
    """Run the act script ``act`` and then the probe (with ``extra`` and its ``params``) in one round
    trip (:func:`.shell.then_probe`): (what the act printed, the device's state after the act).

    A failing act fails as :meth:`DeviceSession.run` fails (``what`` names it), the probe unrun;
    the state is the probe's reading of the device after the act ended, which the step verifies.
    """
    result = session.run(shell.then_probe(act, extra), what=what, **act_params, **params)
    try:
        act_out, probe_out = shell.split_then_probe(result.stdout)
    except ValueError as exc:
        raise DeviceError(f"{what}: {exc}") from None
    return act_out, parse_state(script_json(probe_out, result.stderr))
