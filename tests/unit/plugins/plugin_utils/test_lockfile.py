# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The update lock model (plugin_utils.lockfile): staleness by the device's clock, the default owner."""

from __future__ import annotations

import pytest
from prepare_model import (
    BOB,
    NOW,
    OLD,
    RECENT,
)

from ansible_collections.osfleet.hup.plugins.plugin_utils.lockfile import DeviceClock, default_lock_owner, lock_age, lock_is_stale


@pytest.mark.parametrize(("since", "now", "stale_after", "stale"), [
    (RECENT, NOW, 7200, False),
    (OLD, NOW, 7200, True),
    (OLD, NOW, 0, False),
    ("2027-01-15T05:00:00+00:00", NOW, 3600, True),
    ("not a time", NOW, 1, False),
    (OLD, None, 1, False),
])
def test_lock_is_stale(since: str, now: int | None, stale_after: int, stale: bool) -> None:
    """A lock without the uptime fields (an older collection's) is judged by the device's wall clock."""
    assert lock_is_stale({"owner": BOB, "since": since}, DeviceClock(now, 100.0, "b1"), stale_after) is stale


@pytest.mark.parametrize(("lock", "clock", "age", "rebooted"), [
    ({"uptime": 900.5, "boot_id": "b1", "since": "1970-01-01T00:00:00Z"}, DeviceClock(NOW, 1000.5, "b1"), 100.0, False),
    ({"uptime": 900, "boot_id": "b1"}, DeviceClock(None, 1000.0, "b1"), 100.0, False),
    # another boot since the refresh: at least the time since that boot, whatever the wall clock says
    ({"uptime": 99999, "boot_id": "b0", "since": "2999-01-01T00:00:00Z"}, DeviceClock(NOW, 30.0, "b1"), 30.0, True),
    # the device's uptime unknown: the wall clock
    ({"uptime": 900, "boot_id": "b1", "since": "2027-01-15T07:50:00Z"}, DeviceClock(NOW, None, ""), 600.0, False),
    ({"uptime": "900", "boot_id": "b1"}, DeviceClock(None, 1000.0, "b1"), None, False),
])
def test_lock_age_by_the_device_uptime(lock: dict, clock: DeviceClock, age: float | None, rebooted: bool) -> None:
    assert lock_age(lock, clock) == (age, rebooted)


def test_an_ntp_jump_does_not_make_a_live_lock_stale() -> None:
    lock = {"owner": BOB, "since": "2027-01-15T05:00:00Z", "uptime": 990.0, "boot_id": "b1"}
    assert not lock_is_stale(lock, DeviceClock(NOW, 1000.0, "b1"), 3600)
    assert lock_is_stale(lock, DeviceClock(NOW, 1000.0 + 3600, "b1"), 3600)


def test_default_lock_owner() -> None:
    owner = default_lock_owner()
    assert "@" in owner and owner.split("@")[1]
