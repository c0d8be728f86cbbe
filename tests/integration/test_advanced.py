# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The update method per device (issue 10): ``osfleet.hup.update`` picks it from the preflight and
runs the standard or the advanced update (role osfleet.hup.advanced) per device, in one run.

On a small lab of one x86 device on 2.88.4 and one jetson-xavier on 5.1.0 (layout l4t-r32; its
6.1.0 is l4t-r35; the lab's disk images built, ``--disk-images``): one run of a mixed inventory
(each device its own target) updates the x86 device with the standard update and refuses the
jetson, whose update needs the advanced one (takeover) without ``hup_allow_data_loss``: the
message names the device, the rule and the variable, and the jetson is unchanged (same boot,
env, markers, stamps, boot files, no lock). With the opt-in, ``--check`` shows the plan (method
and rule, kept, lost, bytes) and changes nothing; the real run rewrites the whole disk: the
jetson boots 6.1.0 on the l4t-r35 partition table with config.json and its NetworkManager
connection byte-identical, the run's log carried onto the new data partition, the controller's
``upgrade-takeover.<datetime>.log`` and the report naming the method. A second run changes
nothing; a downgrade back to 5.1.0 is refused, naming the rule, with nothing changed.
"""

from __future__ import annotations

import json
import os
import re
import typing as t
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, ansible_playbook

LAB_PREFIX = "itadv"
X86_FROM, X86_TO = "2.88.4", "2.113.0"
JETSON_FROM, JETSON_TO = "5.1.0", "6.1.0"
RELEASES = Path(__file__).resolve().parents[1] / "lab/osfleet_lab/releases.json"
CONNECTION = "system-connections/osfleet-lab-wifi"
#: the disk's partition table (sfdisk), as start, size and name of each partition
TABLE = r"""
d=$(readlink -f /dev/disk/by-partlabel/resin-boot); d=${d##*/}; d=${d%p*}
sfdisk -J "/dev/$d" | jq -c '[.partitiontable.partitions[] | {start, size, name}]'
"""


@pytest.fixture(scope="module")
def lab(make_lab: t.Callable[..., Lab]) -> Lab:
    first = make_lab(LAB_PREFIX + os.environ.get("OSFLEET_LAB_SUFFIX", ""), 1, X86_FROM, "ab", "--disk-images")
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


def run(lab: Lab, tmp_path: Path, limit: str | None = None, check: bool = False, **extra: object) -> PlaybookRun:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return ansible_playbook(lab, "-i", str(targets_inventory(lab, tmp_path)), *(["--check"] if check else []),
                            workdir=tmp_path / "ansible", extra_vars=extra or None, limit=limit)


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


def table(lab: Lab, host: str) -> list[dict[str, t.Any]]:
    return t.cast(list[dict[str, t.Any]], json.loads(lab.sh(host, TABLE)))


def layout(layout_id: str) -> list[dict[str, t.Any]]:
    """A lab layout as the partition table of its disk image (sectors; the first partition at 1 MiB)."""
    start, out = 2048, []
    for name, mib in json.loads(RELEASES.read_text())["layouts"][layout_id]:
        out.append({"start": start, "size": mib << 11, "name": name})
        start += mib << 11
    return out


def test_check_mode_with_the_opt_in_shows_the_plan_and_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    jx = jetson(lab)
    before = snapshot(lab, jx)
    result = run(lab, tmp_path / "check", jx, hup_allow_data_loss=True, check=True)
    assert result.rc == 0, result.summary()
    staged = result.step(jx, "osfleet.hup.takeover").result
    plan = staged["plan"]
    assert plan["problems"] == [] and plan["download_bytes"] > 0 and "config.json" in plan["keep"], plan
    (report,) = [r.result["msg"] for r in result.host_results(jx) if r.task.endswith("Report the advanced update")]
    assert report.startswith(f"{jx}: {JETSON_FROM} -> {JETSON_TO} would be written (check mode: nothing changed): method takeover"), report
    assert "[rule: partition-layout]" in report and f"({plan['download_bytes']} bytes to download)" in report, report
    assert "kept config.json" in report and "lost " in report, report
    assert not any(r.action == "osfleet.hup.takeover" and r.result.get("host_key") for r in result.host_results(jx))
    assert snapshot(lab, jx) == before, f"{jx}: the check run changed the device"
    assert lab.sh(jx, 'grep -c " /run/osfleet/takeover " /proc/mounts || true').strip() == "0", "check mode mounted the staging"


def test_a_failure_before_the_write_leaves_the_old_os_unchanged(lab: Lab, tmp_path: Path) -> None:
    """A disk image whose sha256 is not the catalog's: the download is refused in RAM, the role's
    rescue removes the staging and releases the lock; the device runs 5.1.0, unchanged."""
    jx = jetson(lab)
    before = snapshot(lab, jx)
    catalog = lab.catalog()
    for rel in catalog["releases"]:
        if rel["device_type"] == "jetson-xavier" and rel["version"] == JETSON_TO:
            rel["disk_image"] = {**rel["disk_image"], "sha256": "0" * 64}
    path = tmp_path / "bad-sha.json"
    path.write_text(json.dumps(catalog))
    result = run(lab, tmp_path / "bad", jx, hup_allow_data_loss=True, hup_catalog=str(path), hup_catalog_allow_http=True)
    assert result.rc != 0, result.summary()
    # the step's failure (rescued), then the role's: the device fails once, with the whole story
    assert [f.task.rsplit(": ", 1)[-1] for f in result.failures(jx)][-1] == "Fail the device with the reason", result.summary()
    msg = str(result.failures(jx)[-1].result["msg"])
    assert msg.startswith(f"{jx}: advanced host OS update (takeover) to {JETSON_TO} failed at step takeover staged: "), msg
    assert "0" * 64 in msg and msg.endswith(f"the device runs {JETSON_FROM}, unchanged (nothing was written to the disk)"), msg
    assert snapshot(lab, jx) == before, f"{jx}: the failed run changed the device"
    assert lab.state(jx).lock == "", "the rescue released the lock"
    assert lab.sh(jx, 'grep -c " /run/osfleet/takeover " /proc/mounts || true').strip() == "0", "the staging is gone"
    (copy,) = (tmp_path / "bad" / "ansible" / "osfleet-hup-logs" / jx).glob("osfleet-hup.*.log")
    entries = [json.loads(line) for line in copy.read_text().splitlines()]
    assert entries[-1]["outcome"] == "failed" and entries[-1]["failed_step"] == "takeover staged", entries[-1]
    (ctl_log,) = (tmp_path / "bad" / "ansible" / "osfleet-hup-logs" / jx).glob("upgrade-takeover.*.log")
    assert "takeover staged: failed" in ctl_log.read_text() and "outcome: failed: " in ctl_log.read_text()


def test_the_opt_in_rewrites_the_disk_and_keeps_the_files(lab: Lab, tmp_path: Path) -> None:
    jx = jetson(lab)
    lab.sh(jx, 'mkdir -p /mnt/boot/system-connections && printf "[connection]\\nid=lab-wifi\\ntype=wifi\\n" > "/mnt/boot/$1"'
           ' && mkdir -p /mnt/data/user-app && printf "precious\\n" > /mnt/data/user-app/precious.txt && sync', CONNECTION)
    kept = {f: lab.sh(jx, 'sha256sum < "$1"', f"/mnt/boot/{f}") for f in ("config.json", CONNECTION)}
    assert table(lab, jx) == layout("l4t-r32")
    old_boot = lab.state(jx).boot_id

    result = run(lab, tmp_path, jx, hup_allow_data_loss=True)
    assert result.rc == 0, result.summary()
    assert result.step(jx, "osfleet.hup.preflight").result["method"] == "takeover"
    flashed = result.step(jx, "osfleet.hup.takeover").result
    assert flashed["changed"] and flashed["host_key"].startswith("ssh-ed25519 "), flashed

    state = lab.state(jx)
    assert state.version == JETSON_TO and state.boot_id != old_boot, state
    assert table(lab, jx) == layout("l4t-r35"), "the disk holds the l4t-r35 partition table"
    assert {f: lab.sh(jx, 'sha256sum < "$1"', f"/mnt/boot/{f}") for f in kept} == kept, "the kept files are byte-identical"
    assert lab.sh(jx, '[ -e /mnt/data/user-app/precious.txt ] && echo there || echo gone').strip() == "gone", "the data partition is new"
    # the lab's known_hosts trusts the new key (hup_known_hosts_file): plain ssh with the inventory's options works
    assert lab.sh(jx, "cat /mnt/state/ssh/ssh_host_ed25519_key.pub").split()[1] == flashed["host_key"].split()[1]

    # the run's log went on on the new data partition: the steps before the write and after it
    (copy,) = (tmp_path / "ansible" / "osfleet-hup-logs" / jx).glob("osfleet-hup.*.log")
    entries = lab.run_logs(jx)[copy.name]
    assert [e["step"] for e in entries] == ["preflight", "lock", "takeover", "takeover", "health", "outcome"], entries
    assert entries[-1]["outcome"] == "committed" and not entries[-1]["failed"], entries[-1]
    assert [json.loads(line) for line in copy.read_text().splitlines()] == entries, "the controller's copy differs"
    assert lab.sh(jx, 'ls /mnt/data/balenahup/').split().count(flashed["log"].rsplit("/", 1)[-1]) == 1
    # the controller's log of the steps
    (ctl_log,) = (tmp_path / "ansible" / "osfleet-hup-logs" / jx).glob("upgrade-takeover.*.log")
    text = ctl_log.read_text()
    assert re.search(r"^takeover flashed: changed -- .*wrote the whole disk", text, re.M), text
    assert "rule: partition-layout" in text and text.rstrip().endswith("outcome: committed"), text
    assert f"{jx}: {JETSON_FROM} -> {JETSON_TO} written and committed: method takeover" in result.stdout, result.summary()

    again = run(lab, tmp_path / "again", jx, hup_allow_data_loss=True)
    assert again.rc == 0, again.summary()
    assert not again.changed(jx), [(r.task, r.action) for r in again.changed(jx)]
    assert lab.state(jx).version == JETSON_TO and lab.state(jx).boot_id == state.boot_id


def test_a_downgrade_after_the_takeover_is_refused_unchanged(lab: Lab, tmp_path: Path) -> None:
    jx = jetson(lab)
    assert lab.state(jx).version == JETSON_TO, "runs after the advanced update"
    before = snapshot(lab, jx)
    inventory = tmp_path / "down.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {jx: {"hup_target_version": JETSON_FROM}}}}))
    result = ansible_playbook(lab, "-i", str(inventory), workdir=tmp_path / "ansible", extra_vars={"hup_allow_data_loss": True}, limit=jx)
    assert result.rc != 0, result.summary()
    msg = refusal(result, jx)
    assert msg.startswith(f"{jx}: preflight failed: ") and "downgrade" in msg, msg
    assert snapshot(lab, jx) == before, f"{jx}: the refused downgrade changed the device"
