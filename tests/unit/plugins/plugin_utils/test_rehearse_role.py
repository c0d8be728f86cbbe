# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rehearse role's drill distribution, drill and evidence tasks (roles/rehearse/tasks/bench.yml,
drills.yml) in a real ansible-playbook run on localhost, no device: a drill task whose arguments
cannot be templated (an undefined variable in hup_rehearsal_update_vars), or a device whose
hup_rehearsal_commands cannot be, is a failed drill of the evidence record, saying why, not the
end of the device's play without a record."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
import subprocess

from prepare_model import CATALOG, GX

VENV_BIN = Path(sys.executable).parent

PLAY = """
- name: A rehearsal planned for localhost as its bench device
  hosts: localhost
  gather_facts: false
  tasks:
    - name: What main.yml planned
      ansible.builtin.set_fact:
        hup_rehearsal_run: role-test
        hup_rehearsal_plan: {hosts: {localhost: [update, health]}, types: {%(type)s: [localhost]}, drills: [update, health]}
        hup_rehearsal_bench: {device_type: %(type)s, commands: {}}

    - name: The drills and their evidence
      ansible.builtin.import_role:
        name: osfleet.hup.rehearse
        tasks_from: drills
"""


def test_a_drill_task_that_cannot_be_templated_is_a_failed_drill_of_the_record(tmp_path: Path) -> None:
    (tmp_path / "play.yml").write_text(PLAY % {"type": GX})
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    extra = {"hup_from_version": "2.88.4", "hup_target_version": "2.113.0", "hup_catalog": str(tmp_path / "catalog.json"),
             "hup_rehearsal_dir": str(tmp_path / "evidence"), "hup_rehearsal_work_dir": str(tmp_path / "drills"),
             "hup_rehearsal_update_vars": {"hup_health_commands": ["test -e {{ hup_test_no_such_path }}"]}}
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0", "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"),
                           "-e", json.dumps(extra)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # the record did not pass: the device fails, after it is written
    [path] = (tmp_path / "evidence").glob("*/role-test.json")
    record = json.loads(path.read_text())
    assert (record["status"], record["pair"]["device_type"]) == ("failed", GX), record
    assert [(d["name"], d["outcome"]) for d in record["drills"]] == [("update", "failed"), ("health", "failed")], record["drills"]
    assert all("'hup_test_no_such_path' is undefined" in d["reason"] and d["device"] == "localhost" for d in record["drills"]), record["drills"]
    assert "drill(s) failed: update, health" in out, out[-3000:]


BENCH_PLAY = """
- name: Name the rehearsal
  hosts: localhost
  gather_facts: false
  tasks:
    - name: What main.yml named
      ansible.builtin.set_fact:
        hup_rehearsal_run: role-test

- name: Two bench devices of one type, as main.yml read them
  hosts: bench
  gather_facts: false
  tasks:
    - name: What main.yml read (device_info)
      ansible.builtin.set_fact:
        _hup_rehearsal_probe: {device: {device_type: %(type)s}}

    - name: The drills spread, run, and their evidence
      ansible.builtin.include_role:
        name: osfleet.hup.rehearse
        tasks_from: "{{ item }}"
      loop: [bench, drills]
"""

INVENTORY = """
bench:
  hosts:
    bench-a:
      # no drill may run here (the bench devices are this controller): its update runs' variables cannot be templated
      hup_rehearsal_update_vars: {hup_health_commands: ["test -e {{ hup_test_no_such_path }}"]}
      hup_rehearsal_commands: {health_fault: "true", fault_clear: "true"}
    bench-b:
      hup_rehearsal_update_vars: {hup_health_commands: ["test -e {{ hup_test_no_such_path }}"]}
      hup_rehearsal_commands: {health_fault: "plug {{ hup_test_no_such_plug }} off", fault_clear: "true"}
  vars:
    ansible_connection: local
    ansible_python_interpreter: %(python)s
"""


def test_a_command_that_cannot_be_templated_is_a_failed_drill_of_the_record_the_other_devices_go_on(tmp_path: Path) -> None:
    """A bench device whose hup_rehearsal_commands cannot be templated (an undefined variable) stays
    in the rehearsal: it keeps its share of the drills, each a failed drill of the record with the
    templating error as its reason, and the other device of its type runs its own."""
    (tmp_path / "play.yml").write_text(BENCH_PLAY % {"type": GX})
    (tmp_path / "inventory.yml").write_text(INVENTORY % {"python": sys.executable})
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    extra = {"hup_from_version": "2.88.4", "hup_target_version": "2.113.0", "hup_catalog": str(tmp_path / "catalog.json"),
             "hup_rehearsal_dir": str(tmp_path / "evidence"), "hup_rehearsal_work_dir": str(tmp_path / "drills"),
             "hup_rehearsal_drills": "cheap"}
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0", "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml"),
                           "-e", json.dumps(extra)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # the record did not pass: the devices fail, after it is written
    [path] = (tmp_path / "evidence").glob("*/role-test.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and record["devices"] == ["bench-a", "bench-b"], record
    mine = {d["device"]: d for d in record["drills"]}
    assert sorted(mine) == ["bench-a", "bench-b"] and all(d["outcome"] == "failed" for d in record["drills"]), record["drills"]
    assert "'hup_test_no_such_plug' is undefined" in mine["bench-b"]["reason"], mine["bench-b"]
    assert "'hup_test_no_such_path' is undefined" in mine["bench-a"]["reason"], mine["bench-a"]
