# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report callback and the fleet inventory on a lab of five devices, checked against the devices.

One run of ``osfleet.hup.update`` through the lab's fleet file (inventory plugin
``osfleet.hup.fleet``) with the callback ``osfleet.hup.report`` enabled, where each device meets
another fate: two are updated to 2.113.0, one gets 2.115.0 (fails its health check: rolled back),
one a target the catalog lacks (fails at preflight) and one is powered off (unreachable). The
report must say what the devices themselves say afterwards (version read over SSH, run log on
the device), in report.json, junit.xml, the summary on stdout and report.html in Chromium. Then
the fleet inventory groups the devices by the OS version the report recorded, and ``ansible -m
raw`` reaches a device through it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from osfleet_browser import Page, hex_rgb, read_page
from osfleet_harness import STEP_TASKS, Lab, PlaybookRun, ansible_playbook, collections_path

from ansible_collections.osfleet.hup.plugins.plugin_utils.report_html import COLOURS

LAB_PREFIX = "itreport"
LAB_DEVICES = 5
SOURCE, TARGET, HEALTH_FAULT, MISSING = "2.88.4", "2.113.0", "2.115.0", "9.9.9"
VENV_BIN = Path(sys.executable).parent


@dataclasses.dataclass
class Fates:
    updated: list[str]
    rolled_back: str
    no_release: str
    offline: str


@pytest.fixture(scope="module")
def fates(lab: Lab) -> Fates:
    hosts = lab.hosts
    return Fates(updated=hosts[:2], rolled_back=hosts[2], no_release=hosts[3], offline=hosts[4])


@pytest.fixture(scope="module")
def fleet_lab(lab: Lab) -> Lab:
    """The lab driven through its fleet file (lab.fleet.yml) instead of inventory.yml."""
    fleet_file = lab.inventory.with_name("lab.fleet.yml")
    assert fleet_file.exists(), "the lab should write lab.fleet.yml next to inventory.yml"
    return dataclasses.replace(lab, inventory=fleet_file)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def run(lab: Lab, fleet_lab: Lab, fates: Fates, workdir: Path) -> tuple[PlaybookRun, dict[str, t.Any], Path]:
    targets = workdir / "targets.yml"
    targets.write_text(yaml.safe_dump({"all": {"vars": {"hup_target_version": TARGET}, "hosts": {
        fates.rolled_back: {"hup_target_version": HEALTH_FAULT},
        fates.no_release: {"hup_target_version": MISSING},
    }}}))
    report_dir = workdir / "report"
    lab.powercut(fates.offline)
    try:
        result = ansible_playbook(fleet_lab, "-i", str(targets), workdir=workdir / "ansible", callbacks=["osfleet.hup.report"],
                                  extra_vars={"osfleet_hup_report_dir": str(report_dir)})
    finally:
        lab.poweron(fates.offline)
    assert (report_dir / "report.json").exists(), result.summary()
    return result, json.loads((report_dir / "report.json").read_text()), report_dir


def by_name(report: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
    return {d["name"]: d for d in report["devices"]}


def test_run_fails_and_reports_every_device(lab: Lab, run: t.Any) -> None:
    result, report, _unused = run
    assert result.rc != 0, result.summary()
    assert sorted(by_name(report)) == lab.hosts
    assert report["schema"] == "osfleet.hup/report/1" and report["run"]["playbook"] == "osfleet.hup.update"
    assert report["totals"]["committed"] == 2 and report["totals"]["rolled_back"] == 1
    assert report["totals"]["failed"] == 1 and report["totals"]["unreachable"] == 1 and report["run"]["ok"] is False


def test_updated_devices_match_the_devices(lab: Lab, run: t.Any, fates: Fates) -> None:
    result, report, _unused = run
    devices = by_name(report)
    for host in fates.updated:
        dev, state = devices[host], lab.state(host)
        assert (dev["outcome"], dev["outcome_text"]) == ("committed", "committed"), dev
        assert state.version == TARGET == dev["version_after"] and state.committed, (host, state)
        assert dev["version_before"] == SOURCE and dev["target_version"] == TARGET and dev["device_type"] == "genericx86-64-ext"
        fetch = result.step(host, "osfleet.hup.fetch").result
        assert dev["method"] == result.step(host, "osfleet.hup.preflight").result["method"] == "balenahup"
        assert (dev["source"], dev["bytes"]) == (fetch["source"], fetch["bytes"]) and dev["bytes"] > 0
        # the run log the report names is the one on the device
        logs = lab.run_logs(host)
        assert dev["run_log"] and Path(dev["run_log"]).name in logs, (dev["run_log"], sorted(logs))
        assert [s["step"] for s in dev["steps"] if s["step"] in STEP_TASKS] == list(STEP_TASKS)
        assert all(s["duration"] is not None and s["duration"] >= 0 for s in dev["steps"])
        assert dev["steps"][0]["step"] == "preflight" and dev["started"] == dev["steps"][0]["started"]


def test_rolled_back_device_says_why(lab: Lab, run: t.Any, fates: Fates) -> None:
    result, report, _unused = run
    dev, state = by_name(report)[fates.rolled_back], lab.state(fates.rolled_back)
    health = result.step(fates.rolled_back, "osfleet.hup.health").result
    assert health["rolled_back"] is True
    assert (dev["outcome"], dev["rolled_back"], dev["rollback_reason"]) == ("rolled_back", True, health["rollback_reason"])
    assert dev["outcome_text"] == f"rolled back ({health['rollback_reason']})" and dev["failed_step"] == "health"
    assert state.version == SOURCE == dev["version_after"] and dev["target_version"] == HEALTH_FAULT
    assert dev["reason"] and dev["message"] and "rolled back" in dev["message"]


def test_device_without_a_release_failed_at_preflight(lab: Lab, run: t.Any, fates: Fates) -> None:
    _result, report, _unused = run
    dev, state = by_name(report)[fates.no_release], lab.state(fates.no_release)
    assert (dev["outcome"], dev["outcome_text"], dev["failed_step"]) == ("failed", "failed at step preflight", "preflight")
    assert MISSING in dev["reason"] and dev["target_version"] == MISSING
    assert state.version == SOURCE == dev["version_after"] and state.active_root == "resin-rootA"


def test_offline_device_is_unreachable_and_untouched(lab: Lab, run: t.Any, fates: Fates) -> None:
    _result, report, _unused = run
    dev, state = by_name(report)[fates.offline], lab.state(fates.offline)
    assert (dev["outcome"], dev["outcome_text"]) == ("unreachable", "unreachable (nothing changed)")
    assert dev["reason"].startswith("the device was unreachable: ") and dev["version_after"] is None and not dev["changed"]
    assert state.version == SOURCE and state.active_root == "resin-rootA" and not state.lock


def test_junit_and_summary(lab: Lab, run: t.Any, fates: Fates) -> None:
    result, report, report_dir = run
    root = ET.parse(report_dir / "junit.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert sorted(cases) == lab.hosts and root.get("failures") == "3"
    for host in fates.updated:
        assert cases[host].find("failure") is None
    assert cases[fates.no_release].find("failure").get("message", "").startswith("failed at step preflight: ")  # type: ignore[union-attr]
    assert cases[fates.rolled_back].find("failure").get("type") == "rolled_back"  # type: ignore[union-attr]
    assert cases[fates.offline].find("failure").get("type") == "unreachable"  # type: ignore[union-attr]
    summary = result.stdout[result.stdout.index("osfleet.hup report"):]
    for dev in report["devices"]:
        assert any(line.startswith(dev["name"] + " ") and line.endswith(dev["outcome_text"]) for line in summary.splitlines()), summary
    assert f"report: {report_dir / 'report.html'}" in summary
    assert (report_dir / "report.md").read_text().count("| " + lab.prefix) == len(lab.hosts)


def test_html_report_in_a_browser(run: t.Any, workdir: Path) -> None:
    _result, report, report_dir = run
    page: Page = read_page(report_dir / "report.html", workdir / "screenshot.png")
    for dev in report["devices"]:
        assert page.device_outcomes[dev["name"]] == dev["outcome"]
        assert dev["outcome_text"] in page.devices[dev["name"]] and (dev["version_after"] or "-") in page.devices[dev["name"]]
        drawn = page.bars[dev["name"]]
        assert drawn.outcome == dev["outcome"] and drawn.rgb == hex_rgb(COLOURS[dev["outcome"]]), (drawn, page.screenshot)
    assert list(page.waves) == [w["name"] for w in report["waves"]]


# --- the fleet inventory -------------------------------------------------------------------------

def ansible_env() -> dict[str, str]:
    return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": collections_path(), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"}


def test_fleet_inventory_groups_by_recorded_os_version(lab: Lab, run: t.Any, fates: Fates, workdir: Path) -> None:
    _result, _report, report_dir = run
    fleet = yaml.safe_load(lab.inventory.with_name("lab.fleet.yml").read_text())
    fleet["os_version_from"] = [str(report_dir.parent)]
    path = workdir / "versions.fleet.yml"
    path.write_text(yaml.safe_dump(fleet))
    proc = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(path), "--list"], capture_output=True, text=True,
                          env=ansible_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    groups = {name: sorted(value.get("hosts", [])) for name, value in data.items() if name.startswith("os_")}
    expected: dict[str, list[str]] = {}
    for host in lab.hosts:
        if host != fates.offline:  # the report could not see its version
            expected.setdefault("os_" + lab.state(host).version.replace(".", "_"), []).append(host)
    assert groups == expected
    assert sorted(data["ring_canary"]["hosts"]) == lab.hosts[:1] and sorted(data["ring_early"]["hosts"]) == lab.hosts[1:4]


def test_raw_through_the_fleet_inventory(lab: Lab, fleet_lab: Lab) -> None:
    host = lab.hosts[0]
    proc = subprocess.run([str(VENV_BIN / "ansible"), "-i", str(fleet_lab.inventory), "ring_canary", "-m", "raw", "-a",
                           ". /etc/os-release; echo \"osfleet-version=$VERSION\""],
                          capture_output=True, text=True, env=ansible_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{host} | CHANGED | rc=0" in proc.stdout and f"osfleet-version={lab.state(host).version}" in proc.stdout, proc.stdout


def test_a_failure_before_any_step_is_reported(lab: Lab, workdir: Path) -> None:
    """The role's own check fails before any step reaches the device: the device is still in the report."""
    host, report_dir = lab.hosts[0], workdir / "bad-run-id"
    result = ansible_playbook(lab, workdir=workdir / "ansible-bad", limit=host, callbacks=["osfleet.hup.report"],
                              extra_vars={"hup_target_version": TARGET, "hup_run_id": "not a file name", "osfleet_hup_report_dir": str(report_dir)})
    assert result.rc != 0
    dev = by_name(json.loads((report_dir / "report.json").read_text()))[host]
    assert dev["outcome"] == "failed" and "Check the hup_* variables" in dev["failed_step"], dev
    assert "may only hold letters" in dev["reason"] and not dev["steps"]
