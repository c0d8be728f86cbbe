# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an operator sees when a variable is wrong, and one run id per playbook run.

On two lab devices: a misspelled ``hup_*`` name or a boolean that is not one stops each host with
one sentence that names the device and the mistake, before anything reaches the device (no run
log, no lock, same boot); then an update in batches of one (``hup_serial=1``) writes the same run
id into the run log of both devices.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from osfleet_harness import Lab, PlaybookRun, ansible_playbook

LAB_PREFIX = "itoperator"
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
