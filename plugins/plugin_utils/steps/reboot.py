# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The reboot step's decision: reboot when the bootloader env names another root than the booted one
(or when asked to), and which root the next boot lands on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import root_label


@dataclass(frozen=True)
class RebootPlan:
    reboot: bool
    reason: str
    expected_root: str


def decide_reboot(dev: DeviceState, state: bootenv.BootState, *, only_if_pending: bool = True) -> RebootPlan:
    """Reboot when asked unconditionally, or when the env names another root than the booted one."""
    try:
        expected = bootenv.next_boot_root(state, dev.active_index, dev.inactive_index)
    except ValueError as exc:
        raise PlanError(f"cannot tell which root the next boot lands on: {exc}") from None
    label = root_label(dev, expected)
    if state.root_part != dev.active_index:
        return RebootPlan(True, f"the bootloader env names {root_label(dev, state.root_part)}, the device runs {dev.active_label}", label)
    if not only_if_pending:
        return RebootPlan(True, "reboot requested (only_if_pending=false)", label)
    return RebootPlan(False, f"nothing pending: the bootloader env names the booted root {dev.active_label}", label)
