# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet.hup.rehearse on lab devices (balenaOS profile) and the rollout's gate hup_require_rehearsal.

One lab for the three tests of issue 12 (CI time: the drills of a rehearsal run in parallel, one per
bench device). Four devices: ``bench`` (the first three) are rehearsed, ``field`` (the last) is the
fleet the rollouts are about. In order:

* a rehearsal of 2.88.4 -> 2.113.0 on the bench devices, the playbook giving each device one drill
  (CI: update, health and power_write; ``OSFLEET_REHEARSAL_FULL=1``: every drill, spread over the
  three), passes and writes one evidence record for the device type and pair (JSON, Markdown, HTML,
  the run logs);
* a rollout of ``field`` to 2.114.1 requiring evidence (a pair never rehearsed): its --check lists
  the pair without evidence, the real run refuses naming the pair, and ``field`` is untouched;
* a rollout of ``field`` to 2.113.0 requiring evidence at most 7d old starts, updates it and keeps
  the gate it passed in its directory (rehearsal.json);
* a rehearsal of 2.113.0 -> 2.115.2 (the lab's release whose rollback-health never rolls back:
  releases.json lab_fault norollback) on the bench device the update drill left on 2.113.0 fails its
  health drill saying so, and a rollout of ``field`` to 2.115.2 requiring evidence refuses; ``field``
  is untouched.
"""

from __future__ import annotations

import json
import os
import typing as t
from collections.abc import Callable
from pathlib import Path

import pytest

from osfleet_harness import Lab, PlaybookRun, ansible_playbook

from ansible_collections.osfleet.hup.plugins.plugin_utils.report import parse_iso

LAB_PREFIX = "itrehearse"
LAB_DEVICES = 4
LAB_PROFILE = "balenaos"
SOURCE, TARGET, UNREHEARSED, NOROLLBACK = "2.88.4", "2.113.0", "2.114.1", "2.115.2"
FULL = os.environ.get("OSFLEET_REHEARSAL_FULL") == "1"
DRILLS = ["update", "health", "boot", "power_write", "power_bootfiles", "controller_killed", "link_cut"] if FULL else ["update", "health", "power_write"]
#: the advanced drill is not run for this pair (the standard update updates it), saying so
NOT_RUN = ["advanced_staged"] if FULL else []
DEVICE_TYPE = "genericx86-64-ext"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rehearsal")


def benches(lab: Lab) -> list[str]:
    return sorted(lab.hosts[:3])


def field(lab: Lab) -> str:
    return lab.hosts[3]


def rehearse(lab: Lab, work: Path, name: str, source: str, target: str, drills: list[str], hosts: list[str], **extra: t.Any) -> PlaybookRun:
    return ansible_playbook(lab, workdir=work / name, playbook="osfleet.hup.rehearse", timeout=3600,
                            extra_vars={"hup_from_version": source, "hup_target_version": target, "hup_rehearsal_hosts": ",".join(hosts),
                                        "hup_rehearsal_drills": drills, "hup_rehearsal_dir": str(work / "evidence"),
                                        "hup_rehearsal_work_dir": str(work / name / "drills"), "hup_rehearsal_id": name, **extra})


def rollout(lab: Lab, work: Path, name: str, target: str, *args: str, require: t.Any = True) -> PlaybookRun:
    return ansible_playbook(lab, *args, workdir=work / name, playbook="osfleet.hup.rollout",
                            extra_vars={"hup_target_version": target, "hup_rollout_id": name, "hup_rollout_dir": str(work / "rollouts" / name),
                                        "hup_hosts": field(lab), "hup_waves": [{"name": "all", "percent": 100}],
                                        "hup_require_rehearsal": require, "hup_rehearsal_dir": str(work / "evidence")})


def records(work: Path, target: str) -> list[dict[str, t.Any]]:
    return [json.loads(p.read_text()) for p in sorted((work / "evidence").glob(f"*_{target}_*/*.json"))]


def timed(what: str, run: Callable[[], PlaybookRun]) -> PlaybookRun:
    out = run()
    print(f"{what}: rc {out.rc} in {out.duration:.0f} s")
    return out


def test_a_rehearsal_passes_its_drills_in_parallel_and_writes_the_evidence(lab: Lab, work: Path) -> None:
    out = timed(f"rehearsal {SOURCE} -> {TARGET} ({', '.join(DRILLS + NOT_RUN)} on {len(benches(lab))} devices)",
                lambda: rehearse(lab, work, "pass", SOURCE, TARGET, DRILLS + NOT_RUN, benches(lab)))
    assert out.rc == 0, out.summary()
    [record] = records(work, TARGET)  # one record for the device type and pair, from every bench device
    assert record["status"] == "passed", record["reason"]
    assert record["pair"]["device_type"] == DEVICE_TYPE and record["pair"]["from_version"] == SOURCE
    assert record["pair"]["to_version"] == TARGET and record["pair"]["catalog_digest"].startswith("sha256:")
    assert record["devices"] == benches(lab) and record["method"] == "balenahup" and record["collection_version"]
    assert record["image_digests"]["target"] == lab.release(TARGET)["digest"]
    assert [(d["name"], d["outcome"]) for d in record["drills"]] == [(d, "passed") for d in DRILLS] + [(d, "not_run") for d in NOT_RUN], \
        record["drills"]
    assert all(d["duration"] > 0 for d in record["drills"] if d["outcome"] == "passed")
    assert all("not the advanced update" in d["reason"] for d in record["drills"] if d["outcome"] == "not_run")
    by_drill = {d["name"]: d for d in record["drills"]}
    if not FULL:  # one drill per device: they ran at the same time
        assert [by_drill[d]["device"] for d in DRILLS] == benches(lab), record["drills"]
        assert sum(d["duration"] for d in record["drills"]) > out.duration, "the drills ran one after another"
    assert by_drill["health"]["details"]["rolled_back"] == "health", by_drill["health"]
    assert by_drill["power_write"]["details"]["hit"] is True, by_drill["power_write"]
    for drill in DRILLS:  # the run logs of every drill, pulled from its device
        assert any(name.startswith(f"osfleet-hup.pass-{drill}") for name in record["logs"]), (drill, sorted(record["logs"]))
    took = parse_iso(record["ended"]) - parse_iso(record["started"])
    assert max(d["duration"] for d in record["drills"]) <= took + 1 <= out.duration + 1, (record["started"], record["ended"])
    for suffix in (".md", ".html"):
        text = next((work / "evidence").glob(f"*_{TARGET}_*/pass{suffix}")).read_text()
        assert "health" in text and "passed" in text and benches(lab)[0] in text
    # where each drill left its device: the health drill rolls back, the others end on the target
    for drill in DRILLS if not FULL else []:
        state = lab.state(by_drill[drill]["device"])
        assert state.version == (SOURCE if drill == "health" else TARGET), (drill, state)
    for line in out.stdout.splitlines():
        if " passed " in line or "not_run" in line or "ran one drill" in line:
            print(line.strip())


def test_a_rollout_of_a_pair_without_evidence_refuses_naming_it(lab: Lab, work: Path) -> None:
    before = lab.state(field(lab))
    plan = timed("rollout --check (no evidence)", lambda: rollout(lab, work, "unrehearsed-plan", UNREHEARSED, "--check"))
    assert plan.rc == 0, plan.summary()
    assert f"{DEVICE_TYPE} {SOURCE} -> {UNREHEARSED}" in plan.stdout and "missing: no rehearsal record" in plan.stdout, plan.stdout[-3000:]
    out = timed("rollout requiring evidence (none)", lambda: rollout(lab, work, "unrehearsed", UNREHEARSED))
    assert out.rc != 0
    assert "refused to start" in out.stdout and f"{DEVICE_TYPE} {SOURCE} -> {UNREHEARSED}" in out.stdout, out.stdout[-3000:]
    assert f"devices {field(lab)}" in out.stdout
    after = lab.state(field(lab))
    assert (after.version, after.boot_id) == (SOURCE, before.boot_id), after
    assert not (work / "rollouts" / "unrehearsed" / "plan.json").exists(), "the refused rollout froze a plan"


def test_a_rollout_requiring_the_rehearsed_pair_starts(lab: Lab, work: Path) -> None:
    out = timed("rollout requiring evidence (rehearsed)", lambda: rollout(lab, work, "rehearsed", TARGET, require="7d"))
    assert out.rc == 0, out.summary()
    assert "rehearsal evidence:" in out.stdout and ": passed: rehearsed by pass on" in out.stdout, out.stdout[-3000:]
    assert lab.state(field(lab)).version == TARGET
    kept = json.loads((work / "rollouts" / "rehearsed" / "rehearsal.json").read_text())
    assert kept["ok"] and [p["status"] for p in kept["pairs"]] == ["passed"] and kept["pairs"][0]["record"]["run_id"] == "pass", kept


def test_a_release_that_breaks_its_rollback_fails_the_health_drill_and_the_gate(lab: Lab, work: Path) -> None:
    # the device the update drill left on TARGET (committed): no reflash needed
    on_target = benches(lab)[0] if not FULL else next(h for h in benches(lab) if lab.state(h).version == TARGET)
    out = timed(f"rehearsal {TARGET} -> {NOROLLBACK} (health)", lambda: rehearse(
        lab, work, "norollback", TARGET, NOROLLBACK, ["health"], [on_target], hup_rehearsal_update_vars={"hup_health_device_timeout": 30}))
    assert out.rc != 0
    [record] = records(work, NOROLLBACK)
    assert record["status"] == "failed"
    [health] = record["drills"]
    assert health["outcome"] == "failed" and "not rolled back (the new OS's rollback never triggered)" in health["reason"], health
    assert "drill(s) failed: health" in out.stdout
    before = lab.state(field(lab))
    gate = timed("rollout requiring evidence (failed)", lambda: rollout(lab, work, "norollback", NOROLLBACK))
    assert gate.rc != 0 and "refused to start" in gate.stdout and f"{TARGET} -> {NOROLLBACK}" in gate.stdout, gate.stdout[-3000:]
    assert "failed: the newest rehearsal (norollback" in gate.stdout
    after = lab.state(field(lab))
    assert (after.version, after.boot_id) == (TARGET, before.boot_id), after
