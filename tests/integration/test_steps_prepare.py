# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preparing steps one by one on a lab device: preflight, lock, supervisor, fetch, rootfs.

Each module runs from a real ansible-playbook against a one-device lab (2.88.4): twice (the
second run changes nothing), with ``--check --diff`` (a plan, no change), and with bad input
(every failure names the device and the reason and leaves the device as it was, compared with a
fingerprint read from the device itself).
"""

from __future__ import annotations

import copy
import json
import re
import socket
import time
import typing as t
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, TaskResult, ansible_playbook, kill_controller

LAB_PREFIX = "itprep"
LAB_DEVICES = 1
SOURCE, TARGET, NEXT = "2.88.4", "2.113.0", "2.114.1"
SUPERVISOR_BEFORE, SUPERVISOR_AFTER = "14.0.8", "14.11.2"
CACHE = "/mnt/data/osfleet/images"
OWNER = "ci@integration"
GX = "genericx86-64-ext"

# What these steps can change on a device, read in one round trip.
FINGERPRINT = r"""
echo "version: $(sed -n 's/^VERSION=//p' /etc/os-release)"
echo "lock: $(jq -c 'del(.uptime, .boot_id)' /mnt/state/osfleet/hup.lock 2>/dev/null)"
echo "stamp: $(cat /mnt/sysroot/inactive/.osfleet-release.json 2>/dev/null)"
echo "inactive: $(find /mnt/sysroot/inactive -xdev | wc -l) $(du -sk /mnt/sysroot/inactive | cut -f1)"
echo "cache: $(ls -A /mnt/data/osfleet/images 2>/dev/null | tr '\n' ' ')"
echo "supervisor: $(sed -n 's/^SUPERVISOR_VERSION=//p' /mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf) $(systemctl is-active balena-supervisor)"
echo "env: $(tr '\n' ' ' < /mnt/boot/resinOS_uEnv.txt)"
echo "boot: $(cat /proc/sys/kernel/random/boot_id)"
"""


class Steps:
    """Runs playbooks of osfleet.hup tasks against the lab's one device."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.host = lab.hosts[0]
        self.workdir = workdir
        self.catalog_path = str(lab.group_vars["hup_catalog"])
        self._n = 0

    def play(self, tasks: list[dict[str, t.Any]], *args: str, **kwargs: t.Any) -> PlaybookRun:
        self._n += 1
        book = self.workdir / f"play-{self._n}.yml"
        named = [{"name": f"{i} {next(iter(task))}", **task} for i, task in enumerate(tasks)]
        book.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": named}], sort_keys=False))
        return ansible_playbook(self.lab, *args, workdir=self.workdir, playbook=str(book), **kwargs)

    def results(self, run: PlaybookRun) -> list[TaskResult]:
        return [r for r in run.host_results(self.host) if r.action.startswith("osfleet.hup.")]

    def fingerprint(self) -> str:
        return self.lab.sh(self.host, FINGERPRINT)

    def catalog_copy(self, name: str, change: t.Callable[[dict[str, t.Any]], None]) -> str:
        data = copy.deepcopy(self.lab.catalog())
        change(data)
        path = self.workdir / name
        path.write_text(json.dumps(data))
        return str(path)

    def release(self, version: str) -> dict[str, t.Any]:
        return self.lab.release(version, GX)


def step(module: str, **args: t.Any) -> dict[str, t.Any]:
    return {f"osfleet.hup.{module}": args}


def release_step(module: str, version: str = TARGET, catalog: str = "{{ hup_catalog }}", **args: t.Any) -> dict[str, t.Any]:
    return step(module, catalog=catalog, target_version=version, **args)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def set_registries(primary: str | None = None, fallback: str | None = None) -> t.Callable[[dict[str, t.Any]], None]:
    def change(data: dict[str, t.Any]) -> None:
        if primary:
            data["registries"]["primary"] = primary
        if fallback:
            data["registries"]["fallback"] = fallback
    return change


def release_change(version: str, **fields: t.Any) -> t.Callable[[dict[str, t.Any]], None]:
    def change(data: dict[str, t.Any]) -> None:
        for rel in data["releases"]:
            if rel["device_type"] == GX and rel["version"] == version:
                rel.update(fields)
    return change


@pytest.fixture(scope="module")
def steps(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Steps:
    s = Steps(lab, tmp_path_factory.mktemp("prepare"))
    state = lab.state(s.host)
    assert (state.version, state.active_root, state.inactive_stamp) == (SOURCE, "resin-rootA", None), "a fresh lab device"
    return s


def assert_failed_cleanly(steps: Steps, run: PlaybookRun, before: str, *fragments: str) -> TaskResult:
    """The run failed on its last task with a message naming the device and the reason; nothing changed."""
    assert run.rc != 0, run.summary()
    failed = [r for r in steps.results(run) if r.failed]
    assert len(failed) == 1, run.summary()
    msg = failed[0].result["msg"]
    assert msg.startswith(f"{steps.host}: "), msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    assert failed[0].changed is False
    assert steps.fingerprint() == before, "a failed step must leave the device as it was"
    return failed[0]


# --- read-only: preflight ---------------------------------------------------------------------------

def test_preflight_on_a_device_that_needs_the_update(steps: Steps) -> None:
    before = steps.fingerprint()
    for args in ((), ("--check", "--diff")):
        run = steps.play([release_step("preflight")], *args)
        assert run.rc == 0, run.summary()
        (res,) = steps.results(run)
        assert res.changed is False
        assert (res.result["phase"], res.result["method"], res.result["problems"]) == ("needed", "balenahup", [])
        assert res.result["release"]["digest"] == steps.release(TARGET)["digest"]
        assert [r["ok"] for r in res.result["registries"]] == [True, True]
        assert res.result["device"]["version"] == SOURCE
    assert steps.fingerprint() == before


# --- bad input ---------------------------------------------------------------------------------------

UNKNOWN = f"unknown target version 9.9.9 for {GX}; known: 2.88.4, 2.113.0, 2.114.1"


@pytest.mark.parametrize("module", ["preflight", "fetch", "rootfs"])
def test_unknown_target_version(steps: Steps, module: str) -> None:
    before = steps.fingerprint()
    run = steps.play([release_step(module, version="9.9.9")])
    assert_failed_cleanly(steps, run, before, UNKNOWN)


def test_older_target(steps: Steps) -> None:
    def add_older(data: dict[str, t.Any]) -> None:
        older = copy.deepcopy(next(r for r in data["releases"] if r["version"] == SOURCE))
        older.update(version="2.80.0", tag="2.80.0", deltas=[])
        data["releases"].append(older)

    catalog = steps.catalog_copy("older.json", add_older)
    before = steps.fingerprint()
    run = steps.play([release_step("preflight", version="2.80.0", catalog=catalog)])
    assert_failed_cleanly(steps, run, before, "preflight failed: target 2.80.0 is older than the running 2.88.4 (downgrades are not allowed)")


def test_wrong_device_type(steps: Steps) -> None:
    before = steps.fingerprint()
    run = steps.play([release_step("preflight", version="6.1.0", device_type="jetson-xavier")])
    res = assert_failed_cleanly(steps, run, before, "the device is a genericx86-64-ext, the release is for jetson-xavier")
    assert any("needs the advanced update (takeover)" in p for p in res.result["problems"])


def test_unreachable_registries(steps: Steps) -> None:
    p1, p2 = closed_port(), closed_port()
    catalog = steps.catalog_copy("down.json", set_registries(f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"))
    before = steps.fingerprint()
    run = steps.play([release_step("preflight", catalog=catalog)])
    assert_failed_cleanly(steps, run, before, f"no registry answers from the device: primary 127.0.0.1:{p1}: curl: (7)",
                          f"fallback 127.0.0.1:{p2}: curl: (7)")
    run = steps.play([release_step("fetch", catalog=catalog)])
    res = assert_failed_cleanly(steps, run, before, f"all sources failed: delta (127.0.0.1:{p1}/osfleet/{GX}-delta@",
                                f"; registry (127.0.0.1:{p1}/osfleet/{GX}@", f"; fallback (127.0.0.1:{p2}/osfleet/{GX}@")
    assert [a["kind"] for a in res.result["attempts"]] == ["delta", "registry", "fallback"]


def test_lock_held_by_another_owner(steps: Steps) -> None:
    setup = steps.play([step("lock", owner="bob@elsewhere", run_id="b1", target_version=TARGET)])
    assert setup.rc == 0, setup.summary()
    try:
        before = steps.fingerprint()
        since = json.loads(steps.lab.read(steps.host, "/mnt/state/osfleet/hup.lock"))["since"]
        held = f"update already in progress: lock held by bob@elsewhere (run b1) since {since}, last refreshed "
        how = "to resume that run, run again as bob@elsewhere with hup_run_id=b1 (lock run_id=b1); to take the lock over, set hup_lock_force=true"
        run = steps.play([release_step("preflight", lock_owner=OWNER)])
        assert_failed_cleanly(steps, run, before, held, how)
        run = steps.play([step("lock", owner=OWNER)])
        assert_failed_cleanly(steps, run, before, held, how)
        run = steps.play([step("lock", owner=OWNER, state="absent")])
        assert_failed_cleanly(steps, run, before, f"lock held by bob@elsewhere (run b1) since {since}, last refreshed ", f"not by this run ({OWNER}, run -)")
        # the same owner with another run id (a second run on the same CI runner) does not share it
        run = steps.play([step("lock", owner="bob@elsewhere", run_id="b2")])
        assert_failed_cleanly(steps, run, before, held, how)
        run = steps.play([release_step("preflight", lock_owner="bob@elsewhere", lock_run_id="b2")])
        assert_failed_cleanly(steps, run, before, held, how)
        run = steps.play([step("lock", owner="bob@elsewhere", run_id="b2", state="absent")])
        assert_failed_cleanly(steps, run, before, "not by this run (bob@elsewhere, run b2)")
        # the lock is stamped with the device's boot id and uptime (its age is measured by them)
        lock = json.loads(steps.lab.read(steps.host, "/mnt/state/osfleet/hup.lock"))
        assert lock["boot_id"] == steps.lab.read(steps.host, "/proc/sys/kernel/random/boot_id").strip()
        assert 0 < lock["uptime"] <= float(steps.lab.read(steps.host, "/proc/uptime").split()[0])
    finally:
        cleanup = steps.play([step("lock", owner="bob@elsewhere", run_id="b1", state="absent")])
    assert cleanup.rc == 0 and steps.lab.state(steps.host).lock == ""


def test_missing_and_malformed_catalog(steps: Steps) -> None:
    missing = str(steps.workdir / "no-such-catalog.json")
    malformed = steps.workdir / "malformed.json"
    malformed.write_text('{"schema": 1, "releases": [')
    before = steps.fingerprint()
    for module in ("preflight", "fetch", "rootfs"):
        run = steps.play([release_step(module, catalog=missing)])
        assert_failed_cleanly(steps, run, before, f"catalog file {missing} does not exist")
    run = steps.play([release_step("preflight", catalog=str(malformed))])
    assert_failed_cleanly(steps, run, before, f"catalog {malformed} is not valid JSON: line 1")
    run = steps.play([step("supervisor", state="updated", catalog=missing)])
    assert_failed_cleanly(steps, run, before, f"catalog file {missing} does not exist")


def test_digest_mismatch(steps: Steps) -> None:
    wrong = "sha256:" + "0" * 64
    catalog = steps.catalog_copy("wrong-digest.json", release_change(TARGET, digest=wrong, deltas=[]))
    before = steps.fingerprint()
    run = steps.play([release_step("fetch", catalog=catalog)])
    res = assert_failed_cleanly(steps, run, before, "all sources failed: registry (127.0.0.1:", f"@{wrong}): ", "manifest unknown")
    assert [a["ok"] for a in res.result["attempts"]] == [False, False]


def test_full_data_partition(steps: Steps) -> None:
    free_kib = int(steps.lab.sh(steps.host, "df -Pk /mnt/data | awk 'NR==2 {print $4}'"))
    fill_mib = free_kib // 1024 - 40  # leaves ~40 MiB: less than the release + the 64 MiB margin
    steps.lab.sh(steps.host, 'dd if=/dev/zero of=/mnt/data/osfleet-fill bs=1M count="$1" 2>/dev/null && sync', str(fill_mib), timeout=300)
    try:
        before = steps.fingerprint()
        run = steps.play([release_step("preflight")])
        res = assert_failed_cleanly(steps, run, before, "not enough free space on /mnt/data: ", " MiB + 64 MiB margin)")
        # the release's own size (it changes when the lab's OS gains files), the margin, and more than is free
        free, needed, release = map(int, re.search(r"(\d+) MiB free, (\d+) MiB needed \(release (\d+) MiB", res.result["msg"]).groups())
        assert needed == release + 64 and free < needed and release >= 20, res.result["msg"]
    finally:
        steps.lab.sh(steps.host, "rm -f /mnt/data/osfleet-fill && sync")


# --- the steps, twice each, and as a dry run -----------------------------------------------------------

PREPARE = [
    step("lock", owner=OWNER, run_id="run-1", target_version=TARGET),
    step("supervisor", state="stopped"),
    release_step("fetch"),
    release_step("rootfs"),
]


def test_check_mode_plans_and_changes_nothing(steps: Steps) -> None:
    before = steps.fingerprint()
    run = steps.play([*PREPARE, step("supervisor", state="updated", catalog="{{ hup_catalog }}", target_version=TARGET)],
                     "--check", "--diff")
    assert run.rc == 0, run.summary()
    lock, stop, fetch, rootfs, update = steps.results(run)
    assert all(r.changed for r in (lock, stop, fetch, rootfs)), run.summary()
    assert "owner: ci@integration" in lock.result["diff"]["after"] and lock.result["diff"]["before"] == "(no lock)\n"
    assert stop.result["diff"] == {"before": {"version": SUPERVISOR_BEFORE, "active": True},
                                   "after": {"version": SUPERVISOR_BEFORE, "active": False}}
    assert [a["kind"] for a in fetch.result["attempts"]] == ["delta", "registry", "fallback"]
    assert rootfs.result["diff"]["before"] is None
    assert rootfs.result["diff"]["after"]["digest"] == steps.release(TARGET)["digest"]
    assert update.changed and update.result["supervisor"]["target"] == SUPERVISOR_AFTER
    assert all(r.result["actions"] for r in (lock, stop, fetch, rootfs, update))
    assert steps.fingerprint() == before


def test_prepare_twice(steps: Steps) -> None:
    first = steps.play(PREPARE, "--diff")
    assert first.rc == 0, first.summary()
    lock, stop, fetch, rootfs = steps.results(first)
    assert all(r.changed for r in (lock, stop, fetch, rootfs)), first.summary()
    delta = steps.release(TARGET)["deltas"][0]
    assert (fetch.result["source"], fetch.result["digest"], fetch.result["cached"]) == ("delta", delta["digest"], False)
    assert 0 < fetch.result["bytes"] < steps.release(TARGET)["size"], "a delta is smaller than the full image"
    assert (rootfs.result["mode"], rootfs.result["source"]) == ("delta", "delta")
    assert rootfs.result["diff"]["after"]["digest"] == steps.release(TARGET)["digest"]

    state = steps.lab.state(steps.host)
    assert state.inactive_stamp is not None
    assert (state.inactive_stamp["version"], state.inactive_stamp["digest"], state.inactive_stamp["source"]) == (
        TARGET, steps.release(TARGET)["digest"], "delta")
    assert json.loads(state.lock)["owner"] == OWNER and not state.supervisor_active
    assert (state.version, state.active_root, state.env["upgrade_available"]) == (SOURCE, "resin-rootA", "0"), "nothing switched"
    assert state.user_app_active, "the user application keeps running"
    assert steps.lab.sh(steps.host, 'ls -A "$1"', CACHE).split() == [".osfleet-cache", delta["digest"].split(":")[1]]
    assert "OK" in steps.lab.sh(steps.host, "cd /mnt/sysroot/inactive && sha256sum -c usr/share/osfleet/rootfs.sha256 | tail -n 1")

    before = steps.fingerprint()
    second = steps.play(PREPARE, "--diff")
    assert second.rc == 0, second.summary()
    assert [r.changed for r in steps.results(second)] == [False] * 4, second.summary()
    assert steps.results(second)[2].result["cached"] is True
    check = steps.play(PREPARE, "--check", "--diff")
    assert [r.changed for r in steps.results(check)] == [False] * 4, check.summary()
    assert steps.fingerprint() == before

    run = steps.play([release_step("preflight", lock_owner=OWNER)])
    assert run.rc == 0 and steps.results(run)[0].result["phase"] == "staged", run.summary()


def test_supervisor_twice_each(steps: Steps) -> None:
    update = step("supervisor", state="updated", catalog="{{ hup_catalog }}")
    for args, running, active in (
        (update, SUPERVISOR_AFTER, True),
        (step("supervisor", state="stopped"), SUPERVISOR_AFTER, False),
        (step("supervisor", state="started"), SUPERVISOR_AFTER, True),
    ):
        first = steps.play([args], "--diff")
        second = steps.play([args], "--diff")
        assert first.rc == 0 and second.rc == 0, first.summary() + second.summary()
        (res1,), (res2,) = steps.results(first), steps.results(second)
        state = steps.lab.state(steps.host)
        assert (state.supervisor_running, state.supervisor_active) == (running, active)
        assert res1.changed is True and res2.changed is False, (res1.result, res2.result)
        assert res1.result["supervisor"]["after"] == running and res1.result["supervisor"]["active"] == active


def test_lock_release_twice(steps: Steps) -> None:
    first = steps.play([step("lock", owner=OWNER, state="absent")], "--diff")
    second = steps.play([step("lock", owner=OWNER, state="absent")], "--diff")
    assert [steps.results(r)[0].changed for r in (first, second)] == [True, False]
    assert steps.results(first)[0].result["diff"]["after"] == "(no lock)\n"
    assert steps.lab.state(steps.host).lock == ""


# --- sources and failures while writing ------------------------------------------------------------------

def test_full_image_from_the_fallback_registry(steps: Steps) -> None:
    """Primary down: the delta and the primary's full image fail, the fallback's full image is used."""
    down = closed_port()
    catalog = steps.catalog_copy("primary-down.json", set_registries(primary=f"127.0.0.1:{down}"))
    tasks = [release_step("fetch", version=NEXT, catalog=catalog), release_step("rootfs", version=NEXT, catalog=catalog)]
    first = steps.play(tasks, "--diff")
    assert first.rc == 0, first.summary()
    fetch, rootfs = steps.results(first)
    assert [(a["kind"], a["ok"]) for a in fetch.result["attempts"]] == [("delta", False), ("registry", False), ("fallback", True)]
    assert fetch.result["source"] == "fallback" and fetch.result["digest"] == steps.release(NEXT)["digest"]
    assert fetch.result["bytes"] > steps.release(NEXT)["deltas"][0]["size"]
    assert any("failed first: delta (" in a for a in fetch.result["actions"])
    assert (rootfs.result["mode"], rootfs.result["stamp"]["source"], rootfs.result["stamp"]["version"]) == ("full", "fallback", NEXT)
    assert rootfs.result["diff"]["before"]["version"] == TARGET and rootfs.result["diff"]["after"]["version"] == NEXT
    second = steps.play(tasks)
    assert [r.changed for r in steps.results(second)] == [False, False], second.summary()


def test_rootfs_refuses_an_image_of_another_release(steps: Steps) -> None:
    """A catalog that names the digest of 2.114.1 for 2.113.0: the image is fetched and verified
    (its digest is the catalog's), but the written root says 2.114.1, so no stamp is written."""
    catalog = steps.catalog_copy("swapped.json", release_change(TARGET, digest=steps.release(NEXT)["digest"], deltas=[]))
    run = steps.play([release_step("fetch", catalog=catalog, sources=["registry"]), release_step("rootfs", catalog=catalog)])
    assert run.rc != 0
    fetch, rootfs = steps.results(run)
    assert fetch.result.get("failed") is not True
    assert rootfs.failed and rootfs.result["msg"] == (
        f"{steps.host}: writing resin-rootB failed on the device (exit 1): the written root is {NEXT} (its /etc/os-release), "
        f"the catalog says {TARGET}"
    )
    assert steps.lab.state(steps.host).inactive_stamp is None, "a root that is not the target carries no stamp"
    # the right catalog converges again
    good = steps.play([release_step("fetch"), release_step("rootfs")])
    assert good.rc == 0, good.summary()
    assert steps.lab.state(steps.host).inactive_stamp["digest"] == steps.release(TARGET)["digest"]


def test_interrupted_rootfs_is_written_again(steps: Steps) -> None:
    """The controller dies while rootfs writes: the device is never left with a stamped partial root,
    and running the step again converges (waiting for the orphaned write when it still runs)."""
    tasks = [release_step("fetch", version=NEXT, sources=["registry"]), release_step("rootfs", version=NEXT)]

    def started_rootfs(events: list[dict[str, t.Any]]) -> bool:
        return any(e["event"] == "start" and e["action"] == "osfleet.hup.rootfs" for e in events)

    def kill_soon(proc: t.Any) -> None:
        time.sleep(0.4)
        kill_controller(proc)

    killed = steps.play(tasks, trigger=started_rootfs, on_trigger=kill_soon)
    assert killed.rc != 0 and killed.triggered_at is not None
    stamp = steps.lab.state(steps.host).inactive_stamp
    assert stamp is None or stamp["version"] in (TARGET, NEXT)
    deadline = time.time() + 120
    while True:
        again = steps.play(tasks)
        if again.rc == 0 or time.time() > deadline:
            break
        assert "another fetch or root write is still running" in again.stdout, again.summary()
        time.sleep(1)
    assert again.rc == 0, again.summary()
    assert steps.lab.state(steps.host).inactive_stamp["digest"] == steps.release(NEXT)["digest"]
    assert "OK" in steps.lab.sh(steps.host, "cd /mnt/sysroot/inactive && sha256sum -c usr/share/osfleet/rootfs.sha256 | tail -n 1")
