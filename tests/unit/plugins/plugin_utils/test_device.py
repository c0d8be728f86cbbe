# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The device probe's JSON turned into a DeviceState (plugin_utils.device), and the one reader of the
bootloader env it carries (plugin_utils.bootenv.env_files / boot_state)."""

from __future__ import annotations

import pytest
from prepare_model import make_state

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import parse_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import MARKERS


def raw_of(**changes: str) -> dict[str, str]:
    raw = dict(make_state().raw)
    raw.update(changes)
    return raw


def test_markers_are_the_known_ones_in_their_order():
    """The probe lists every rollback-* file of /mnt/state; the lab's rollback-health.conf is no marker."""
    state = parse_state(raw_of(markers=" rollback-health.conf rollback-health-triggered rollback-altboot-breadcrumb rollback-health-breadcrumb"))
    assert state.markers == ("rollback-health-breadcrumb", "rollback-altboot-breadcrumb", "rollback-health-triggered")
    assert state.markers == tuple(m for m in MARKERS if m in state.markers)


def test_bootcount_presence_tells_an_empty_file_from_none():
    absent = parse_state(raw_of(bootcount="", bootcount_present="0"))
    empty = parse_state(raw_of(bootcount="", bootcount_present="1"))
    assert bootenv.env_files(absent)["bootcount.env"] is None and bootenv.env_files(empty)["bootcount.env"] == ""
    counted = parse_state(raw_of(bootcount="bootcount=2", bootcount_present="1", uenv="resin_root_part=3\nupgrade_available=1\n"))
    assert bootenv.boot_state(counted) == bootenv.BootState("uboot", 3, True, 2, 3)


def test_root_label():
    state = make_state()
    assert (state.root_label(2), state.root_label(3), state.root_label(5)) == ("resin-rootA", "resin-rootB", "partition 5")


def test_the_env_reader_reads_a_grubenv_it_would_not_rewrite():
    grub = "# GRUB Environment Block\nresin_root_part=3\nupgrade_available=0\nbootcount=0\n"
    state = parse_state(raw_of(uenv_present="0", uenv="", grubenv_path="/mnt/boot/bootenv", grubenv=grub))
    assert bootenv.boot_state(state) == bootenv.BootState("grub", 3, False, 0, 1)
    with pytest.raises(PlanError, match="unsupported bootloader env /mnt/boot/bootenv"):
        bootenv.check_writable(bootenv.env_files(state))
    bootenv.check_writable(bootenv.env_files(parse_state(raw_of(uenv_present="0", grubenv_path="/mnt/boot/grub/grubenv", grubenv=grub))))


@pytest.mark.parametrize(("changes", "error"), [
    ({"uenv_present": "0", "grubenv_path": ""}, "no bootloader env on the boot partition"),
    ({"uenv": "resin_root_part=zz\nupgrade_available=0\n"}, "cannot read the bootloader env: resinOS_uEnv.txt: resin_root_part must be a hexadecimal"),
    ({"bootcount": "bootcount=x", "bootcount_present": "1"}, "cannot read the bootloader env: bootcount.env"),
])
def test_an_unreadable_env_is_a_plan_error(changes, error):
    with pytest.raises(PlanError, match=error):
        bootenv.boot_state(parse_state(raw_of(**changes)))


@pytest.mark.parametrize(("changes", "error"), [
    ({"os_release": ""}, "cannot read /etc/os-release"),
    ({"active_label": ""}, "cannot tell the active root"),
    ({"by_state_active": "/dev/mmcblk0p3"}, "by-state/active names /dev/mmcblk0p3, but the root is mounted from"),
    ({"inactive_label": "resin-rootA"}, "same partition"),
    ({"extra": "[1]"}, "the step's probe printed no JSON object"),
])
def test_a_device_that_breaks_the_contract(changes, error):
    with pytest.raises(DeviceError, match=error):
        parse_state(raw_of(**changes))


def test_by_state_active_that_agrees_is_accepted():
    raw = raw_of()
    assert parse_state(dict(raw, by_state_active=raw["active_dev"])).active_label == raw["active_label"]
