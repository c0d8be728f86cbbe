# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report model (events -> report) and its renderings (json, junit, markdown, summary, html)."""

from __future__ import annotations

import json
import re
import typing as t
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.report import SCHEMA, ReportBuilder, iso, parse_iso, strip_host
from ansible_collections.osfleet.hup.plugins.plugin_utils.report_html import COLOURS, to_html
from ansible_collections.osfleet.hup.plugins.plugin_utils.report_render import (
    human_bytes,
    summary_table,
    to_junit,
    to_markdown,
    write_reports,
)

from report_events import MODULES, SOURCE, START, STEPS, TARGET, Clock, committed_run, failed_fetch_run, preflight, rolled_back_run, task

PLAY = "Update the host OS (standard HUP)"


def builder(check_mode: bool = False) -> tuple[ReportBuilder, Clock]:
    b = ReportBuilder("run-1", START, playbook="osfleet.hup.update", check_mode=check_mode, controller={"host": "ctl"})
    b.play_start(PLAY)
    return b, Clock()


def devices(report: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
    return {d["name"]: d for d in report["devices"]}


def fleet_report() -> dict[str, t.Any]:
    b, clock = builder()
    committed_run(b, clock, "dev-ok")
    preflight(b, clock, "dev-current", phase="current", version=TARGET)
    failed_fetch_run(b, clock, "dev-fetch")
    rolled_back_run(b, clock, "dev-rb")
    preflight(b, clock, "dev-nocat", status="failed", target="9.9.9", msg="no release 9.9.9 for genericx86-64-ext in the catalog")
    refused = "ssh: connect to host 127.0.0.1 port 22301: Connection refused"
    task(b, clock, "dev-off", "osfleet.hup.preflight", "unreachable", result={"unreachable": True, "msg": refused})
    return b.build(clock.tick(), recap={"dev-ok": {"ok": 14, "changed": 11, "failures": 0}})


def test_committed_device_has_versions_source_bytes_steps_and_log() -> None:
    dev = devices(fleet_report())["dev-ok"]
    assert dev["outcome"] == "committed" and dev["outcome_text"] == "committed"
    assert (dev["version_before"], dev["version_after"], dev["target_version"]) == (SOURCE, TARGET, TARGET)
    assert (dev["method"], dev["source"], dev["bytes"], dev["cached"], dev["phase"]) == ("balenahup", "delta", 1843200, False, "needed")
    assert dev["run_log"] == "/mnt/data/balenahup/osfleet-hup.20261201T100000Z-ab12.log" and dev["run_id"] == "20261201T100000Z-ab12"
    assert [s["step"] for s in dev["steps"]][:4] == ["preflight", "lock", "supervisor stopped", "fetch"]
    fetch = next(s for s in dev["steps"] if s["step"] == "fetch")
    assert fetch["duration"] == 5.0 and fetch["status"] == "changed" and fetch["module"] == "osfleet.hup.fetch"
    assert dev["wave"] == PLAY and dev["rolled_back"] is False and dev["reason"] is None
    assert dev["recap"] == {"ok": 14, "changed": 11, "failures": 0}
    assert dev["duration"] == pytest.approx(parse_iso(dev["ended"]) - parse_iso(dev["started"]), abs=0.01)


def test_already_current_device() -> None:
    dev = devices(fleet_report())["dev-current"]
    assert (dev["outcome"], dev["outcome_text"]) == ("current", "already current")
    assert dev["version_before"] == dev["version_after"] == TARGET


def test_failed_step_gives_step_and_reason_without_device_prefix() -> None:
    dev = devices(fleet_report())["dev-fetch"]
    assert (dev["outcome"], dev["outcome_text"], dev["failed_step"]) == ("failed", "failed at step fetch", "fetch")
    assert dev["reason"].startswith("no source worked: delta") and "dev-fetch:" not in dev["reason"]
    assert "failed at step fetch" in dev["message"] and dev["version_after"] == SOURCE


def test_rollback_gives_reason_and_old_version() -> None:
    dev = devices(fleet_report())["dev-rb"]
    assert (dev["outcome"], dev["outcome_text"]) == ("rolled_back", "rolled back (health)")
    assert dev["rolled_back"] and dev["rollback_reason"] == "health" and dev["failed_step"] == "health"
    assert dev["version_after"] == SOURCE and dev["target_version"] == "2.115.0"
    assert dev["source"] == "registry" and dev["bytes"] == 9000


def test_preflight_failure_names_preflight_and_takes_the_target_from_the_args() -> None:
    dev = devices(fleet_report())["dev-nocat"]
    assert (dev["outcome_text"], dev["reason"]) == ("failed at step preflight", "no release 9.9.9 for genericx86-64-ext in the catalog")
    assert dev["target_version"] == "9.9.9" and dev["version_before"] is None


def test_unreachable_before_any_change() -> None:
    dev = devices(fleet_report())["dev-off"]
    assert (dev["outcome"], dev["outcome_text"]) == ("unreachable", "unreachable (nothing changed)")
    assert "Connection refused" in dev["reason"] and dev["version_after"] is None


def test_unreachable_after_a_change_says_so() -> None:
    b, clock = builder()
    preflight(b, clock, "d")
    task(b, clock, "d", "osfleet.hup.lock", step="lock", result={"changed": True})
    task(b, clock, "d", "osfleet.hup.reboot", "unreachable", step="reboot", result={"unreachable": True, "msg": "timed out"})
    dev = devices(b.build(clock.tick()))["d"]
    assert dev["outcome_text"] == "unreachable after a change" and dev["steps"][-1]["status"] == "unreachable"


def test_totals_and_verdict() -> None:
    report = fleet_report()
    assert report["schema"] == SCHEMA
    assert report["totals"] == {"devices": 6, "committed": 1, "current": 1, "planned": 0, "failed": 2, "rolled_back": 1,
                                "unreachable": 1, "incomplete": 0, "deferred": 0, "skipped": 0}
    assert report["run"]["ok"] is False and report["run"]["target_versions"] == ["2.113.0", "2.115.0", "9.9.9"]
    assert [w["name"] for w in report["waves"]] == [PLAY]
    assert report["waves"][0]["decision"] == "no wave limit (not a rollout)" and not report["waves"][0]["halted"]
    json.loads(json.dumps(report))  # plain JSON data


def test_check_mode_is_planned_and_all_good_is_ok() -> None:
    b, clock = builder(check_mode=True)
    committed_run(b, clock, "d1")
    preflight(b, clock, "d2", phase="current", version=TARGET)
    report = b.build(clock.tick())
    assert [d["outcome"] for d in report["devices"]] == ["planned", "current"]
    assert report["run"]["ok"] and report["run"]["check_mode"]


def test_a_run_that_stopped_without_a_verdict_is_incomplete() -> None:
    b, clock = builder()
    preflight(b, clock, "d")
    task(b, clock, "d", "osfleet.hup.lock", step="lock", result={"changed": True})
    dev = devices(b.build(clock.tick()))["d"]
    assert dev["outcome_text"] == "incomplete (stopped after step lock)"


def test_tasks_of_other_modules_on_unknown_hosts_are_not_devices() -> None:
    b, clock = builder()
    task(b, clock, "localhost", "ansible.builtin.file", result={"changed": True})
    task(b, clock, "localhost", "ansible.builtin.debug", "failed", result={"failed": True}, ignore_errors=True)
    task(b, clock, "localhost", "ansible.builtin.fail", "failed", result={"failed": True, "msg": "rollout halted"})  # a rollout's halt
    committed_run(b, clock, "d")
    assert [d["name"] for d in b.build(clock.tick(), recap={"localhost": {"ok": 2}})["devices"]] == ["d"]


def test_a_failure_in_the_standard_role_before_any_step_makes_a_device() -> None:
    b, clock = builder()
    b.task_result("d", "t1", "failed", task="Check that the run id is usable in a file name", module="ansible.builtin.assert", step=None,
                  result={"failed": True, "msg": "d: hup_run_id may only hold ..."}, args={}, when=clock.tick(), role="osfleet.hup.standard")
    dev = devices(b.build(clock.tick()))["d"]
    assert (dev["outcome"], dev["failed_step"], dev["reason"]) == ("failed", "Check that the run id is usable in a file name", "hup_run_id may only hold ...")


def test_set_stats_channel_sets_waves_halt_deferred_and_extra_facts() -> None:
    b, clock = builder()
    committed_run(b, clock, "c1")
    failed_fetch_run(b, clock, "e1")
    committed_run(b, clock, "e2")
    custom = {
        "_run": {"osfleet_hup": {
            "rollout": {"id": "R1", "target_version": TARGET},
            "waves": {
                "broad": {"order": 3, "devices": ["b1", "b2"]},
                "canary": {"order": 1, "devices": ["c1"], "reason": "0 failures, limit 0: continued", "max_failures": 0},
                "early": {"order": 2, "devices": ["e1", "e2", "e3"], "halted": True, "reason": "1 failure > limit 0"},
            },
            "devices": {"e3": {"outcome": "deferred", "reason": "offline before any change"}, "c1": {"bake": "2h"}},
        }},
        "e2": {"osfleet_hup": {"note": "per host"}},
    }
    report = b.build(clock.tick(), custom_stats=custom)
    waves = {w["name"]: w for w in report["waves"]}
    assert [w["name"] for w in report["waves"]] == ["canary", "early", "broad"]
    assert waves["early"]["halted"] and waves["early"]["decision"] == "1 failure > limit 0"
    assert waves["early"]["counts"]["failed"] == 1 and waves["early"]["counts"]["deferred"] == 1 and waves["early"]["counts"]["committed"] == 1
    assert waves["canary"]["extra"] == {"max_failures": 0} and waves["canary"]["decision"].endswith("continued")
    assert waves["broad"]["counts"]["skipped"] == 2 and waves["broad"]["started"] is None and waves["broad"]["decision"] == "not started"
    devs = devices(report)
    assert (devs["e3"]["outcome"], devs["e3"]["reason"], devs["e3"]["wave"]) == ("deferred", "offline before any change", "early")
    assert devs["b1"]["outcome"] == "skipped" and devs["c1"]["extra"] == {"bake": "2h"} and devs["e2"]["extra"] == {"note": "per host"}
    assert report["rollout"] == {"id": "R1", "target_version": TARGET}
    assert report["run"]["halted"] and report["run"]["halted_waves"] == ["early"] and not report["run"]["ok"]


def test_helpers() -> None:
    assert iso(START) == "2027-01-15T08:00:00.000Z" and parse_iso(iso(START + 0.25)) == START + 0.25
    assert strip_host("dev: reason  with\nspaces", "dev") == "reason with spaces" and strip_host(None, "d") == ""
    assert human_bytes(None) == "-" and human_bytes(512) == "512 B" and human_bytes(1843200) == "1.8 MiB"


# --- renderings ---------------------------------------------------------------------------------

def test_junit_has_one_case_per_device_and_failures_with_step_and_reason() -> None:
    root = ET.fromstring(to_junit(fleet_report()))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert sorted(cases) == ["dev-current", "dev-fetch", "dev-nocat", "dev-off", "dev-ok", "dev-rb"]
    assert root.get("tests") == "6" and root.get("failures") == "4"
    assert cases["dev-ok"].find("failure") is None and cases["dev-current"].find("failure") is None
    failure = cases["dev-fetch"].find("failure")
    assert failure is not None and failure.get("type") == "failed"
    assert failure.get("message", "").startswith("failed at step fetch: no source worked")
    assert cases["dev-rb"].find("failure").get("message", "").startswith("rolled back (health)")  # type: ignore[union-attr]
    assert "run log on the device: /mnt/data/balenahup/osfleet-hup." in (cases["dev-ok"].findtext("system-out") or "")


def test_markdown_and_summary_name_every_device_and_wave() -> None:
    report = fleet_report()
    text = to_markdown(report)
    assert re.search(r"\| dev-ok \| .* \| 2\.88\.4 \| 2\.113\.0 \| observed \| balenahup \| delta \| 1\.8 MiB \| .* \| committed \|", text)
    assert "**dev-fetch**: failed at step fetch: no source worked" in text and "## Waves" in text
    summary = summary_table(report, "/r/report.html")
    lines = summary.splitlines()
    assert lines[0].split() == ["device", "wave", "from", "->", "to", "method", "source", "bytes", "time", "outcome"]
    assert any(line.startswith("dev-rb ") and line.rstrip().endswith("rolled back (health)") for line in lines)
    assert lines[-1] == "report: /r/report.html" and any(line.startswith(f"wave {PLAY}: 1 committed") for line in lines)


def test_the_summary_gives_a_rollout_wave_s_counts_once() -> None:
    """The rollout's set_stats (plugin_utils.rollout_report.report_stats) give the decision; the report counts."""
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_report import report_stats
    from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout as ro

    specs = ro.parse_waves([{"name": "canary", "hosts": "c", "max_failures": 0}, {"name": "broad", "percent": 100}])
    plan = {"id": "R1", "target_version": TARGET, "digest": "sha256:x", "fleet": ["c1", "b1"],
            "waves": [ro.wave_dict(specs[0], ["c1"], 1), ro.wave_dict(specs[1], ["b1"], 2)]}
    records = {"c1": {"status": "committed", "run": "1@t"}, "b1": {"status": "failed", "run": "1@t", "reason": "failed at step fetch"}}
    verdicts = {w["name"]: ro.judge(w, records) for w in plan["waves"]}
    state = {"status": "halted", "waves": {"canary": {"status": "passed", "reason": verdicts["canary"].reason},
                                           "broad": {"status": "halted", "reason": verdicts["broad"].reason}}}
    b, clock = builder()
    committed_run(b, clock, "c1")
    failed_fetch_run(b, clock, "b1")
    report = b.build(clock.tick(), custom_stats={"_run": {"osfleet_hup": report_stats(plan, state, records, "1@t", "/r")}})
    lines = [line for line in summary_table(report).splitlines() if line.startswith("wave ")]
    assert lines == ["wave canary: 1 committed; passed (halts at the 1st failure)",
                     "wave broad: 1 failed; HALTED: 1 failed (b1) > limit 0 (halts at the 1st failure): the rollout halted; "
                     "no device of a later wave was touched"], lines


def test_markdown_escapes_device_text() -> None:
    b, clock = builder()
    preflight(b, clock, "d", status="failed", msg="bad <img src=x onerror=alert(1)> | column")
    text = to_markdown(b.build(clock.tick()))
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt; \\| column" in text


def test_html_is_self_contained_escaped_and_coloured() -> None:
    b, clock = builder()
    committed_run(b, clock, "<dev&1>")
    page = to_html(b.build(clock.tick()))
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "@import" not in page
    assert "&lt;dev&amp;1&gt;" in page and "<dev&1>" not in page
    assert f'fill="{COLOURS["committed"]}"' in page and 'class="bar"' in page


def test_write_reports_writes_the_four_files(tmp_path: t.Any) -> None:
    written = write_reports(fleet_report(), tmp_path / "r")
    assert sorted(p.name for p in written) == ["junit.xml", "report.html", "report.json", "report.md"]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["totals"]["devices"] == 6
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]


def test_devices_are_listed_by_wave_then_name() -> None:
    b, clock = builder()
    for host in ("z-canary", "a-broad", "m-broad"):
        committed_run(b, clock, host)
    custom = {"_run": {"osfleet_hup": {"waves": {"canary": {"order": 1, "devices": ["z-canary"]},
                                                 "broad": {"order": 2, "devices": ["m-broad", "a-broad"]}}}}}
    assert [d["name"] for d in b.build(clock.tick(), custom_stats=custom)["devices"]] == ["z-canary", "a-broad", "m-broad"]


def test_a_step_that_cannot_connect_makes_the_device_unreachable() -> None:
    """A step after the preflight fails (so the rescue runs) with the unreachable wording of plugin_utils.action."""
    b, clock = builder()
    msg = "d: the device was unreachable: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.1 port 22309: Connection refused"
    task(b, clock, "d", "osfleet.hup.lock", "failed", result={"failed": True, "unreachable": False, "msg": msg})
    task(b, clock, "d", "ansible.builtin.fail", "failed", result={"failed": True, "msg": "d: update failed at step preflight"})
    task(b, clock, "e", "osfleet.hup.lock", "failed", result={"failed": True, "msg": msg.replace("d:", "e:", 1)}, ignore_errors=True)
    dev = devices(b.build(clock.tick()))["d"]
    assert (dev["outcome"], dev["outcome_text"]) == ("unreachable", "unreachable (nothing changed)")
    assert dev["reason"].startswith("the device was unreachable: Failed to connect") and dev["steps"][0]["status"] == "unreachable"


def test_hosts_of_a_play_stopped_before_their_batch_are_listed_as_not_tried() -> None:
    """serial 1: the first batch's only device was unreachable, so Ansible stopped the play (and the
    run); the hosts of the later batches never ran a task. The play starts once per batch."""
    b, clock = builder()
    hosts = ["gone", "b", "c"]
    b.play_start("Update", "play-1", hosts)
    task(b, clock, "gone", "ansible.builtin.set_fact", result={"changed": False, "ansible_facts": {}})
    task(b, clock, "gone", "osfleet.hup.preflight", "unreachable", result={"unreachable": True, "msg": "gone: the device was unreachable: refused"})
    report = b.build(clock.tick())
    assert report["run"]["not_tried"] == ["b", "c"] and report["run"]["ok"] is False
    found = devices(report)
    assert (found["gone"]["outcome"], found["b"]["outcome"], found["c"]["outcome"]) == ("unreachable", "skipped", "skipped")
    assert found["b"]["outcome_text"] == "not tried (Ansible stopped the play before its batch)" and found["b"]["wave"] == "Update"
    summary = summary_table(report)
    assert summary.splitlines()[-1].startswith("not tried: b, c (Ansible stopped the play before their batch: a serial batch in which"), summary


def test_a_play_that_ran_every_batch_lists_nobody_as_not_tried() -> None:
    b, clock = builder()
    for host in ("a", "b"):
        b.play_start("Update", "play-1", ["a", "b"])  # once per batch
        committed_run(b, clock, host)
    report = b.build(clock.tick())
    assert report["run"]["not_tried"] == [] and report["run"]["plays"].count("Update") == 1 and report["run"]["ok"] is True
    assert "not tried" not in summary_table(report)


def test_a_play_the_playbook_ended_before_any_task_lists_nobody_as_not_tried() -> None:
    """The rollout's first play (the rehearsal gate's pairs) ends itself with ``meta: end_play`` when
    no evidence is required: no host of it started a task (meta tasks send no runner callback), and
    Ansible stopping a play needs a batch that failed, so a play of which no host was tried is not
    one Ansible stopped: its hosts are not 'not tried' and the run is still ok."""
    b, clock = builder()
    b.play_start("Read the devices' pairs for the rehearsal gate", "play-0", ["a", "b"])
    b.play_start("Update", "play-1", ["a", "b"])
    for host in ("a", "b"):
        committed_run(b, clock, host)
    report = b.build(clock.tick())
    assert report["run"]["not_tried"] == [] and report["run"]["ok"] is True, report["run"]
    assert {d["outcome"] for d in report["devices"]} == {"committed"}
    assert "not tried" not in summary_table(report)


def _takeover_run(b: ReportBuilder, clock: Clock, host: str, *, check_mode: bool = False) -> None:
    """The advanced update as the role osfleet.hup.advanced runs it: preflight (method takeover), lock,
    takeover staged (the disk image downloaded into RAM), takeover flashed, health."""
    task(b, clock, host, "osfleet.hup.preflight", result={
        "changed": False, "phase": "needed", "method": "takeover", "release": {"version": "6.1.0"},
        "device": {"version": "5.1.0", "device_type": "jetson-xavier"}}, args={"target_version": "6.1.0"})
    task(b, clock, host, "osfleet.hup.lock", step="lock", result={"changed": True})
    plan = {"download_bytes": 35206130, "keep": ["config.json"]}
    task(b, clock, host, "osfleet.hup.takeover", step="takeover staged",
         result={"changed": True, "plan": plan, "downloaded": 0 if check_mode else 35206130})
    if check_mode:
        return
    task(b, clock, host, "osfleet.hup.takeover", step="takeover flashed",
         result={"changed": True, "plan": plan, "downloaded": 0, "host_key": "ssh-ed25519 AAAA"})
    task(b, clock, host, "osfleet.hup.health", step="health",
         result={"changed": False, "committed": True, "rolled_back": False, "device": {"version": "6.1.0", "device_type": "jetson-xavier"}})


def test_an_advanced_update_reports_its_method_the_disk_image_and_the_commit() -> None:
    b, clock = builder()
    _takeover_run(b, clock, "jx-01")
    dev = devices(b.build(clock.tick()))["jx-01"]
    assert (dev["outcome"], dev["method"], dev["source"], dev["bytes"]) == ("committed", "takeover", "disk image", 35206130), dev
    assert (dev["version_before"], dev["version_after"]) == ("5.1.0", "6.1.0")
    assert [s["step"] for s in dev["steps"]] == ["preflight", "lock", "takeover staged", "takeover flashed", "health"]


def test_an_advanced_update_in_check_mode_reports_the_bytes_it_would_download() -> None:
    b, clock = builder(check_mode=True)
    _takeover_run(b, clock, "jx-01", check_mode=True)
    dev = devices(b.build(clock.tick()))["jx-01"]
    assert (dev["outcome"], dev["source"], dev["bytes"]) == ("planned", "disk image", 35206130), dev


def _hostapp_pull_run(b: ReportBuilder, clock: Clock, host: str, *, pulled: str, nbytes: int) -> None:
    """A balenaOS device with the pull transport: the fetch step fetches nothing ahead (``bytes`` 0, the
    source tried first); the rootfs step's hostapp-update pulls, and says what it pulled."""
    preflight(b, clock, host)
    for step in STEPS:
        result: dict[str, t.Any] = {"changed": True}
        if step == "fetch":
            result.update(source="delta", bytes=0, cached=False, transport="pull", writer="hostapp")
        if step == "rootfs":
            result.update(mode="hostapp", source=pulled, bytes=nbytes, writer="hostapp")
        if step == "health":
            result.update(committed=True, rolled_back=False, device={"version": TARGET, "device_type": "genericx86-64-ext"})
        task(b, clock, host, "osfleet.hup." + MODULES[step], step=step, result=result)


def test_a_hostapp_pull_reports_the_source_and_bytes_hostapp_update_pulled() -> None:
    b, clock = builder()
    _hostapp_pull_run(b, clock, "bo-delta", pulled="delta", nbytes=1843200)
    _hostapp_pull_run(b, clock, "bo-full", pulled="registry", nbytes=52428800)
    report = b.build(clock.tick())
    found = devices(report)
    assert (found["bo-delta"]["source"], found["bo-delta"]["bytes"]) == ("delta", 1843200), found["bo-delta"]
    # the delta failed on the device and hostapp-update fell back to the full image: the report says so
    assert (found["bo-full"]["source"], found["bo-full"]["bytes"]) == ("registry", 52428800), found["bo-full"]
    assert "1.8 MiB" in summary_table(report) and "0 B" not in summary_table(report)


def test_a_device_an_earlier_run_updated_shows_its_versions_from_the_rollout_record() -> None:
    """A device this run did not touch (its wave passed in an earlier run): the report gives the
    versions the rollout recorded for it, not '? -> ?'."""
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_report import report_stats
    from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout as ro

    specs = ro.parse_waves([{"name": "canary", "hosts": "c", "max_failures": 0}, {"name": "broad", "percent": 100}])
    plan = {"id": "R1", "target_version": TARGET, "digest": "sha256:x", "fleet": ["c1", "b1"],
            "waves": [ro.wave_dict(specs[0], ["c1"], 1), ro.wave_dict(specs[1], ["b1"], 2)]}
    records = {"c1": {"status": "committed", "run": "1@t", "from_version": SOURCE, "to_version": TARGET, "os_version": TARGET},
               "b1": {"status": "committed", "run": "2@t"}}
    state = {"status": "done", "waves": {"canary": {"status": "passed"}, "broad": {"status": "passed"}}}
    b, clock = builder()
    committed_run(b, clock, "b1")
    report = b.build(clock.tick(), custom_stats={"_run": {"osfleet_hup": report_stats(plan, state, records, "2@t", "/r")}})
    found = devices(report)
    assert (found["c1"]["version_before"], found["c1"]["version_after"], found["c1"]["target_version"]) == (SOURCE, TARGET, TARGET), found["c1"]
    assert found["c1"]["outcome_text"] == "committed (in an earlier run)"
    assert f"{SOURCE} -> {TARGET}" in [line for line in summary_table(report).splitlines() if line.startswith("c1 ")][0]
    # what this run saw wins over the record
    assert (found["b1"]["version_before"], found["b1"]["version_after"]) == (SOURCE, TARGET), found["b1"]
    # and the report says where each device's versions came from
    assert (found["c1"]["versions_from"], found["b1"]["versions_from"]) == ("record", "observed")


def test_a_device_the_run_deferred_shows_the_recorded_versions_and_says_so() -> None:
    """A device this run tried but could not reach (the rollout defers it): it has its ``ended``
    (its preflight ran), and its versions are the rollout's record, which ``versions_from`` says;
    a device that answered nothing, without a record, has none."""
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_report import report_stats
    from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout as ro

    specs = ro.parse_waves([{"name": "all", "percent": 100}])
    plan = {"id": "R1", "target_version": TARGET, "digest": "sha256:x", "fleet": ["d1", "d2"], "waves": [ro.wave_dict(specs[0], ["d1", "d2"], 1)]}
    records = {"d1": {"status": "deferred", "run": "2@t", "from_version": SOURCE, "os_version": SOURCE, "reason": "d1: unreachable"},
               "d2": {"status": "deferred", "run": "2@t", "reason": "d2: unreachable"}}
    b, clock = builder()
    for host in ("d1", "d2"):
        task(b, clock, host, "osfleet.hup.preflight", "unreachable", result={"unreachable": True, "msg": "timed out"})
    report = b.build(clock.tick(), custom_stats={"_run": {"osfleet_hup": report_stats(plan, {"status": "running"}, records, "2@t", "/r")}})
    found = devices(report)
    assert found["d1"]["outcome"] == "deferred" and found["d1"]["ended"], found["d1"]
    assert (found["d1"]["version_after"], found["d1"]["versions_from"]) == (SOURCE, "record"), found["d1"]
    assert (found["d2"]["version_after"], found["d2"]["versions_from"]) == (None, None), found["d2"]


def test_the_pages_say_where_each_device_s_versions_came_from() -> None:
    """report.md and report.html show ``versions_from`` beside the versions: ``observed`` (this run
    read them on the device), ``record`` (the rollout's record: a device this run did not touch or
    could not reach), ``-`` (none known)."""
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_report import report_stats
    from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout as ro

    specs = ro.parse_waves([{"name": "all", "percent": 100}])
    plan = {"id": "R1", "target_version": TARGET, "digest": "sha256:x", "fleet": ["c1", "d1", "d2"],
            "waves": [ro.wave_dict(specs[0], ["c1", "d1", "d2"], 1)]}
    records = {"d1": {"status": "deferred", "run": "2@t", "from_version": SOURCE, "os_version": SOURCE, "reason": "d1: unreachable"},
               "d2": {"status": "deferred", "run": "2@t", "reason": "d2: unreachable"}}
    b, clock = builder()
    committed_run(b, clock, "c1")
    for host in ("d1", "d2"):
        task(b, clock, host, "osfleet.hup.preflight", "unreachable", result={"unreachable": True, "msg": "timed out"})
    report = b.build(clock.tick(), custom_stats={"_run": {"osfleet_hup": report_stats(plan, {"status": "running"}, records, "2@t", "/r")}})
    assert [d["versions_from"] for d in report["devices"]] == ["observed", "record", None]
    text = to_markdown(report)
    assert "| device | wave | from | to | versions from | method |" in text, text
    assert re.search(rf"\| c1 \| all \| {re.escape(SOURCE)} \| {re.escape(TARGET)} \| observed \| balenahup \|", text), text
    assert re.search(rf"\| d1 \| all \| {re.escape(SOURCE)} \| {re.escape(SOURCE)} \| record \| ", text), text
    assert re.search(r"\| d2 \| all \| - \| - \| - \| ", text), text
    page = to_html(report)
    assert "<th>versions from</th>" in page
    cells = {name: re.findall(r"<td[^>]*>(.*?)</td>", row) for name, row in re.findall(r'<tr class="device" data-device="([^"]+)"[^>]*>(.*?)</tr>', page)}
    header = re.findall(r"<th>(.*?)</th>", page.split('<table id="devices">', 1)[1].split("</tr>", 1)[0])
    column = header.index("versions from")
    assert {name: row[column] for name, row in cells.items()} == {"c1": "observed", "d1": "record", "d2": "-"}, cells
