# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rehearsal_runner: what a drill reads of its child update runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_runner as runner


@pytest.mark.parametrize(("output", "method"), [
    ("ok: [d1] => {\n    \"msg\": \"d1: 2.88.4 -> 2.113.0 committed: method balenahup; image from ...\"\n}", "balenahup"),
    ("\"msg\": \"d1: 5.1.0 -> 6.1.0 would be written (check mode: nothing changed): method takeover (layouts differ) [rule: x]\"",
     "takeover"),
    ("no report", None),
])
def test_the_method_a_run_printed(output: str, method: str | None) -> None:
    assert runner.Run([], 0, 1.0, output).method() == method


def test_the_recap_and_the_rollback_of_a_run() -> None:
    output = ("fatal: [d1]: FAILED! => {\"msg\": \"2.88.4 -> 2.113.0 -- rolled back (health)\"}\n"
              "PLAY RECAP ***\nd1                         : ok=12   changed=3    unreachable=0    failed=1    skipped=2\n")
    run = runner.Run([], 2, 1.0, output, recap=runner.parse_recap(output, "d1"))
    assert run.recap == {"ok": 12, "changed": 3, "unreachable": 0, "failed": 1} and run.rolled_back() == "health"


def test_an_update_run_is_limited_to_its_device_with_its_vars_in_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "ansible_playbook_path", lambda: "ansible-playbook")
    argv = runner.playbook_argv(["inv.yml"], "d1", {"hup_target_version": "2.113.0"}, str(tmp_path), "update-1", check=True)
    assert argv[1:] == ["-i", "inv.yml", "osfleet.hup.update", "--limit", "d1", "-e", f"@{tmp_path}/update-1.vars.json", "--check"]
    assert json.loads((tmp_path / "update-1.vars.json").read_text()) == {"hup_target_version": "2.113.0"}


def test_every_moment_names_a_task_of_its_role() -> None:
    roles = Path(runner.__file__).resolve().parents[2] / "roles"
    for role, task in runner.MOMENTS.values():
        assert any(f"- name: {task}" in p.read_text() for p in (roles / role / "tasks").glob("*.yml")), (role, task)
