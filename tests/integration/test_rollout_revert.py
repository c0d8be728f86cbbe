# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The undo of a rollout (issue 11, ``hup_rollout_action=revert``) on a lab of three balenaOS
devices on 2.88.4, in two waves (``canary``: the first device, then ``rest``). One rollout to
2.113.0, each test going on from the one before:

1. The rollout commits every device to 2.113.0 (on resin-rootB).
2. The other root partition of the last device is rewritten meanwhile (its release stamp names
   another release). The revert's plan (``--check``) changes nothing and says per device what the
   revert would do: switch back, or refuse with the reason.
3. The revert: the first two devices boot 2.88.4 again from resin-rootA, committed (no rollback
   marker, not armed); the rewritten device is refused with the reason in its record, the report
   and the playbook's output, and stays on 2.113.0, untouched (same boot, same env).
4. The revert run again changes nothing on any device (same boot ids).
"""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

import pytest

from osfleet_harness import Lab, PlaybookRun, ansible_playbook

LAB_PREFIX = "itrev"
SOURCE, TARGET = "2.88.4", "2.113.0"
ROLLOUT = "v1"
STAMP = "/mnt/sysroot/inactive/.osfleet-release.json"


@pytest.fixture(scope="module")
def lab(make_lab: t.Callable[..., Lab]) -> Lab:
    return make_lab(LAB_PREFIX + os.environ.get("OSFLEET_LAB_SUFFIX", ""), 3, SOURCE, "balenaos")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("revert")


@pytest.fixture(scope="module")
def seen() -> dict[str, t.Any]:
    """What the tests of the module hand on (the devices' state after the revert)."""
    return {}


def rewritten(lab: Lab) -> str:
    return lab.hosts[2]


def reverted(lab: Lab) -> list[str]:
    return lab.hosts[:2]


OTHER_IMAGE = "sha256:" + "e" * 64


def rewrite(lab: Lab, host: str) -> None:
    """The device's other root partition rewritten meanwhile (as by another tool or a half update):
    its hostapp now runs image OTHER_IMAGE (its ``current`` container's config) and its release
    stamp names another release."""
    lab.sh(host, """set -e
r=/mnt/sysroot/inactive
c=$(readlink "$r/current"); c=${c##*/}
f="$r/balena/containers/$c/config.v2.json"
jq --arg i "$1" '.Image = $i' "$f" > "$f.new" && mv "$f.new" "$f"
jq '.version = "2.99.0" | .digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"' \
  "$r/.osfleet-release.json" > "$r/.osfleet-release.json.new" && mv "$r/.osfleet-release.json.new" "$r/.osfleet-release.json"
sync""", OTHER_IMAGE)
    assert json.loads(lab.read(host, STAMP))["version"] == "2.99.0"


def state(work: Path) -> Path:
    return work / "state"


def record(work: Path, host: str) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads((state(work) / "devices" / f"{host}.json").read_text()))


def rollout(lab: Lab, work: Path, name: str, *args: str, **extra: t.Any) -> PlaybookRun:
    return ansible_playbook(
        lab, *args, workdir=work / name, playbook="osfleet.hup.rollout", callbacks=["osfleet.hup.report"],
        extra_vars={"hup_target_version": TARGET, "hup_rollout_id": ROLLOUT, "hup_rollout_dir": str(state(work)),
                    "hup_waves": [{"name": "canary", "hosts": lab.hosts[0], "max_failures": 0},
                                  {"name": "rest", "percent": 100, "max_failures": 0}], **extra})


def test_the_rollout_commits_every_device(lab: Lab, work: Path) -> None:
    result = rollout(lab, work, "rollout")
    assert result.rc == 0, result.summary()
    for host in lab.hosts:
        now = lab.state(host)
        assert (now.version, now.active_root, now.committed) == (TARGET, "resin-rootB", True), now
        assert record(work, host)["status"] == "committed"


def test_the_plan_of_the_revert_changes_nothing_and_names_the_refusal(lab: Lab, work: Path) -> None:
    host = rewritten(lab)
    stamp = json.loads(lab.read(host, STAMP))
    assert stamp["version"] == SOURCE, stamp
    rewrite(lab, host)
    before = {h: lab.state(h) for h in lab.hosts}
    files = sorted(p.relative_to(state(work)).as_posix() for p in state(work).rglob("*") if p.is_file() and "report" not in p.parts)
    records = {h: record(work, h) for h in lab.hosts}
    result = rollout(lab, work, "plan", "--check", hup_rollout_action="revert")
    assert result.rc == 0, result.summary()
    assert {h: lab.state(h) for h in lab.hosts} == before
    assert sorted(p.relative_to(state(work)).as_posix() for p in state(work).rglob("*") if p.is_file() and "report" not in p.parts) == files
    assert {h: record(work, h) for h in lab.hosts} == records
    for host in reverted(lab):
        assert f"{host}: would revert: {TARGET} -> {SOURCE}: switch back to resin-rootA, which still holds {SOURCE}" in result.stdout, result.stdout[-3000:]
    assert f"{rewritten(lab)}: would be refused: not revertible: the other root partition resin-rootA was rewritten: its hostapp is image {OTHER_IMAGE}" \
        in result.stdout, result.stdout[-3000:]


def test_the_revert_brings_the_devices_back_and_refuses_the_rewritten_one(lab: Lab, work: Path, seen: dict[str, t.Any]) -> None:
    host = rewritten(lab)
    before = lab.state(host)
    result = rollout(lab, work, "revert", hup_rollout_action="revert")
    for dev in reverted(lab):
        now = lab.state(dev)
        assert (now.version, now.active_root, now.committed, now.lock) == (SOURCE, "resin-rootA", True, ""), now
        assert not [m for m in now.markers if m != "rollback-health.conf"], now  # no breadcrumb, nothing triggered
        rev = record(work, dev)["revert"]
        assert (rev["status"], rev["from_version"], rev["to_version"]) == ("reverted", TARGET, SOURCE), rev
        assert record(work, dev)["status"] == "committed"  # the update's record stays as it was
    now = lab.state(host)
    assert now == before and (now.version, now.active_root, now.committed) == (TARGET, "resin-rootB", True), (before, now)
    rev = record(work, host)["revert"]
    reason = f"not revertible: the other root partition resin-rootA was rewritten: its hostapp is image {OTHER_IMAGE}, not sha256:"
    assert rev["status"] == "refused" and rev["reason"].startswith(f"{host}: {reason}"), rev
    assert f"{host}: refused: {reason}" in result.stdout, result.stdout[-3000:]  # the rollout's summary
    report = json.loads((state(work) / "report" / "report.json").read_text())
    (dev,) = [d for d in report["devices"] if d["name"] == host]
    assert reason in json.dumps(dev), dev
    assert result.rc != 0 and f"1 device(s) refused (not revertible): {host}" in result.stdout, result.summary()
    seen["after"] = {h: lab.state(h) for h in lab.hosts}


def test_the_revert_run_again_changes_nothing(lab: Lab, work: Path, seen: dict[str, t.Any]) -> None:
    result = rollout(lab, work, "again", hup_rollout_action="revert")
    assert f"1 device(s) refused (not revertible): {rewritten(lab)}" in result.stdout, result.summary()
    assert {h: lab.state(h) for h in lab.hosts} == seen["after"]
    assert not [r for r in result.changed() if r.host in lab.hosts], [(r.host, r.action) for r in result.changed()]
