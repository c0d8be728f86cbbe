# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.osfleet.hup.plugins.filter.method import FilterModule, hup_method


def test_filter_names():
    assert list(FilterModule().filters()) == ["hup_method"]


def test_takeover_version():
    assert hup_method("jetson-xavier", "5.1.0", "6.1.0") == {
        "method": "takeover", "needs": "takeover", "rule": "takeover-version", "refused": False,
        "reason": "jetson-xavier changes its partition layout at 6.0.50, between 5.1.0 and 6.1.0",
    }


def test_standard_and_overrides():
    assert hup_method("jetson-xavier", "5.1.0", "6.1.0", min_takeover_version="7.0.0")["method"] == "balenahup"
    assert hup_method("my-board", "2.88.4", "3.0.0", min_takeover_version="3.0.0")["rule"] == "takeover-version"
    choice = hup_method("genericx86-64-ext", "2.88.4", "2.113.0", layouts=["gpt-v1", "gpt-v1"], archs=("amd64", "amd64"))
    assert (choice["method"], choice["rule"]) == ("balenahup", "standard")


@pytest.mark.parametrize(
    "layouts, archs, rule",
    [
        (["l4t-r32", "l4t-r35"], None, "partition-layout"),
        (None, ["armv7hf", "aarch64"], "architecture"),
        ([None, "l4t-r35"], ["", "aarch64"], "standard"),  # unknown current: no evidence
    ],
)
def test_layouts_and_archs(layouts, archs, rule):
    assert hup_method("genericx86-64-ext", "2.88.4", "2.113.0", layouts=layouts, archs=archs)["rule"] == rule


def test_refused():
    choice = hup_method("genericx86-64-ext", "2.113.0.dev", "2.88.4.prod")
    assert (choice["method"], choice["needs"], choice["refused"], choice["rule"]) == (None, "balenahup", True, "dev-prod-switch")
    assert hup_method("genericx86-64-ext", "latest", "2.113.0")["rule"] == "invalid-version"
    assert hup_method("genericx86-64-ext", 2, "2.113.0")["rule"] == "invalid-version"


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((None, "2.88.4", "2.113.0"), {}, "the input must be a device type (a string); got None"),
        (("gx", "2.88.4", "2.113.0"), {"layouts": "gpt"}, "layouts must be a list of two items, [current, target]; got 'gpt'"),
        (("gx", "2.88.4", "2.113.0"), {"archs": ["amd64"]}, "archs must be a list of two items"),
        (("gx", "2.88.4", "2.113.0"), {"archs": [1, 2]}, "archs must hold strings or nulls; got 1"),
        (("gx", "2.88.4", "2.113.0"), {"min_takeover_version": 6}, "min_takeover_version must be a string; got 6"),
    ],
)
def test_errors(args, kwargs, message):
    with pytest.raises(AnsibleFilterError) as info:
        hup_method(*args, **kwargs)
    assert str(info.value).startswith(f"hup_method: {message}")
