# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""device_info's result: the probe's facts plus the bootloader env and whether an update is pending
(preflight reports the same facts).
"""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, boot_state


def device_facts(state: DeviceState) -> dict[str, t.Any]:
    """device_info's result: the probe's facts plus the bootloader env and whether an update is pending."""
    facts = state.facts()
    env = boot_state(state)
    facts["boot_env"] = {
        "resin_root_part": env.root_part,
        "upgrade_available": env.upgrade_available,
        "bootcount": env.bootcount,
        "bootcount_limit": env.bootcount_limit,
    }
    facts["update_pending"] = bool(env.upgrade_available) or any(m.endswith("breadcrumb") for m in state.markers)
    return facts
