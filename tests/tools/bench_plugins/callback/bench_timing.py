# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench_timing: the `make bench` callback (tests/tools/bench.py), not part of the collection.

Records when each play and each task started and, per host, when each task's result came back,
and writes them as JSON to the file named by $OSFLEET_BENCH_TIMING at the end of the run:
``{"plays": [{"name", "start", "end"}], "tasks": [{"play", "task", "action", "host", "start",
"end", "status"}], "wall_minus_monotonic"}`` (times: time.monotonic() of the ansible-playbook
process, seconds; wall_minus_monotonic: time.time() - time.monotonic(), to put the ssh counter's
wall-clock stamps on that clock). A result that says how long the step waited for the device
(osfleet.hup.health's ``waited``) and who committed (``committed_by``) adds both to its task entry.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: bench_timing
type: aggregate
short_description: play and task timings for make bench
description: Writes play and per-host task timings as JSON to $OSFLEET_BENCH_TIMING.
options: {}
"""


class CallbackModule(CallbackBase):
    """Play and task timings, written as JSON to $OSFLEET_BENCH_TIMING."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plays = []
        self._tasks = []
        self._task_start = {}
        self._play = ""
        self._offset = time.time() - time.monotonic()

    def _end_play(self):
        if self._plays and self._plays[-1]["end"] is None:
            self._plays[-1]["end"] = time.monotonic()

    def v2_playbook_on_play_start(self, play):
        self._end_play()
        self._play = play.get_name()
        self._plays.append({"name": self._play, "start": time.monotonic(), "end": None})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start[task._uuid] = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start[task._uuid] = time.monotonic()

    def _result(self, result, status):
        task = result._task
        entry = {
            "play": self._play,
            "task": task.get_name(),
            "action": task.action,
            "host": result._host.get_name(),
            "start": self._task_start.get(task._uuid, time.monotonic()),
            "end": time.monotonic(),
            "status": status,
        }
        values = result._result if isinstance(result._result, dict) else {}
        if isinstance(values.get("waited"), (int, float)):
            entry["waited"] = values["waited"]
            entry["committed_by"] = values.get("committed_by")
        self._tasks.append(entry)

    def v2_runner_on_ok(self, result):
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._end_play()
        path = os.environ.get("OSFLEET_BENCH_TIMING")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump({"plays": self._plays, "tasks": self._tasks, "wall_minus_monotonic": self._offset}, handle)
