# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filter hup_rehearsal_drills (the decision: plugin_utils.rehearsal.assign_drills)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.osfleet.hup.plugins.filter.rehearsal import FilterModule, hup_rehearsal_drills


def test_the_filter_is_named() -> None:
    assert list(FilterModule().filters()) == ["hup_rehearsal_drills"]


def test_one_drill_per_bench_device() -> None:
    benches = {f"b{i}": {"device_type": "genericx86-64-ext", "commands": {}} for i in (1, 2)}
    assert hup_rehearsal_drills(benches, "cheap")["hosts"] == {"b1": ["update"], "b2": ["health"]}


@pytest.mark.parametrize(("benches", "drills", "message"), [
    ({}, "all", "the input must map each bench device"),
    ({"b1": {"device_type": "x"}}, ["fly"], "unknown drill"),
])
def test_bad_input_is_named(benches: dict, drills: object, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        hup_rehearsal_drills(benches, drills)
