# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.device_info: one probe, no change."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.device_info import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.device_info import device_facts


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    READ_ONLY = True

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        return StepResult(data={"device": device_facts(probe(session))})
