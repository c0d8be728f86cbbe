# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The standard role's rescue decisions; documentation in the sidecar file hup_rescue.yml."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def hup_rescue(facts: Any) -> dict[str, Any]:
    """What the rescue of a failed update does, and the device's state in words (plugin_utils.rescue.decide_rescue)."""
    # imported here, not at the top: Ansible imports every filter file of the collection in each task's
    # own process until it finds the filter it looks for (plugins/filter/method.py)
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rescue import decide_rescue  # pylint: disable=import-outside-toplevel
    if not isinstance(facts, Mapping):
        raise AnsibleFilterError(f"hup_rescue: the input must be a mapping of the rescue's facts; got {type(facts).__name__}")
    return decide_rescue(facts)


class FilterModule:
    """The standard role's rescue decisions."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"hup_rescue": hup_rescue}
