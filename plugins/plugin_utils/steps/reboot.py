# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The reboot step's decision: reboot when the bootloader env names another root than the booted one
(or when asked to), and which root the next boot lands on.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError


@dataclass(frozen=True)
class RebootArgs:
    """The reboot module's options (defaults in its DOCUMENTATION)."""

    only_if_pending: bool
    timeout: int
    connect_timeout: int
    #: check mode only: plan as if the env were armed for the inactive root (option assume_pending)
    assume_pending: bool = False

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any], check_mode: bool = False) -> RebootArgs:
        """``assume_pending`` counts only in check mode (outside it the env the device has is the truth)."""
        return cls(bool(args["only_if_pending"]), int(args["timeout"]), int(args["connect_timeout"]),
                   assume_pending=bool(args.get("assume_pending")) and check_mode)


@dataclass(frozen=True)
class RebootPlan:
    reboot: bool
    reason: str
    expected_root: str

    @property
    def actions(self) -> list[str]:
        return [f"rebooted: {self.reason}"] if self.reboot else []


def decide_reboot(args: RebootArgs, dev: DeviceState, state: bootenv.BootState) -> RebootPlan:
    """Reboot when asked unconditionally, or when the env names another root than the booted one."""
    try:
        expected = bootenv.next_boot_root(state, dev.active_index, dev.inactive_index)
    except ValueError as exc:
        raise PlanError(f"cannot tell which root the next boot lands on: {exc}") from None
    label = dev.root_label(expected)
    if args.assume_pending and state.root_part == dev.active_index:
        # check mode of a whole update: osfleet.hup.bootenv (state=armed) would have armed the other root
        armed = dev.root_label(dev.inactive_index)
        return RebootPlan(True, f"the bootloader env, once osfleet.hup.bootenv has armed it, names {armed}, the device runs {dev.active_label}", armed)
    if state.root_part != dev.active_index:
        return RebootPlan(True, f"the bootloader env names {dev.root_label(state.root_part)}, the device runs {dev.active_label}", label)
    if not args.only_if_pending:
        return RebootPlan(True, "reboot requested (only_if_pending=false)", label)
    return RebootPlan(False, f"nothing pending: the bootloader env names the booted root {dev.active_label}", label)


def reboot_diff(plan: RebootPlan, dev: DeviceState, after: DeviceState | None = None) -> dict[str, str]:
    """The boot before and after the reboot (``after`` None: check mode, the root the next boot starts)."""
    before = f"boot {dev.boot_id}: {dev.version or '?'} from {dev.active_label}\n"
    if after is None:
        return {"before": before, "after": f"a new boot from {plan.expected_root}\n"}
    return {"before": before, "after": f"boot {after.boot_id}: {after.version or '?'} from {after.active_label}\n"}
