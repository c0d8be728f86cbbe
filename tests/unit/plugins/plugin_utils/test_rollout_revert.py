# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The revert of a rollout (hup_rollout_action=revert): decide_revert per device, what the other
root partition must hold (bootcopy.previous_release_problem), the revert's outcome and rerun."""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.osfleet.hup.plugins.action.rollout import ActionModule
from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout_revert as rv
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootcopy import previous_release_problem

OLD, NEW = "2.88.4", "2.113.0"
IMAGE = "sha256:" + "a" * 64
RECORD = {"status": "committed", "from_version": OLD, "to_version": NEW, "from_root": "resin-rootA", "from_image_id": IMAGE}


def device(**over: t.Any) -> dict[str, t.Any]:
    dev = {"version": NEW, "active_root": "resin-rootB", "inactive_root": "resin-rootA", "active_index": "3", "hostapp": True,
           "boot_env": {"upgrade_available": False, "resin_root_part": "3"}, "inactive_hostapp": {"image_id": IMAGE},
           "inactive_stamp": {"version": OLD, "image_id": IMAGE}}
    return {**dev, **over}


def test_a_committed_device_whose_other_partition_holds_the_old_hostapp_is_switched_back() -> None:
    step = rv.decide_revert("d1", RECORD, device())
    assert (step.action, step.version) == ("switch", OLD) and "switch back to resin-rootA, which still holds 2.88.4" in step.reason


@pytest.mark.parametrize(("dev", "record", "why"), [
    (device(inactive_hostapp={"image_id": "sha256:" + "e" * 64}), RECORD,
     f"the other root partition resin-rootA was rewritten: its hostapp is image sha256:{'e' * 64}, not {IMAGE}"),
    (device(inactive_hostapp={}), RECORD, "the other root partition resin-rootA holds no complete hostapp"),
    (device(version="2.99.0"), RECORD, "it runs 2.99.0 on resin-rootB, neither the rollout's target 2.113.0 nor the release 2.88.4"),
    (device(boot_env={"upgrade_available": True, "resin_root_part": "3"}), RECORD, "2.113.0 on resin-rootB is not committed"),
    (device(), {**RECORD, "status": "failed"}, "the rollout did not commit it (status failed)"),
    (device(hostapp=False, inactive_stamp={"version": "2.99.0", "digest": "sha256:1"}), {**RECORD, "from_image_id": ""},
     "the other root partition resin-rootA was rewritten: its stamp names 2.99.0 (sha256:1), not 2.88.4"),
    (device(hostapp=False, inactive_stamp=None), {**RECORD, "from_image_id": ""}, "has no release stamp"),
])
def test_a_device_whose_old_release_is_not_verifiably_there_is_refused(dev: dict[str, t.Any], record: dict[str, t.Any], why: str) -> None:
    step = rv.decide_revert("d1", record, dev)
    assert step.action == "refuse" and step.reason.startswith("d1: not revertible: ") and why in step.reason, step


def test_a_device_back_on_the_old_release_is_done_or_committed_by_the_health_check() -> None:
    back = {"version": OLD, "active_root": "resin-rootA", "active_index": "2"}
    assert rv.decide_revert("d1", RECORD, device(**back)).action == "done"
    assert rv.decide_revert("d1", RECORD, device(**back, boot_env={"upgrade_available": True, "resin_root_part": "2"})).action == "commit"


def test_a_plain_ab_root_is_identified_by_its_stamp_and_digest() -> None:
    ok = {"version": OLD, "digest": "sha256:1"}
    assert previous_release_problem(hostapp=False, label="rootA", stamp=ok, image_id="", version=OLD, expected_digest="sha256:1") is None
    problem = previous_release_problem(hostapp=False, label="rootA", stamp=ok, image_id="", version=OLD, expected_digest="sha256:2")
    assert "not 2.88.4 (sha256:2)" in str(problem)


def test_a_revert_that_refused_devices_stays_incomplete_when_run_again() -> None:
    plan = {"id": "r1", "waves": [{"name": "all", "hosts": ["d1", "d2"], "max_failures": 0, "serial": 2}]}
    records = {"d1": {"status": "committed", "revert": {"status": "reverted"}}, "d2": {"status": "committed", "revert": {"status": "refused"}}}
    status, reason = rv.revert_outcome(plan, records)
    assert (status, reason) == ("incomplete", "every wave went through; 1 device(s) refused (not revertible): d2")
    state = {"revert": {"status": status, "reason": reason, "waves": {"all": {"status": "passed"}}}}
    ActionModule._start_revert(plan, state, records)  # pylint: disable=protected-access
    assert state["revert"]["status"] == "incomplete", state
    state["revert"]["status"] = "halted"
    ActionModule._start_revert(plan, state, records)  # pylint: disable=protected-access
    assert state["revert"]["status"] == "active", state
