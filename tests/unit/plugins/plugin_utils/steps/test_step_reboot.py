# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reboot step's decision (steps/reboot.py)."""

from __future__ import annotations

import pytest
from documented import documented
from switch_model import Model

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.reboot import RebootArgs, decide_reboot, reboot_diff


@pytest.mark.parametrize(
    "env, only_if_pending, reboot, expected_root",
    [
        ("resin_root_part=2\nupgrade_available=0", True, False, "resin-rootA"),
        ("resin_root_part=2\nupgrade_available=0", False, True, "resin-rootA"),
        ("resin_root_part=3\nupgrade_available=1", True, True, "resin-rootB"),
        ("resin_root_part=3\nupgrade_available=0", True, True, "resin-rootB"),  # a rollback waiting for its boot
        ("resin_root_part=2\nupgrade_available=1", True, False, "resin-rootA"),  # booted, pending commit
    ],
)
def test_decide_reboot(env, only_if_pending, reboot, expected_root):
    model = Model.fresh()
    model.boot["resinOS_uEnv.txt"] = env
    dev = model.dev()
    state = bootenv.BootState.from_files("uboot", env)
    plan = decide_reboot(RebootArgs.from_args(documented("reboot", only_if_pending=only_if_pending)), dev, state)
    assert (plan.reboot, plan.expected_root) == (reboot, expected_root)


def test_decide_reboot_past_the_boot_limit_expects_the_other_root():
    model = Model.fresh()
    state = bootenv.BootState("uboot", 3, True, 3, 3)
    plan = decide_reboot(RebootArgs.from_args(documented("reboot")), model.dev(), state)
    assert plan.reboot and plan.expected_root == "resin-rootA"


@pytest.mark.parametrize(
    "env, assume_pending, check_mode, reboot, expected_root",
    [
        # a dry run of the whole update: the arm step wrote nothing, the reboot it brings is planned
        ("resin_root_part=2\nupgrade_available=0", True, True, True, "resin-rootB"),
        ("resin_root_part=2\nupgrade_available=0", True, False, False, "resin-rootA"),  # a real run believes the device
        ("resin_root_part=2\nupgrade_available=0", False, True, False, "resin-rootA"),
        ("resin_root_part=3\nupgrade_available=1", True, True, True, "resin-rootB"),  # armed already
    ],
)
def test_decide_reboot_assume_pending(env, assume_pending, check_mode, reboot, expected_root):
    model = Model.fresh()
    model.boot["resinOS_uEnv.txt"] = env
    dev = model.dev()
    args = RebootArgs.from_args(documented("reboot", assume_pending=assume_pending), check_mode=check_mode)
    plan = decide_reboot(args, dev, bootenv.BootState.from_files("uboot", env))
    assert (plan.reboot, plan.expected_root) == (reboot, expected_root)
    if reboot:
        diff = reboot_diff(plan, dev)
        assert diff["after"] == f"a new boot from {expected_root}\n" and "from resin-rootA" in diff["before"]
