# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The standard role's rescue (roles/standard/tasks/update.yml): what it does after a failed step,
and how it words the device's state, from what the device says.

The rescue reads the device first (osfleet.hup.device_info) whenever the run held the lock. A
device that booted another root than the one it ran at the preflight (a power cut, or a reboot,
after a switch was armed: on a balenaOS device hostapp-update's hooks arm the new OS inside the
rootfs step, before the controller has that step's result) is not "put back": it runs the new OS
and its rollback-health watches it, and the message says so. A device that cannot be read after a
failure in a step that may have armed the switch is said to boot one of the two, not to stay on
the old OS.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

#: what the device's watchdog says when it put the env and boot files back (scripts/watchdog.sh)
WATCHDOG_PUT_BACK = "put the env and boot files back for the running OS"
#: the phases in which the run itself stages and switches (the rescue may disarm what it armed)
STAGING_PHASES = ("needed", "staged")
OUTCOMES = ("rolled_back", "interrupted", "failed")


def _ran_ok(result: t.Mapping[str, t.Any] | None) -> bool:
    """A registered result of a task that ran and succeeded (not skipped, not failed, reached)."""
    return bool(result) and not result.get("skipped") and not result.get("failed") and not result.get("unreachable")  # type: ignore[union-attr]


@dataclass(frozen=True)
class RescueFacts:
    """What the rescue knows: the run's registered results, as the role passes them."""

    locked: bool  # this run holds the lock (it took it)
    switched: bool  # the run's own steps say the switch was armed (or the target booted before)
    phase: str  # the preflight's phase
    target: str  # hup_target_version
    run_id: str  # the run id to resume with
    step: str = "?"  # the failed step (hup_step)
    rolled_back: bool = False  # the failed step reported a rollback (health)
    rollback_reason: str = ""
    acted: bool = False  # the failed step had sent its act to the device (its result's ``acted``)
    watchdog: str = ""  # the device's watchdog gave the run up: its reason
    before: t.Mapping[str, t.Any] | None = None  # the preflight's device facts
    writer: str = ""  # the writer of the run's root write (hostapp, export), when known
    read: t.Mapping[str, t.Any] | None = None  # the rescue's device_info result (registered)
    restore: t.Mapping[str, t.Any] | None = None  # the rescue's bootenv rolled_back result
    disarm: t.Mapping[str, t.Any] | None = None  # the rescue's disarm result
    health_committed: bool = False  # the health step committed (not in check mode)

    @classmethod
    def from_mapping(cls, data: t.Mapping[str, t.Any]) -> RescueFacts:
        failure = data.get("failure") or {}
        return cls(
            locked=bool(data.get("locked")),
            switched=bool(data.get("switched")),
            phase=str(data.get("phase") or ""),
            target=str(data.get("target") or "?"),
            run_id=str(data.get("run_id") or ""),
            step=str(failure.get("step") or "?"),
            rolled_back=bool(failure.get("rolled_back")),
            rollback_reason=str(failure.get("rollback_reason") or ""),
            acted=str(failure.get("acted")).lower() == "true",
            watchdog=str(data.get("watchdog") or ""),
            before=data.get("before") or {},
            writer=str(data.get("writer") or ""),
            read=data.get("read") or None,
            restore=data.get("restore") or None,
            disarm=data.get("disarm") or None,
            health_committed=bool(data.get("health_committed")),
        )

    @property
    def old(self) -> str:
        return str((self.before or {}).get("version") or "its old OS")

    @property
    def hostapp(self) -> bool:
        """A balenaOS device: its root write is hostapp-update, whose hooks arm the new OS."""
        return self.writer == "hostapp" if self.writer else bool((self.before or {}).get("hostapp"))

    @property
    def device(self) -> t.Mapping[str, t.Any] | None:
        """What the rescue's read found (None: it did not run, or could not read the device)."""
        if not _ran_ok(self.read):
            return None
        device = (self.read or {}).get("device")
        return device if isinstance(device, t.Mapping) else None


def booted_other_root(before: t.Mapping[str, t.Any] | None, now: t.Mapping[str, t.Any] | None) -> bool:
    """Whether the device booted since the preflight, and another root than it ran then."""
    if not before or not now:
        return False
    boot_then, boot_now = before.get("boot_id"), now.get("boot_id")
    root_then, root_now = before.get("active_root"), now.get("active_root")
    return bool(boot_then and boot_now and root_then and root_now) and boot_now != boot_then and root_now != root_then


def armed_for_inactive(device: t.Mapping[str, t.Any] | None) -> bool:
    """Whether the device's bootloader env is armed for its inactive root (it boots it next)."""
    env = (device or {}).get("boot_env") or {}
    return bool(env.get("upgrade_available")) and env.get("resin_root_part") == (device or {}).get("inactive_index")


def may_have_armed(facts: RescueFacts) -> bool:
    """Whether the failed step may have armed the switch before the controller got its result: a
    balenaOS device's rootfs step that had started hostapp-update (whose hooks arm the new OS), a
    plain A/B device's arm that had sent the env (the step's result says ``acted``)."""
    if facts.switched or not facts.acted:
        return False
    return (facts.step == "rootfs" and facts.hostapp) or (facts.step == "bootenv armed" and not facts.hostapp)


def should_read(facts: RescueFacts) -> bool:
    """The rescue reads the device whenever the run held the lock (the health step's rollback has
    read it already)."""
    return facts.locked and not facts.rolled_back


def should_restore(facts: RescueFacts) -> bool:
    """bootenv rolled_back (the old OS's boot files and env back): before the switch, and only on a
    device that still runs the root it ran at the preflight, or that could not be read (the step
    itself probes and decides, and does nothing on a device it cannot reach). Never on a device that
    booted the other root meanwhile: that is the new OS, watched by its rollback-health."""
    if not facts.locked or facts.switched:
        return False
    return not booted_other_root(facts.before, facts.device)


def should_disarm(facts: RescueFacts) -> bool:
    """After the switch, before the reboot (the reboot step failed, or the arm after writing):
    disarm, so that the device does not switch at some later power cycle with nobody watching;
    only when the device was read and has not rebooted since the preflight."""
    device = facts.device
    return (facts.locked and facts.switched and facts.phase in STAGING_PHASES and not facts.rolled_back
            and device is not None and bool(device.get("boot_id")) and device.get("boot_id") == (facts.before or {}).get("boot_id"))


def _booted_state(facts: RescueFacts, device: t.Mapping[str, t.Any]) -> str:
    version = device.get("version") or "?"
    root = device.get("active_root") or "?"
    env = device.get("boot_env") or {}
    resume = f"run again with the same run id (hup_run_id={facts.run_id})" if facts.run_id else "run again"
    booted = f"the device rebooted during the run and runs {version} from {root} (it ran {facts.old} from {(facts.before or {}).get('active_root') or '?'})"
    if env.get("upgrade_available") or device.get("update_pending"):
        return f"{booted}, not committed: its rollback-health watches it; {resume} to verify and commit it"
    return f"{booted}, committed; {resume} to finish the update"


def rescue_state(facts: RescueFacts) -> str:
    """The device's state after the rescue, in words (after ``--`` in the failure message)."""
    old = facts.old
    device = facts.device
    if facts.rolled_back:
        return f"rolled back ({facts.rollback_reason or 'health'}), the device runs {old} again"
    if _ran_ok(facts.disarm):
        return f"the switch was disarmed before the reboot, the device stays on {old}"
    if facts.switched and WATCHDOG_PUT_BACK in facts.watchdog:
        return f"the switch was disarmed before the reboot (by the device's watchdog), the device stays on {old}"
    if facts.phase == "supervisor_behind" or facts.health_committed:
        return f"the device runs {facts.target}, committed"
    if device is not None and booted_other_root(facts.before, device):
        return _booted_state(facts, device)
    if facts.switched:
        return "the bootloader is armed for the new OS, its rollback-altboot protects it"
    if device is not None and armed_for_inactive(device) and not _ran_ok(facts.restore) and WATCHDOG_PUT_BACK not in facts.watchdog:
        inactive = device.get("inactive_root") or "the other root"
        version = device.get("inactive_version") or "?"
        return (f"the bootloader is armed for {inactive} ({version}) and the rescue could not put the old OS's env back: the device boots "
                f"{version} at its next reboot, its rollback-altboot protecting it")
    if device is None and may_have_armed(facts) and not facts.watchdog:
        how = "hostapp-update's hooks" if facts.hostapp else "the step"
        resume = f"run again with the same run id (hup_run_id={facts.run_id})" if facts.run_id else "run again"
        return (f"the device could not be read after the failure: {how} may have armed {facts.target} before the controller heard back, "
                f"so at its next boot it runs {facts.target} (its rollback-health watching it) or stays on {old}; {resume} once it answers")
    return f"nothing switched, the device stays on {old}"


def rescue_outcome(facts: RescueFacts) -> str:
    """The run log's outcome: rolled_back, interrupted (the device's watchdog gave the run up, or the
    device rebooted into the other root under the run), else failed."""
    if facts.rolled_back:
        return "rolled_back"
    device = facts.device
    if facts.watchdog or (device is not None and booted_other_root(facts.before, device) and not facts.health_committed
                          and facts.phase != "supervisor_behind"):
        return "interrupted"
    return "failed"


def decide_rescue(data: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Everything the rescue decides, from the role's mapping (filter osfleet.hup.hup_rescue)."""
    facts = RescueFacts.from_mapping(data)
    return {
        "read": should_read(facts),
        "restore": should_restore(facts),
        "disarm": should_disarm(facts),
        "state": rescue_state(facts),
        "outcome": rescue_outcome(facts),
        "booted_other_root": booted_other_root(facts.before, facts.device),
    }
