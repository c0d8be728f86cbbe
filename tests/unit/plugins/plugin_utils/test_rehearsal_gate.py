# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rehearsal_gate: the requirement (hup_require_rehearsal) and the rollout's gate on the evidence."""

from __future__ import annotations

import typing as t

import pytest
from rehearsal_records import DIGEST, NOW, PAIR, record

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_gate as rg


@pytest.mark.parametrize(("raw", "want"), [
    (False, rg.Requirement()), ("false", rg.Requirement()), (True, rg.Requirement(True)), ("yes", rg.Requirement(True)),
    ("7d", rg.Requirement(True, 7 * 86400)), ("1d12h", rg.Requirement(True, 129600)),
    ({"max_age": "2h", "drills": ["health"]}, rg.Requirement(True, 7200, ("health",))),
])
def test_requirement(raw: t.Any, want: rg.Requirement) -> None:
    assert rg.parse_requirement(raw) == want


@pytest.mark.parametrize("raw", ["soon", 0, "0d", {"age": "1d"}, {"drills": ["fly"]}])
def test_a_bad_requirement_is_refused(raw: t.Any) -> None:
    with pytest.raises(rh.RehearsalError, match="hup_require_rehearsal"):
        rg.parse_requirement(raw)


DEVICES = {"dev1": {"device_type": PAIR.device_type, "version": "2.88.4"}, "dev2": {"device_type": PAIR.device_type, "version": "2.88.4"},
           "dev3": {"device_type": PAIR.device_type, "version": "2.113.0"}, "dev4": {"error": "unreachable: timeout"}}
DIGESTS = {h: DIGEST for h in DEVICES}


def test_the_gate_needs_one_pair_for_the_devices_not_on_the_target() -> None:
    pairs, unknown = rg.needed_pairs(DEVICES, "2.113.0", DIGESTS)
    assert pairs == {PAIR: ["dev1", "dev2"]} and unknown == {"dev4": "unreachable: timeout"}


def test_the_gate_refuses_naming_the_missing_pair() -> None:
    gate = rg.decide_gate(rg.Requirement(True), DEVICES, "2.113.0", DIGESTS, [], NOW)
    assert not gate.ok and [p.status for p in gate.pairs] == ["missing"]
    assert "genericx86-64-ext 2.88.4 -> 2.113.0 (catalog abababababab)" in gate.reason and "devices dev1, dev2" in gate.reason


def test_the_gate_passes_with_a_passing_record_and_lists_it_when_not_required() -> None:
    gate = rg.decide_gate(rg.Requirement(True, 86400), DEVICES, "2.113.0", DIGESTS, [record()], NOW)
    assert gate.ok and gate.pairs[0].status == "passed"
    info = rg.decide_gate(rg.Requirement(), DEVICES, "2.113.0", DIGESTS, [], NOW)
    assert info.ok and not info.required and info.pairs[0].status == "missing"
    assert any("dev4: pair not known (unreachable: timeout)" in line for line in info.lines())


@pytest.mark.parametrize(("records", "req", "status"), [
    ([record(ended=NOW - 3 * 86400)], rg.Requirement(True, 86400), "stale"),
    ([record(), record(devices=("bench2",), outcomes={"update": "passed", "health": "failed"})], rg.Requirement(True), "failed"),
    ([record(run_id="old", ended=NOW - 7200), record(run_id="new", outcomes={"update": "failed"})], rg.Requirement(True), "failed"),
    ([record(run_id="old", ended=NOW - 7200, outcomes={"update": "failed"}), record(run_id="new")], rg.Requirement(True), "passed"),
    ([record(outcomes={"update": "passed", "health": "not_run"})], rg.Requirement(True, None, ("health",)), "incomplete"),
    ([record(rh.Pair(PAIR.device_type, "2.88.4", "2.113.0", "sha256:" + "00" * 32))], rg.Requirement(True), "missing"),
    ([record(rh.Pair(PAIR.device_type, "2.88.3", "2.113.0", DIGEST))], rg.Requirement(True), "missing"),
])
def test_the_newest_rehearsal_of_the_pair_decides(records: list[dict[str, t.Any]], req: rg.Requirement, status: str) -> None:
    gate = rg.decide_gate(req, DEVICES, "2.113.0", DIGESTS, records, NOW)
    assert gate.pairs[0].status == status and gate.ok == (status == "passed")


def test_a_started_rollout_takes_evidence_that_aged_but_not_a_failed_one() -> None:
    old = [record(ended=NOW - 3 * 86400)]
    assert rg.decide_gate(rg.Requirement(True, 86400), DEVICES, "2.113.0", DIGESTS, old, NOW, started=True).ok
    assert not rg.decide_gate(rg.Requirement(True, 86400), DEVICES, "2.113.0", DIGESTS, old, NOW).ok
    failed = [record(outcomes={"update": "failed"})]
    assert not rg.decide_gate(rg.Requirement(True), DEVICES, "2.113.0", DIGESTS, failed, NOW, started=True).ok
