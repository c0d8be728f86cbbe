# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an operator sees when a variable is wrong, when a device refuses or cannot be reached, and
one run id per playbook run.

On two lab devices: a misspelled ``hup_*`` name or a boolean that is not one stops each host with
one sentence that names the device and the mistake, before anything reaches the device (no run
log, no lock, same boot); then an update in batches of one (``hup_serial=1``) writes the same run
id into the run log of both devices; a refused downgrade fails each device with a short message; a
host where nothing listens (loopback) is unreachable, not failed, and when it is the whole first
batch the devices Ansible then never tries are listed at the end.
"""

from __future__ import annotations

import json
import re
import socket
import typing as t
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, ansible_playbook

LAB_PREFIX = "itoper"
LAB_DEVICES = 2
TARGET = "2.113.0"


def run(lab: Lab, tmp_path: Path, **extra: object) -> PlaybookRun:
    return ansible_playbook(lab, workdir=tmp_path / "ansible", extra_vars={"hup_target_version": TARGET, **extra})


def untouched(lab: Lab, host: str, before: dict) -> None:
    assert lab.run_logs(host) == {}, f"{host}: a run log was written"
    assert lab.state(host) == before[host], f"{host}: the device changed"


@pytest.fixture(scope="module")
def before(lab: Lab) -> dict:
    return {h: lab.state(h) for h in lab.hosts}


@pytest.mark.parametrize(("extra", "sentence"), [
    ({"hup_target_versoin": "2.114.1"}, "unknown variable hup_target_versoin; did you mean hup_target_version?"),
    ({"hup_allow_downgrade": "ture"}, "hup_allow_downgrade must be true or false, not 'ture'"),
], ids=["misspelled-name", "misspelled-boolean"])
def test_a_wrong_variable_stops_every_host_in_one_sentence(lab: Lab, before: dict, tmp_path: Path, extra: dict, sentence: str) -> None:
    result = run(lab, tmp_path, **extra)
    assert result.rc != 0, result.summary()
    for host in lab.hosts:
        failed = result.failures(host)
        assert len(failed) == 1, f"{host}: {[(f.task, f.result.get('msg')) for f in failed]}"
        msg = failed[0].result.get("msg", "")
        assert msg == f"{host}: {sentence}", msg
        assert "argument_spec" not in str(failed[0].result), "the whole argument spec was printed"
        untouched(lab, host, before)


def test_one_run_id_across_batches(lab: Lab, before: dict, tmp_path: Path) -> None:
    result = run(lab, tmp_path, hup_serial=1)
    assert result.rc == 0, result.summary()
    logs = {host: sorted(lab.run_logs(host)) for host in lab.hosts}
    assert all(len(names) == 1 for names in logs.values()), logs
    assert len({names[0] for names in logs.values()}) == 1, f"each batch named its own run: {logs}"
    for host in lab.hosts:
        assert lab.state(host).version == TARGET


def updated(lab: Lab, tmp_path: Path) -> None:
    """The devices run TARGET (the test above did it, unless it was deselected)."""
    if any(lab.state(h).version != TARGET for h in lab.hosts):
        assert run(lab, tmp_path).rc == 0


#: a failed step's ``fatal: [host]: FAILED! => {...}`` line; it printed the whole device state
#: before (~1.9 KB for a refused preflight); a refused downgrade is ~1.1 KB now, its one sentence
#: (with the variable that allows it) in msg, reason and problems
FATAL_LINE_LIMIT = 1200


def test_a_refused_downgrade_fails_each_device_in_a_short_message(lab: Lab, tmp_path: Path) -> None:
    updated(lab, tmp_path)
    before = {h: lab.state(h) for h in lab.hosts}
    result = run(lab, tmp_path, hup_target_version="2.88.4")
    assert result.rc != 0, result.summary()
    fatal = {m.group(1): m.group(0) for m in re.finditer(r"^fatal: \[([^]]+)\]: FAILED! => .*$", result.stdout, re.M)}
    assert sorted(fatal) == lab.hosts, result.summary()
    for host in lab.hosts:
        line = fatal[host]
        assert len(line) < FATAL_LINE_LIMIT, f"{host}: the failure printed {len(line)} characters: {line}"
        (failed,) = result.failures(host)
        msg = failed.result["msg"]
        assert msg.startswith(f"{host}: preflight failed: ") and "older than the running 2.113.0 (downgrades are not allowed)" in msg, msg
        assert "set allow_downgrade (the role's hup_allow_downgrade) to allow it" in msg, msg
        assert json.dumps(msg)[1:-1] in line, "the fatal line carries the message"
        assert failed.result["device"]["version"] == TARGET and "services" not in failed.result["device"], failed.result["device"]
        assert lab.state(host) == before[host], f"{host}: the refused run changed the device"


def free_loopback_port(address: str) -> int:
    """A port on ``address`` (loopback) where nothing listens (bound, then closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def gone_first(lab: Lab, tmp_path: Path) -> tuple[str, PlaybookRun, dict[str, t.Any], dict]:
    """An update in batches of one whose first batch is a host where nothing listens, with the report."""
    updated(lab, tmp_path)
    before = {h: lab.state(h) for h in lab.hosts}
    gone, address = "gone-01", "127.0.0.7"
    inventory = tmp_path / "gone.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {gone: {
        "ansible_host": address, "ansible_port": free_loopback_port(address), "ansible_user": "root",
        "hup_catalog": lab.group_vars["hup_catalog"], "hup_registry_insecure": True}}}}))
    report_dir = tmp_path / "report"
    result = ansible_playbook(lab, "-i", str(inventory), workdir=tmp_path / "ansible", callbacks=("osfleet.hup.report",),
                              env={"OSFLEET_HUP_REPORT_DIR": str(report_dir)},
                              extra_vars={"hup_target_version": "2.114.1", "hup_serial": 1, "hup_hosts": ":".join([gone, *lab.hosts])})
    return gone, result, json.loads((report_dir / "report.json").read_text()), before


def test_a_device_that_cannot_be_reached_is_unreachable_not_failed(gone_first: t.Any) -> None:
    gone, result, report, _before = gone_first
    assert result.rc != 0, result.summary()
    assert result.stats[gone]["unreachable"] == 1 and result.stats[gone]["failures"] == 0, result.stats
    assert re.search(rf"^{gone} +: .*unreachable=1 +failed=0 ", result.stdout, re.M), result.summary()
    (preflight,) = [r for r in result.host_results(gone) if r.action == "osfleet.hup.preflight"]
    msg = preflight.result["msg"]
    assert preflight.event == "unreachable" and preflight.result["unreachable"] is True, preflight
    assert msg.startswith(f"{gone}: the device was unreachable: ") and "Connection refused" in msg, msg
    assert not msg.rstrip().endswith(":"), msg
    dev = {d["name"]: d for d in report["devices"]}[gone]
    assert dev["outcome"] == "unreachable" and dev["reason"].startswith("the device was unreachable: "), dev


def test_devices_never_tried_because_the_play_stopped_are_listed_at_the_end(lab: Lab, gone_first: t.Any) -> None:
    gone, result, report, before = gone_first
    assert {e["host"] for e in result.events if e["event"] == "start"} == {gone}, "Ansible went on after the first batch"
    assert report["run"]["not_tried"] == lab.hosts, report["run"]
    for dev in report["devices"]:
        if dev["name"] != gone:
            assert (dev["outcome"], dev["outcome_text"]) == ("skipped", "not tried (Ansible stopped the play before its batch)"), dev
    tail = result.stdout.rstrip().splitlines()
    (line,) = [x for x in tail if x.startswith("not tried: ")]
    assert line.startswith(f"not tried: {', '.join(lab.hosts)} (Ansible stopped the play before their batch"), line
    for host in lab.hosts:
        assert lab.state(host) == before[host], f"{host} was touched"
