# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The update lock on the device (``/mnt/state/osfleet/hup.lock``, JSON ``owner``, ``run_id``,
``since``, ``target``, ``boot_id`` and ``uptime`` of its last refresh, ``interrupted``) and the
reference updater's lock: who holds them, whether a run may take them, and when a lock is stale.
Shared by the lock step and the preflight.

A run's lock is refreshed (``boot_id``, ``uptime``) when the lock step takes it and by the run's
device-side watchdog (``scripts/watchdog.sh``) while the controller is heard from; the watchdog
also holds ``/var/lock/resinhup.lock`` for the run, and records ``interrupted`` (``reason``,
``boot_id``, ``uptime``, ``at``) in the lock when the controller goes away.
"""

from __future__ import annotations

import datetime
import getpass
import socket
import typing as t
from dataclasses import dataclass

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState

LOCK_PATH = "/mnt/state/osfleet/hup.lock"
#: the reference updater's lock (flock); held means an update runs
LEGACY_LOCK = "/var/lock/resinhup.lock"
LEGACY_HELD = f"update already in progress: {LEGACY_LOCK} is held (another updater runs)"
#: where the run's device-side watchdog keeps its state (tmpfs: gone after a reboot)
WATCHDOG_DIR = "/run/osfleet/watchdog"


def default_lock_owner() -> str:
    """``<user>@<controller host>``: who runs this playbook."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def lock_unreadable(state: DeviceState) -> bool:
    """The lock file exists but is no JSON object (the probe read text that does not parse)."""
    return state.lock is None and bool(str(state.raw.get("lock", "")).strip())


def lock_interrupted(lock: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    """What the device's watchdog recorded when the lock's run went away (None: not interrupted)."""
    mark = (lock or {}).get("interrupted")
    return mark if isinstance(mark, dict) else None


@dataclass(frozen=True)
class DeviceClock:
    """Time as the device measures it: its wall clock (``now``, only for locks that predate the
    uptime fields) and its monotonic uptime within one boot (``boot_id``)."""

    now: int | None
    uptime: float | None
    boot_id: str


def device_clock(state: DeviceState, now: int | None = None) -> DeviceClock:
    return DeviceClock(now=now, uptime=state.uptime, boot_id=state.boot_id)


def _number(value: t.Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _wall_age(lock: dict[str, t.Any], now: int | None) -> float | None:
    since = lock.get("since")
    if now is None or not isinstance(since, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return now - when.timestamp()


def lock_age(lock: dict[str, t.Any], clock: DeviceClock) -> tuple[float | None, bool]:
    """(seconds since the lock was last taken or refreshed, whether the device booted since).

    Measured by the device's uptime, never by its wall clock (an NTP jump must not make a live lock
    stale): within the boot the lock was refreshed in, the uptime difference; after a later boot,
    at least the time since that boot (the uptime). A lock without the uptime fields (written by
    an older collection) falls back to its ``since`` by the device's wall clock.
    """
    uptime, boot_id = _number(lock.get("uptime")), lock.get("boot_id")
    if uptime is None or not isinstance(boot_id, str) or not boot_id or clock.uptime is None or not clock.boot_id:
        return _wall_age(lock, clock.now), False
    if boot_id != clock.boot_id:
        return clock.uptime, True
    return max(0.0, clock.uptime - uptime), False


def lock_is_stale(lock: dict[str, t.Any], clock: DeviceClock, stale_after: int) -> bool:
    """True when nobody refreshed the lock for more than ``stale_after`` seconds (0: never stale)."""
    age = lock_age(lock, clock)[0]
    return age is not None and stale_after > 0 and age > stale_after


def _seconds(value: float) -> str:
    return f"{int(value)} s"


def lock_text(lock: dict[str, t.Any], clock: DeviceClock | None = None) -> str:
    """``lock held by OWNER (run RID) since SINCE, refreshed N s ago``: who, which run, how old."""
    text = f"lock held by {lock.get('owner') or '?'} (run {lock.get('run_id') or '-'}) since {lock.get('since') or '?'}"
    if clock is None:
        return text
    age, rebooted = lock_age(lock, clock)
    if rebooted:
        text += f", last refreshed before the device's current boot (at least {_seconds(age or 0)} ago)"
    elif age is not None:
        text += f", last refreshed {_seconds(age)} ago"
    mark = lock_interrupted(lock)
    if mark:
        text += f"; its run was interrupted: {mark.get('reason') or 'the controller went away'}"
    return text


def resume_hint(lock: dict[str, t.Any]) -> str:
    """How to go on with a lock this run may not take: resume its run, or take it over."""
    owner, run_id = lock.get("owner") or "?", lock.get("run_id")
    resume = f"run again as {owner} with hup_run_id={run_id} (lock run_id={run_id})" if run_id else f"run again as {owner}"
    return f"to resume that run, {resume}; to take the lock over, set hup_lock_force=true (lock force=true)"


def in_progress(lock: dict[str, t.Any], clock: DeviceClock | None = None, stale_after: int | None = None) -> str:
    """The message for a lock another run holds: owner, run id, age, how to resume or take over."""
    text = f"update already in progress: {lock_text(lock, clock)}; {resume_hint(lock)}"
    if stale_after:
        text += f", or wait: it is stale after {stale_after} s without a refresh (hup_lock_stale_after)"
    return text


def may_take(lock: dict[str, t.Any], owner: str, run_id: str | None, clock: DeviceClock, stale_after: int) -> str | None:
    """Why this run may take (or release) a lock another run holds, None when it may not.

    The same run (same owner and run id, or no run id on either side) resumes it. Another run of
    the same owner takes it only when the lock's watchdog recorded its run as interrupted; any run
    takes a stale lock. A live lock of another run is never taken (force aside).
    """
    if lock.get("owner") == owner and (run_id is None or lock.get("run_id") in (None, run_id)):
        return "same run"
    if lock.get("owner") == owner and lock_interrupted(lock):
        return "interrupted"
    if lock_is_stale(lock, clock, stale_after):
        return "stale"
    return None
