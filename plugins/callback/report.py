# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: report
type: aggregate
short_description: Write a report of every host OS update run (JSON, JUnit, Markdown, HTML)
version_added: 0.1.0
author: osfleet maintainers (@osfleet)
description:
  - Collects what the C(osfleet.hup.*) steps of a run return (preflight's phase, method and release, fetch's source and
    bytes, health's rollback and its reason, the run log path the standard role names, the time of each step) and, at the
    end of the run, writes four files into one directory, C(report.json) (for machines, schema in C(docs/report.md)),
    C(junit.xml) (for CI, one test case per device, a failure carries the step and the reason), C(report.md) and a
    self-contained C(report.html) with a timeline of the waves (for people). It then prints a short summary table.
  - Outcome of a device is one of V(committed), V(current) (already on the target), V(planned) (check mode), V(failed)
    (at a step, with the reason), V(rolled_back) (with the rollback reason), V(unreachable), V(incomplete) (the run stopped
    after a step without a verdict), V(deferred) or V(skipped) (also a host of a play that Ansible stopped before its
    batch, listed at the end of the summary as not tried).
  - A play can add facts through C(ansible.builtin.set_stats) under the key C(osfleet_hup) (aggregated, not per host), for
    example the wave of each device, a wave's halt decision, or a device deferred by a rollout; see C(docs/report.md).
    C(osfleet_hup.report_dir) given that way takes precedence over O(dir).
  - Runs in which no C(osfleet.hup) step ran and no C(osfleet_hup) stats were set write nothing.
  - Enable it with C(callbacks_enabled = osfleet.hup.report) in C(ansible.cfg) or E(ANSIBLE_CALLBACKS_ENABLED); it works
    with every playbook of the collection and beside any stdout callback.
requirements:
  - enabled with C(callbacks_enabled)
options:
  dir:
    description:
      - The directory the report files are written to (made when missing).
      - Unset, each run writes to C($XDG_STATE_HOME/osfleet-hup/reports/<run id>/) (C(~/.local/state/...) when
        E(XDG_STATE_HOME) is unset).
    type: path
    env:
      - name: OSFLEET_HUP_REPORT_DIR
    ini:
      - section: osfleet_hup_report
        key: dir
    vars:
      - name: osfleet_hup_report_dir
  per_run:
    description:
      - Write each run into its own subdirectory C(<dir>/<run id>/) instead of replacing the files in O(dir).
    type: bool
    default: false
    env:
      - name: OSFLEET_HUP_REPORT_PER_RUN
    ini:
      - section: osfleet_hup_report
        key: per_run
    vars:
      - name: osfleet_hup_report_per_run
  summary:
    description:
      - Print the summary table (one line per device, one per wave) at the end of the run.
    type: bool
    default: true
    env:
      - name: OSFLEET_HUP_REPORT_SUMMARY
    ini:
      - section: osfleet_hup_report
        key: summary
    vars:
      - name: osfleet_hup_report_summary
seealso:
  - name: report.json schema and the set_stats channel
    description: docs/report.md in the collection.
    link: https://github.com/osfleet/hup/blob/main/docs/report.md
"""

EXAMPLES = r"""
# ansible.cfg
# [defaults]
# callbacks_enabled = osfleet.hup.report
# [osfleet_hup_report]
# dir = /var/lib/osfleet/reports

# or for one run:
#   ANSIBLE_CALLBACKS_ENABLED=osfleet.hup.report \
#     ansible-playbook -i fleet.fleet.yml osfleet.hup.update -e hup_target_version=2.113.0 \
#     -e osfleet_hup_report_dir=./report

# a play adding the wave of each device and the wave's halt decision
- name: Record the wave
  ansible.builtin.set_stats:
    aggregate: true
    per_host: false
    data:
      osfleet_hup:
        waves:
          canary: {order: 1, devices: "{{ ansible_play_hosts_all }}", halted: true, reason: "1 failure > limit 0"}
"""

import datetime
import getpass
import json
import os
import secrets
import socket
import time
import typing as t
from pathlib import Path

from ansible import context
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.callback import CallbackBase
from ansible.release import __version__ as ansible_version

from ansible_collections.osfleet.hup.plugins.plugin_utils.report import STATS_KEY, ReportBuilder
from ansible_collections.osfleet.hup.plugins.plugin_utils.report_render import summary_table, write_reports


def _collection_version() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        return str(json.loads((root / "MANIFEST.json").read_text(encoding="utf-8"))["collection_info"]["version"])
    except (OSError, ValueError, KeyError):
        pass
    try:
        for line in (root / "galaxy.yml").read_text(encoding="utf-8").splitlines():
            if line.startswith("version:"):
                return line.split(":", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return None


def _default_dir(run_id: str) -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "osfleet-hup" / "reports" / run_id


def _plain(value: t.Any) -> t.Any:
    """Ansible's tagged/unsafe values as plain JSON data."""
    return json.loads(json.dumps(value, default=to_text))


class CallbackModule(CallbackBase):
    """Feeds plugin_utils.report.ReportBuilder; writes and prints the report at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "osfleet.hup.report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display: t.Any = None) -> None:
        super().__init__(display=display)
        started = time.time()
        stamp = datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.run_id = f"{stamp}-{secrets.token_hex(2)}"
        cli = context.CLIARGS if context.CLIARGS else {}
        self.builder = ReportBuilder(
            self.run_id, started,
            playbook=" ".join(str(a) for a in cli.get("args") or ()),
            check_mode=bool(cli.get("check")),
            controller={"host": socket.gethostname(), "user": getpass.getuser(), "ansible_core": ansible_version,
                        "collection": _collection_version()},
        )

    # -- events
    def v2_playbook_on_play_start(self, play: t.Any) -> None:
        self.builder.play_start(to_text(play.get_name()).strip(), str(getattr(play, "_uuid", "")) or None, _play_hosts(play))

    def v2_runner_on_start(self, host: t.Any, task: t.Any) -> None:
        self.builder.task_start(host.get_name(), task._uuid, task.get_name(), _action(task), _step(task), time.time())  # pylint: disable=protected-access

    def _result(self, status: str, result: t.Any, ignore_errors: bool = False) -> None:
        task = result.task
        data = _plain(dict(result.result))
        args = _plain(dict(task.args or {}))  # templated: the task of a result is the one that ran
        self.builder.task_result(result.host.get_name(), task._uuid, status, task=task.get_name(), module=_action(task),  # pylint: disable=protected-access
                                 step=_step(task), result=data, args=args, when=time.time(), ignore_errors=ignore_errors,
                                 role=_role(task))

    def v2_runner_on_ok(self, result: t.Any) -> None:
        self._result("ok", result)

    def v2_runner_on_failed(self, result: t.Any, ignore_errors: bool = False) -> None:
        self._result("failed", result, ignore_errors)

    def v2_runner_on_skipped(self, result: t.Any) -> None:
        self._result("skipped", result)

    def v2_runner_on_unreachable(self, result: t.Any) -> None:
        self._result("unreachable", result)

    def v2_playbook_on_stats(self, stats: t.Any) -> None:
        custom = _plain(getattr(stats, "custom", {}) or {})
        data = (custom.get("_run") or {}).get(STATS_KEY)
        if not self.builder.devices and not data:
            return
        recap = {host: stats.summarize(host) for host in stats.processed}
        report = self.builder.build(time.time(), custom_stats=custom, recap=recap)
        directory = self._directory(data if isinstance(data, dict) else {})
        try:
            write_reports(report, directory)
        except OSError as exc:
            self._display.warning(f"osfleet.hup.report: could not write the report to {directory}: {exc}")
            return
        if self.get_option("summary"):
            self._display.display("\nosfleet.hup report\n" + summary_table(report, str(directory / "report.html")))

    def _directory(self, data: dict[str, t.Any]) -> Path:
        given = data.get("report_dir") or self.get_option("dir")
        if not given:
            return _default_dir(self.run_id)
        base = Path(os.path.expanduser(str(given)))
        return base / self.run_id if self.get_option("per_run") else base


def _play_hosts(play: t.Any) -> list[str]:
    """Every host the play targets, all its serial batches (Ansible restricts the inventory to the
    batch that starts; ``--limit`` still applies)."""
    try:
        inventory = play.get_variable_manager()._inventory  # pylint: disable=protected-access
        return [h.get_name() for h in inventory.get_hosts(play.hosts, ignore_restrictions=True, order=play.order)]
    except Exception:  # pylint: disable=broad-exception-caught
        return []  # an inventory this callback cannot read: no host is reported as never tried


def _action(task: t.Any) -> str:
    return str(getattr(task, "resolved_action", None) or task.action)


def _role(task: t.Any) -> str | None:
    role = getattr(task, "_role", None)  # pylint: disable=protected-access
    return str(role.get_name()) if role is not None else None


def _step(task: t.Any) -> str | None:
    step = (task.vars or {}).get("hup_step")
    return str(step) if step else None
