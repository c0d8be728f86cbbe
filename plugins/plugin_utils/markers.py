# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The rollback markers in ``/mnt/state`` (facts sheet §9): the breadcrumbs that arm rollback-health and
rollback-altboot, what rollback-stop and arming remove, osfleet's own ``osfleet-rollback`` marker, and
the plans that write or remove them.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import STATE_MOUNT, Op
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
    from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import SwitchProbe


ROLLBACK_MARKER = "osfleet-rollback"
HEALTH_VARIABLES = "BALENAOS_ROLLBACK_VPNONLINE=0\n"
HEALTH_BREADCRUMB = "rollback-health-breadcrumb"
ALTBOOT_BREADCRUMB = "rollback-altboot-breadcrumb"
HEALTH_VARIABLES_FILE = "rollback-health-variables"
HEALTH_TRIGGERED = "rollback-health-triggered"
ALTBOOT_TRIGGERED = "rollback-altboot-triggered"
HEALTH_FAILED = "rollback-health-failed"
BREADCRUMBS = (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB)
#: the markers the device probe reports, in this order (besides osfleet's own, read by the switch probe)
MARKERS = (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB, HEALTH_VARIABLES_FILE, HEALTH_TRIGGERED, ALTBOOT_TRIGGERED, HEALTH_FAILED)
#: what rollback-stop removes (facts §9.8); the *-triggered markers survive it
STOP_REMOVES = (HEALTH_VARIABLES_FILE, ALTBOOT_BREADCRUMB, HEALTH_BREADCRUMB, HEALTH_FAILED)
#: what arming removes (hook 80-rollback with DURING_UPDATE=1), plus osfleet's own rollback marker
ARM_REMOVES = (HEALTH_TRIGGERED, ALTBOOT_TRIGGERED, HEALTH_FAILED, ROLLBACK_MARKER)
REASONS = {
    "altboot": "the new OS did not boot",
    "health": "the device's health checks failed",
    "checks": "the health commands failed",
    "requested": "a rollback was requested",
}


def markers_text(present: Iterable[str]) -> str:
    names = sorted(present)
    return f"# markers in {STATE_MOUNT}\n" + "".join(f"{n}\n" for n in names)


def marker_plan(dev: DeviceState, probe: SwitchProbe, *, put: Mapping[str, str] | None = None,
                remove: Iterable[str] = ()) -> tuple[list[Op], list[str], set[str], set[str]]:
    """Operations on the rollback markers in /mnt/state: (ops, actions, present before, present after)."""
    put = put or {}
    present = set(dev.markers)
    if probe.rollback_marker is not None:
        present.add(ROLLBACK_MARKER)
    after = set(present)
    ops: list[Op] = []
    actions: list[str] = []
    for name, content in put.items():
        current = probe.health_variables if name == HEALTH_VARIABLES_FILE else ("" if name in present else None)
        if name in present and (current is None or current.rstrip("\n") == content.rstrip("\n")):
            continue
        ops.append(("put", f"{STATE_MOUNT}/{name}", content))
        actions.append(f"{'rewrote' if name in present else 'created'} {STATE_MOUNT}/{name}")
        after.add(name)
    for name in remove:
        if name in present:
            ops.append(("del", f"{STATE_MOUNT}/{name}", ""))
            actions.append(f"removed {STATE_MOUNT}/{name}")
            after.discard(name)
    return ops, actions, present, after


@dataclass(frozen=True)
class RolledBack:
    """A release that rolled back on the device: its version, why (a key of REASONS, or
    ``unknown``), the marker that says so, and its digest when the inactive root's stamp names it."""

    version: str
    reason: str
    marker: str
    digest: str | None = None

    def as_dict(self) -> dict[str, t.Any]:
        return {"version": self.version, "reason": self.reason, "marker": self.marker, "digest": self.digest}

    def describe(self) -> str:
        return f"{REASONS.get(self.reason, 'for an unknown reason')}: {self.marker}"


def rolled_back_releases(dev: DeviceState) -> list[RolledBack]:
    """The releases that rolled back on the device and were not tried again since (arming
    removes the markers, ARM_REMOVES).

    * ``rollback-altboot-triggered`` / ``rollback-health-triggered`` (the device's own rollback):
      the release on the inactive root, when the marker is newer than that root's stamp (a root
      written after the rollback holds another release);
    * osfleet's ``osfleet-rollback`` marker: its ``from_version``, unless the device runs it (a
      rollback before the reboot: the release never ran).
    """
    found: list[RolledBack] = []
    stamp = dev.inactive_stamp or {}
    inactive = str(stamp.get("version") or dev.inactive_os_release.get("VERSION", ""))
    for name, reason in ((ALTBOOT_TRIGGERED, "altboot"), (HEALTH_TRIGGERED, "health")):
        if inactive and name in dev.markers and name in dev.triggered_newer:
            digest = stamp.get("digest")
            found.append(RolledBack(inactive, reason, f"{STATE_MOUNT}/{name}", str(digest) if digest else None))
    record = dev.rollback_record or {}
    left = str(record.get("from_version") or "")
    if left and not same_version(left, dev.version):
        found.append(RolledBack(left, str(record.get("reason") or "unknown"), f"{STATE_MOUNT}/{ROLLBACK_MARKER}"))
    return found
