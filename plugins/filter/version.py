# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""balenaOS version filters; documentation in the sidecar files balena_version*.yml."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.osfleet.hup.plugins.plugin_utils.version import BalenaVersion, parse_version

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    ">": operator.gt,
    "lt": operator.lt,
    "le": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
    "ge": operator.ge,
    "gt": operator.gt,
}


def _parse(value: Any, filter_name: str) -> BalenaVersion:
    try:
        return parse_version(value)
    except ValueError as exc:
        raise AnsibleFilterError(f"{filter_name}: {exc}") from None


def balena_version(value: Any) -> str:
    """Canonical form of a balenaOS version (``v2.88.4-rev1`` gives ``2.88.4+rev1``)."""
    return str(_parse(value, "balena_version"))


def balena_version_compare(value: Any, other: Any, op: str = ">") -> bool:
    """``value <op> other`` by balenaOS version precedence."""
    compare = _OPERATORS.get(op)
    if compare is None:
        raise AnsibleFilterError(f"balena_version_compare: unknown operator {op!r}; use one of {', '.join(_OPERATORS)}")
    return compare(_parse(value, "balena_version_compare"), _parse(other, "balena_version_compare"))


def balena_version_sort(values: Iterable[Any], reverse: bool = False) -> list[Any]:
    """Sort version strings by balenaOS precedence, oldest first (newest first with reverse)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise AnsibleFilterError(f"balena_version_sort: expected a list of versions, got {type(values).__name__}")
    items = list(values)
    keys = [_parse(item, "balena_version_sort").sort_key for item in items]
    order = sorted(range(len(items)), key=lambda index: keys[index], reverse=bool(reverse))
    return [items[index] for index in order]


class FilterModule:
    """balenaOS version filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "balena_version": balena_version,
            "balena_version_compare": balena_version_compare,
            "balena_version_sort": balena_version_sort,
        }
