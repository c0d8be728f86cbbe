# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rehearsal's drill distribution filter; documentation in the sidecar file hup_rehearsal_drills.yml."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def hup_rehearsal_drills(benches: Any, drills: Any = "all") -> dict[str, Any]:
    """Bench device -> its drills, so that one rehearsal's drills run in parallel (plugin_utils.rehearsal.assign_drills)."""
    # imported here, not at the top: Ansible imports every filter file of the collection in each task's
    # own process until it finds the filter it looks for (plugins/filter/method.py)
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rehearsal import RehearsalError, assign_drills  # pylint: disable=import-outside-toplevel
    if not isinstance(benches, Mapping) or not benches:
        raise AnsibleFilterError(f"hup_rehearsal_drills: the input must map each bench device to its device_type and commands; got {benches!r}")
    try:
        return assign_drills({str(k): dict(v or {}) for k, v in benches.items()}, drills)
    except (RehearsalError, TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"hup_rehearsal_drills: {exc}") from None


class FilterModule:
    """The rehearsal's drill distribution filter."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"hup_rehearsal_drills": hup_rehearsal_drills}
