# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The options every osfleet.hup step shares (docs/internals.md §5).

Used with ``extends_documentation_fragment: [osfleet.hup.common]``; the action base builds the
argument spec from these options too (``plugin_utils.action.argspec_from_doc``).
"""

from __future__ import annotations


class ModuleDocFragment:
    """Options of every step module."""

    DOCUMENTATION = r"""
options:
  run_log:
    description:
      - A file on the device to which the step appends one JSON line of its outcome (C(time), C(run_id),
        C(controller), C(target), C(step), C(changed), C(failed), C(actions), C(msg)), also when it fails. Its
        directory is created.
      - Not written in check mode. Unset, no run log is written.
      - The role C(osfleet.hup.standard) sets it for every step of a run with C(module_defaults) of
        C(group/osfleet.hup.hup), to C(<hup_log_dir>/osfleet-hup.<run id>.log).
    type: str
  run_log_defer:
    description:
      - When V(true), a step that did not fail leaves its line of the run log (O(run_log)) to the next C(osfleet.hup)
        step of the device, which appends it in its first device command, before its own work (one SSH command less
        a step). A failed step writes its line at once, with the lines left to it; so does a step that is handed
        lines and does not defer (M(osfleet.hup.run_log) appends them before the outcome line).
      - The lines reach the device in the order of the steps, each with the time its step ended. A line left to a
        next step that never runs is lost, so set it only where the play ends the run log with
        M(osfleet.hup.run_log) on every path (the role C(osfleet.hup.standard) does); still, a controller killed
        between two steps, or a play stopped between two tasks, loses the line of the step before (the run's
        device-side watchdog then adds its own line when it gives the run up).
      - The lines are handed on as the host fact C(osfleet_hup_run_log_deferred), each with an id; the device appends
        each once (the ids in C(<run_log>.carried)). Lines longer than 16 KiB together are written at once.
    type: bool
    default: false
  run_info:
    description:
      - What every line of the run log (O(run_log)) carries about the run besides the step's outcome, C(run_id) and
        C(target) (the target version). Each line also names the C(controller) (C(<user>@<controller host>)).
      - The role C(osfleet.hup.standard) sets it for every step of a run.
    type: dict
  run_id:
    description:
      - The update run this step belongs to (the role C(osfleet.hup.standard) sets it for the steps of a run).
      - When the run's device-side watchdog runs (started by M(osfleet.hup.lock) with
        O(osfleet.hup.lock#module:watchdog_timeout)), each device script of the step tells it that the controller
        is still there, and the step fails at once, changing nothing, when that watchdog already gave the run up
        (then running the run again with the same run id resumes it).
    type: str
  exec_timeout:
    description:
      - Seconds each device script of this step (and each of its commands, such as a health command or a
        C(skopeo) pull) may run before the device ends it (C(timeout), C(SIGTERM) then C(SIGKILL) 10 s later), so that
        a lost controller never leaves a script running for ever on the device.
      - V(0) means no bound.
    type: int
    default: 3600
"""
