# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HUP method filter; documentation in the sidecar file hup_method.yml."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError


def _pair(value: Any, option: str) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise AnsibleFilterError(f"hup_method: {option} must be a list of two items, [current, target]; got {value!r}")
    for item in value:
        if item is not None and not isinstance(item, str):
            raise AnsibleFilterError(f"hup_method: {option} must hold strings or nulls; got {item!r}")
    return value[0] or None, value[1] or None


def hup_method(device_type: Any, current: Any, target: Any, layouts: Any = None, archs: Any = None,
               min_takeover_version: Any = None) -> dict[str, Any]:
    """The method (``balenahup``/``takeover``, None when refused) and the rule that decided."""
    if not isinstance(device_type, str) or not device_type:
        raise AnsibleFilterError(f"hup_method: the input must be a device type (a string); got {device_type!r}")
    if min_takeover_version is not None and not isinstance(min_takeover_version, str):
        raise AnsibleFilterError(f"hup_method: min_takeover_version must be a string; got {min_takeover_version!r}")
    # imported here, not at the top: Ansible imports every filter file of the collection in each task's
    # own process until it finds the filter it looks for, and compiles collection code from source
    from ansible_collections.osfleet.hup.plugins.plugin_utils.method import choose_method  # pylint: disable=import-outside-toplevel
    (current_layout, target_layout), (current_arch, target_arch) = _pair(layouts, "layouts"), _pair(archs, "archs")
    choice = choose_method(device_type, current, target, min_takeover_version=min_takeover_version, current_layout=current_layout,
                           target_layout=target_layout, current_arch=current_arch, target_arch=target_arch)
    return choice.as_dict()


class FilterModule:
    """The HUP method filter."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"hup_method": hup_method}
