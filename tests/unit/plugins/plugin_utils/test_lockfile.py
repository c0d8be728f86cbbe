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

from ansible_collections.osfleet.hup.plugins.plugin_utils.lockfile import default_lock_owner, lock_is_stale


@pytest.mark.parametrize(("since", "now", "stale_after", "stale"), [
    (RECENT, NOW, 7200, False),
    (OLD, NOW, 7200, True),
    (OLD, NOW, 0, False),
    ("2027-01-15T05:00:00+00:00", NOW, 3600, True),
    ("not a time", NOW, 1, False),
    (OLD, None, 1, False),
])
def test_lock_is_stale(since: str, now: int | None, stale_after: int, stale: bool) -> None:
    assert lock_is_stale({"owner": BOB, "since": since}, now, stale_after) is stale


def test_default_lock_owner() -> None:
    owner = default_lock_owner()
    assert "@" in owner and owner.split("@")[1]
