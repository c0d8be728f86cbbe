# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet.hup.rehearse on lab devices (balenaOS profile) and the rollout's gate hup_require_rehearsal.

One lab for the three tests of issue 12. Four devices, all of them rehearsed (the drills of a
rehearsal run in parallel, spread over the bench devices: assign_drills), the last one then the
``field`` the rollouts are about. In order:

* a rehearsal of 2.88.4 -> 2.113.0 on the four devices with every drill passes every standard drill
  (``advanced_staged`` not run, saying why: the pair updates with balenahup) and writes one evidence
  record for the device type and pair (JSON, Markdown, HTML, the run logs). Each drill's outcome is
  read from the lab, not from the record: the OS version and root partition each boot of each
  device reached (its console), its user data after the drills, the second update run's
  ``changed=0`` (the child run's own output), where each device ended;
* ``field`` reflashed to 2.88.4, a rollout of it to 2.114.1 requiring evidence (a pair never
  rehearsed): its --check lists the pair without evidence, the real run refuses naming the pair,
  and ``field`` is untouched;
* a rollout of ``field`` to 2.113.0 requiring evidence at most 7d old starts, updates it and keeps
  the gate it passed in its directory (rehearsal.json);
* a rehearsal of 2.113.0 -> 2.115.2 (the lab's release whose rollback-health never rolls back:
  releases.json lab_fault norollback) on a bench device the drills left on 2.113.0 fails its
  health drill saying so, and a rollout of ``field`` to 2.115.2 requiring evidence refuses; ``field``
  is untouched.
"""

from __future__ import annotations

import json
import re
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
#: every standard drill (the issue's "passes every drill")
DRILLS = ["update", "health", "boot", "power_write", "power_bootfiles", "controller_killed", "link_cut"]
#: the advanced drill is not run for this pair (the standard update updates it), saying so
NOT_RUN = ["advanced_staged"]
#: the drills that leave the device on the first version (the next drill on it needs no reflash)
ENDS_ON_SOURCE = ("health", "boot", "advanced_staged")
DEVICE_TYPE = "genericx86-64-ext"
ON_SOURCE, ON_TARGET = (SOURCE, "resin-rootA"), (TARGET, "resin-rootB")
#: what each drill boots, as the device's console shows it (OS version, root partition of each
#: boot that reached OSFLEET-BOOT-OK): the target on the other root, or back to the first version
BOOTS = {
    "update": [ON_TARGET],  # the second run does not reboot
    "health": [ON_TARGET, ON_SOURCE],  # booted, its health check failed, rolled back
    "boot": [ON_SOURCE],  # the new root never booted: the bootloader fell back
    "power_write": [ON_SOURCE, ON_TARGET],  # powered on into the old OS, the rerun completes
    # balenaOS: hostapp-update's hooks (the write) copied the boot files and armed the switch already,
    # so the cut boots the new OS, not committed; the rerun commits it without a reboot
    "power_bootfiles": [ON_TARGET],
    "controller_killed": [ON_TARGET],
    "link_cut": [ON_TARGET],
    "advanced_staged": [],
}
_BOOT_OK = re.compile(r"^OSFLEET-BOOT-OK (\S+) (\S+)$", re.M)
#: the user's data the test puts on each device before the rehearsal (survives every drill but a reflash)
USER_DATA = "/mnt/data/osfleet-rehearsal-test.bin"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rehearsal")


def benches(lab: Lab) -> list[str]:
    return sorted(lab.hosts)


def field(lab: Lab) -> str:
    return sorted(lab.hosts)[-1]


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


def console(lab: Lab, host: str) -> str:
    return lab.labctl("console", host).stdout


def user_data(lab: Lab, host: str, write: bool = False) -> str:
    script = 'head -c 65536 /dev/urandom > "$1" && sync; ' if write else ""
    return lab.sh(host, script + 'sha256sum "$1" 2>/dev/null | cut -d" " -f1', USER_DATA).strip()


def recap_changed(log: Path, host: str) -> int:
    found = re.search(rf"^{re.escape(host)}\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", log.read_text(), re.M)
    assert found, (log, log.read_text()[-2000:])
    return int(found.group(1))


def committed_on(lab: Lab, host: str) -> str | None:
    state = lab.state(host)
    return state.version if state.committed else None


def test_a_rehearsal_passes_every_drill_in_parallel_and_writes_the_evidence(lab: Lab, work: Path) -> None:
    consoles = {h: len(console(lab, h)) for h in benches(lab)}
    data = {h: user_data(lab, h, write=True) for h in benches(lab)}
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
    # the drills ran at the same time, every device its share
    assert sorted({d["device"] for d in record["drills"]}) == benches(lab), record["drills"]
    assert sum(d["duration"] for d in record["drills"]) > 1.5 * out.duration, "the drills ran one after another"
    for drill in DRILLS:  # the run logs of every drill, pulled from its device
        assert any(name.startswith(f"osfleet-hup.pass-{drill}") for name in record["logs"]), (drill, sorted(record["logs"]))
    took = parse_iso(record["ended"]) - parse_iso(record["started"])
    assert max(d["duration"] for d in record["drills"]) <= took + 1 <= out.duration + 1, (record["started"], record["ended"])
    for suffix in (".md", ".html"):
        text = next((work / "evidence").glob(f"*_{TARGET}_*/pass{suffix}")).read_text()
        assert "health" in text and "passed" in text and benches(lab)[0] in text
    # what really happened on each device, read from the lab: the boots of its drills in the order
    # it ran them (a drill after one that ended on the target starts with a reflash: the first
    # version on rootA, the user's data gone), its data, where it ended
    reflashed = 0
    for host in benches(lab):
        # (a drill not run touched nothing: decided before it reached the device)
        mine = sorted((d for d in record["drills"] if d["device"] == host and d["outcome"] != "not_run"), key=lambda d: parse_iso(d["started"]))
        expected: list[tuple[str, str]] = []
        on_source, wiped = True, False
        for drill in mine:
            if not on_source:
                expected.append(ON_SOURCE)
                wiped, reflashed = True, reflashed + 1
            expected += BOOTS[drill["name"]]
            on_source = drill["name"] in ENDS_ON_SOURCE
        boots = _BOOT_OK.findall(console(lab, host)[consoles[host]:])
        assert boots == expected, (host, [d["name"] for d in mine], boots)
        state = lab.state(host)
        assert (state.version, state.active_root, state.committed) == (*expected[-1], True), (host, state)
        if not wiped:  # the power cuts, the kill, the faults: the user's data as before
            assert user_data(lab, host) == data[host], (host, [d["name"] for d in mine])
    assert reflashed == 1, "the drills were not spread so that one device only starts a drill with a reflash"
    assert not by_drill["power_write"]["details"].get("prepared", "").startswith("reflashed")
    # the update drill's second run changed nothing (the child run's own recap)
    update_host = by_drill["update"]["device"]
    [first_log] = (work / "pass" / "drills" / update_host / "update").glob("update-1-*.log")
    [second_log] = (work / "pass" / "drills" / update_host / "update").glob("update-2-*.log")
    assert recap_changed(first_log, update_host) > 0 and recap_changed(second_log, update_host) == 0
    assert by_drill["health"]["details"]["rolled_back"] == "health", by_drill["health"]
    assert by_drill["boot"]["details"]["rolled_back"] == "altboot", by_drill["boot"]
    for drill in ("power_write", "power_bootfiles", "controller_killed", "link_cut"):
        assert by_drill[drill]["details"]["hit"] is True, by_drill[drill]
    for line in out.stdout.splitlines():
        if " passed " in line or "not_run" in line or "ran one drill" in line:
            print(line.strip())


def test_a_rollout_of_a_pair_without_evidence_refuses_naming_it(lab: Lab, work: Path) -> None:
    lab.labctl("reflash", field(lab), "--os", SOURCE, timeout=300)  # the drills left it on the target
    before = lab.state(field(lab))
    assert (before.version, before.committed) == (SOURCE, True), before
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
    # a bench device the drills left on TARGET (committed): no reflash needed
    on_target = next(h for h in benches(lab) if h != field(lab) and committed_on(lab, h) == TARGET)
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
