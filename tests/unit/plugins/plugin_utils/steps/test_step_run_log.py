# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run_log step's decisions (steps/run_log.py): rotation, the outcome line, the controller's copy."""

from __future__ import annotations

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.run_log import copy_path, outcome_entry, rotation

LISTING = "\n".join([
    "100 osfleet-hup.a.log",
    "300 osfleet-hup.c.log",
    "200 osfleet-hup.b.log",
    "400 osfleet-hup.now.log",
    "50 notes.txt",
    "60 osfleet-hup.../x.log",
    "garbage",
])


def test_rotation_keeps_the_newest_and_the_current_run():
    plan = rotation(LISTING, "osfleet-hup.now.log", 2)
    assert plan.keep == ["osfleet-hup.now.log", "osfleet-hup.c.log"]
    assert plan.remove == ["osfleet-hup.b.log", "osfleet-hup.a.log"], "oldest last; other files are never named"


def test_rotation_keeps_the_current_run_even_when_it_is_not_the_newest():
    plan = rotation("900 osfleet-hup.z.log\n1 osfleet-hup.now.log\n", "osfleet-hup.now.log", 1)
    assert plan.keep == ["osfleet-hup.now.log"] and plan.remove == ["osfleet-hup.z.log"]


def test_rotation_with_room_removes_nothing():
    assert rotation(LISTING, "osfleet-hup.now.log", 10).remove == []


def test_rotation_refuses_keep_zero():
    with pytest.raises(PlanError, match="at least 1"):
        rotation(LISTING, "osfleet-hup.now.log", 0)


@pytest.mark.parametrize("outcome, failed", [("committed", False), ("rolled_back", False), ("failed", True), ("interrupted", True), ("refused", True),
                                             ("unchanged", False)])
def test_outcome_entry(outcome, failed):
    entry = outcome_entry(outcome, "why", "rootfs" if failed else None)
    assert entry["step"] == "outcome" and entry["outcome"] == outcome and entry["failed"] is failed and entry["msg"] == "why"
    assert ("failed_step" in entry) is failed


def test_outcome_entry_refuses_an_unknown_outcome():
    with pytest.raises(PlanError, match="outcome must be one of"):
        outcome_entry("done", "", None)


def test_copy_path_is_per_host_under_the_run_directory():
    assert copy_path("logs", "dev1", "/mnt/data/balenahup/osfleet-hup.r1.log", "/home/ops") == "/home/ops/logs/dev1/osfleet-hup.r1.log"
    assert copy_path("/var/log/hup/", "dev1", "/x/osfleet-hup.r1.log", "/home/ops") == "/var/log/hup/dev1/osfleet-hup.r1.log"


@pytest.mark.parametrize("host, log", [("../etc", "/x/osfleet-hup.r.log"), ("..", "/x/osfleet-hup.r.log"), ("d", "/x/passwd")])
def test_copy_path_refuses_names_that_leave_the_directory(host, log):
    with pytest.raises(PlanError):
        copy_path("logs", host, log, "/home/ops")
