# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.osfleet.hup.plugins.filter.version import (
    FilterModule,
    balena_version,
    balena_version_compare,
    balena_version_sort,
)


def test_filter_names():
    assert sorted(FilterModule().filters()) == ["balena_version", "balena_version_compare", "balena_version_sort"]


@pytest.mark.parametrize(
    "value, canonical",
    [("v2.88.4-rev1", "2.88.4+rev1"), ("2.88.4+rev1.dev", "2.88.4+rev1.dev"), ("2024.1.0", "2024.1.0"), ("2.0.0-beta12", "2.0.0-beta12")],
)
def test_balena_version(value, canonical):
    assert balena_version(value) == canonical


@pytest.mark.parametrize("value", ["latest", "", None, 2, ["2.88.4"]])
def test_balena_version_rejects(value):
    with pytest.raises(AnsibleFilterError, match="balena_version: invalid balenaOS version"):
        balena_version(value)


OPS = {
    # op: (result for 2.88.4 vs 2.113.0, result for 2.113.0 vs v2.113.0, result for 2.113.0+rev1 vs 2.113.0)
    "<": (True, False, False),
    "<=": (True, True, False),
    "==": (False, True, False),
    "!=": (True, False, True),
    ">=": (False, True, True),
    ">": (False, False, True),
}
ALIASES = {"lt": "<", "le": "<=", "eq": "==", "ne": "!=", "ge": ">=", "gt": ">"}
PAIRS = [("2.88.4", "2.113.0"), ("2.113.0", "v2.113.0"), ("2.113.0+rev1", "2.113.0")]


@pytest.mark.parametrize("op", list(OPS) + list(ALIASES))
def test_balena_version_compare(op):
    expected = OPS[ALIASES.get(op, op)]
    assert tuple(balena_version_compare(a, b, op) for a, b in PAIRS) == expected


def test_balena_version_compare_default_is_greater():
    assert balena_version_compare("2.113.0", "2.88.4") is True
    assert balena_version_compare("2.88.4", "2.113.0") is False


def test_balena_version_compare_errors():
    with pytest.raises(AnsibleFilterError, match="balena_version_compare: unknown operator '=~'"):
        balena_version_compare("2.88.4", "2.113.0", "=~")
    with pytest.raises(AnsibleFilterError, match="balena_version_compare: invalid balenaOS version 'x'"):
        balena_version_compare("2.88.4", "x")


def test_balena_version_sort():
    values = ["2.113.0", "v2.88.4-rev1", "2.113.0+rev1", "2.0.0-beta12", "2.88.4"]
    assert balena_version_sort(values) == ["2.0.0-beta12", "2.88.4", "v2.88.4-rev1", "2.113.0", "2.113.0+rev1"]
    assert balena_version_sort(values, reverse=True) == ["2.113.0+rev1", "2.113.0", "v2.88.4-rev1", "2.88.4", "2.0.0-beta12"]
    assert balena_version_sort(iter(["2.1.0", "2.0.0"])) == ["2.0.0", "2.1.0"]
    assert values[0] == "2.113.0"  # input untouched


@pytest.mark.parametrize(
    "value, message",
    [
        ("2.88.4", "expected a list of versions, got str"),
        (5, "expected a list of versions, got int"),
        (["2.88.4", "nope"], "invalid balenaOS version 'nope'"),
    ],
)
def test_balena_version_sort_errors(value, message):
    with pytest.raises(AnsibleFilterError, match=f"balena_version_sort: {message}"):
        balena_version_sort(value)
