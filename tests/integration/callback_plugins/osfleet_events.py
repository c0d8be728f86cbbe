# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test helper callback: one JSON line per event, flushed at once, into $OSFLEET_EVENTS_FILE.

Events: ``start`` (a task starts on a host), ``ok``/``failed``/``skipped``/``unreachable`` (its
result, with the whole result dict) and ``stats`` (the play recap per host). The integration tests
read the file while ansible-playbook runs (to kill it or cut a device's power at a given step) and
after it ends (per-task assertions).
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: osfleet_events
type: aggregate
short_description: Write every task start, task result and the recap as JSON lines (tests only)
description:
  - Appends one JSON object per line to the file named by E(OSFLEET_EVENTS_FILE).
requirements:
  - enabled in ANSIBLE_CALLBACKS_ENABLED
"""

import json
import os
import signal
import time
import typing as t

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "osfleet_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        path = os.environ.get("OSFLEET_EVENTS_FILE")
        self._out: t.TextIO | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._stopped = False

    def _emit(self, event: dict[str, t.Any]) -> None:
        if self._out is None:
            return
        event["time"] = time.time()
        self._out.write(json.dumps(event, default=str, sort_keys=True) + "\n")
        self._out.flush()

    def _task_event(self, kind: str, result: t.Any, **extra: t.Any) -> None:
        task = result._task  # pylint: disable=protected-access
        data = dict(result._result)  # pylint: disable=protected-access
        data.pop("invocation", None)
        self._emit({
            "event": kind,
            "host": result._host.get_name(),  # pylint: disable=protected-access
            "task": task.get_name(),
            "action": task.action,
            "changed": bool(data.get("changed", False)),
            "result": data,
            **extra,
        })

    def _stop_at(self, host: str, task: str, event: str) -> None:
        """OSFLEET_STOP_AT="<host>\t<part of a task name>[\t<event>]": ansible-playbook stops itself
        (SIGSTOP) once, when that task starts (event ``start``, the default) or when its ``ok`` result
        comes in (before the next task is sent: the strategy handles the result first), so that a
        test's fault hits exactly there however loaded the machine is (the test then kills it, or
        SIGCONTs it after its fault)."""
        want_host, _sep, rest = os.environ.get("OSFLEET_STOP_AT", "").partition("\t")
        want_task, _sep, want_event = rest.partition("\t")
        if want_task and not self._stopped and host == want_host and want_task in task and (want_event or "start") == event:
            self._stopped = True
            os.kill(os.getpid(), signal.SIGSTOP)

    def v2_runner_on_start(self, host: t.Any, task: t.Any) -> None:
        self._emit({"event": "start", "host": host.get_name(), "task": task.get_name(), "action": task.action})
        self._stop_at(host.get_name(), task.get_name(), "start")

    def v2_runner_on_ok(self, result: t.Any) -> None:
        self._task_event("ok", result)
        self._stop_at(result._host.get_name(), result._task.get_name(), "ok")  # pylint: disable=protected-access

    def v2_runner_on_failed(self, result: t.Any, ignore_errors: bool = False) -> None:
        self._task_event("failed", result, ignore_errors=ignore_errors)

    def v2_runner_on_skipped(self, result: t.Any) -> None:
        self._task_event("skipped", result)

    def v2_runner_on_unreachable(self, result: t.Any) -> None:
        self._task_event("unreachable", result)

    def v2_playbook_on_stats(self, stats: t.Any) -> None:
        hosts = sorted(stats.processed.keys())
        self._emit({"event": "stats", "hosts": {h: stats.summarize(h) for h in hosts}})
