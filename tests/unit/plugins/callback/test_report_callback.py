# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The callback osfleet.hup.report in real ansible-playbook runs on localhost (no device).

What needs no device: the options (env, extra vars, ini, per_run), the set_stats channel end to
end (aggregated over several calls, report_dir, deferred devices, halt decisions, per-host data),
and that a run without osfleet.hup steps or stats writes nothing. Runs against lab devices are in
tests/integration/test_report.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

VENV_BIN = Path(sys.executable).parent

CHANNEL_PLAY = """
- name: A rollout's bookkeeping
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Canary wave verdict
      ansible.builtin.set_stats:
        data:
          osfleet_hup:
            rollout: {id: R7, target_version: 2.113.0}
            waves: {canary: {order: 1, devices: [dev-a], reason: "0 failures, limit 0: continued"}}
    - name: Early wave verdict and a deferred device
      ansible.builtin.set_stats:
        data:
          osfleet_hup:
            waves: {early: {order: 2, devices: [dev-b, dev-c], halted: true, reason: "1 deferred of 2: inconclusive, paused"}}
            devices: {dev-b: {outcome: deferred, reason: offline before any change}}
    - name: Report directory
      ansible.builtin.set_stats:
        data: {osfleet_hup: {report_dir: "{{ report_dir }}"}}
      when: report_dir is defined
"""

PLAIN_PLAY = """
- name: Nothing of osfleet.hup
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Hello
      ansible.builtin.debug: {msg: hello}
"""


def playbook(tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None, cfg: str = "") -> subprocess.CompletedProcess[str]:
    play = tmp_path / "play.yml"
    play.write_text(text)
    environ = {**os.environ, "ANSIBLE_CALLBACKS_ENABLED": "osfleet.hup.report", "ANSIBLE_NOCOLOR": "1",
               "XDG_STATE_HOME": str(tmp_path / "state"), "ANSIBLE_LOCALHOST_WARNING": "0", **(env or {})}
    if "OSFLEET_HUP_REPORT_DIR" not in (env or {}):
        environ.pop("OSFLEET_HUP_REPORT_DIR", None)
    if cfg:
        (tmp_path / "ansible.cfg").write_text(cfg)
        environ["ANSIBLE_CONFIG"] = str(tmp_path / "ansible.cfg")
    return subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play), *args],
                          capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120, check=False)


def test_stats_channel_end_to_end_into_the_directory_it_names(tmp_path: Path) -> None:
    target = tmp_path / "rollouts" / "R7"
    proc = playbook(tmp_path, CHANNEL_PLAY, "-e", f"report_dir={target}", "-e", f"osfleet_hup_report_dir={tmp_path / 'ignored'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "ignored").exists()  # the channel's report_dir wins over the option
    report = json.loads((target / "report.json").read_text())
    assert report["rollout"] == {"id": "R7", "target_version": "2.113.0"}
    assert [(w["name"], w["halted"], w["decision"]) for w in report["waves"]] == [
        ("canary", False, "0 failures, limit 0: continued"), ("early", True, "1 deferred of 2: inconclusive, paused")]
    devices = {d["name"]: d for d in report["devices"]}
    assert sorted(devices) == ["dev-a", "dev-b", "dev-c"]  # localhost ran no step: not a device
    assert (devices["dev-b"]["outcome"], devices["dev-b"]["reason"], devices["dev-b"]["wave"]) == ("deferred", "offline before any change", "early")
    assert devices["dev-a"]["outcome"] == "skipped" and report["run"]["halted_waves"] == ["early"]
    assert sorted(p.name for p in target.iterdir()) == ["junit.xml", "report.html", "report.json", "report.md"]
    assert "osfleet.hup report" in proc.stdout and "wave early: 1 deferred, 1 skipped; HALTED: 1 deferred of 2" in proc.stdout
    assert f"report: {target / 'report.html'}" in proc.stdout
    assert "DEPRECATION" not in proc.stderr, proc.stderr


def test_dir_from_the_environment_and_per_run_from_ini(tmp_path: Path) -> None:
    cfg = "[osfleet_hup_report]\nper_run = true\nsummary = false\n"
    proc = playbook(tmp_path, CHANNEL_PLAY, env={"OSFLEET_HUP_REPORT_DIR": str(tmp_path / "reports")}, cfg=cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = list((tmp_path / "reports").iterdir())
    assert len(runs) == 1 and (runs[0] / "report.json").exists()
    assert json.loads((runs[0] / "report.json").read_text())["run"]["id"] == runs[0].name
    assert "osfleet.hup report" not in proc.stdout  # summary = false


def test_default_directory_is_under_the_state_directory(tmp_path: Path) -> None:
    proc = playbook(tmp_path, CHANNEL_PLAY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = list((tmp_path / "state" / "osfleet-hup" / "reports").iterdir())
    assert len(runs) == 1 and (runs[0] / "report.html").exists()


def test_a_run_without_osfleet_hup_writes_nothing(tmp_path: Path) -> None:
    proc = playbook(tmp_path, PLAIN_PLAY, "-e", f"osfleet_hup_report_dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "state").exists() and "osfleet.hup report" not in proc.stdout


def test_the_documentation_renders(tmp_path: Path) -> None:
    proc = subprocess.run([str(VENV_BIN / "ansible-doc"), "-t", "callback", "osfleet.hup.report"], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text: t.Any = proc.stdout
    for option in ("dir", "per_run", "summary", "OSFLEET_HUP_REPORT_DIR", "osfleet_hup_report_dir"):
        assert option in text, option
