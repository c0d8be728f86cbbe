# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The update method per device (issue 10): ``osfleet.hup.update`` picks it from the preflight.

On a small lab of one x86 device on 2.88.4 and one jetson-xavier on 5.1.0 (layout l4t-r32; its
6.1.0 is l4t-r35): one run of a mixed inventory (each device its own target) updates the x86
device with the standard update and refuses the jetson, whose update needs the advanced one
(takeover) without ``hup_allow_data_loss``: the message names the device, the rule and the
variable, and the jetson is unchanged (same boot, env, markers, stamps, boot files, no lock).
With the opt-in the jetson still stops unchanged after the preflight: this version does not
carry out the advanced update yet, and says so.
"""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, ansible_playbook

LAB_PREFIX = "itadv"
X86_FROM, X86_TO = "2.88.4", "2.113.0"
JETSON_FROM, JETSON_TO = "5.1.0", "6.1.0"


@pytest.fixture(scope="module")
def lab(make_lab: t.Callable[..., Lab]) -> Lab:
    first = make_lab(LAB_PREFIX + os.environ.get("OSFLEET_LAB_SUFFIX", ""), 1, X86_FROM, "ab")
    first.labctl("up", "--devices", "1", "--device-type", "jetson-xavier", "--os", JETSON_FROM, "--profile", "ab", timeout=900)
    return Lab.from_inventory(first.prefix, first.inventory)


def jetson(lab: Lab) -> str:
    (host,) = [h for h in lab.hosts if lab.host_vars[h].get("lab_device_type") == "jetson-xavier"]
    return host


def x86(lab: Lab) -> str:
    (host,) = [h for h in lab.hosts if lab.host_vars[h].get("lab_device_type") == "genericx86-64-ext"]
    return host


def targets_inventory(lab: Lab, tmp_path: Path) -> Path:
    """A second inventory with each device's own target (``hup_target_version`` per host)."""
    path = tmp_path / "targets.yml"
    hosts = {x86(lab): {"hup_target_version": X86_TO}, jetson(lab): {"hup_target_version": JETSON_TO}}
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return path


def run(lab: Lab, tmp_path: Path, limit: str | None = None, **extra: object) -> PlaybookRun:
    return ansible_playbook(lab, "-i", str(targets_inventory(lab, tmp_path)), workdir=tmp_path / "ansible",
                            extra_vars=extra or None, limit=limit)


def snapshot(lab: Lab, host: str) -> tuple[t.Any, dict[str, str]]:
    """What a refused run must not change: the device state and every file of the boot partition."""
    return lab.state(host), lab.sha256_tree(host, "/mnt/boot")


def refusal(result: PlaybookRun, host: str) -> str:
    failed = result.failures(host)
    assert len(failed) == 1, f"{host}: {[(f.task, f.result.get('msg')) for f in failed]}"
    return str(failed[0].result["msg"])


def refused_log(lab: Lab, host: str, tmp_path: Path) -> list[dict[str, t.Any]]:
    """The device's log of the run that refused it, which ends with its outcome line, and the same
    log in the controller's copy (hup_log_copy_dir, relative to the playbook's directory)."""
    (copy,) = (tmp_path / "ansible" / "osfleet-hup-logs" / host).glob("osfleet-hup.*.log")
    entries = lab.run_logs(host)[copy.name]
    assert [json.loads(line) for line in copy.read_text().splitlines()] == entries, "the controller's copy differs"
    assert entries[-1]["step"] == "outcome" and entries[-1]["outcome"] == "refused" and entries[-1]["failed"] is True, entries
    return entries


def test_a_mixed_fleet_gets_a_method_per_device(lab: Lab, tmp_path: Path) -> None:
    jx, gx = jetson(lab), x86(lab)
    before = snapshot(lab, jx)
    result = run(lab, tmp_path)
    assert result.rc != 0, result.summary()
    assert result.step(gx, "osfleet.hup.preflight").result["method"] == "balenahup"
    assert lab.state(gx).version == X86_TO and lab.state(gx).committed, result.summary()
    assert f"{gx}: {X86_FROM} -> {X86_TO} committed" in result.stdout and "method balenahup" in result.stdout, result.summary()
    preflight = result.step(jx, "osfleet.hup.preflight").result
    assert preflight["method"] == "takeover" and preflight["method_rule"] == "partition-layout", preflight
    msg = refusal(result, jx)
    assert msg.startswith(f"{jx}: preflight failed: "), msg
    assert "needs the advanced update (takeover), which wipes the data partition" in msg, msg
    assert "(the partition layout changes from l4t-r32 to l4t-r35) [rule: partition-layout]" in msg, msg
    assert "set allow_takeover (the role's hup_allow_data_loss: true, per device or group) to allow it" in msg, msg
    assert snapshot(lab, jx) == before, f"{jx}: the refused run changed the device"
    entries = refused_log(lab, jx, tmp_path)
    assert [e["step"] for e in entries] == ["preflight", "outcome"], entries
    assert entries[-1]["failed_step"] == "preflight" and entries[-1]["msg"] == msg, entries[-1]


def test_the_opt_in_alone_changes_nothing_yet(lab: Lab, tmp_path: Path) -> None:
    jx = jetson(lab)
    before = snapshot(lab, jx)
    result = run(lab, tmp_path, limit=jx, hup_allow_data_loss=True)
    assert result.rc != 0, result.summary()
    assert not any(r.action == "osfleet.hup.lock" and r.event != "skipped" for r in result.host_results(jx)), result.summary()
    msg = refusal(result, jx)
    assert msg.startswith(f"{jx}: needs the advanced update (takeover) from {JETSON_FROM} to {JETSON_TO} "), msg
    assert "[rule: partition-layout]" in msg and "does not carry out the advanced update yet" in msg, msg
    assert snapshot(lab, jx) == before, f"{jx}: the opted-in run changed the device"
    entries = refused_log(lab, jx, tmp_path)
    assert [e["step"] for e in entries] == ["preflight", "outcome"] and entries[-1]["failed_step"] == "method", entries
    assert entries[-1]["msg"] == msg, entries[-1]
