# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The update lock on the device (``/mnt/state/osfleet/hup.lock``, JSON ``owner``, ``run_id``,
``since``, ``target``) and the reference updater's lock: who holds them, and when a lock is stale.
Shared by the lock step and the preflight.
"""

from __future__ import annotations

import datetime
import getpass
import socket
import typing as t

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState

LOCK_PATH = "/mnt/state/osfleet/hup.lock"
#: the reference updater's lock (flock); held means an update runs
LEGACY_LOCK = "/var/lock/resinhup.lock"
LEGACY_HELD = f"update already in progress: {LEGACY_LOCK} is held (another updater runs)"


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


def lock_text(lock: dict[str, t.Any]) -> str:
    return f"lock held by {lock.get('owner') or '?'} since {lock.get('since') or '?'}"


def in_progress(lock: dict[str, t.Any]) -> str:
    """The message for a lock another run holds."""
    return f"update already in progress: {lock_text(lock)}"


def _lock_age(lock: dict[str, t.Any], now: int | None) -> float | None:
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


def lock_is_stale(lock: dict[str, t.Any], now: int | None, stale_after: int) -> bool:
    """True when the lock is older than ``stale_after`` seconds by the device's clock."""
    age = _lock_age(lock, now)
    return age is not None and stale_after > 0 and age > stale_after
