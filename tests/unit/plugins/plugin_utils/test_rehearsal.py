# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rehearsal (drills, evidence, the rollout's gate) and plugin_utils.rehearsal_store
(the evidence directory, the catalog digest, the gate of the rollout's start)."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_store as store
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout import RolloutError

NOW = 1_800_000_000.0
DIGEST = "sha256:" + "ab" * 32
PAIR = rh.Pair("genericx86-64-ext", "2.88.4", "2.113.0", DIGEST)
LAB_COMMANDS = {c: f"labctl {c} dev1" for c in rh.COMMANDS}


def record(pair: rh.Pair = PAIR, *, devices: tuple[str, ...] = ("bench1",), run_id: str = "r1", ended: float = NOW - 3600,
           outcomes: dict[str, str] | None = None) -> dict[str, t.Any]:
    outcomes = outcomes if outcomes is not None else {"update": "passed", "health": "passed"}
    drills = [rh.DrillResult(n, o, "" if o == "passed" else "why").as_dict() for n, o in outcomes.items()]
    return rh.evidence_record(pair=pair, devices=devices, method="standard", image_digests={"target": DIGEST}, collection_version="0.1.0",
                              drills=drills, run_id=run_id, started=ended - 600, ended=ended, operator="op")


# -- drills
def test_the_drills_are_spread_over_the_bench_devices_of_each_type() -> None:
    x86 = {"device_type": "genericx86-64-ext", "commands": LAB_COMMANDS}
    plan = rh.assign_drills({"b2": x86, "b1": x86, "b3": x86, "pi": {"device_type": "raspberrypi4-64", "commands": LAB_COMMANDS}},
                            ["update", "health", "power_write", "link_cut"])
    # the drills that end on the target one per device (none starts with a reflash), health first on b1 (it ends on the first version)
    assert plan["hosts"] == {"b1": ["health", "update"], "b2": ["power_write"], "b3": ["link_cut"],
                             "pi": ["health", "update", "power_write", "link_cut"]}
    assert plan["types"] == {"genericx86-64-ext": ["b1", "b2", "b3"], "raspberrypi4-64": ["pi"]}
    assert plan["drills"] == ["update", "health", "power_write", "link_cut"]


def test_a_drill_goes_to_a_device_that_has_its_commands_else_it_is_reported_not_run_there() -> None:
    plain = {"device_type": "t", "commands": {}}
    plug = {"device_type": "t", "commands": {"power_cut": "plug off", "power_on": "plug on"}}
    plan = rh.assign_drills({"a": plain, "b": plug}, ["update", "health", "power_write", "power_bootfiles"])
    assert plan["hosts"] == {"a": ["health", "update"], "b": ["power_write", "power_bootfiles"]}
    # no device has the commands: the drill still goes somewhere (and is not run there, saying why)
    assert rh.assign_drills({"a": plain}, ["update", "power_write"])["hosts"] == {"a": ["update", "power_write"]}
    with pytest.raises(rh.RehearsalError, match="bench device a: its device type is not known"):
        rh.assign_drills({"a": {"commands": {}}}, "all")


def test_every_drill_on_four_devices_needs_one_reflash() -> None:
    """The five drills that end on the target over four devices: one device runs two of them (its
    second starts with a reflash); the three that end on the first version go first on the others."""
    x86 = {"device_type": "genericx86-64-ext", "commands": LAB_COMMANDS}
    plan = rh.assign_drills({f"b{i}": x86 for i in (1, 2, 3, 4)}, "all")
    assert plan["hosts"] == {"b1": ["update", "link_cut"], "b2": ["health", "power_write"], "b3": ["boot", "power_bootfiles"],
                             "b4": ["advanced_staged", "controller_killed"]}
    reflashes = sum(max(0, len([d for d in mine if d not in rh.ENDS_ON_FIRST]) - 1) for mine in plan["hosts"].values())
    assert reflashes == 1
    for mine in plan["hosts"].values():  # nothing that ends on the first version after one that ends on the target
        ends = [d in rh.ENDS_ON_FIRST for d in mine]
        assert ends == sorted(ends, reverse=True), mine


def test_drills_run_in_their_order_and_unknown_ones_are_named() -> None:
    assert rh.parse_drills(["link_cut", "update"]) == ["update", "link_cut"]
    assert rh.parse_drills("all") == list(rh.DRILLS) and rh.parse_drills("cheap") == ["update", "health"]
    with pytest.raises(rh.RehearsalError, match="unknown drill.*power"):
        rh.parse_drills(["update", "power"])


def test_a_drill_without_its_command_is_not_run_never_passed() -> None:
    assert rh.missing_commands("power_write", {"power_cut": "plug off"}) == (
        "needs the device's power_on command (hup_rehearsal_commands), which it has not")
    assert rh.missing_commands("update", {}) is None and rh.missing_commands("link_cut", LAB_COMMANDS) is None
    with pytest.raises(rh.RehearsalError, match="needs its reason"):
        rh.DrillResult("power_write", "not_run")


@pytest.mark.parametrize(("name", "obs", "reason"), [
    ("update", rh.Observed("2.113.0", True, rcs=(0, 0), changed=(9, 0)), ""),
    ("update", rh.Observed("2.113.0", True, rcs=(0, 0), changed=(9, 2)), "the second run changed 2 task(s), not 0"),
    ("update", rh.Observed("2.88.4", True, rcs=(0, 0), changed=(9, 0)), "the device runs 2.88.4, not 2.113.0 committed"),
    ("health", rh.Observed("2.88.4", True, rcs=(2,)), ""),
    ("health", rh.Observed("2.113.0", False, rcs=(2,)),
     "after the health failure the device runs 2.113.0, not 2.88.4: it was not rolled back (the new OS's rollback never triggered)"),
    ("boot", rh.Observed("2.113.0", True, rcs=(0,)), "the update succeeded despite the unbootable new root: the fault did not take"),
    ("power_write", rh.Observed("2.113.0", True, data_intact=True, rcs=(-1, 0), interrupted=True), ""),
    ("power_write", rh.Observed("2.113.0", True, data_intact=False, rcs=(-1, 0), interrupted=True), "the data on /mnt/data changed"),
    ("controller_killed", rh.Observed("2.113.0", True, rcs=(-9, 0), interrupted=False), "the interruption never hit (the update ended before it)"),
    ("link_cut", rh.Observed("2.88.4", True, rcs=(2, 2), interrupted=True), "the run after the interruption failed (exit 2)"),
    ("link_cut", rh.Observed(reachable=False), "the device did not answer after the drill"),
    ("advanced_staged", rh.Observed("2.113.0", True, data_intact=True, rcs=(-9, 0), interrupted=True, between="2.88.4"), ""),
    ("advanced_staged", rh.Observed("2.113.0", True, data_intact=True, rcs=(-9, 0), interrupted=True, between="2.113.0"),
     "after the interruption before the disk write the device ran 2.113.0, not 2.88.4: the old OS was not left intact"),
    ("advanced_staged", rh.Observed("2.113.0", True, data_intact=False, rcs=(-9, 0), interrupted=True, between="2.88.4"),
     "the data on /mnt/data changed"),
    # a takeover rewrites the whole disk: /mnt/data is not kept (hup_allow_data_loss), the plain update still passes
    ("update", rh.Observed("2.113.0", True, data_intact=False, rcs=(0, 0), changed=(9, 0), method="takeover"), ""),
    ("update", rh.Observed("2.113.0", True, data_intact=False, rcs=(0, 0), changed=(9, 0), method="balenahup"),
     "the data on /mnt/data changed"),
])
def test_judge_drill(name: str, obs: rh.Observed, reason: str) -> None:
    got = rh.judge_drill(name, "2.88.4", "2.113.0", obs)
    assert (got.outcome, got.reason) == ("failed" if reason else "passed", reason)


@pytest.mark.parametrize("name", ["health", "boot", "power_write", "power_bootfiles", "controller_killed", "link_cut"])
def test_a_drill_of_the_standard_update_is_not_run_for_a_takeover_pair(name: str) -> None:
    got = rh.judge_drill(name, "5.1.0", "6.1.0", rh.Observed("6.1.0", True, data_intact=False, rcs=(0,), interrupted=False, method="takeover"))
    assert got.outcome == "not_run" and "the advanced update's drill is advanced_staged" in got.reason, got


def test_the_record_passes_only_with_the_update_passed_and_nothing_failed() -> None:
    assert record()["status"] == "passed"
    skipped = record(outcomes={"update": "passed", "power_write": "not_run"})
    assert skipped["status"] == "passed" and skipped["reason"] == "1 drill(s) passed; not run: power_write"
    assert record(outcomes={"update": "passed", "health": "failed"})["reason"] == "drill(s) failed: health"
    assert record(outcomes={"health": "passed"})["status"] == "failed"


def test_pair_file_id_and_the_catalog_digest_ignore_the_tools_keys() -> None:
    assert PAIR.file_id() == "genericx86-64-ext_2.88.4_2.113.0_abababababab"
    entry = {"device_type": "t", "version": "1.0.0", "digest": DIGEST}
    assert rh.catalog_digest(entry, {"primary": "r"}) == rh.catalog_digest({**entry, "x-osfleet-lab": {"a": 1}}, {"primary": "r"})
    assert rh.catalog_digest(entry, {"primary": "r"}) != rh.catalog_digest({**entry, "digest": "sha256:" + "cd" * 32}, {"primary": "r"})


def test_markdown_and_html_carry_every_drill_escaped() -> None:
    rec = record(outcomes={"update": "passed", "link_cut": "not_run"})
    rec["drills"][1]["reason"] = "no <link> | command"
    md, page = rh.to_markdown(rec), rh.to_html(rec)
    assert "| link_cut | - | not_run |" in md and "no &lt;link&gt; \\| command" in md
    assert 'data-drill="link_cut" data-outcome="not_run"' in page and "&lt;link&gt;" in page and "<link>" not in page


# -- the gate
@pytest.mark.parametrize(("raw", "want"), [
    (False, rh.Requirement()), ("false", rh.Requirement()), (True, rh.Requirement(True)), ("yes", rh.Requirement(True)),
    ("7d", rh.Requirement(True, 7 * 86400)), ("1d12h", rh.Requirement(True, 129600)),
    ({"max_age": "2h", "drills": ["health"]}, rh.Requirement(True, 7200, ("health",))),
])
def test_requirement(raw: t.Any, want: rh.Requirement) -> None:
    assert rh.parse_requirement(raw) == want


@pytest.mark.parametrize("raw", ["soon", 0, "0d", {"age": "1d"}, {"drills": ["fly"]}])
def test_a_bad_requirement_is_refused(raw: t.Any) -> None:
    with pytest.raises(rh.RehearsalError, match="hup_require_rehearsal"):
        rh.parse_requirement(raw)


DEVICES = {"dev1": {"device_type": PAIR.device_type, "version": "2.88.4"}, "dev2": {"device_type": PAIR.device_type, "version": "2.88.4"},
           "dev3": {"device_type": PAIR.device_type, "version": "2.113.0"}, "dev4": {"error": "unreachable: timeout"}}
DIGESTS = {h: DIGEST for h in DEVICES}


def test_the_gate_needs_one_pair_for_the_devices_not_on_the_target() -> None:
    pairs, unknown = rh.needed_pairs(DEVICES, "2.113.0", DIGESTS)
    assert pairs == {PAIR: ["dev1", "dev2"]} and unknown == {"dev4": "unreachable: timeout"}


def test_the_gate_refuses_naming_the_missing_pair() -> None:
    gate = rh.decide_gate(rh.Requirement(True), DEVICES, "2.113.0", DIGESTS, [], NOW)
    assert not gate.ok and [p.status for p in gate.pairs] == ["missing"]
    assert "genericx86-64-ext 2.88.4 -> 2.113.0 (catalog abababababab)" in gate.reason and "devices dev1, dev2" in gate.reason


def test_the_gate_passes_with_a_passing_record_and_lists_it_when_not_required() -> None:
    gate = rh.decide_gate(rh.Requirement(True, 86400), DEVICES, "2.113.0", DIGESTS, [record()], NOW)
    assert gate.ok and gate.pairs[0].status == "passed"
    info = rh.decide_gate(rh.Requirement(), DEVICES, "2.113.0", DIGESTS, [], NOW)
    assert info.ok and not info.required and info.pairs[0].status == "missing"
    assert any("dev4: pair not known (unreachable: timeout)" in line for line in info.lines())


@pytest.mark.parametrize(("records", "req", "status"), [
    ([record(ended=NOW - 3 * 86400)], rh.Requirement(True, 86400), "stale"),
    ([record(), record(devices=("bench2",), outcomes={"update": "passed", "health": "failed"})], rh.Requirement(True), "failed"),
    ([record(run_id="old", ended=NOW - 7200), record(run_id="new", outcomes={"update": "failed"})], rh.Requirement(True), "failed"),
    ([record(run_id="old", ended=NOW - 7200, outcomes={"update": "failed"}), record(run_id="new")], rh.Requirement(True), "passed"),
    ([record(outcomes={"update": "passed", "health": "not_run"})], rh.Requirement(True, None, ("health",)), "incomplete"),
    ([record(rh.Pair(PAIR.device_type, "2.88.4", "2.113.0", "sha256:" + "00" * 32))], rh.Requirement(True), "missing"),
    ([record(rh.Pair(PAIR.device_type, "2.88.3", "2.113.0", DIGEST))], rh.Requirement(True), "missing"),
])
def test_the_newest_rehearsal_of_the_pair_decides(records: list[dict[str, t.Any]], req: rh.Requirement, status: str) -> None:
    gate = rh.decide_gate(req, DEVICES, "2.113.0", DIGESTS, records, NOW)
    assert gate.pairs[0].status == status and gate.ok == (status == "passed")


# -- the store
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"schema": 1, "registries": {"primary": "127.0.0.1:5000"}, "releases": [
        {"device_type": PAIR.device_type, "version": "2.113.0", "repository": "osfleet/x", "digest": DIGEST}]}))
    return path


def test_the_store_keeps_json_markdown_html_and_reads_them_back(tmp_path: Path) -> None:
    paths = store.save(str(tmp_path / "ev"), record())
    assert sorted(Path(p).suffix for p in paths.values()) == [".html", ".json", ".md"]
    assert store.records(str(tmp_path / "ev")) == [record()]
    (Path(paths["json"]).parent / "broken.json").write_text("{")
    with pytest.raises(rh.RehearsalError, match="cannot read the rehearsal record .*broken.json"):
        store.records(str(tmp_path / "ev"))


def test_the_rollout_start_refuses_without_evidence_and_lists_in_check_mode(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    digest = store.target_digests(str(cat), [PAIR.device_type], "2.113.0")[PAIR.device_type]
    assert digest and digest.startswith("sha256:")
    pair = rh.Pair(PAIR.device_type, "2.88.4", "2.113.0", digest)
    plan = {"id": "r1", "target_version": "2.113.0", "fleet": ["dev1", "dev2", "dev9"]}
    spec = {"require": "7d", "dir": str(tmp_path / "ev"),
            "devices": {"dev1": {"device_type": PAIR.device_type, "version": "2.88.4", "catalog": str(cat)},
                        "dev2": {"device_type": PAIR.device_type, "version": "2.88.4", "catalog": str(cat)}}}
    with pytest.raises(RolloutError, match=r"rollout r1 refused to start: .*genericx86-64-ext 2\.88\.4 -> 2\.113\.0.*missing.*devices dev1, dev2"):
        store.gate_rollout(spec, plan, {}, False, NOW)
    data, lines = store.gate_rollout(spec, plan, {}, True, NOW)
    assert data and not data["ok"] and lines[-1].endswith("(a real run refuses to start)")
    # a revert goes back to the release each device ran before: no evidence for the target asked
    assert store.gate_rollout(spec, plan, {}, False, NOW, "revert") == (None, [])
    assert any("dev9: pair not known (not read at the start" in line for line in lines)
    store.save(str(tmp_path / "ev"), record(pair, ended=iso_time(NOW - 60)))
    data, lines = store.gate_rollout(spec, plan, {"dev2": {"status": "committed"}}, False, NOW)
    assert data and data["ok"] and data["pairs"][0]["hosts"] == ["dev1"]
    assert store.gate_rollout({"require": False}, plan, {}, False, NOW) == (None, [])


def iso_time(epoch: float) -> float:
    assert iso(epoch)
    return epoch


def test_a_health_drill_whose_run_failed_otherwise_fails() -> None:
    got = rh.judge_drill("health", "2.88.4", "2.113.0", rh.Observed("2.88.4", True, rcs=(250,), rolled_back=""))
    assert got.outcome == "failed" and "without reporting a rollback" in got.reason
    assert rh.judge_drill("health", "2.88.4", "2.113.0", rh.Observed("2.88.4", True, rcs=(2,), rolled_back="health")).outcome == "passed"


def test_a_started_rollout_takes_evidence_that_aged_but_not_a_failed_one() -> None:
    old = [record(ended=NOW - 3 * 86400)]
    assert rh.decide_gate(rh.Requirement(True, 86400), DEVICES, "2.113.0", DIGESTS, old, NOW, started=True).ok
    assert not rh.decide_gate(rh.Requirement(True, 86400), DEVICES, "2.113.0", DIGESTS, old, NOW).ok
    failed = [record(outcomes={"update": "failed"})]
    assert not rh.decide_gate(rh.Requirement(True), DEVICES, "2.113.0", DIGESTS, failed, NOW, started=True).ok


def test_an_abort_is_never_gated(tmp_path: Path) -> None:
    plan = {"id": "r1", "target_version": "2.113.0", "fleet": ["dev1"]}
    assert store.gate_rollout({"require": True, "devices": {"dev1": {"error": "x"}}}, plan, {}, False, NOW, "abort") == (None, [])
