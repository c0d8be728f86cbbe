# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""device_info's result: the probe's facts plus the bootloader env and whether an update is pending
(preflight reports the same facts).
"""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import BREADCRUMBS, rolled_back_releases


def device_facts(state: DeviceState, strict: bool = True) -> dict[str, t.Any]:
    """device_info's result: the probe's facts plus the bootloader env and whether an update is pending.

    ``strict=False`` (preflight, which reports an unreadable env as a problem): without the env
    when it cannot be read.
    """
    facts = state.facts()
    facts["rolled_back"] = [r.as_dict() for r in rolled_back_releases(state)]
    try:
        env = boot_state(state)
    except PlanError:
        if strict:
            raise
        return facts
    facts["boot_env"] = {
        "resin_root_part": env.root_part,
        "upgrade_available": env.upgrade_available,
        "bootcount": env.bootcount,
        "bootcount_limit": env.bootcount_limit,
    }
    facts["update_pending"] = bool(env.upgrade_available) or any(m in BREADCRUMBS for m in state.markers)
    return facts
