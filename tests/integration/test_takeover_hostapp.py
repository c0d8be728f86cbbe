# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The advanced update (issue 10) of a balenaOS device: a jetson-xavier lab device of the balenaos
profile (its root partitions hold hostapps, ``/`` is the hostapp's overlay) on 5.1.0 (layout
l4t-r32), its catalog carrying the hostapp disk images (``labctl up --profile balenaos
--disk-images``: the disk images of the devices' profile).

``osfleet.hup.update`` to 6.1.0 (l4t-r35) with ``hup_allow_data_loss`` takes it over: the method is
advanced, the device downloads the hostapp disk image (the catalog's sha256 and size, those of
the file the lab serves), boots 6.1.0 from a hostapp on the l4t-r35 partition table, with
config.json and the NetworkManager ``system-connections/`` and ``system-proxy/`` files
byte-identical. After it the collection's probes see a balenaOS device (``hostapp``, the active
hostapp's image the release's image id) and a following update is the standard one: check mode of
``osfleet.hup.update`` to a next release (a copy of the catalog with 6.1.1 on the same layout)
says method balenahup, the image pulled by the device's ``hostapp-update``. (The plain A/B
profile's takeover: test_advanced.py, test_takeover_flash.py.)

Then a rehearsal of the pair (``osfleet.hup.rehearse``, issue 12) on that device and a second one
(on 5.1.0 until then): the update drill and ``advanced_staged`` pass, in parallel, the drills of the standard update are not run (saying why),
the evidence is written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import typing as t
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, ansible_playbook, layout_table

LAB_PREFIX = "itthap"
SOURCE, TARGET, NEXT = "5.1.0", "6.1.0", "6.1.1"
JX = "jetson-xavier"
KEPT = ("config.json", "system-connections/osfleet-lab-wifi", "system-proxy/osfleet-lab-proxy")
#: where the device's root partitions are and what the booted one holds (hostapp-facts §4)
ROOT = r"""
echo "root: $(awk '$2 == "/" {print $3}' /proc/mounts | tail -n 1)"
echo "current: $(readlink /mnt/sysroot/active/current)"
echo "init: $(readlink -f /mnt/sysroot/active/sbin/init)"
"""


@pytest.fixture(scope="module")
def lab(make_lab: t.Callable[..., Lab]) -> Lab:
    # the second device waits on 5.1.0 for the rehearsal (its drills run beside the first device's)
    return make_lab(LAB_PREFIX + os.environ.get("OSFLEET_LAB_SUFFIX", ""), 2, SOURCE, "balenaos", "--device-type", JX, "--disk-images")


def update(lab: Lab, workdir: Path, version: str, *args: str, **extra: t.Any) -> PlaybookRun:
    workdir.mkdir(parents=True, exist_ok=True)
    inventory = workdir / "target.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {lab.hosts[0]: {"hup_target_version": version}}}}))
    return ansible_playbook(lab, "-i", str(inventory), *args, workdir=workdir / "ansible", extra_vars=extra or None, limit=lab.hosts[0])


def root(lab: Lab) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in lab.sh(lab.hosts[0], ROOT).splitlines())


def test_a_balenaos_device_is_taken_over_onto_a_hostapp_disk(lab: Lab, tmp_path: Path) -> None:
    host = lab.hosts[0]
    rel = lab.release(TARGET, JX)
    disk = rel["disk_image"]
    served = lab.inventory.parent / "http" / disk["url"].rsplit("/", 1)[-1]
    assert served.name == f"{JX}-{TARGET}-hostapp.img.gz", disk
    assert disk["size"] == served.stat().st_size and disk["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    before = root(lab)
    assert before["root"] == "overlay" and before["current"].startswith("hostapps/"), before
    lab.sh(host, 'cd /mnt/boot && mkdir -p system-connections system-proxy'
           ' && printf "[connection]\\nid=lab-wifi\\ntype=wifi\\n" > "$1" && printf "[proxy]\\nmethod=0\\n" > "$2" && sync', *KEPT[1:])
    kept = {f: lab.sh(host, 'sha256sum < "$1"', f"/mnt/boot/{f}") for f in KEPT}
    assert lab.partition_table(host) == layout_table("l4t-r32")
    old_boot = lab.state(host).boot_id

    result = update(lab, tmp_path, TARGET, hup_allow_data_loss=True)
    assert result.rc == 0, result.summary()
    preflight = result.step(host, "osfleet.hup.preflight").result
    assert preflight["method"] == "takeover" and preflight["method_rule"] == "partition-layout", preflight
    assert preflight["device"]["hostapp"] is True, "the probes see the hostapp device before the takeover"
    staged = result.step(host, "osfleet.hup.takeover", 0).result["staged"]
    assert (staged["url"], staged["sha256"], staged["size"]) == (disk["url"], disk["sha256"], disk["size"]), staged
    assert {k["path"] for k in result.step(host, "osfleet.hup.takeover").result["flashed"]["keep"]} >= set(KEPT)
    assert f"{host}: {SOURCE} -> {TARGET} written and committed: method takeover" in result.stdout, result.summary()

    state = lab.state(host)
    assert state.version == TARGET and state.boot_id != old_boot, state
    assert lab.partition_table(host) == layout_table("l4t-r35"), "the disk holds the l4t-r35 partition table"
    assert {f: lab.sh(host, 'sha256sum < "$1"', f"/mnt/boot/{f}") for f in kept} == kept, "the kept files are byte-identical"
    after = root(lab)
    assert after["root"] == "overlay" and after["current"].startswith("hostapps/") and after["current"] != before["current"], after
    # sbin/init -> current/boot/init: the hostapp's /boot volume in the engine's data root
    assert after["init"].startswith("/mnt/sysroot/active/balena/volumes/") and after["init"].endswith("/_data/init"), after

    # a following update of this device is the standard one: check mode to a next release on the same layout
    def with_next(data: dict[str, t.Any]) -> dict[str, t.Any]:
        (cur,) = [r for r in data["releases"] if r["device_type"] == JX and r["version"] == TARGET]
        data["releases"].append({**copy.deepcopy(cur), "version": NEXT, "tag": NEXT, "deltas": [], "disk_image": None})
        return data

    catalog = tmp_path / "next.json"
    catalog.write_text(json.dumps(with_next(lab.catalog())))
    check = update(lab, tmp_path / "next", NEXT, "--check", hup_catalog=str(catalog), hup_catalog_allow_http=True)
    assert check.rc == 0, check.summary()
    preflight = check.step(host, "osfleet.hup.preflight").result
    assert preflight["method"] == "balenahup" and preflight["method_rule"] == "standard", preflight
    device = preflight["device"]
    assert device["hostapp"] is True and device["version"] == TARGET, device
    assert device["active_hostapp"]["image_id"] == rel["image_id"], device["active_hostapp"]
    assert device["active_hostapp"]["current"] == after["current"], device["active_hostapp"]
    (report,) = [r.result["msg"] for r in check.host_results(host) if r.task.endswith("Report the update")]
    assert report.startswith(f"{host}: {TARGET} -> {NEXT} would be updated (check mode: nothing changed):\nmethod balenahup"), report
    assert "pulled by the device's hostapp-update" in report, report
    assert lab.state(host).boot_id == state.boot_id and lab.state(host).version == TARGET


#: the drills of the standard update, which a takeover pair does not run (plugin_utils.rehearsal.STANDARD_ONLY)
STANDARD_ONLY = ["health", "boot", "power_write", "power_bootfiles", "controller_killed", "link_cut"]


def test_a_rehearsal_of_the_takeover_pair_passes_its_advanced_drills(lab: Lab, tmp_path: Path) -> None:
    """``osfleet.hup.rehearse`` of 5.1.0 -> 6.1.0 (issue 12), every drill asked, on the two devices
    (the drills spread over them, in parallel). The update drill goes to the first device, which
    the test above left on 6.1.0: it reflashes it to 5.1.0 (the lab's reflash after a takeover: a
    rehearsal hung on it) and takes it over, a second run changes nothing. ``advanced_staged``
    goes to the second, on 5.1.0: it kills the takeover while it stages the disk image and cuts
    the power, finds 5.1.0 with its data, and a rerun takes it over. The drills of the standard
    update are not run, saying why, without touching a device (decided from the catalog's
    layouts). One evidence record, passed, method takeover."""
    host, other = lab.hosts
    assert lab.state(host).version == TARGET, "the test above left the device on the target"
    assert lab.state(other).version == SOURCE
    work = tmp_path / "rehearsal"
    out = ansible_playbook(lab, workdir=work, playbook="osfleet.hup.rehearse", timeout=1500, extra_vars={
        "hup_from_version": SOURCE, "hup_target_version": TARGET, "hup_rehearsal_hosts": f"{host},{other}",
        "hup_rehearsal_update_vars": {"hup_allow_data_loss": True}, "hup_rehearsal_dir": str(work / "evidence"),
        "hup_rehearsal_work_dir": str(work / "drills"), "hup_rehearsal_id": "takeover"})
    print(f"rehearsal {SOURCE} -> {TARGET} (takeover pair, every drill, two devices): rc {out.rc} in {out.duration:.0f} s")
    assert out.rc == 0, out.summary()
    [path] = (work / "evidence").glob(f"{JX}_{SOURCE}_{TARGET}_*/takeover.json")
    record = json.loads(path.read_text())
    assert record["status"] == "passed" and record["method"] == "takeover", record["reason"]
    assert record["pair"]["device_type"] == JX and record["devices"] == [host, other]
    assert record["image_digests"]["target"] == lab.release(TARGET, JX)["digest"]
    drills = {d["name"]: d for d in record["drills"]}
    assert [d["name"] for d in record["drills"]] == ["update", *STANDARD_ONLY, "advanced_staged"], record["drills"]
    for name in STANDARD_ONLY:  # not run, saying why, and the device not touched for them
        drill = drills[name]
        assert drill["outcome"] == "not_run" and drill["details"] == {}, drill
        assert f"the drill {name} breaks the standard update" in drill["reason"], drill["reason"]
        assert "the partition layout changes from l4t-r32 to l4t-r35" in drill["reason"], drill["reason"]

    update = drills["update"]
    assert update["outcome"] == "passed" and update["device"] == host, update
    assert update["details"]["prepared"] == f"reflashed with {SOURCE} (from {TARGET})", update["details"]
    assert [(r["rc"], r["changed"] > 0) for r in update["details"]["runs"]] == [(0, True), (0, False)], update["details"]["runs"]

    staged = drills["advanced_staged"]
    assert staged["outcome"] == "passed" and staged["device"] == other, staged
    assert update["duration"] + staged["duration"] > out.duration, "the two drills ran one after the other"
    details = staged["details"]
    assert details["prepared"] == "was on the first version", details
    assert details["hit"] is True and details["interruption"] == "controller killed and power cut", details
    assert details["between"] == {"version": SOURCE, "committed": True}, "interrupted before the disk write: the old OS"
    assert details["data_intact_between"] is True, "and its data on /mnt/data"
    assert [(r["name"], r["rc"], r["interrupted"]) for r in details["runs"]] == [
        ("advanced_staged-check-1", 0, False), ("advanced_staged-2", -9, True), ("advanced_staged-3", 0, False)], details["runs"]
    # both devices taken over: the target on its own layout
    for device in (host, other):
        assert lab.state(device).version == TARGET and lab.partition_table(device) == layout_table("l4t-r35"), device
    assert any(name.startswith("osfleet-hup.takeover-advanced_staged") for name in record["logs"]), sorted(record["logs"])
    for suffix in (".md", ".html"):
        text = path.with_suffix(suffix).read_text()
        assert "advanced_staged" in text and "not run" in text.replace("not_run", "not run") and host in text and other in text
