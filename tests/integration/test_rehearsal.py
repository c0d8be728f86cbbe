# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet.hup.rehearse on lab devices (balenaOS profile) and the rollout's gate hup_require_rehearsal.

Two devices: ``bench`` is rehearsed, ``field`` is the fleet the rollouts are about. In order:

* a rehearsal of 2.88.4 -> 2.113.0 on ``bench`` passes its drills (CI: the cheap ones, update and
  health; ``OSFLEET_REHEARSAL_FULL=1``: every drill, power cuts, killed controller, cut link and
  unbootable root included) and writes its evidence (JSON, Markdown, HTML, the run logs);
* a rollout of ``field`` to 2.114.1 requiring evidence (a pair never rehearsed): its --check lists
  the pair without evidence, the real run refuses naming the pair, and ``field`` is untouched;
* a rollout of ``field`` to 2.113.0 requiring evidence at most 7d old starts and updates it;
* a rehearsal of 2.113.0 -> 2.115.2 (the lab's release whose rollback-health never rolls back:
  releases.json lab_fault norollback) fails its health drill saying so, and a rollout of ``field``
  to 2.115.2 requiring evidence refuses; ``field`` is untouched.
"""

from __future__ import annotations

import json
import os
import typing as t
from collections.abc import Callable
from pathlib import Path

import pytest

from osfleet_harness import Lab, PlaybookRun, ansible_playbook

LAB_PREFIX = "itrehearse"
LAB_DEVICES = 2
LAB_PROFILE = "balenaos"
SOURCE, TARGET, UNREHEARSED, NOROLLBACK = "2.88.4", "2.113.0", "2.114.1", "2.115.2"
FULL = os.environ.get("OSFLEET_REHEARSAL_FULL") == "1"
DRILLS = ["update", "health", "boot", "power_write", "power_bootfiles", "controller_killed", "link_cut"] if FULL else ["update", "health"]
DEVICE_TYPE = "genericx86-64-ext"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rehearsal")


def bench(lab: Lab) -> str:
    return lab.hosts[0]


def field(lab: Lab) -> str:
    return lab.hosts[1]


def rehearse(lab: Lab, work: Path, name: str, source: str, target: str, drills: list[str], **extra: t.Any) -> PlaybookRun:
    return ansible_playbook(lab, workdir=work / name, playbook="osfleet.hup.rehearse", timeout=3600,
                            extra_vars={"hup_from_version": source, "hup_target_version": target, "hup_rehearsal_hosts": bench(lab),
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


def test_a_rehearsal_passes_its_drills_and_writes_the_evidence(lab: Lab, work: Path) -> None:
    out = timed(f"rehearsal {SOURCE} -> {TARGET} ({', '.join(DRILLS)})", lambda: rehearse(lab, work, "pass", SOURCE, TARGET, DRILLS))
    assert out.rc == 0, out.summary()
    [record] = records(work, TARGET)
    assert record["status"] == "passed", record["reason"]
    assert record["pair"]["device_type"] == DEVICE_TYPE and record["pair"]["from_version"] == SOURCE
    assert record["pair"]["to_version"] == TARGET and record["pair"]["catalog_digest"].startswith("sha256:")
    assert record["device"] == bench(lab) and record["method"] == "balenahup" and record["collection_version"]
    assert record["image_digests"]["target"] == lab.release(TARGET)["digest"]
    assert [(d["name"], d["outcome"]) for d in record["drills"]] == [(d, "passed") for d in DRILLS], record["drills"]
    assert all(d["duration"] > 0 for d in record["drills"])
    health = next(d for d in record["drills"] if d["name"] == "health")
    assert health["details"]["rolled_back"] == "health", health
    assert any("osfleet-hup.pass-update-" in name for name in record["logs"]), sorted(record["logs"])
    for suffix in (".md", ".html"):
        text = next((work / "evidence").glob(f"*_{TARGET}_*/pass.{bench(lab)}{suffix}")).read_text()
        assert "health" in text and "passed" in text
    state = lab.state(bench(lab))  # where the last drill left it: the health drill rolls back
    assert state.version == (SOURCE if DRILLS[-1] == "health" else TARGET), state
    for line in out.stdout.splitlines():
        if " passed " in line or "not_run" in line:
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


def test_a_release_that_breaks_its_rollback_fails_the_health_drill_and_the_gate(lab: Lab, work: Path) -> None:
    out = timed(f"rehearsal {TARGET} -> {NOROLLBACK} (health)", lambda: rehearse(
        lab, work, "norollback", TARGET, NOROLLBACK, ["health"], hup_rehearsal_update_vars={"hup_health_device_timeout": 60}))
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
