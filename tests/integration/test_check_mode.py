# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A dry run that tells the truth (issue 8): ``--check --diff`` of osfleet.hup.update, then the real
run on the same two lab devices, compared step by step.

One device takes the default sources (a delta), the other only the registry (the full image), so
that the bytes over the wire are predicted for both. The check run must change nothing on the
devices (read from the devices themselves); every osfleet.hup step must predict the ``changed``
the real run then reports, the fetch its source and bytes, the root write its mode and source, the
reboot whether it reboots and into which root; every step that would change shows its plan in the normal output (a diff, without
``-v``), and the summary line says method, source, bytes and reboot, and names no run log.
"""

from __future__ import annotations

import re
import typing as t

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, TaskResult, ansible_playbook

LAB_PREFIX = "itcheck"
LAB_DEVICES = 2
SOURCE, TARGET = "2.88.4", "2.113.0"
#: the second device fetches the full image (no delta), the first the default sources
FULL_SOURCES = ["registry", "fallback"]

# What a check run must leave as it is, in one round trip: boot and state partition files, the
# inactive root, the image cache, the run logs, the services and the boot.
SNAPSHOT = r"""
cd /mnt/boot && find . -type f | sort | while IFS= read -r f; do sha256sum "$f"; done
cd /mnt/state && find . -type f | sort | while IFS= read -r f; do sha256sum "$f"; done
echo "inactive stamp: $(cat /mnt/sysroot/inactive/.osfleet-release.json 2>/dev/null)"
echo "inactive files: $(find /mnt/sysroot/inactive -xdev | wc -l) $(du -sk /mnt/sysroot/inactive | cut -f1)"
echo "cache and run logs:"; find /mnt/data/osfleet /mnt/data/balenahup 2>/dev/null | sort
for s in balena-supervisor balena user-app rollback-health; do echo "$s $(systemctl is-active $s)"; done
echo "boot id: $(cat /proc/sys/kernel/random/boot_id)"
"""


def snapshot(lab: Lab, host: str) -> tuple[t.Any, str]:
    return lab.state(host), lab.sh(host, SNAPSHOT)


def steps(run: PlaybookRun, host: str) -> list[TaskResult]:
    """The osfleet.hup steps that ran on ``host``, in order."""
    return [r for r in run.host_results(host) if r.action.startswith("osfleet.hup.") and r.event != "skipped"]


def task_output(stdout: str, task: str) -> str:
    """The normal output of the task whose name starts with ``task`` (its banner up to the next one)."""
    parts = re.split(r"^TASK \[", stdout, flags=re.M)
    found = [p for p in parts if p.startswith(f"osfleet.hup.standard : {task}")]
    assert found, f"no output of {task!r}"
    return found[0]


def summary(run: PlaybookRun, host: str) -> str:
    return str(next(r.result["msg"] for r in run.host_results(host) if r.task.endswith("Report the update")))


@pytest.fixture(scope="module")
def runs(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[dict[str, t.Any]]:
    full_host = lab.hosts[1]
    host_vars = lab.inventory.parent / "host_vars" / f"{full_host}.yml"
    host_vars.parent.mkdir(exist_ok=True)
    host_vars.write_text(yaml.safe_dump({"hup_sources": FULL_SOURCES}), encoding="utf-8")
    try:
        work = tmp_path_factory.mktemp("check_mode")
        before = {h: snapshot(lab, h) for h in lab.hosts}
        for host, (state, _snap) in before.items():
            assert (state.version, state.active_root) == (SOURCE, "resin-rootA"), f"{host}: the lab should start on {SOURCE} from resin-rootA"
        check = ansible_playbook(lab, "--check", "--diff", workdir=work, extra_vars={"hup_target_version": TARGET})
        after_check = {h: snapshot(lab, h) for h in lab.hosts}
        real = ansible_playbook(lab, "--diff", workdir=work, extra_vars={"hup_target_version": TARGET})
        yield {"before": before, "check": check, "after_check": after_check, "real": real}
    finally:
        host_vars.unlink(missing_ok=True)


def test_both_runs_succeed(runs: dict[str, t.Any]) -> None:
    for run in (runs["check"], runs["real"]):
        assert run.rc == 0 and not run.failures(), run.summary()


def test_check_run_changes_nothing_on_the_devices(lab: Lab, runs: dict[str, t.Any]) -> None:
    for host in lab.hosts:
        (state, snap), (state_after, snap_after) = runs["before"][host], runs["after_check"][host]
        assert state_after == state, f"{host}: --check changed the device state (version, root, env, lock, supervisor)"
        assert snap_after == snap, f"{host}: --check changed files on the device (boot, state, inactive root, cache, run logs)"
        real = lab.state(host)
        assert (real.version, real.active_root) == (TARGET, "resin-rootB"), f"{host}: the real run did not update it"


def test_every_step_predicts_what_the_real_run_does(lab: Lab, runs: dict[str, t.Any]) -> None:
    check, real = runs["check"], runs["real"]
    for host in lab.hosts:
        predicted, done = steps(check, host), steps(real, host)
        assert [r.task for r in predicted] == [r.task for r in done], f"{host}: the check run ran other steps"
        wrong = [f"{p.task}: check changed={p.changed}, real changed={d.changed}" for p, d in zip(predicted, done) if p.changed != d.changed]
        assert not wrong, f"{host}: predictions that the real run did not keep:\n" + "\n".join(wrong)


def test_fetch_predicts_source_and_bytes(lab: Lab, runs: dict[str, t.Any]) -> None:
    kinds = {}
    for host in lab.hosts:
        planned, fetched = runs["check"].step(host, "osfleet.hup.fetch").result, runs["real"].step(host, "osfleet.hup.fetch").result
        assert (planned["source"], planned["bytes"]) == (fetched["source"], fetched["bytes"]), f"{host}: planned {planned}, fetched {fetched}"
        assert planned["bytes"] > 0
        kinds[host] = fetched["source"]
    assert kinds == {lab.hosts[0]: "delta", lab.hosts[1]: "registry"}, "one device takes the delta, the other the full image"
    delta, full = (runs["real"].step(h, "osfleet.hup.fetch").result["bytes"] for h in lab.hosts)
    assert delta < full


def test_rootfs_predicts_mode_and_source(lab: Lab, runs: dict[str, t.Any]) -> None:
    for host, (mode, source) in zip(lab.hosts, (("delta", "delta"), ("full", "registry"))):
        planned, written = runs["check"].step(host, "osfleet.hup.rootfs").result, runs["real"].step(host, "osfleet.hup.rootfs").result
        assert (planned["mode"], planned["source"]) == (written["mode"], written["source"]) == (mode, source), (planned, written)
        assert planned["diff"]["after"]["source"] == written["stamp"]["source"]


def test_reboot_is_predicted(lab: Lab, runs: dict[str, t.Any]) -> None:
    for host in lab.hosts:
        planned, done = runs["check"].step(host, "osfleet.hup.reboot"), runs["real"].step(host, "osfleet.hup.reboot")
        assert planned.result["rebooted"] is True and done.result["rebooted"] is True, (planned.result, done.result)
        assert planned.result["expected_root"] == done.result["device"]["active_root"] == "resin-rootB"


def test_each_change_shows_its_plan_in_the_normal_output(lab: Lab, runs: dict[str, t.Any]) -> None:
    check = runs["check"]
    for host in lab.hosts:
        for step in steps(check, host):
            if step.changed:
                assert step.result.get("diff"), f"{host}: {step.task} would change but shows no plan (diff)"
    out = check.stdout
    fetch = task_output(out, "Fetch the target image")
    assert "from delta (" in fetch and "from registry (" in fetch and "bytes over the wire" in fetch, fetch
    assert "+# boot files on /mnt/boot: those of the release osfleet.hup.rootfs writes to resin-rootB" in task_output(out, "Copy the new boot files")
    assert "+a new boot from resin-rootB" in task_output(out, "Reboot into the new OS")
    release = task_output(out, "Release the update lock")
    assert "-owner: " in release and f"-target: {TARGET}" in release, release  # the lock the take plans, target included


def test_summary_says_what_will_happen(lab: Lab, runs: dict[str, t.Any]) -> None:
    check, real = runs["check"], runs["real"]
    for host in lab.hosts:
        fetch = real.step(host, "osfleet.hup.fetch").result
        said, done = summary(check, host), summary(real, host)
        for text in (said, done):
            assert "method balenahup" in text and f"image from {fetch['source']} ({fetch['bytes']} bytes over the wire)" in text, text
        assert "check mode" in said and "reboot into resin-rootB" in said, said
        assert "/mnt/data/balenahup" not in said and "no run log" in said, f"check mode writes no run log: {said}"
        assert "committed" in done and "rebooted into resin-rootB" in done and "run log /mnt/data/balenahup/" in done, done


def test_only_the_real_run_writes_a_run_log(lab: Lab, runs: dict[str, t.Any]) -> None:
    for host in lab.hosts:
        logs = lab.run_logs(host)
        assert len(logs) == 1, f"{host}: run logs {sorted(logs)}: the check run must write none"
