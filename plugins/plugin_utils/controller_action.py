# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The base of the modules that run on the controller only (``osfleet.hup.catalog``): no device, no
connection, no run log, no device name in messages.

As for the steps (:mod:`.action`), the argument spec comes from the module's DOCUMENTATION
(``argspec_from_doc``), the subclass returns a :class:`~.action.StepResult`, and every
:class:`~.errors.OsfleetError` becomes a failed result (``msg``, and the error's data).
"""

from __future__ import annotations

import typing as t

from ansible.plugins.action import ActionBase

from ansible_collections.osfleet.hup.plugins.plugin_utils.action import StepResult, argspec_from_doc
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import OsfleetError


class ControllerAction(ActionBase):
    """Subclasses set DOCUMENTATION and implement step(args)."""

    TRANSFERS_FILES = False
    _requires_connection = False

    DOCUMENTATION: str = ""
    MUTUALLY_EXCLUSIVE: list[list[str]] = []
    REQUIRED_TOGETHER: list[list[str]] = []

    @property
    def argument_spec(self) -> dict[str, t.Any]:
        return argspec_from_doc(self.DOCUMENTATION)

    @property
    def check_mode(self) -> bool:
        return bool(self._task.check_mode)

    def run(self, tmp: t.Any = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        self._supports_check_mode = True
        self._supports_async = False
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(
            argument_spec=self.argument_spec,
            mutually_exclusive=self.MUTUALLY_EXCLUSIVE or None,
            required_together=self.REQUIRED_TOGETHER or None,
        )
        try:
            step = self.step(args)
        except OsfleetError as exc:
            result.update(exc.data)
            result.update(failed=True, changed=False, msg=str(exc))
        else:
            result.update(changed=bool(step.changed), actions=list(step.actions))
            if step.diff is not None and self._task.diff:
                result["diff"] = step.diff
            result.update(step.data)
            if step.msg:
                result["msg"] = step.msg
        result.setdefault("actions", [])
        return result

    def step(self, args: dict[str, t.Any]) -> StepResult:
        raise NotImplementedError
