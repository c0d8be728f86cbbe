# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The update method per device (issue 10): ``osfleet.hup.update`` picks it from the preflight and
runs the standard or the advanced update (role osfleet.hup.advanced) per device, in one run.

On a small lab of one x86 device on 2.88.4 and one jetson-xavier on 5.1.0 (layout l4t-r32; its
6.1.0 is l4t-r35; the lab's disk images built, ``--disk-images``): first a rollout
(``osfleet.hup.rollout``, issue 11) of the mixed fleet, each device's target from the inventory:
its plan names the method per device (the x86 device standard, the jetson advanced: takeover,
refused without ``hup_allow_data_loss``, the rule named), and a run of the jetson's wave records it
failed with its method and rule, unchanged, the x86 device untouched (only the plan and this
refused run: the full takeover runs through osfleet.hup.update below). Then one run of a mixed inventory
(each device its own target) updates the x86 device with the standard update and refuses the
jetson, whose update needs the advanced one (takeover) without ``hup_allow_data_loss``: the
message names the device, the rule and the variable, and the jetson is unchanged (same boot,
env, markers, stamps, boot files, no lock). With the opt-in, ``--check`` shows the plan (method
and rule, kept, lost, bytes) and changes nothing; the real run rewrites the whole disk: the
jetson boots 6.1.0 on the l4t-r35 partition table with config.json and its NetworkManager
connection byte-identical, the run's log carried onto the new data partition, the controller's
``upgrade-takeover.<datetime>.log`` and the report naming the method. A second run changes
nothing; a downgrade back to 5.1.0 is refused, naming the rule, with nothing changed.

Before that real run, failures before the write leave the jetson on 5.1.0: a disk image whose
sha256 is not the catalog's (the rescue removes the staging and releases the lock); and faults
while the disk image downloads into the RAM staging (/run/osfleet/takeover), from a server of the
test on 127.0.0.1 that sends it at RATE (the lab's own, on loopback, is too fast to catch a
partial download), each hitting once the device holds part of it (``image.img.gz.part``):

* the controller killed (``kill_controller``): the device runs 5.1.0 on the same boot, its boot
  files, partition table and a user's files on the data partition byte-identical; the killed run's
  staging script goes on on the device (its download then fails: the server stops serving) and
  its lock stays, so a run with another run id is refused, naming the run and ``hup_run_id`` to
  resume it (as after a kill in the standard update, test_faults);
* its run again with that run id, which takes its lock again and stages anew, the power cut: the
  device boots 5.1.0, boot files, partition table and data byte-identical, the RAM staging gone;
* its run again after the power cut, which takes the lock over again, the server refusing the
  download now: the rescue removes the staging and releases the lock, the device on 5.1.0 unchanged.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import threading
import time
import typing as t
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, ansible_playbook, kill_controller, layout_table as layout

LAB_PREFIX = "itadv"
X86_FROM, X86_TO = "2.88.4", "2.113.0"
JETSON_FROM, JETSON_TO = "5.1.0", "6.1.0"
CONNECTION = "system-connections/osfleet-lab-wifi"
STAGING = "/run/osfleet/takeover"
PART = f"{STAGING}/image.img.gz.part"
#: the task of the advanced role that stages the disk image in RAM (the faults hit while it downloads)
STAGE_TASK = "Check the device and stage the disk image"
#: how fast the test's own server sends the disk image (the lab's, on loopback, is too fast to
#: catch a partial download), and how much of it the device must hold before the fault hits
RATE = 4 << 20
PARTIAL = 1 << 20
#: the run the faults interrupt: the killed run, resumed by the run whose power is cut and by the
#: one after it (a run again with the same run id resumes it, as in test_faults)
FAULT_RUN = "adv-faults"
#: the user's data that must survive the faults before the write
USER_DATA = "/mnt/data/osfleet-adv"
USER_DATA_SCRIPT = r"""
set -e
mkdir -p "$1/db"
dd if=/dev/urandom of="$1/db/chunk.bin" bs=65536 count=16 2>/dev/null
printf 'setting=%s\n' "$(date +%s)" > "$1/settings.conf"
sync
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


def run(lab: Lab, tmp_path: Path, limit: str | None = None, check: bool = False,
        trigger: Callable[[list[dict[str, t.Any]]], bool] | None = None, on_trigger: Callable[[t.Any], None] | None = None,
        **extra: object) -> PlaybookRun:
    """osfleet.hup.update on ``limit`` with each device's own target, ``extra`` as extra vars (the
    harness's ``trigger`` and ``on_trigger``: a fault while it runs)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return ansible_playbook(lab, "-i", str(targets_inventory(lab, tmp_path)), *(["--check"] if check else []),
                            workdir=tmp_path / "ansible", extra_vars=extra or None, limit=limit, trigger=trigger, on_trigger=on_trigger)


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


def test_a_rollout_of_the_mixed_fleet_plans_and_records_the_method_per_device(lab: Lab, tmp_path: Path) -> None:
    jx, gx = jetson(lab), x86(lab)
    before, x86_before = snapshot(lab, jx), lab.state(gx)
    # each device's target from the inventory (the rollout's own from the group all): a rollout has
    # one -e hup_target_version, and the lab's jetson has no 2.x release
    targets = tmp_path / "targets.yml"
    targets.write_text(yaml.safe_dump({"all": {"vars": {"hup_target_version": X86_TO}, "hosts": {jx: {"hup_target_version": JETSON_TO}}}}))
    state = tmp_path / "rollout"
    spec = {"hup_rollout_id": "mixed", "hup_rollout_dir": str(state),
            "hup_waves": [{"name": "xavier", "hosts": jx, "max_failures": 1}, {"name": "x86", "percent": 100}]}

    def rollout(name: str, *args: str, **extra: t.Any) -> PlaybookRun:
        return ansible_playbook(lab, "-i", str(targets), *args, workdir=tmp_path / name, playbook="osfleet.hup.rollout",
                                extra_vars={**spec, **extra})

    plan = rollout("plan", hup_rollout_action="plan")
    assert plan.rc == 0, plan.summary()
    assert re.search(rf'"  {gx}: method balenahup \[rule: standard\], source \w+, \d+ bytes to download"', plan.stdout), plan.stdout[-3000:]
    refused = re.search(rf'"  {jx}: would fail \(method takeover \[rule: partition-layout\]\): ([^"]+)"', plan.stdout)
    assert refused and "hup_allow_data_loss" in refused.group(1), plan.stdout[-3000:]
    assert not state.exists() and snapshot(lab, jx) == before and lab.state(gx) == x86_before, "the plan changed something"

    run_ = rollout("jetson", "--limit", f"{jx},localhost")
    assert run_.rc == 0, run_.summary()  # the jetson's wave takes one failure; the x86 wave waits outside --limit
    record = json.loads((state / "devices" / f"{jx}.json").read_text())
    assert (record["status"], record["method"], record["wave"], record["to_version"]) == ("failed", "takeover", "xavier", JETSON_TO), record
    assert "[rule: partition-layout]" in record["reason"] and "hup_allow_data_loss" in record["reason"], record
    assert f"wave x86 is not done: {gx} not updated in this run" in run_.stdout, run_.summary()
    assert snapshot(lab, jx) == before, f"{jx}: the refused rollout changed the device"
    assert not (state / "devices" / f"{gx}.json").exists() and lab.state(gx) == x86_before, f"{gx}: touched outside --limit"


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


class SlowImage:
    """The disk image on 127.0.0.1 at ``rate`` bytes/s (a thread of the test), with Range requests
    (the stage's ``curl -C -``). ``refuse()`` ends the transfers that run (the client sees a
    download cut short) and answers 503 until ``serve()``."""

    def __init__(self, data: bytes, name: str, rate: int) -> None:
        self.data, self.rate, self.refusing = data, rate, False
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if owner.refusing or self.path != f"/{name}":
                    self.send_error(503 if owner.refusing else 404)
                    return
                size, start = len(owner.data), 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "").strip())
                if match:
                    start = int(match.group(1))
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(size - start))
                self.end_headers()
                began, sent = time.monotonic(), 0
                try:
                    while start + sent < size and not owner.refusing:
                        chunk = owner.data[start + sent:start + sent + (64 << 10)]
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        time.sleep(max(0.0, began + sent / owner.rate - time.monotonic()))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{name}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="slow-disk-image", daemon=True)
        self.thread.start()

    def refuse(self) -> None:
        self.refusing = True

    def serve(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.refusing = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def slow_catalog(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, SlowImage]]:
    """A copy of the lab's catalog whose jetson 6.1.0 disk image (same sha256 and size) comes from
    the test's slow server, and that server."""
    catalog = lab.catalog()
    (rel,) = [r for r in catalog["releases"] if r["device_type"] == "jetson-xavier" and r["version"] == JETSON_TO]
    disk = rel["disk_image"]
    with urllib.request.urlopen(disk["url"], timeout=60) as resp:  # the lab's own server, on loopback
        data = resp.read()
    assert len(data) == disk["size"] and hashlib.sha256(data).hexdigest() == disk["sha256"], "the lab's disk image"
    server = SlowImage(data, disk["url"].rsplit("/", 1)[-1], RATE)
    rel["disk_image"] = {**disk, "url": server.url}
    path = tmp_path_factory.mktemp("slow") / "slow-disk-image.json"
    path.write_text(json.dumps(catalog))
    yield path, server
    server.close()


def disk_view(lab: Lab, host: str) -> dict[str, t.Any]:
    """What a fault before the write must leave as it was: the OS that runs, the boot partition's
    files, the partition table and the user's data on the data partition."""
    return {"version": lab.state(host).version, "boot": lab.sha256_tree(host, "/mnt/boot"), "table": lab.partition_table(host),
            "data": lab.sha256_tree(host, USER_DATA)}


def staged_part(lab: Lab, host: str) -> int:
    """Bytes of the partial download in the RAM staging (0: none)."""
    return int(lab.sh(host, 'if [ -f "$1" ]; then wc -c < "$1"; else echo 0; fi', PART).strip())


def when_partly_staged(lab: Lab, host: str, fault: Callable[[t.Any], None], seen: dict[str, t.Any]) -> Callable[[t.Any], None]:
    """on_trigger: wait (bounded) until the device holds part of the disk image in its RAM staging,
    then ``fault(process)``; ``seen`` gets the bytes it held then."""
    def hit(proc: t.Any) -> None:
        deadline = time.monotonic() + 60
        while (held := staged_part(lab, host)) < PARTIAL and time.monotonic() < deadline:
            time.sleep(0.2)
        seen["part"] = held
        fault(proc)
    return hit


def staging_started(host: str) -> Callable[[list[dict[str, t.Any]]], bool]:
    def trigger(events: list[dict[str, t.Any]]) -> bool:
        return any(e["event"] == "start" and e["host"] == host and STAGE_TASK in e["task"] for e in events)
    return trigger


def writer(lab: Lab, host: str) -> str:
    """Whether a fetch, root write or staging script runs on the device (it holds the writer lock)."""
    return lab.sh(host, 'flock -n /run/osfleet/writer.lock true && echo ended || echo runs').strip()


def lock_of(lab: Lab, host: str) -> dict[str, t.Any] | None:
    text = lab.state(host).lock
    return t.cast(dict[str, t.Any], json.loads(text)) if text else None


def test_a_controller_killed_while_staging_leaves_the_old_os_and_its_data(
        lab: Lab, tmp_path: Path, slow_catalog: tuple[Path, SlowImage]) -> None:
    """The controller killed while the device downloads the disk image into RAM: the device runs
    5.1.0 on its boot, disk and data unchanged; the killed run's lock stays (a run again with
    another run id is refused, naming the run to resume)."""
    jx = jetson(lab)
    catalog, server = slow_catalog
    lab.sh(jx, USER_DATA_SCRIPT, USER_DATA)
    before, boot_id = disk_view(lab, jx), lab.state(jx).boot_id
    seen: dict[str, t.Any] = {}
    killed = run(lab, tmp_path / "killed", jx, hup_allow_data_loss=True, hup_catalog=str(catalog), hup_catalog_allow_http=True,
                 hup_run_id=FAULT_RUN, trigger=staging_started(jx), on_trigger=when_partly_staged(lab, jx, kill_controller, seen))
    assert killed.triggered_at is not None and killed.rc == -9, killed.summary()
    assert PARTIAL <= seen["part"] < len(server.data), f"the kill hit a download of {seen['part']} bytes"
    assert not [r for r in killed.host_results(jx) if r.action == "osfleet.hup.takeover"], "the staging ended before the kill"
    # the killed run's staging script goes on on the device (no tty, no hangup), holding the writer
    # lock; the server stops serving: its download fails and it removes the partial file
    assert writer(lab, jx) == "runs", "the killed run's staging script ended with the controller"
    server.refuse()
    deadline = time.monotonic() + 60
    while writer(lab, jx) != "ended":
        assert time.monotonic() < deadline, "the killed run's staging script still runs"
        time.sleep(0.5)
    server.serve()
    assert staged_part(lab, jx) == 0, "the failed download left its partial file"

    assert lab.state(jx).boot_id == boot_id, "the device rebooted"
    assert disk_view(lab, jx) == before, "the kill changed the device"
    assert (lock_of(lab, jx) or {}).get("run_id") == FAULT_RUN, "the killed run's lock stays"

    # an operator runs the update again (another run id): refused, naming the run to resume
    again = run(lab, tmp_path / "again", jx, hup_allow_data_loss=True, hup_catalog=str(catalog), hup_catalog_allow_http=True)
    assert again.rc != 0, again.summary()
    msg = refusal(again, jx)
    assert msg.startswith(f"{jx}: preflight failed: update already in progress: ") and f"(run {FAULT_RUN})" in msg, msg
    assert f"hup_run_id={FAULT_RUN}" in msg, msg
    assert disk_view(lab, jx) == before and lab.state(jx).boot_id == boot_id


def test_a_power_cut_while_staging_boots_the_old_os_with_its_data(
        lab: Lab, tmp_path: Path, slow_catalog: tuple[Path, SlowImage]) -> None:
    """The killed run run again (its run id): it takes its lock again and stages anew; the power
    cut while the disk image downloads: the device boots 5.1.0, disk and data unchanged, the RAM
    staging gone."""
    jx = jetson(lab)
    catalog, server = slow_catalog
    assert (lock_of(lab, jx) or {}).get("run_id") == FAULT_RUN, "runs after the killed run"
    before, boot_id = disk_view(lab, jx), lab.state(jx).boot_id
    seen: dict[str, t.Any] = {}
    cut = run(lab, tmp_path / "cut", jx, hup_allow_data_loss=True, hup_catalog=str(catalog), hup_catalog_allow_http=True,
              hup_run_id=FAULT_RUN, trigger=staging_started(jx),
              on_trigger=when_partly_staged(lab, jx, lambda _proc: lab.powercut(jx), seen))
    assert cut.triggered_at is not None and cut.rc != 0, cut.summary()
    assert PARTIAL <= seen["part"] < len(server.data), f"the power cut hit a download of {seen['part']} bytes"
    taken = cut.step(jx, "osfleet.hup.lock", 0).result  # (the rescue's release, after the cut, found no device)
    assert taken["previous"]["run_id"] == taken["lock"]["run_id"] == FAULT_RUN, f"the run took the killed run's lock again: {taken}"
    lab.poweron(jx)
    state = lab.state(jx)
    assert state.version == JETSON_FROM and state.boot_id != boot_id, state
    assert disk_view(lab, jx) == before, "the power cut changed the device"
    assert lab.sh(jx, 'grep -c " $1 " /proc/mounts || true', STAGING).strip() == "0", "the RAM staging is gone"
    assert lab.sh(jx, '[ -e "$1" ] && echo there || echo gone', STAGING).strip() == "gone", "the RAM staging is gone"


def test_the_interrupted_run_resumed_gives_the_lock_back_when_it_fails_before_the_write(
        lab: Lab, tmp_path: Path, slow_catalog: tuple[Path, SlowImage]) -> None:
    """The run again after the power cut (same run id) takes its lock over; its disk image server
    refuses now: the failure before the write removes the staging and releases the lock."""
    jx = jetson(lab)
    catalog, server = slow_catalog
    assert (lock_of(lab, jx) or {}).get("run_id") == FAULT_RUN, "runs after the power cut"
    before, boot_id = disk_view(lab, jx), lab.state(jx).boot_id
    server.refuse()
    try:
        result = run(lab, tmp_path / "resumed", jx, hup_allow_data_loss=True, hup_catalog=str(catalog), hup_catalog_allow_http=True,
                     hup_run_id=FAULT_RUN)
    finally:
        server.serve()
    assert result.rc != 0, result.summary()
    taken = result.step(jx, "osfleet.hup.lock", 0).result
    assert taken["previous"]["run_id"] == taken["lock"]["run_id"] == FAULT_RUN, f"the run took its lock over: {taken}"
    msg = str(result.failures(jx)[-1].result["msg"])
    assert msg.startswith(f"{jx}: advanced host OS update (takeover) to {JETSON_TO} failed at step takeover staged: "), msg
    assert "cannot download" in msg and msg.endswith(f"the device runs {JETSON_FROM}, unchanged (nothing was written to the disk)"), msg
    assert lab.state(jx).lock == "", "the rescue released the lock"
    assert disk_view(lab, jx) == before and lab.state(jx).boot_id == boot_id
    assert lab.sh(jx, 'grep -c " $1 " /proc/mounts || true', STAGING).strip() == "0", "the staging is gone"


def test_the_opt_in_rewrites_the_disk_and_keeps_the_files(lab: Lab, tmp_path: Path) -> None:
    jx = jetson(lab)
    lab.sh(jx, 'mkdir -p /mnt/boot/system-connections && printf "[connection]\\nid=lab-wifi\\ntype=wifi\\n" > "/mnt/boot/$1"'
           ' && mkdir -p /mnt/data/user-app && printf "precious\\n" > /mnt/data/user-app/precious.txt && sync', CONNECTION)
    kept = {f: lab.sh(jx, 'sha256sum < "$1"', f"/mnt/boot/{f}") for f in ("config.json", CONNECTION)}
    assert lab.partition_table(jx) == layout("l4t-r32")
    old_boot = lab.state(jx).boot_id

    result = run(lab, tmp_path, jx, hup_allow_data_loss=True)
    assert result.rc == 0, result.summary()
    assert result.step(jx, "osfleet.hup.preflight").result["method"] == "takeover"
    flashed = result.step(jx, "osfleet.hup.takeover").result
    assert flashed["changed"] and flashed["host_key"].startswith("ssh-ed25519 "), flashed

    state = lab.state(jx)
    assert state.version == JETSON_TO and state.boot_id != old_boot, state
    assert lab.partition_table(jx) == layout("l4t-r35"), "the disk holds the l4t-r35 partition table"
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
